package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgwasm/pgwasm/internal/testkit"
)

// cutProxy is a TCP proxy in front of the HTTP port that can cut every
// connection through it and refuse new ones for a while: a websocket drop as
// a flaky network causes it.
type cutProxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	cutUntil time.Time
	accepted int
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	testkit.ServeConns(t, ln, func(c net.Conn) {
		p.mu.Lock()
		if time.Now().Before(p.cutUntil) {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.accepted++
		p.mu.Unlock()
		p.forward(c)
	})
	return p
}

func (p *cutProxy) forward(c net.Conn) {
	defer c.Close()
	up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	defer up.Close()
	p.mu.Lock()
	p.conns[c], p.conns[up] = struct{}{}, struct{}{}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, c)
		delete(p.conns, up)
		p.mu.Unlock()
	}()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// cut closes every connection and refuses new ones for d.
func (p *cutProxy) cut(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutUntil = time.Now().Add(d)
	for c := range p.conns {
		c.Close()
	}
}

func (p *cutProxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// viaProxy points a relay URL at the proxy.
func viaProxy(t *testing.T, relayURL string, p *cutProxy) string {
	u, err := url.Parse(relayURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.ln.Addr().String()
	return u.String()
}

func pgxConnect(ctx context.Context, t *testing.T, conninfo string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, conninfo)
	if err != nil {
		t.Fatalf("pgx connect: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

// TestFaultWebsocketDrop: the VM's websocket is cut for 5 s. v86 reconnects
// (every 10 s) to the same session within the grace period; a tunnel
// connection opened before the drop survives it, and a statement sent during
// the drop completes after the reconnect.
func TestFaultWebsocketDrop(t *testing.T) {
	ctx := testCtx(t, 6*time.Minute)
	srv := startServer(t)
	se := srv.createSession(t)
	proxy := startCutProxy(t, strings.TrimPrefix(srv.httpURL, "http://"))
	g := startVM(ctx, t, viaProxy(t, se.RelayURL, proxy), "")

	conn := pgxConnect(ctx, t, g.portConn(se, ""))
	if _, err := conn.Exec(ctx, `create table drops (id int primary key, at text)`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `insert into drops select g, 'before' from generate_series(1, 100) g`); err != nil {
		t.Fatal(err)
	}
	before := proxy.connections()
	t0 := time.Now()
	proxy.cut(5 * time.Second)

	// Sent while the websocket is down: the frames wait in the relay's and
	// v86's queues and TCP retransmits.
	qctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var n int
	if err := conn.QueryRow(qctx, `with i as (insert into drops select g, 'during' from generate_series(101, 200) g returning 1) select count(*) from i`).Scan(&n); err != nil {
		t.Fatalf("statement sent during the drop failed: %v\nserve log:\n%s", err, tail(srv.logText(), 20))
	}
	if n != 100 {
		t.Errorf("insert during the drop: %d rows, want 100", n)
	}
	t.Logf("statement sent during a 5 s drop completed after %s", time.Since(t0).Round(time.Millisecond))
	if after := proxy.connections(); after <= before {
		t.Errorf("websocket connections through the proxy: %d before the cut, %d after; want a reconnect", before, after)
	}
	log := srv.logText()
	if strings.Count(log, "websocket attached") < 2 {
		t.Errorf("serve log shows %d websocket attachments, want >= 2 (the reconnect)", strings.Count(log, "websocket attached"))
	}
	if strings.Contains(log, "session ended") {
		t.Errorf("the session ended during the drop:\n%s", tail(log, 20))
	}
	if code := srv.sessionStatus(t, se); code != http.StatusOK {
		t.Errorf("GET session after the drop: %d, want 200 (same session)", code)
	}
	// The old connection, a new one and the VM itself agree.
	if err := conn.QueryRow(ctx, `select count(*) from drops`).Scan(&n); err != nil || n != 200 {
		t.Errorf("count over the old connection = %d, %v; want 200", n, err)
	}
	if got := mustPsql(ctx, t, g.portConn(se, ""), "-c", `select count(*) from drops where at = 'during'`); got != "100" {
		t.Errorf("new connection: %s rows inserted during the drop, want 100", got)
	}
	if got := g.value(ctx, t, `select count(*) from drops`); got != "200" {
		t.Errorf("VM: %s rows, want 200", got)
	}
}

// TestFaultTunnelClientGone: a psql client disconnects in the middle of a
// long query. The backend in the VM notices (client_connection_check_interval)
// and ends; what the client committed before stays; the next query works.
func TestFaultTunnelClientGone(t *testing.T) {
	ctx := testCtx(t, 6*time.Minute)
	srv := startServer(t)
	se := srv.createSession(t)
	g := startVM(ctx, t, se.RelayURL, "")

	mustPsql(ctx, t, g.portConn(se, ""), "-c", `create table gone (id int primary key)`)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(cctx, "psql", "-XAtq", "-v", "ON_ERROR_STOP=1",
		"-d", g.portConn(se, "application_name=e2e-long options='-c client_connection_check_interval=1000'"),
		"-c", `insert into gone select generate_series(1, 500)`,
		"-c", `select pg_sleep(600)`)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// Wait until the long query runs in the VM.
	if err := poll(ctx, 60*time.Second, func() error {
		if g.value(ctx, t, `select count(*) from pg_stat_activity where application_name = 'e2e-long' and query like 'select pg_sleep%'`) != "1" {
			return errNotYet
		}
		return nil
	}); err != nil {
		t.Fatalf("long query never started: %v", err)
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
	t0 := time.Now()
	if err := poll(ctx, 60*time.Second, func() error {
		if n := g.value(ctx, t, `select count(*) from pg_stat_activity where application_name = 'e2e-long'`); n != "0" {
			return fmt.Errorf("%w: %s backends left", errNotYet, n)
		}
		return nil
	}); err != nil {
		t.Fatalf("the backend of the killed client did not end: %v", err)
	}
	t.Logf("backend of the killed client ended %s after the kill", time.Since(t0).Round(time.Millisecond))
	if got := mustPsql(ctx, t, g.portConn(se, ""), "-c", `select count(*) from gone`); got != "500" {
		t.Errorf("rows committed before the disconnect = %s, want 500", got)
	}
	if got := g.value(ctx, t, `select count(*) from gone`); got != "500" {
		t.Errorf("VM: rows = %s, want 500", got)
	}
}

// childPIDs lists the processes whose parent is this test process and whose
// command line contains substr.
func childPIDs(t *testing.T, substr string) map[int]bool {
	t.Helper()
	out := map[int]bool{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	me := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 2 || f[1] != me {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if strings.Contains(string(cmdline), substr) {
			out[pid] = true
		}
	}
	return out
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestFaultSaveInterrupted: the harness (the page, in the browser) dies in
// the middle of saving a state. The previously saved state file and its
// metadata are untouched, no partial file is left under the state's name,
// and the old state restores with its data.
func TestFaultSaveInterrupted(t *testing.T) {
	ctx := testCtx(t, 6*time.Minute)
	paths(t)
	before := childPIDs(t, "vm.mjs")
	g := startVMNoNet(ctx, t)
	var harness int
	for pid := range childPIDs(t, "vm.mjs") {
		if !before[pid] {
			harness = pid
		}
	}
	if harness == 0 {
		t.Fatal("cannot find the harness process")
	}
	g.exec(ctx, t, `create table saved (id int primary key); insert into saved select generate_series(1, 300)`)
	dir := t.TempDir()
	state := filepath.Join(dir, "mine.bin.zst")
	if _, err := g.SaveState(ctx, state); err != nil {
		t.Fatalf("first save: %v", err)
	}
	sum, metaSum := fileSum(t, state), fileSum(t, state[:len(state)-len(".bin.zst")]+".json")

	g.exec(ctx, t, `insert into saved select generate_series(301, 600)`)
	// Kill the harness as soon as the raw state starts to appear.
	errc := make(chan error, 1)
	go func() { _, err := g.SaveState(ctx, state); errc <- err }()
	killed := false
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline) && !killed; time.Sleep(20 * time.Millisecond) {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".raw") {
				_ = syscall.Kill(harness, syscall.SIGKILL)
				killed = true
			}
		}
	}
	if !killed {
		t.Fatal("the second save never started writing")
	}
	err := <-errc
	if err == nil {
		t.Fatal("SaveState succeeded although the harness was killed")
	}
	t.Logf("interrupted save failed with: %v", err)
	if got := fileSum(t, state); got != sum {
		t.Errorf("state file changed by the interrupted save")
	}
	if got := fileSum(t, state[:len(state)-len(".bin.zst")]+".json"); got != metaSum {
		t.Errorf("state metadata changed by the interrupted save")
	}
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) != 2 {
		t.Errorf("files after the interrupted save: %v, want only the state and its metadata", names)
	}
	g.Close()

	g2 := startVMState(ctx, t, state)
	if got := g2.value(ctx, t, `select count(*) || ' ' || sum(id) from saved`); got != "300 45150" {
		t.Errorf("restored state: saved = %s, want 300 45150 (the rows of the first save)", got)
	}
}

// TestFaultRelayRestart: `pgwasm serve` restarts (same ports, same
// --session-secret) while a VM is connected. The restarted server does not
// know the session until v86 reconnects to the old relay URL (every 10 s);
// then it re-creates the session from the signed token: same id, same SNI
// name, the same tunnel port (named in the relay URL, free again), a fresh
// network where the guest keeps 10.0.2.15. What the test proves: the
// network comes back by itself, nothing committed is lost, and psql works
// again through both tunnel modes with the same connection strings.
func TestFaultRelayRestart(t *testing.T) {
	// The server reads PGWASM_* from its environment; without a fixed secret
	// each start would draw its own and refuse the old tokens.
	t.Setenv("PGWASM_SESSION_SECRET", "e2e-relay-restart-secret-0123456789")
	ctx := testCtx(t, 6*time.Minute)
	srv := startServer(t)
	se := srv.createSession(t)
	g := startVM(ctx, t, se.RelayURL, "")
	mustPsql(ctx, t, g.portConn(se, ""), "-c", `create table kept (id int primary key)`,
		"-c", `insert into kept select generate_series(1, 250)`)

	srv.stop()
	srv.start()
	t0 := time.Now()
	// v86 retries the old relay URL every 10 s; the restarted server
	// restores the session from its token and the websocket attaches.
	var line string
	if err := poll(ctx, 40*time.Second, func() error {
		after := srv.logText()[strings.LastIndex(srv.logText(), "msg=serving"):]
		if !strings.Contains(after, "websocket attached") {
			return fmt.Errorf("%w: no websocket attached after the restart", errNotYet)
		}
		for _, l := range strings.Split(after, "\n") {
			if strings.Contains(l, "session restored") && strings.Contains(l, se.ID) {
				line = l
				return nil
			}
		}
		return fmt.Errorf("%w: no session restored in the serve log", errNotYet)
	}); err != nil {
		t.Fatalf("v86 reconnect to the restarted server: %v", err)
	}
	t.Logf("session restored %s after the restart: %s", time.Since(t0).Round(time.Millisecond), line)
	if code := srv.sessionStatus(t, se); code != http.StatusOK {
		t.Errorf("GET the session after the restore: %d, want 200", code)
	}
	// Same connection strings: the port comes back (the range is free
	// after a restart), the SNI name is the session id.
	var out string
	if err := poll(ctx, 30*time.Second, func() error {
		var err error
		out, err = psql(ctx, g.portConn(se, "connect_timeout=5"), "-c", `insert into kept select generate_series(251, 300)`,
			"-c", `select count(*) || ' ' || sum(id) from kept`)
		if err != nil {
			return fmt.Errorf("%w: %v", errNotYet, err)
		}
		return nil
	}); err != nil {
		t.Fatalf("port tunnel after the restore: %v", err)
	}
	if out != "300 45150" {
		t.Errorf("through the restored session's port tunnel: %s, want 300 45150", out)
	}
	if out := mustPsql(ctx, t, g.sniConn(se, ""), "-c", `select count(*) from kept`); out != "300" {
		t.Errorf("through the restored session's SNI name: %s, want 300", out)
	}
}
