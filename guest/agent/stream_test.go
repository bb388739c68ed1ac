package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

// streamed reads a streamed answer: the parts, then the final response.
func (a *agentConn) streamed(t *testing.T, id float64) (parts []map[string]any, final map[string]any) {
	t.Helper()
	for {
		m := a.recv()
		if m["id"] != id {
			t.Fatalf("message for id %v while waiting for %v: %v", m["id"], id, m)
		}
		if m["more"] == true {
			parts = append(parts, m)
			continue
		}
		return parts, m
	}
}

// rowsOf joins a streamed statement's rows: its parts', then the final's.
func rowsOf(parts []map[string]any, stmt float64, final []any) []any {
	var rows []any
	for _, p := range parts {
		if p["statement"] == stmt {
			rows = append(rows, p["rows"].([]any)...)
		}
	}
	return append(rows, final...)
}

func TestStreamedResults(t *testing.T) {
	pg := pgtest.Start(t)
	cfg := agentConfig(pg)
	cfg.MaxResultBytes = 100 << 10 // far below the streamed result
	a, _ := agentFor(t, cfg)

	// 10,000 rows of about 100 bytes: 1 MB, ten times the unstreamed limit.
	const sql = "SELECT i, repeat(md5(i::text), 3) AS x FROM generate_series(1, 10000) AS i"
	r := a.call(map[string]any{"id": 1, "op": "query", "sql": sql})
	if r["ok"] != false || !strings.Contains(fmt.Sprint(r["error"]), "larger than") {
		t.Fatalf("unstreamed 1 MB result under a 100 KB limit: %v", r)
	}

	a.send(`{"id":2,"op":"query","stream":true,"chunk_bytes":65536,"sql":"` + sql + `"}`)
	parts, final := a.streamed(t, 2)
	mustOK(t, final)
	if len(parts) < 10 {
		t.Errorf("got %d parts, want at least 10 for 1 MB in 64 KB chunks", len(parts))
	}
	for i, p := range parts {
		b, _ := json.Marshal(p)
		// A part holds a chunk plus at most one row and the JSON around it.
		if len(b) > 2*65536 {
			t.Errorf("part %d is %d bytes", i, len(b))
		}
		if (i == 0) != (p["columns"] != nil) {
			t.Errorf("part %d columns = %v: want them in the first part only", i, p["columns"])
		}
	}
	if got := jsonOf(t, parts[0]["columns"]); got != `[{"name":"i","type":"int4","type_oid":23},{"name":"x","type":"text","type_oid":25}]` {
		t.Errorf("columns of the first part = %s", got)
	}
	rows := rowsOf(parts, 0, final["rows"].([]any))
	if len(rows) != 10000 || final["command"] != "SELECT 10000" {
		t.Fatalf("got %d rows, command %v", len(rows), final["command"])
	}
	for i, row := range rows {
		cells := row.([]any)
		if cells[0] != fmt.Sprint(i+1) || len(cells[1].(string)) != 96 {
			t.Fatalf("row %d = %v", i, cells)
		}
	}

	// The caller's cap: an error after the parts, and the session goes on.
	a.send(`{"id":3,"op":"query","stream":true,"chunk_bytes":4096,"max_bytes":50000,"sql":"` + sql + `"}`)
	_, final = a.streamed(t, 3)
	if final["ok"] != false || !strings.Contains(fmt.Sprint(final["error"]), "larger than 50000") {
		t.Fatalf("capped stream: %v", final)
	}
	if got := mustOK(t, a.call(map[string]any{"id": 4, "op": "query", "sql": "SELECT 2 AS two"})); jsonOf(t, got["rows"]) != `[["2"]]` {
		t.Errorf("after the capped stream: %v", got)
	}

	// exec: rows of several statements, each tagged with its index.
	a.send(`{"id":5,"op":"exec","stream":true,"chunk_bytes":4096,"sql":"SELECT g FROM generate_series(1, 3000) g; CREATE TEMP TABLE t5 (a int); SELECT 'x' || g FROM generate_series(1, 2000) g"}`)
	parts, final = a.streamed(t, 5)
	mustOK(t, final)
	res := final["results"].([]any)
	if len(res) != 3 {
		t.Fatalf("exec results: %v", res)
	}
	for stmt, want := range []int{3000, 0, 2000} {
		got := rowsOf(parts, float64(stmt), res[stmt].(map[string]any)["rows"].([]any))
		if len(got) != want {
			t.Errorf("statement %d: %d rows, want %d", stmt, len(got), want)
		}
		if want > 0 && got[want-1].([]any)[0] != strings.Repeat("x", stmt/2)+fmt.Sprint(want) {
			t.Errorf("statement %d: last row %v", stmt, got[want-1])
		}
	}

	// Bad stream options: a clear error for the request's own id.
	r = a.call(map[string]any{"id": 6, "op": "query", "stream": true, "chunk_bytes": 10, "sql": "SELECT 1"})
	if r["ok"] != false || !strings.Contains(fmt.Sprint(r["error"]), "chunk_bytes") {
		t.Errorf("chunk_bytes 10: %v", r)
	}
}

