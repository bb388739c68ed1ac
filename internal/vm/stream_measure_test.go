package vm

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"
)

// measureEnv returns the image and the number of rounds of a measurement
// that runs only when asked (roundsVar=N and PGWASM_IMAGE set), and skips
// the test otherwise.
func measureEnv(t *testing.T, roundsVar string) (dir string, rounds int) {
	t.Helper()
	dir = os.Getenv("PGWASM_IMAGE")
	rounds, _ = strconv.Atoi(os.Getenv(roundsVar))
	if dir == "" || rounds <= 0 {
		t.Skipf("set PGWASM_IMAGE and %s=N", roundsVar)
	}
	return dir, rounds
}

// TestMeasureResult splits the time of a 1 MB result (10,000 rows of 100
// bytes, the bench's row) into the guest's part (emulated instructions and
// the time to the answer's last byte), the harness's (line collection,
// JSON.parse, assembly, forwarding) and Go's decoding, for the whole
// result in one message and streamed in 256 KiB and 64 KiB parts, in turns
// in one VM. PGWASM_MEASURE_RESULT=N rounds (docs/agent-protocol.md,
// "Where a 1 MB result's time goes"). With PGWASM_IMAGE_BEFORE (another
// image directory) a VM of each image runs, and the rounds alternate
// between them: before and after in one run.

func TestMeasureResult(t *testing.T) {
	dir, rounds := measureEnv(t, "PGWASM_MEASURE_RESULT")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	type target struct {
		name string
		v    *VM
	}
	var targets []target
	dirs := [][2]string{{"", dir}}
	if before := os.Getenv("PGWASM_IMAGE_BEFORE"); before != "" {
		dirs = [][2]string{{"before", before}, {"after", dir}}
	}
	for _, d := range dirs {
		v, err := Start(ctx, Options{ImageDir: d[1]})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		targets = append(targets, target{d[0], v})
	}
	req := map[string]any{"op": "query", "sql": "select repeat('x', 100) from generate_series(1, 10000)"}
	type prof struct {
		Total        float64 `json:"total_ms"`
		LastByte     float64 `json:"last_byte_ms"`
		HostFeed     float64 `json:"host_feed_ms"`
		Instructions float64 `json:"instructions"`
	}
	// -1: the same rows counted in the guest, not sent: PostgreSQL's
	// share without the agent's encoding and the channel.
	modes := []int{-1, 0, 1 << 20, 256 << 10, 64 << 10}
	type row struct {
		total, lastByte, feed, goDecode, instr []float64
	}
	got := make([][]row, len(targets))
	for i := range got {
		got[i] = make([]row, len(modes))
	}
	// One warm-up of each: the first query after a restore loads pages.
	for round := -1; round < rounds; round++ {
		for ti, tg := range targets {
			v := tg.v
			for m, chunk := range modes {
				r := req
				if chunk < 0 {
					r = map[string]any{"op": "query", "sql": "select count(x) from (select repeat('x', 100) as x from generate_series(1, 10000)) s"}
				}
				fields := map[string]any{"request": r, "timeout_ms": 600000, "channel": v.channel, "profile": true}
				var st *streamed
				var onPart func(map[string]json.RawMessage)
				var partNS time.Duration
				if chunk > 0 {
					st = &streamed{chunkBytes: chunk}
					fields["stream"] = map[string]any{"chunk_bytes": chunk}
					onPart = func(ev map[string]json.RawMessage) {
						t0 := time.Now()
						st.add(ev)
						partNS += time.Since(t0)
					}
				}
				t0 := time.Now()
				msg, err := v.h.callParts(ctx, "agent", fields, onPart)
				if err != nil {
					t.Fatal(err)
				}
				d0 := time.Now()
				var res Result
				if err := json.Unmarshal(msg["response"], &res); err != nil {
					t.Fatal(err)
				}
				rows := len(res.Rows)
				if st != nil {
					rows += len(st.rows(0))
				}
				goDecode := time.Since(d0) + partNS
				total := time.Since(t0)
				if chunk < 0 {
					rows = 10000
				}
				if rows != 10000 {
					t.Fatalf("chunk %d: %d rows", chunk, rows)
				}
				var p prof
				if err := json.Unmarshal(msg["profile"], &p); err != nil {
					t.Fatal(err)
				}
				if round < 0 {
					continue
				}
				g := &got[ti][m]
				g.total = append(g.total, float64(total.Microseconds())/1000)
				g.lastByte = append(g.lastByte, p.LastByte)
				g.feed = append(g.feed, p.HostFeed)
				g.goDecode = append(g.goDecode, float64(goDecode.Microseconds())/1000)
				g.instr = append(g.instr, p.Instructions/1e6)
			}
		}
	}
	med := func(xs []float64) float64 {
		s := slices.Clone(xs)
		slices.Sort(s)
		return s[len(s)/2]
	}
	t.Logf("1 MB result, medians of %d rounds (ms; instructions in millions)", rounds)
	t.Logf("| image | mode | total (Go) | to the answer's last byte | harness feed (parse, assemble, forward) | Go decode | guest instructions |")
	for ti, tg := range targets {
		for m, chunk := range modes {
			name := "one message"
			if chunk < 0 {
				name = "rows counted in the guest, not sent"
			}
			if chunk > 0 {
				name = fmt.Sprintf("streamed, %d KiB parts", chunk>>10)
			}
			g := got[ti][m]
			t.Logf("| %s | %s | %.0f | %.0f | %.1f | %.1f | %.1f |", tg.name, name, med(g.total), med(g.lastByte), med(g.feed), med(g.goDecode), med(g.instr))
		}
	}
}
