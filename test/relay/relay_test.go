// Package relay_test runs pgwasm's server, relay and tunnel together, end to
// end on loopback, built by internal/stack as `pgwasm serve` builds them:
// simulated VMs attach over the real websocket, take a DHCP lease and serve
// "PostgreSQL" on port 5432 inside their private network by forwarding to a
// real PostgreSQL on the host; real psql and pgx connect through the tunnel
// in port mode and SNI mode.
package relay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgwasm/pgwasm/internal/server"
	"github.com/pgwasm/pgwasm/internal/stack"
	"github.com/pgwasm/pgwasm/internal/testkit"
	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
	"github.com/pgwasm/pgwasm/internal/testkit/servetest"
	"github.com/pgwasm/pgwasm/internal/testkit/simvm"
)

// serveStack is the server `pgwasm serve` runs, built in process.
type serveStack struct {
	url     string // HTTP base URL
	sniAddr string

	portFirst, portLast uint16
	st                  *stack.Stack
	served              chan error
}

// newStack starts relay, tunnel and server as `pgwasm serve` does, on
// loopback ports.
func newStack(tb testing.TB) *serveStack {
	tb.Helper()
	first, last := testkit.FreeRange(tb, "127.0.0.1", 8)
	// Not port 0: a restart binds the same ports again, and a port the
	// kernel handed out can meanwhile go to an outgoing connection.
	ports := testkit.FreePorts(tb, "127.0.0.1", 2)
	s := &serveStack{
		url:       fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
		sniAddr:   fmt.Sprintf("127.0.0.1:%d", ports[1]),
		portFirst: uint16(first), portLast: uint16(last),
	}
	s.start(tb)
	tb.Cleanup(s.stop)
	return s
}

