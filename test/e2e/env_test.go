// Package e2e runs the scenarios of issue #5 against the real product: the
// `pgwasm serve` binary (relay + tunnel), the real VM image restored from its
// snapshot in headless Node (v86, harness/vm.mjs, through internal/vm) with
// its network going through that relay, the host's psql 15 and a PostgreSQL
// 15 server started by the tests. Everything stays on 127.0.0.0/8.
//
// `make test-e2e` runs it with PGWASM_IMAGE (image directory with
// state-128.bin.zst) and PGWASM_BIN (the pgwasm binary); without them the
// tests skip. docs/scenarios.md says what each test proves.
package e2e

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	pgserver "github.com/pgwasm/pgwasm/internal/server"
	"github.com/pgwasm/pgwasm/internal/testkit"
	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
	"github.com/pgwasm/pgwasm/internal/testkit/servetest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// HostAlias is the VM-side address of the relay host's loopback.
const HostAlias = "10.0.2.3"

func paths(t *testing.T) (image, bin string) {
	t.Helper()
	image, bin = os.Getenv("PGWASM_IMAGE"), os.Getenv("PGWASM_BIN")
	if image == "" || bin == "" {
		t.Skip("PGWASM_IMAGE and PGWASM_BIN are not set: `make test-e2e` runs these scenarios against the built image and binary")
	}
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skipf("no host psql: %v", err)
	}
	return image, bin
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func randomHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func randUint(t *testing.T) uint32 {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// server is a running `pgwasm serve` process; restart keeps its ports.
type server struct {
	t       *testing.T
	bin     string
	args    []string
	httpURL string
	logPath string

	mu   sync.Mutex
	proc *servetest.Proc
	log  *os.File
}

// startServer runs `pgwasm serve` on free loopback ports with the host alias
// and egress to the given loopback ports.
func startServer(t *testing.T, egressPorts ...int) *server {
	t.Helper()
	image, bin := paths(t)
	ports := testkit.FreePorts(t, "127.0.0.1", 2)
	first, last := testkit.FreeRange(t, "127.0.0.1", 8)
	s := &server{t: t, bin: bin, httpURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		logPath: filepath.Join(t.TempDir(), "serve.log")}
	s.args = []string{
		"--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]),
		"--image", image,
		"--tunnel-ports", fmt.Sprintf("%d-%d", first, last),
		"--tunnel-bind", "127.0.0.1",
		"--tunnel-host", "127.0.0.1",
		"--tunnel-sni-listen", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"--host-alias", HostAlias,
		// The VMs resolve no names in these tests: keep even a stray
		// query on loopback.
		"--dns", "127.0.0.1:1",
		"--grace", "60s",
		"--shutdown-timeout", "3s",
	}
	for _, p := range egressPorts {
		s.args = append(s.args, "--allow-egress", fmt.Sprintf("127.0.0.1:%d", p))
	}
	s.start()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			b, _ := os.ReadFile(s.logPath)
			t.Logf("pgwasm serve log (tail):\n%s", tail(string(b), 40))
		}
	})
	return s
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (s *server) start() {
	s.t.Helper()
	f, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	p, err := servetest.Start(context.Background(), servetest.Options{Bin: s.bin, Args: s.args, Env: []string{"PGWASM_DEBUG=1"}, Output: f})
	if err != nil {
		f.Close()
		b, _ := os.ReadFile(s.logPath)
		s.t.Fatalf("%v\n%s", err, tail(string(b), 30))
	}
	s.mu.Lock()
	s.proc, s.log = p, f
	s.mu.Unlock()
}

// stop ends the process with SIGTERM (SIGKILL after 10 s).
func (s *server) stop() {
	s.mu.Lock()
	p, f := s.proc, s.log
	s.proc, s.log = nil, nil
	s.mu.Unlock()
	if p == nil {
		return
	}
	p.Stop()
	f.Close()
}

func (s *server) logText() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

func (s *server) createSession(t *testing.T) *pgserver.SessionInfo {
	t.Helper()
	se, err := servetest.CreateSession(context.Background(), s.httpURL)
	if err != nil {
		t.Fatal(err)
	}
	if se.Tunnel == nil || se.Tunnel.Port == nil || se.Tunnel.SNI == nil {
		t.Fatalf("POST /api/sessions: no port or SNI tunnel in %+v", se)
	}
	return se
}

// sessionStatus returns the HTTP status of GET /api/sessions/{id}.
func (s *server) sessionStatus(t *testing.T, se *pgserver.SessionInfo) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.httpURL+"/api/sessions/"+se.ID, nil)
	req.Header.Set("Authorization", "Bearer "+se.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET session: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// guest is a running VM with its network up and a password set.
type guest struct {
	*vm.VM
	password string
	network  json.RawMessage
}

// vmLogger writes the VM's logs to a file, shown when the test fails.
func vmLogger(t *testing.T) *slog.Logger {
	path := filepath.Join(t.TempDir(), "vm.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(path)
			t.Logf("VM log (tail):\n%s", tail(string(b), 40))
		}
	})
	return slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// bootVM restores the image's snapshot (or state) with its NIC on relayURL