func TestRequestInPieces(t *testing.T) {
	pg := pgtest.Start(t)
	a, _ := agentFor(t, agentConfig(pg))

	// A script of 3 MB (over the 1 MiB line limit) in pieces of 512 KB,
	// cut in the middle of statements.
	var script strings.Builder
	script.WriteString("CREATE TEMP TABLE p (s text);")
	for script.Len() < 3<<20 {
		fmt.Fprintf(&script, "INSERT INTO p VALUES ('%s');", strings.Repeat("y", 1000))
	}
	script.WriteString("SELECT count(*), sum(length(s)) FROM p")
	sql := script.String()
	n := strings.Count(sql, "INSERT")
	const piece = 512 << 10
	for off := 0; off < len(sql); off += piece {
		end := min(off+piece, len(sql))
		req := map[string]any{"id": 1, "sql": sql[off:end], "more": end < len(sql)}
		if off == 0 {
			req["op"] = "exec"
		}
		b, _ := json.Marshal(req)
		a.send(string(b))
	}
	r := mustOK(t, a.recv())
	if r["id"] != float64(1) {
		t.Fatalf("answer %v", r)
	}
	res := r["results"].([]any)
	last := res[len(res)-1].(map[string]any)
	if got, want := jsonOf(t, last["rows"]), fmt.Sprintf(`[["%d","%d"]]`, n, n*1000); got != want {
		t.Errorf("count, sum = %s, want %s", got, want)
	}

	// A new request while one is in pieces: the unfinished one is answered
	// with an error naming it, then the new one runs.
	a.send(`{"id":2,"op":"query","sql":"SELECT ","more":true}`)
	a.send(`{"id":3,"op":"query","sql":"SELECT 3 AS x"}`)
	if r := a.recv(); r["id"] != float64(2) || r["ok"] != false || !strings.Contains(fmt.Sprint(r["error"]), "not finished") {
		t.Errorf("unfinished request: %v", r)
	}
	if r := mustOK(t, a.recv()); r["id"] != float64(3) || jsonOf(t, r["rows"]) != `[["3"]]` {
		t.Errorf("request after the unfinished one: %v", r)
	}

	// A piece over the line limit: id 0 (the host fails its oldest
	// request, this one), the rest of its pieces are dropped, and the next
	// request works.
	a.send(`{"id":4,"op":"exec","sql":"SELECT 1;","more":true}`)
	a.send(`{"id":4,"sql":"` + strings.Repeat("z", maxLine+10) + `","more":true}`)
	a.send(`{"id":4,"sql":"SELECT 2;","more":true}`)
	if r := a.recv(); r["id"] != float64(0) || r["ok"] != false || !strings.Contains(fmt.Sprint(r["error"]), "longer than") {
		t.Errorf("oversized piece: %v", r)
	}
	if r := mustOK(t, a.call(map[string]any{"id": 5, "op": "query", "sql": "SELECT 5 AS x"})); r["id"] != float64(5) || jsonOf(t, r["rows"]) != `[["5"]]` {
		t.Errorf("request after the refused piece: %v", r)
	}
}
