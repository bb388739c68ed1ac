package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// agentFor starts the protocol loop against the real test server.
func agentFor(t *testing.T, cfg pgConfig) (*agentConn, *testEnv) {
	t.Helper()
	db := newPGClient(cfg, discardLog())
	t.Cleanup(db.Close)
	env := &testEnv{}
	return startAgent(t, newTestServer(t, db, env)), env
}

// jsonOf re-encodes a decoded value (object keys sorted) so tests can
// compare against JSON text.
func jsonOf(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSQL(t *testing.T) {
	pg := pgtest.Start(t)
	a, _ := agentFor(t, agentConfig(pg))

	mustOK(t, a.call(map[string]any{"id": 1, "op": "exec", "sql": "CREATE TYPE mood AS ENUM ('sad', 'happy'); CREATE TABLE u (a int PRIMARY KEY)"}))

	tests := []struct {
		name string
		req  map[string]any
		// want lists response fields and their JSON encoding.
		want map[string]string
	}{
		{
			name: "query without params, types and nulls",
			req:  map[string]any{"op": "query", "sql": "SELECT 1::int4 AS a, 'x'::text AS b, NULL::numeric AS c, 1.5::numeric AS d, true AS e"},
			want: map[string]string{
				"ok":            `true`,
				"columns":       `[{"name":"a","type":"int4","type_oid":23},{"name":"b","type":"text","type_oid":25},{"name":"c","type":"numeric","type_oid":1700},{"name":"d","type":"numeric","type_oid":1700},{"name":"e","type":"bool","type_oid":16}]`,
				"rows":          `[["1","x",null,"1.5","t"]]`,
				"command":       `"SELECT 1"`,
				"rows_affected": `1`,
			},
		},
		{
			name: "query with text and null params",
			req:  map[string]any{"op": "query", "sql": "SELECT $1::int8 + 1 AS n, $2::text IS NULL AS isnull", "params": []any{"41", nil}},
			want: map[string]string{
				"columns": `[{"name":"n","type":"int8","type_oid":20},{"name":"isnull","type":"bool","type_oid":16}]`,
				"rows":    `[["42","t"]]`,
			},
		},
		{
			name: "type name looked up in pg_type",
			req:  map[string]any{"op": "query", "sql": "SELECT 'happy'::mood AS m, ARRAY['sad'::mood] AS ms"},
			want: map[string]string{
				"columns": `[{"name":"m","type":"mood","type_oid":` + oidOf(t, a, "mood") + `},{"name":"ms","type":"_mood","type_oid":` + oidOf(t, a, "_mood") + `}]`,
				"rows":    `[["happy","{sad}"]]`,
			},
		},
		{
			name: "query without rows",
			req:  map[string]any{"op": "query", "sql": "INSERT INTO u VALUES ($1)", "params": []any{"1"}},
			want: map[string]string{"columns": `[]`, "rows": `[]`, "command": `"INSERT 0 1"`, "rows_affected": `1`},
		},
		{
			name: "exec runs several statements",
			req:  map[string]any{"op": "exec", "sql": "CREATE TABLE t (a int); INSERT INTO t VALUES (1), (2); SELECT a FROM t ORDER BY a"},
			want: map[string]string{"results": `[` +
				`{"columns":[],"command":"CREATE TABLE","rows":[],"rows_affected":0},` +
				`{"columns":[],"command":"INSERT 0 2","rows":[],"rows_affected":2},` +
				`{"columns":[{"name":"a","type":"int4","type_oid":23}],"command":"SELECT 2","rows":[["1"],["2"]],"rows_affected":2}]`},
		},
		{
			name: "empty exec",
			req:  map[string]any{"op": "exec", "sql": ""},
			want: map[string]string{"ok": `true`, "results": `[]`},
		},
		{
			name: "empty statements are skipped",
			req:  map[string]any{"op": "exec", "sql": ";SELECT 1 AS x;;"},
			want: map[string]string{"ok": `true`, "results": `[{"columns":[{"name":"x","type":"int4","type_oid":23}],"command":"SELECT 1","rows":[["1"]],"rows_affected":1}]`},
		},
		{
			name: "syntax error",
			req:  map[string]any{"op": "query", "sql": "selec 1"},
			want: map[string]string{"ok": `false`, "sqlstate": `"42601"`, "error": `"syntax error at or near \"selec\""`, "position": `1`},
		},
		{
			name: "error with detail",
			req:  map[string]any{"op": "exec", "sql": "INSERT INTO u VALUES (1)"},
			want: map[string]string{"ok": `false`, "sqlstate": `"23505"`, "detail": `"Key (a)=(1) already exists."`},
		},
		{
			name: "error with hint",
			req:  map[string]any{"op": "query", "sql": "SELECT no_such_function(1)"},
			want: map[string]string{"ok": `false`, "sqlstate": `"42883"`, "hint": `"No function matches the given name and argument types. You might need to add explicit type casts."`},
		},
		{
			name: "exec error after a statement that ran",
			req:  map[string]any{"op": "exec", "sql": "SELECT 1 AS one; SELECT 1/0"},
			want: map[string]string{"ok": `false`, "sqlstate": `"22012"`, "results": `[{"columns":[{"name":"one","type":"int4","type_oid":23}],"command":"SELECT 1","rows":[["1"]],"rows_affected":1}]`},
		},
		{
			name: "query refuses several statements",
			req:  map[string]any{"op": "query", "sql": "SELECT 1; SELECT 2"},
			want: map[string]string{"ok": `false`, "sqlstate": `"42601"`},
		},
		{
			name: "result over the size limit",
			req:  map[string]any{"op": "query", "sql": "SELECT repeat('x', 1000) FROM generate_series(1, 2000)"},
			want: map[string]string{"ok": `false`, "error": `"result is larger than 1048576 bytes; add a LIMIT or fetch it in parts"`},
		},
		{
			name: "COPY FROM STDIN fails instead of hanging (simple protocol)",
			req:  map[string]any{"op": "exec", "sql": "COPY t FROM STDIN; SELECT 1"},
			want: map[string]string{"ok": `false`, "sqlstate": `"57014"`, "error": `"COPY from stdin failed: ` + copyInRefusal + `"`},
		},
		{
			name: "COPY FROM STDIN fails instead of hanging (extended protocol)",
			req:  map[string]any{"op": "query", "sql": "COPY t FROM STDIN"},
			want: map[string]string{"ok": `false`, "sqlstate": `"57014"`},
		},
		{
			name: "COPY TO STDOUT completes",
			req:  map[string]any{"op": "exec", "sql": "COPY t TO STDOUT"},
			want: map[string]string{"ok": `true`, "results": `[{"columns":[],"command":"COPY 2","rows":[],"rows_affected":2}]`},
		},
		{
			name: "connection still usable after the errors",
			req:  map[string]any{"op": "query", "sql": "SELECT count(*) FROM t"},
			want: map[string]string{"ok": `true`, "rows": `[["2"]]`, "columns": `[{"name":"count","type":"int8","type_oid":20}]`},
		},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req["id"] = 100 + i
			resp := a.call(tt.req)
			for k, want := range tt.want {
				if got := jsonOf(t, resp[k]); got != want {
					t.Errorf("%s = %s, want %s\nresponse: %v", k, got, want, resp)
				}
			}
		})
	}
}