// start builds the stack; after a stop, on the same addresses and ports
// and with the same session secret, as a restarted server.
func (s *serveStack) start(tb testing.TB) {
	tb.Helper()
	cfg := stack.DefaultConfig()
	cfg.Listen, cfg.SNIListen = strings.TrimPrefix(s.url, "http://"), s.sniAddr
	// Nothing in these tests resolves names; keep even a stray query on
	// loopback.
	cfg.Relay.DNSUpstreams = []string{"127.0.0.1:1"}
	cfg.Relay.SessionSecret = []byte("test-relay-session-secret")
	cfg.Tunnel.PortFirst, cfg.Tunnel.PortLast = s.portFirst, s.portLast
	cfg.Server.ImageDir = tb.TempDir()
	st, err := stack.New(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	s.st, s.served = st, make(chan error, 1)
	go func() { s.served <- st.Serve(context.Background()) }()
	a := st.Addrs()
	s.url, s.sniAddr = "http://"+a.HTTP, a.SNI
}

// stop ends relay, tunnel and listeners at once, as a crash would.
func (s *serveStack) stop() {
	if s.st == nil {
		return
	}
	s.st.Close()
	<-s.served
	s.st = nil
}

// vmWithPostgres creates a session, attaches a simulated VM to it and makes
// port 5432 in the VM reach pgAddr on the host.
func (s *serveStack) vmWithPostgres(tb testing.TB, ctx context.Context, pgAddr string) *server.SessionInfo {
	tb.Helper()
	info, _ := s.vmWithPostgresVM(tb, ctx, pgAddr)
	return info
}

// vmWithPostgresVM is vmWithPostgres that also returns the VM.
func (s *serveStack) vmWithPostgresVM(tb testing.TB, ctx context.Context, pgAddr string) (*server.SessionInfo, *simvm.VM) {
	tb.Helper()
	info, err := servetest.CreateSession(ctx, s.url)
	if err != nil {
		tb.Fatal(err)
	}
	vm, err := simvm.Dial(ctx, info.RelayURL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { vm.Close() })
	if _, err := vm.DHCP(ctx); err != nil {
		tb.Fatalf("DHCP: %v", err)
	}
	ln, err := vm.ListenTCP(5432)
	if err != nil {
		tb.Fatal(err)
	}
	// ServeConns closes the forwarded connections at the end: a relay
	// restart ends the relay's side without a RST reaching the simulated VM,
	// so its side would wait for ever.
	testkit.ServeConns(tb, ln, func(c net.Conn) { pgtest.Forward(c, pgAddr) })
	return info, vm
}

func withPassword(url, pw string) string {
	return strings.Replace(url, ":"+server.PasswordPlaceholder+"@", ":"+pw+"@", 1)
}

func psql(t *testing.T, conninfo, query string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", "-XAtq", "-d", conninfo, "-c", query)
	cmd.Env = append(cmd.Environ(), "PGCONNECT_TIMEOUT=20", "PGGSSENCMODE=disable")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return strings.TrimSpace(out.String()), errb.String(), err
}

// whoQuery names the server (by its port) and proves TLS reached it.
const whoQuery = "select current_setting('port'), ssl from pg_stat_ssl where pid = pg_backend_pid()"

func TestEndToEnd(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("no psql")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	pgA, pgB := pgtest.Start(t), pgtest.Start(t)
	s := newStack(t)
	a := s.vmWithPostgres(t, ctx, pgtest.Direct17(t, pgA.Addr))
	b := s.vmWithPostgres(t, ctx, pgtest.Direct17(t, pgB.Addr))
	if a.ID == b.ID || a.Tunnel.Port.Port == b.Tunnel.Port.Port {
		t.Fatalf("sessions share an id or port: %+v %+v", a, b)
	}
	_, sniPort, _ := net.SplitHostPort(s.sniAddr)

	tests := []struct {
		name, conninfo string
		want           string
	}{
		{"A port mode", withPassword(a.Tunnel.Port.URL, pgA.Password), fmt.Sprint(pgA.Port, "|t")},
		{"B port mode", withPassword(b.Tunnel.Port.URL, pgB.Password), fmt.Sprint(pgB.Port, "|t")},
		{"A sni classic (page URL)", withPassword(a.Tunnel.SNI.URL, pgA.Password), fmt.Sprint(pgA.Port, "|t")},
		{"B sni classic (keywords)", fmt.Sprintf("host=%s hostaddr=127.0.0.1 port=%s sslmode=require user=postgres dbname=postgres password=%s", b.Tunnel.SNI.Host, sniPort, pgB.Password), fmt.Sprint(pgB.Port, "|t")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, stderr, err := psql(t, tt.conninfo, whoQuery)
			if err != nil || out != tt.want {
				t.Fatalf("psql = %q, %v, stderr %q; want %q", out, err, stderr, tt.want)
			}
		})
	}

	t.Run("direct tls with pgx", func(t *testing.T) {
		for _, v := range []struct {
			info *server.SessionInfo
			pg   *pgtest.Server
		}{{a, pgA}, {b, pgB}} {
			// pgx ignores hostaddr, and *.pg.localhost must not go to a
			// resolver: dial the loopback address, send the name as SNI.
			cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=require&sslnegotiation=direct", v.pg.Password, s.sniAddr))
			if err != nil {
				t.Fatal(err)
			}
			cfg.TLSConfig.ServerName = v.info.Tunnel.SNI.Host
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			var port string
			var ssl bool
			err = conn.QueryRow(ctx, whoQuery).Scan(&port, &ssl)
			conn.Close(ctx)
			if err != nil || port != fmt.Sprint(v.pg.Port) || !ssl {
				t.Fatalf("query = %s %v, %v; want %d true", port, ssl, err, v.pg.Port)
			}
		}
	})

	t.Run("unknown session", func(t *testing.T) {
		_, stderr, err := psql(t, fmt.Sprintf("host=nosuchsession0000000000.pg.localhost hostaddr=127.0.0.1 port=%s sslmode=require user=postgres", sniPort), "select 1")
		if err == nil || !strings.Contains(stderr, `FATAL:  no such session "nosuchsession0000000000"`) {
			t.Fatalf("psql = %v, stderr %q; want a no such session error", err, stderr)
		}
	})

	t.Run("deleted session", func(t *testing.T) {
		req, _ := http.NewRequest("DELETE", s.url+"/api/sessions/"+a.ID, nil)
		req.Header.Set("Authorization", "Bearer "+a.Token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusNoContent {
			t.Fatalf("DELETE = %v, %v", resp, err)
		}
		resp.Body.Close()
		_, stderr, err := psql(t, withPassword(a.Tunnel.SNI.URL, pgA.Password), "select 1")
		if err == nil || !strings.Contains(stderr, "no such session") {
			t.Fatalf("psql after DELETE = %v, stderr %q", err, stderr)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			_, stderr, err = psql(t, withPassword(a.Tunnel.Port.URL, pgA.Password), "select 1")
			if err != nil && strings.Contains(stderr, "refused") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("tunnel port still answers after DELETE: %v %q", err, stderr)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// B is untouched.
		if out, stderr, err := psql(t, withPassword(b.Tunnel.Port.URL, pgB.Password), whoQuery); err != nil || out != fmt.Sprint(pgB.Port, "|t") {
			t.Fatalf("B after deleting A = %q, %v, %q", out, err, stderr)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get(s.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{
			`pgwasm_tunnel_connections_total{mode="port",result="ok"}`,
			`pgwasm_tunnel_connections_total{mode="sni",result="unknown_session"} 2`,
			`pgwasm_http_requests_total{code="201",route="api"} 2`,
		} {
			if !strings.Contains(string(body), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}

// TestRestartRestoresSession: the server restarts (same secret, same
// ports); the VM reconnects to its old relay URL, as v86 does, and its
// session comes back: same id, same tunnel port, psql works again through
// port and SNI mode.
func TestRestartRestoresSession(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("no psql")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg := pgtest.Start(t)
	s := newStack(t)
	// Two sessions; only the second comes back, so a new server would give
	// it the range's first port if the relay URL did not name its own.
	s.vmWithPostgres(t, ctx, pgtest.Direct17(t, pg.Addr))
	info, vm := s.vmWithPostgresVM(t, ctx, pgtest.Direct17(t, pg.Addr))
	if info.Tunnel.Port.Port == s.portFirst {
		t.Fatalf("second session got the range's first port %d", s.portFirst)
	}
	want := fmt.Sprint(pg.Port, "|t")
	if out, stderr, err := psql(t, withPassword(info.Tunnel.Port.URL, pg.Password), whoQuery); err != nil || out != want {
		t.Fatalf("before the restart: %q, %v, %q", out, err, stderr)
	}

	s.stop()
	u, _ := url.Parse(info.RelayURL)
	s.start(t)
	if err := vm.Reconnect(ctx, info.RelayURL); err != nil {
		t.Fatalf("reconnect %s after the restart: %v", u.Path, err)
	}
	req, _ := http.NewRequest("GET", s.url+"/api/sessions/"+info.ID, nil)
	req.Header.Set("Authorization", "Bearer "+info.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var again *server.SessionInfo
	err = json.NewDecoder(resp.Body).Decode(&again)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || again.Tunnel.Port.Port != info.Tunnel.Port.Port || again.RelayURL != info.RelayURL {
		t.Fatalf("GET the restored session = %d %+v, %v; want port %d, relay URL %s", resp.StatusCode, again, err, info.Tunnel.Port.Port, info.RelayURL)
	}
	for _, conn := range []string{info.Tunnel.Port.URL, info.Tunnel.SNI.URL} {
		if out, stderr, err := psql(t, withPassword(conn, pg.Password), whoQuery); err != nil || out != want {
			t.Errorf("after the restart, %s: %q, %v, %q", conn, out, err, stderr)
		}
	}
}
