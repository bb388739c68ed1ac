package main

import (
	"context"
	"strconv"
	"testing"

	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

func TestRowsAffected(t *testing.T) {
	for tag, want := range map[string]int64{
		"SELECT 2": 2, "INSERT 0 2": 2, "UPDATE 10": 10, "COPY 3": 3,
		"CREATE TABLE": 0, "": 0, "BEGIN": 0, "X1": 0,
	} {
		if got := rowsAffected(tag); got != want {
			t.Errorf("rowsAffected(%q) = %d, want %d", tag, got, want)
		}
	}
}

// TestBuiltinTypes checks the agent's table of built-in type OIDs against
// the pg_type of a real server.
func TestBuiltinTypes(t *testing.T) {
	pg := pgtest.Start(t)
	db := newPGClient(agentConfig(pg), discardLog())
	t.Cleanup(db.Close)
	for oid, name := range builtinTypes {
		res, err := db.Query(context.Background(), "SELECT typname::text FROM pg_type WHERE oid = $1", []*string{ptr(strconv.Itoa(int(oid)))})
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Rows) != 1 || *res.Rows[0][0] != name {
			t.Errorf("type %d: pg_type says %v, table says %s", oid, res.Rows, name)
		}
	}
}

// TestWarmSQL runs prepare_snapshot's warm-up session on a real server: it
// must succeed (a failure would only be a note, and warm nothing) and leave
// nothing behind.
func TestWarmSQL(t *testing.T) {
	pg := pgtest.Start(t)
	db := newPGClient(agentConfig(pg), discardLog())
	t.Cleanup(db.Close)
	env := &testEnv{}
	srv := newTestServer(t, db, env)
	var log snapshotLog
	srv.warmUp(context.Background(), &log)
	if len(log.Notes) > 0 {
		t.Fatalf("warm-up failed: %v", log.Notes)
	}
	res, err := db.Query(context.Background(), "SELECT count(*) FROM pg_class WHERE relname = 'pgwasm_warm'", nil)
	if err != nil || *res.Rows[0][0] != "0" {
		t.Errorf("warm-up left its table behind: %v %v", res.Rows, err)
	}
}
