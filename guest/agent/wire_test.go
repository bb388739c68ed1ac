package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"net"
	"path/filepath"
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

// TestAlive checks the idle-session check that runs before every request
// on a real Unix socket (the server's end played by the test): an idle
// session is alive, messages the server sent while it was idle are read
// (a ParameterStatus is kept, an error is skipped), and a closed one is not.
func TestAlive(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("unix", filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- s
	}()
	conn, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	defer server.Close()
	c := &pgConn{conn: conn, r: bufio.NewReader(conn), params: map[string]string{}, log: discardLog()}
	defer c.Close()

	if !c.alive() {
		t.Fatal("alive() on an idle session = false, want true")
	}
	msg := func(typ byte, body string) []byte {
		b := []byte{typ, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(b[1:], uint32(4+len(body)))
		return append(b, body...)
	}
	sent := append(msg('S', "TimeZone\x00UTC\x00"), msg('E', "SERROR\x00C57014\x00Mcanceled\x00\x00")...)
	if _, err := server.Write(sent); err != nil {
		t.Fatal(err)
	}
	if !c.alive() {
		t.Fatal("alive() with messages pending = false, want true")
	}
	if got := c.params["TimeZone"]; got != "UTC" {
		t.Errorf("ParameterStatus sent while idle: TimeZone = %q, want UTC", got)
	}
	if n := c.r.Buffered(); n != 0 {
		t.Errorf("alive() left %d bytes unread", n)
	}

	server.Close()
	if c.alive() {
		t.Error("alive() after the server closed the session = true, want false")
	}
	if !c.closed {
		t.Error("the session is not marked closed after its end of file")
	}
}
