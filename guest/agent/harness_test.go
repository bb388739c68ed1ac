package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testEnv is a server wired to temp files, a fake runner and a fake clock
// setter: tests must not change the host's clock or network. The real
// settimeofday and DHCP paths are exercised by booting the VM (test/vm).
type testEnv struct {
	dir      string
	clockSet []time.Time
	entropy  [][]byte
	commands [][]string
	runErr   error
	// onRun, when set, replaces the fake command's behaviour.
	onRun func(ctx context.Context, env []string, name string, args ...string) ([]byte, error)
}

func newTestServer(t testing.TB, db database, env *testEnv) *server {
	t.Helper()
	if env.dir == "" {
		env.dir = t.TempDir()
	}
	for _, name := range []string{"drop_caches", "compact_memory", "memory.reclaim"} {
		if err := os.WriteFile(filepath.Join(env.dir, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// 4,900 kB of file cache for prepare_snapshot to reclaim; the file does
	// not change, so it asks once.
	if err := os.WriteFile(filepath.Join(env.dir, "meminfo"), []byte("Cached:  5000 kB\nShmem:  100 kB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(ctx context.Context, e []string, name string, args ...string) ([]byte, error) {
		env.commands = append(env.commands, append([]string{name}, args...))
		if env.onRun != nil {
			return env.onRun(ctx, e, name, args...)
		}
		return nil, env.runErr
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return &server{
		db: db,
		net: newNetwork(netConfig{
			Interface: "eth0",
			Udhcpc:    "/bin/udhcpc",
			Script:    "/usr/lib/pgwasm/udhcpc.script",
			StateFile: filepath.Join(env.dir, "run", "network"),
			Timeout:   30 * time.Second,
		}, run),
		sys: system{
			now: time.Now,
			setClock: func(tm time.Time) error {
				env.clockSet = append(env.clockSet, tm)
				return nil
			},
			sync:       func() {},
			setWinsize: setWinsize,
			addEntropy: func(b []byte) error {
				env.entropy = append(env.entropy, b)
				return nil
			},
			dropCaches:    filepath.Join(env.dir, "drop_caches"),
			compactMemory: filepath.Join(env.dir, "compact_memory"),
			reclaim:       filepath.Join(env.dir, "memory.reclaim"),
			meminfo:       filepath.Join(env.dir, "meminfo"),
		},
		log:     log,
		start:   time.Now(),
		version: "test",
	}
}

// agentConn drives a server's protocol loop over a pair of pipes, as the
// host drives it over the serial line.
type agentConn struct {
	t     *testing.T
	w     *io.PipeWriter
	lines chan []byte
	done  chan error
}

func startAgent(t *testing.T, srv *server) *agentConn {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	a := &agentConn{t: t, w: inW, lines: make(chan []byte, 16), done: make(chan error, 1)}
	go func() {
		err := srv.serve(context.Background(), struct {
			io.Reader
			io.Writer
		}{inR, outW})
		outW.Close()
		a.done <- err
	}()
	go func() {
		r := bufio.NewReader(outR)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				close(a.lines)
				return
			}
			a.lines <- line
		}
	}()
	t.Cleanup(func() {
		inW.Close()
		select {
		case <-a.done:
		case <-time.After(10 * time.Second):
			t.Error("agent loop did not end after its input closed")
		}
	})
	ev := a.recv()
	if ev["event"] != "ready" {
		t.Fatalf("first line = %v, want the ready event", ev)
	}
	return a
}

func (a *agentConn) send(line string) {
	a.t.Helper()
	if _, err := io.WriteString(a.w, line+"\n"); err != nil {
		a.t.Fatalf("cannot write request: %v", err)
	}
}

func (a *agentConn) recv() map[string]any {
	a.t.Helper()
	select {
	case line, ok := <-a.lines:
		if !ok {
			a.t.Fatal("agent closed its output")
		}
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			a.t.Fatalf("agent sent invalid JSON %q: %v", line, err)
		}
		return m
	case <-time.After(60 * time.Second):
		a.t.Fatal("no answer from the agent within 60 s")
	}
	return nil
}

// call sends a request (given as a Go value) and returns the response, which
// must carry the request's id.
func (a *agentConn) call(req map[string]any) map[string]any {
	a.t.Helper()
	b, err := json.Marshal(req)
	if err != nil {
		a.t.Fatal(err)
	}
	a.send(string(b))
	resp := a.recv()
	if want, ok := req["id"]; ok && resp["id"] != float64(want.(int)) {
		a.t.Fatalf("response id = %v, want %v (response %v)", resp["id"], want, resp)
	}
	return resp
}

// mustOK fails the test unless the response says ok.
func mustOK(t *testing.T, resp map[string]any) map[string]any {
	t.Helper()
	if resp["ok"] != true {
		t.Fatalf("response not ok: %v", resp)
	}
	return resp
}

// fakeDB stands in for PostgreSQL where only the protocol is under test.
type fakeDB struct {
	sqls []string
	err  error
	// state, when set, is what State reports.
	state *dbState
}

func (f *fakeDB) Query(_ context.Context, sql string, params []*string) (result, error) {
	f.sqls = append(f.sqls, sql)
	if f.err != nil {
		return result{}, f.err
	}
	row := make([]*string, len(params))
	copy(row, params)
	cols := make([]column, len(params))
	for i := range cols {
		cols[i] = column{Name: "p", Type: "text", TypeOID: 25}
	}
	return result{Columns: cols, Rows: [][]*string{row}, Command: "SELECT 1", RowsAffected: 1}, nil
}

func (f *fakeDB) Exec(_ context.Context, sql string) ([]result, error) {
	f.sqls = append(f.sqls, sql)
	if f.err != nil {
		return nil, f.err
	}
	return []result{{Columns: []column{}, Rows: [][]*string{}, Command: "OK"}}, nil
}

// The fake has no rows to stream: the streamed forms answer as the others.
func (f *fakeDB) QueryStream(ctx context.Context, sql string, params []*string, _ *streamOpts) (result, error) {
	return f.Query(ctx, sql, params)
}

func (f *fakeDB) ExecStream(ctx context.Context, sql string, _ *streamOpts) ([]result, error) {
	return f.Exec(ctx, sql)
}

func (f *fakeDB) State(context.Context) dbState {
	if f.state != nil {
		return *f.state
	}
	if f.err != nil {
		return dbState{Err: f.err.Error()}
	}
	return dbState{Ready: true, Version: "17.0"}
}

var errFake = errors.New("fake failure")
