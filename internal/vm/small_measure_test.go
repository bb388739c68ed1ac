package vm

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"
)

// TestMeasureSmall splits the time of the smallest requests (a ping, which
// the agent answers without PostgreSQL, and `select 1` as query and as
// exec) into what the harness sees (the answer's first byte after the
// write) and the guest instructions run meanwhile, in windows of 100
// rounds so the JIT's warming shows. PGWASM_MEASURE_SMALL=N rounds
// (docs/agent-protocol.md, "Where a small request's time goes").
func TestMeasureSmall(t *testing.T) {
	dir, rounds := measureEnv(t, "PGWASM_MEASURE_SMALL")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	v, err := Start(ctx, Options{ImageDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	reqs := []struct {
		name string
		req  map[string]any
	}{
		{"ping", map[string]any{"op": "ping"}},
		{"query select 1", map[string]any{"op": "query", "sql": "select 1"}},
		{"exec select 1", map[string]any{"op": "exec", "sql": "select 1"}},
	}
	type prof struct {
		Total        float64 `json:"total_ms"`
		FirstByte    float64 `json:"first_byte_ms"`
		Instructions float64 `json:"instructions"`
	}
	med := func(xs []float64) float64 {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[len(s)/2]
	}
	const window = 100
	total := make([][]float64, len(reqs))
	firstByte := make([][]float64, len(reqs))
	instr := make([][]float64, len(reqs))
	for round := 0; round < rounds; round++ {
		for i, r := range reqs {
			fields := map[string]any{"request": r.req, "timeout_ms": 60000, "channel": v.channel, "profile": true}
			t0 := time.Now()
			msg, err := v.h.callParts(ctx, "agent", fields, nil)
			if err != nil {
				t.Fatal(err)
			}
			d := time.Since(t0)
			var p prof
			if err := json.Unmarshal(msg["profile"], &p); err != nil {
				t.Fatal(err)
			}
			total[i] = append(total[i], float64(d.Microseconds())/1000)
			firstByte[i] = append(firstByte[i], p.FirstByte)
			instr[i] = append(instr[i], p.Instructions/1000)
		}
		if (round+1)%window == 0 {
			for i, r := range reqs {
				t.Logf("rounds %d-%d: %s %.2f ms", round+2-window, round+1, r.name, med(total[i][round+1-window:]))
			}
		}
	}
	t.Logf("medians of %d rounds (channel %s)", rounds, v.channel)
	t.Logf("| request | total (Go) | answer's first byte (harness) | guest instructions (thousands) | guest MIPS |")
	for i, r := range reqs {
		t.Logf("| %s | %.2f ms | %.2f ms | %.0f | %.0f |", r.name, med(total[i]), med(firstByte[i]), med(instr[i]), med(instr[i])/med(firstByte[i]))
	}
}