// oidOf asks the server, through the agent, for a type's OID.
func oidOf(t *testing.T, a *agentConn, typ string) string {
	t.Helper()
	resp := mustOK(t, a.call(map[string]any{"id": 2, "op": "query", "sql": "SELECT $1::regtype::oid", "params": []any{typ}}))
	return resp["rows"].([]any)[0].([]any)[0].(string)
}

func TestSetPassword(t *testing.T) {
	pg := pgtest.Start(t)
	a, _ := agentFor(t, agentConfig(pg))

	tests := []struct {
		user, password string
	}{
		{"alice", "s3cret pass"},
		{`Weird "Name"; DROP ROLE x`, "quote'in\"password"},
		{"bob", "pässwörd ｆｕｌｌ"}, // SASLprep maps the full-width letters
	}
	for i, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			ident, _ := quoteIdent(tt.user)
			mustOK(t, a.call(map[string]any{"id": 10 + i, "op": "exec", "sql": "CREATE ROLE " + ident + " LOGIN"}))
			mustOK(t, a.call(map[string]any{"id": 20 + i, "op": "set_password", "user": tt.user, "password": tt.password}))

			resp := mustOK(t, a.call(map[string]any{"id": 30 + i, "op": "query", "sql": "SELECT rolpassword FROM pg_authid WHERE rolname = $1", "params": []any{tt.user}}))
			stored := resp["rows"].([]any)[0].([]any)[0].(string)
			if !strings.HasPrefix(stored, "SCRAM-SHA-256$4096:") {
				t.Errorf("stored password = %q, want a SCRAM-SHA-256 verifier", stored)
			}
			if err := loginTCP(pg, tt.user, tt.password); err != nil {
				t.Errorf("login with the new password failed: %v", err)
			}
			var pe *pgconn.PgError
			if err := loginTCP(pg, tt.user, tt.password+"x"); !errors.As(err, &pe) || pe.Code != "28P01" {
				t.Errorf("login with a wrong password: err = %v, want SQLSTATE 28P01", err)
			}
		})
	}

	t.Run("errors", func(t *testing.T) {
		for i, req := range []map[string]any{
			{"op": "set_password", "user": "", "password": "x"},
			{"op": "set_password", "user": "alice", "password": ""},
			{"op": "set_password", "user": "no_such_role", "password": "x"},
		} {
			req["id"] = 40 + i
			if resp := a.call(req); resp["ok"] != false || resp["error"] == "" {
				t.Errorf("%v: response %v, want an error", req, resp)
			}
		}
	})

	log, err := os.ReadFile(pg.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		if strings.Contains(string(log), tt.password) {
			t.Errorf("server log contains the plaintext password %q", tt.password)
		}
	}
}

