package vm

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestStreamRealVM restores the image's snapshot and checks protocol 2 end
// to end (guest agent, harness/agent-client.mjs, internal/vm): a result
// larger than the agent's whole-result limit (-max-result-bytes, 64 MiB)
// arrives complete, in parts; a smaller one is checked row by row; a 3 MB
// script goes in pieces; an oversized request (its params cannot be cut)
// still gets a clear error, and the next request works. Needs
// PGWASM_IMAGE (a built image with its snapshot).
func TestStreamRealVM(t *testing.T) {
	dir := os.Getenv("PGWASM_IMAGE")
	if dir == "" {
		t.Skip("PGWASM_IMAGE is not set (a built image directory with its snapshot)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	v, err := Start(ctx, Options{ImageDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if v.protocol < 2 {
		t.Fatalf("the image's agent speaks protocol %d, want 2", v.protocol)
	}

	// Row by row: 10,000 rows of 110 bytes in 64 KB parts.
	const n = 10000
	sql := fmt.Sprintf("select i, md5(i::text) || repeat('x', 78) from generate_series(1, %d) i", n)
	st := &streamed{chunkBytes: 64 << 10}
	t0 := time.Now()
	raw, err := v.requestOn(ctx, v.channel, map[string]any{"op": "query", "sql": sql}, st)
	if err != nil {
		t.Fatal(err)
	}
	var res Result
	if err := json.Unmarshal(raw, &res); err != nil {
		t.Fatal(err)
	}
	rows := append(st.rows(0), res.Rows...)
	t.Logf("1.1 MB result in %d parts: %v", st.n, time.Since(t0))
	if st.n < 10 {
		t.Errorf("%d parts, want at least 10 (1.1 MB in 64 KB parts)", st.n)
	}
	if len(rows) != n || res.Command != fmt.Sprintf("SELECT %d", n) || len(res.Columns) != 2 || res.Columns[1].Type != "text" {
		t.Fatalf("got %d rows, command %q, columns %v", len(rows), res.Command, res.Columns)
	}
	for i, row := range rows {
		sum := md5.Sum([]byte(fmt.Sprint(i + 1)))
		if *row[0] != fmt.Sprint(i+1) || *row[1] != hex.EncodeToString(sum[:])+strings.Repeat("x", 78) {
			t.Fatalf("row %d = %q %q", i, *row[0], *row[1])
		}
	}

	// Over the whole-result limit: 70 MB (70,000 rows of 1000 bytes)
	// through Query, which streams when the agent can.
	t0 = time.Now()
	big, err := v.Query(ctx, "select i, repeat(chr(65 + i % 26), 1000) from generate_series(1, 70000) i")
	if err != nil {
		t.Fatalf("70 MB result: %v", err)
	}
	t.Logf("70 MB result: %v", time.Since(t0))
	if len(big.Rows) != 70000 {
		t.Fatalf("70 MB result: %d rows", len(big.Rows))
	}
	for i, row := range big.Rows {
		if *row[0] != fmt.Sprint(i+1) || len(*row[1]) != 1000 || (*row[1])[0] != byte(65+(i+1)%26) {
			t.Fatalf("70 MB result, row %d = %q %.10q", i, *row[0], *row[1])
		}
	}

	// A 3 MB script: over the 1 MiB line limit, so the client sends it in
	// pieces.
	var script strings.Builder
	script.WriteString("create temp table p (s text);")
	inserts := 0
	for ; script.Len() < 3<<20; inserts++ {
		fmt.Fprintf(&script, "insert into p values ('%s');", strings.Repeat("y", 1000))
	}
	script.WriteString("select count(*), sum(length(s)) from p")
	t0 = time.Now()
	results, err := v.Exec(ctx, script.String())
	if err != nil {
		t.Fatalf("3 MB script: %v", err)
	}
	t.Logf("3 MB script: %v", time.Since(t0))
	last := results[len(results)-1]
	if got, want := fmt.Sprintf("%s %s", *last.Rows[0][0], *last.Rows[0][1]), fmt.Sprintf("%d %d", inserts, inserts*1000); got != want {
		t.Errorf("3 MB script: count, sum = %s, want %s", got, want)
	}

	// A parameter over the line limit cannot go in pieces: the agent
	// refuses it, and the next request works.
	_, err = v.Query(ctx, "select length($1)", strings.Repeat("z", 1100000))
	var ae *AgentError
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("oversized request: %v, want the agent's refusal", err)
	}
	next, err := v.Query(ctx, "select 'next'")
	if err != nil || len(next.Rows) != 1 || *next.Rows[0][0] != "next" {
		t.Errorf("after the refusal: %v %v", next, err)
	}
}