// (none when empty).
func bootVM(ctx context.Context, t *testing.T, relayURL, state string) *guest {
	t.Helper()
	image, _ := paths(t)
	t0 := time.Now()
	v, err := vm.Start(ctx, vm.Options{ImageDir: image, Memory: 128, StatePath: state, RelayURL: relayURL,
		ReadyTimeout: 3 * time.Minute, Logger: vmLogger(t)})
	if err != nil {
		t.Fatalf("vm.Start: %v", err)
	}
	t.Cleanup(func() { v.Close() })
	t.Logf("VM restored in %s", time.Since(t0).Round(time.Millisecond))
	return &guest{VM: v}
}

// startVMNoNet restores the image's snapshot without a network.
func startVMNoNet(ctx context.Context, t *testing.T) *guest { return bootVM(ctx, t, "", "") }

// startVMState restores a saved state without a network.
func startVMState(ctx context.Context, t *testing.T, state string) *guest {
	return bootVM(ctx, t, "", state)
}

// startVM restores the image's snapshot (or state) with its NIC on relayURL,
// brings the network up (DHCP) and sets a random postgres password.
func startVM(ctx context.Context, t *testing.T, relayURL, state string) *guest {
	t.Helper()
	g := bootVM(ctx, t, relayURL, state)
	g.password = randomHex(t, 12)
	up := time.Now()
	if err := g.netUp(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.Request(ctx, map[string]any{"op": "set_password", "user": "postgres", "password": g.password}); err != nil {
		t.Fatalf("set_password: %v", err)
	}
	t.Logf("network up in %s: %s", time.Since(up).Round(time.Millisecond), g.network)
	return g
}

func (g *guest) netUp(ctx context.Context) error {
	raw, err := g.Request(ctx, map[string]any{"op": "net_up"})
	if err != nil {
		return fmt.Errorf("net_up: %w", err)
	}
	var r struct {
		Network json.RawMessage `json:"network"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("net_up answer: %w", err)
	}
	if !bytes.Contains(r.Network, []byte(`"up":true`)) || !bytes.Contains(r.Network, []byte("10.0.2.15")) {
		return fmt.Errorf("net_up: network %s, want up with 10.0.2.15", r.Network)
	}
	g.network = r.Network
	return nil
}

// value runs a one-row, one-column query in the VM.
func (g *guest) value(ctx context.Context, t *testing.T, sql string, params ...any) string {
	t.Helper()
	res, err := g.Query(ctx, sql, params...)
	if err != nil {
		t.Fatalf("VM %q: %v", sql, err)
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 1 || res.Rows[0][0] == nil {
		t.Fatalf("VM %q: want one non-null value, got %d rows", sql, len(res.Rows))
	}
	return *res.Rows[0][0]
}

func (g *guest) exec(ctx context.Context, t *testing.T, sql string) {
	t.Helper()
	if _, err := g.Exec(ctx, sql); err != nil {
		t.Fatalf("VM exec %q: %v", short(sql), err)
	}
}

func short(s string) string {
	if len(s) > 200 {
		return s[:200] + "…"
	}
	return s
}

// portConn is a libpq connection string to the VM through the port tunnel.
func (g *guest) portConn(se *pgserver.SessionInfo, extra string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=require connect_timeout=30 %s",
		se.Tunnel.Port.Port, g.password, extra)
}

// sniConn goes through the SNI tunnel: libpq sends SNI for the host name and
// connects to hostaddr, so nothing is resolved.
func (g *guest) sniConn(se *pgserver.SessionInfo, extra string) string {
	return fmt.Sprintf("host=%s hostaddr=127.0.0.1 port=%d user=postgres password=%s dbname=postgres sslmode=require connect_timeout=30 %s",
		se.Tunnel.SNI.Host, se.Tunnel.SNI.Port, g.password, extra)
}

// psql runs the host's psql and returns its unaligned, tuples-only output.
func psql(ctx context.Context, conninfo string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "psql", append([]string{"-XAtq", "-v", "ON_ERROR_STOP=1", "-d", conninfo}, args...)...)
	cmd.Env = append(os.Environ(), "PGAPPNAME=e2e", "PAGER=cat")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("psql %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

func mustPsql(ctx context.Context, t *testing.T, conninfo string, args ...string) string {
	t.Helper()
	out, err := psql(ctx, conninfo, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// hostPG is a PostgreSQL 15 server on the host, on loopback.
type hostPG struct {
	*pgtest.Server
}

// startHostPG starts the host's PostgreSQL with wal_level=logical.
func startHostPG(ctx context.Context, t *testing.T) *hostPG {
	t.Helper()
	paths(t) // skip before starting anything
	s := pgtest.Start(t)
	h := &hostPG{s}
	mustPsql(ctx, t, h.conn("postgres"), "-c", "alter system set wal_level = logical")
	s.Run(t, "pg_ctl", "-D", s.Data, "-l", s.LogFile, "-w", "-t", "60", "restart")
	if got := mustPsql(ctx, t, h.conn("postgres"), "-c", "show wal_level"); got != "logical" {
		t.Fatalf("host wal_level = %q, want logical", got)
	}
	return h
}

func (h *hostPG) conn(db string) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres password=%s dbname=%s sslmode=disable connect_timeout=10", h.Port, h.Password, db)
}

// md5Rows is md5 of the rows joined as the checksum queries do.
func md5Rows(rows []string) string {
	sum := md5.Sum([]byte(strings.Join(rows, ",")))
	return hex.EncodeToString(sum[:])
}

// poll calls f until it returns nil or the timeout passes; it returns the
// last error.
func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", timeout, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

var errNotYet = errors.New("not yet")