func loginTCP(pg *pgtest.Server, user, password string) error {
	cfg, err := pgconn.ParseConfig("host=127.0.0.1 dbname=postgres sslmode=disable")
	if err != nil {
		return err
	}
	cfg.Port = uint16(pg.Port)
	cfg.User = user
	cfg.Password = password
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

func TestStatusAndReconnect(t *testing.T) {
	pg := pgtest.Start(t)
	cfg := agentConfig(pg)
	cfg.Wait = 2 * time.Second
	a, _ := agentFor(t, cfg)

	resp := mustOK(t, a.call(map[string]any{"id": 1, "op": "status"}))
	if resp["postgres"] != "ready" || !strings.HasPrefix(resp["server_version"].(string), "15") {
		t.Fatalf("status with the server up = %v, want ready and version 15", resp)
	}
	if ms := resp["time_unix_ms"].(float64); time.Since(time.UnixMilli(int64(ms))).Abs() > time.Minute {
		t.Errorf("time_unix_ms = %v, far from now", ms)
	}
	if got := jsonOf(t, resp["network"]); got != `{"up":false}` {
		t.Errorf("network = %s, want down", got)
	}

	// A server restart must not need anything from the host.
	pg.Run(t, "pg_ctl", "-D", pg.Data, "-m", "fast", "-w", "restart", "-l", pg.LogFile)
	mustOK(t, a.call(map[string]any{"id": 2, "op": "query", "sql": "SELECT 1"}))

	pg.Stop(t)
	resp = mustOK(t, a.call(map[string]any{"id": 3, "op": "status"}))
	if resp["postgres"] != "starting" || resp["postgres_error"] == nil {
		t.Errorf("status with the server down = %v, want starting and an error", resp)
	}
	start := time.Now()
	resp = a.call(map[string]any{"id": 4, "op": "query", "sql": "SELECT 1"})
	if resp["ok"] != false || !strings.Contains(resp["error"].(string), "not accepting connections after 2s") {
		t.Errorf("query with the server down = %v, want a clear error", resp)
	}
	if d := time.Since(start); d < 2*time.Second || d > 10*time.Second {
		t.Errorf("query with the server down took %s, want about the 2 s wait", d)
	}

	pg.Start(t)
	resp = mustOK(t, a.call(map[string]any{"id": 5, "op": "query", "sql": "SELECT 2 AS two"}))
	if got := jsonOf(t, resp["rows"]); got != `[["2"]]` {
		t.Errorf("rows after reconnect = %s", got)
	}
	resp = mustOK(t, a.call(map[string]any{"id": 6, "op": "status"}))
	if resp["postgres"] != "ready" {
		t.Errorf("status after restart = %v", resp)
	}
}

func TestQueryWaitsForStartingServer(t *testing.T) {
	pg := pgtest.Start(t)
	pg.Stop(t)
	cfg := agentConfig(pg)
	cfg.Wait = 30 * time.Second
	a, _ := agentFor(t, cfg)

	started := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		out, err := pg.Command("pg_ctl", "-D", pg.Data, "-l", pg.LogFile, "-w", "start").CombinedOutput()
		if err != nil {
			err = fmt.Errorf("pg_ctl start: %w: %s", err, out)
		}
		started <- err
	}()
	resp := a.call(map[string]any{"id": 1, "op": "query", "sql": "SELECT 1"})
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	mustOK(t, resp)
}

func TestPrepareSnapshot(t *testing.T) {
	pg := pgtest.Start(t)
	db := newPGClient(agentConfig(pg), discardLog())
	t.Cleanup(db.Close)

	tests := []struct {
		name    string
		setup   func(env *testEnv)
		wantOK  bool
		want    snapshotLog
		wantErr string
	}{
		{name: "all steps", wantOK: true, want: snapshotLog{Checkpoint: true, Synced: true, Reclaimed: true, DroppedCaches: true, Compacted: true}},
		{
			name:   "kernel without compaction",
			setup:  func(env *testEnv) { os.Remove(filepath.Join(env.dir, "compact_memory")) },
			wantOK: true,
			want:   snapshotLog{Checkpoint: true, Synced: true, Reclaimed: true, DroppedCaches: true},
		},
		{
			name:  "drop_caches missing",
			setup: func(env *testEnv) { os.Remove(filepath.Join(env.dir, "drop_caches")) },
			want:  snapshotLog{Checkpoint: true, Synced: true, Reclaimed: true, Compacted: true},
		},
		{
			// The root cgroup without the memory controller enabled in
			// its subtree_control, as our kernel boots (docs/vm.md).
			name:    "memory.reclaim missing",
			setup:   func(env *testEnv) { os.Remove(filepath.Join(env.dir, "memory.reclaim")) },
			want:    snapshotLog{Checkpoint: true, Synced: true, DroppedCaches: true, Compacted: true},
			wantErr: "cgroup.subtree_control",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := &testEnv{}
			srv := newTestServer(t, db, env)
			if tt.setup != nil {
				tt.setup(env)
			}
			resp := srv.prepareSnapshot(context.Background(), true)
			if resp.OK != tt.wantOK {
				t.Errorf("ok = %v, want %v (%+v)", resp.OK, tt.wantOK, resp)
			}
			if !strings.Contains(resp.Error, tt.wantErr) {
				t.Errorf("error = %q, want it to name %q", resp.Error, tt.wantErr)
			}
			got := *resp.Snapshot
			got.Notes = nil
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("snapshot = %+v, want %+v", got, tt.want)
			}
			for file, want := range map[string]string{"drop_caches": "3", "compact_memory": "1", "memory.reclaim": "4900K"} {
				if b, err := os.ReadFile(filepath.Join(env.dir, file)); err == nil && string(b) != want {
					t.Errorf("%s = %q, want %q", file, b, want)
				}
			}
		})
	}
}
