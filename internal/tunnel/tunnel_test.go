package tunnel

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgwasm/pgwasm/internal/testkit"
	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

// loopSession stands in for a relay session: DialGuest reaches "the VM's
// PostgreSQL" at a loopback address instead of through a netstack. The
// end-to-end test in test/relay runs the real relay.
type loopSession struct {
	id    string
	addr  string
	done  chan struct{}
	once  sync.Once
	dials chan struct{}
}

func newLoopSession(id, addr string) *loopSession {
	return &loopSession{id: id, addr: addr, done: make(chan struct{}), dials: make(chan struct{}, 100)}
}

func (s *loopSession) ID() string            { return s.id }
func (s *loopSession) Done() <-chan struct{} { return s.done }
func (s *loopSession) end()                  { s.once.Do(func() { close(s.done) }) }
func (s *loopSession) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	if port != 5432 {
		return nil, fmt.Errorf("dial to port %d, want 5432", port)
	}
	select {
	case s.dials <- struct{}{}:
	default:
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", s.addr)
}

type sessions struct {
	mu sync.Mutex
	m  map[string]Session
}

func (r *sessions) add(s Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m == nil {
		r.m = map[string]Session{}
	}
	r.m[s.ID()] = s
}

func (r *sessions) lookup(id string) (Session, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, ok := r.m[id]
	return s, ok
}

type fixture struct {
	tun  *Tunnel
	reg  *prometheus.Registry
	reg2 *sessions
	sni  string // SNI listener address
}

func newFixture(t testing.TB, mutate func(*Config)) *fixture {
	t.Helper()
	cfg := DefaultConfig()
	cfg.PortBind = netip.MustParseAddr("127.0.0.1")
	first, last := testkit.FreeRange(t, "127.0.0.1", 4)
	cfg.PortFirst, cfg.PortLast = uint16(first), uint16(last)
	if mutate != nil {
		mutate(&cfg)
	}
	f := &fixture{reg: prometheus.NewRegistry(), reg2: &sessions{}}
	tun, err := New(cfg, f.reg2.lookup, slog.New(slog.DiscardHandler), f.reg)
	if err != nil {
		t.Fatal(err)
	}
	f.tun = tun
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.sni = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- tun.ServeSNI(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("ServeSNI: %v", err)
		}
		tun.Close()
	})
	return f
}

func psql(t *testing.T, conninfo, password, query string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "psql", conninfo+" user=postgres dbname=postgres connect_timeout=10", "-XAtq", "-c", query)
	cmd.Env = append(cmd.Environ(), "PGPASSWORD="+password, "PGSSLCERT=/nonexistent", "PGSSLKEY=/nonexistent", "PGGSSENCMODE=disable")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return strings.TrimSpace(out.String()), errb.String(), err
}

// sslQuery proves TLS ran end to end with the server, not with the tunnel.
const sslQuery = "select 40+2, ssl from pg_stat_ssl where pid = pg_backend_pid()"

func TestPsqlThroughTunnel(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("no psql")
	}
	pg := pgtest.Start(t)
	f := newFixture(t, nil)
	s := newLoopSession("s1abc", pg.Addr)
	f.reg2.add(s)
	port, err := f.tun.Attach(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	_, sniPort, _ := net.SplitHostPort(f.sni)

	tests := []struct {
		name     string
		conninfo string
		wantOut  string
		wantErr  string
	}{
		{"port mode", fmt.Sprintf("host=127.0.0.1 port=%d sslmode=require", port), "42|t", ""},
		{"port mode without tls", fmt.Sprintf("host=127.0.0.1 port=%d sslmode=disable", port), "42|f", ""},
		{"sni classic", fmt.Sprintf("host=s1abc.pg.localhost hostaddr=127.0.0.1 port=%s sslmode=require", sniPort), "42|t", ""},
		{"sni upper case", fmt.Sprintf("host=S1ABC.PG.localhost hostaddr=127.0.0.1 port=%s sslmode=require", sniPort), "42|t", ""},
		{"sni unknown session", fmt.Sprintf("host=nosuch.pg.localhost hostaddr=127.0.0.1 port=%s sslmode=require", sniPort), "", `no such session "nosuch"`},
		{"sni foreign name", fmt.Sprintf("host=db.example.org hostaddr=127.0.0.1 port=%s sslmode=require", sniPort), "", "is not <session>.pg.localhost"},
		{"sni without tls", fmt.Sprintf("host=127.0.0.1 port=%s sslmode=disable", sniPort), "", "routes connections by TLS server name"},
		{"sni without name", fmt.Sprintf("host=127.0.0.1 port=%s sslmode=require", sniPort), "", `the TLS server name "" is not`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, stderr, err := psql(t, tt.conninfo, pg.Password, sslQuery)
			if tt.wantErr == "" {
				if err != nil || out != tt.wantOut {
					t.Fatalf("psql = %q, %v (%s), want %q", out, err, stderr, tt.wantOut)
				}
				return
			}
			if err == nil || !strings.Contains(stderr, tt.wantErr) {
				t.Fatalf("psql = %q, %v, stderr %q, want error %q", out, err, stderr, tt.wantErr)
			}
		})
	}
	if got := testutil.ToFloat64(f.tun.m.conns.WithLabelValues("sni", "unknown_session")); got != 1 {
		t.Errorf("unknown_session counter = %v, want 1", got)
	}
	if got := testutil.ToFloat64(f.tun.m.conns.WithLabelValues("sni", "ok")); got != 2 {
		t.Errorf("sni ok counter = %v, want 2", got)
	}
	if got := testutil.ToFloat64(f.tun.m.bytes.WithLabelValues("out")); got == 0 {
		t.Error("no bytes counted")
	}
}

func TestDirectTLS(t *testing.T) {
	pg := pgtest.Start(t)
	f := newFixture(t, nil)
	s := newLoopSession("d1", pgtest.Direct17(t, pg.Addr))
	f.reg2.add(s)
	host, port, _ := net.SplitHostPort(f.sni)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	for _, tt := range []struct {
		name, sni, wantErr string
	}{
		{"routed", "d1.pg.localhost", ""},
		{"unknown session", "zz9.pg.localhost", `no such session "zz9"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url := fmt.Sprintf("postgres://postgres:%s@%s:%s/postgres?sslmode=require&sslnegotiation=direct", pg.Password, host, port)
			cfg, err := pgx.ParseConfig(url)
			if err != nil {
				t.Fatal(err)
			}
			cfg.TLSConfig.ServerName = tt.sni
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("connect error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("connect: %v\n%s", err, pg.Log())
			}
			defer conn.Close(ctx)
			var n int
			var ssl bool
			if err := conn.QueryRow(ctx, sslQuery).Scan(&n, &ssl); err != nil || n != 42 || !ssl {
				t.Fatalf("query = %d %v, %v; want 42 true", n, ssl, err)
			}
		})
	}
}

// fakeGuest plays the VM's PostgreSQL for routing tests: it accepts the
// tunnel's SSLRequest, then finishes TLS and writes its name.
func fakeGuest(t testing.TB, name string, cert tls.Certificate) func(ctx context.Context, port uint16) (net.Conn, error) {
	return func(ctx context.Context, port uint16) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			var req [8]byte
			if _, err := io.ReadFull(b, req[:]); err != nil || !bytes.Equal(req[:], sslRequest()) {
				return
			}
			b.Write([]byte{'S'})
			tc := tls.Server(b, &tls.Config{Certificates: []tls.Certificate{cert}})
			tc.Write([]byte(name))
			tc.Close()
		}()
		return a, nil
	}
}

type funcSession struct {
	id   string
	dial func(ctx context.Context, port uint16) (net.Conn, error)
	done chan struct{}
}

func (s *funcSession) ID() string            { return s.id }
func (s *funcSession) Done() <-chan struct{} { return s.done }
func (s *funcSession) DialGuest(ctx context.Context, port uint16) (net.Conn, error) {
	return s.dial(ctx, port)
}

// sniClient does the classic start and returns what the guest wrote.
func sniClient(t testing.TB, addr, serverName string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write(sslRequest())
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || b[0] != 'S' {
		return "", fmt.Errorf("SSLRequest answer %q, %v", b[0], err)
	}
	tc := tls.Client(c, &tls.Config{ServerName: serverName, InsecureSkipVerify: true})
	got, err := io.ReadAll(tc)
	return string(got), err
}

func TestSNIRoutesEachSessionToItsVM(t *testing.T) {
	cert, err := selfSignedCert("guest")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, nil)
	for _, id := range []string{"alpha1", "beta2", "gamma3"} {
		f.reg2.add(&funcSession{id: id, dial: fakeGuest(t, "vm-"+id, cert), done: make(chan struct{})})
	}
	var wg sync.WaitGroup
	for i := range 30 {
		id := []string{"alpha1", "beta2", "gamma3"}[i%3]
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := sniClient(t, f.sni, id+".pg.localhost")
			if err != nil || got != "vm-"+id {
				t.Errorf("sni %s reached %q, %v", id, got, err)
			}
		}()
	}
	wg.Wait()
}

func TestPortLifecycle(t *testing.T) {
	guest, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer guest.Close()
	go func() {
		for {
			c, err := guest.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }() // echo
		}
	}()
	f := newFixture(t, func(c *Config) { c.PortLast = c.PortFirst + 1 })
	s1 := newLoopSession("a", guest.Addr().String())
	s2 := newLoopSession("b", guest.Addr().String())
	s3 := newLoopSession("c", guest.Addr().String())
	p1, err := f.tun.Attach(context.Background(), s1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.tun.Attach(context.Background(), s2); err != nil {
		t.Fatal(err)
	}
	if _, err := f.tun.Attach(context.Background(), s3); !errors.Is(err, ErrNoFreePort) {
		t.Fatalf("third Attach = %v, want ErrNoFreePort", err)
	}

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", p1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}

	// Ending the session closes its listener, its open connection and
	// frees the port for the next session.
	s1.end()
	if _, err := io.ReadAll(c); err != nil {
		t.Fatalf("open connection did not end cleanly: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		p3, err := f.tun.Attach(context.Background(), s3)
		if err == nil {
			if p3 != p1 {
				t.Fatalf("reused port %d, want %d", p3, p1)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("port not released: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := testutil.ToFloat64(f.tun.m.portsUsed); got != 2 {
		t.Errorf("ports_in_use = %v, want 2", got)
	}
}

func TestSNIRefusesBadStarts(t *testing.T) {
	f := newFixture(t, func(c *Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.MaxHelloSize = 1024
	})
	big := goHello(t, &tls.Config{ServerName: strings.Repeat("a", 60) + ".pg.localhost", NextProtos: []string{strings.Repeat("p", 200), strings.Repeat("q", 200), strings.Repeat("r", 200)}})
	tests := []struct {
		name   string
		send   []byte
		result string
	}{
		{"silent client", nil, "bad_handshake"},
		{"http", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "bad_handshake"},
		{"oversized hello", big, "bad_handshake"},
		{"ssl request then silence", sslRequest(), "bad_handshake"},
		{"cancel request", encode(t, &pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}}), "cancel"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := testutil.ToFloat64(f.tun.m.conns.WithLabelValues("sni", tt.result))
			c, err := net.Dial("tcp", f.sni)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write(tt.send)
			start := time.Now()
			io.Copy(io.Discard, c) // the tunnel must hang up by itself
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("hang-up took %v", d)
			}
			deadline := time.Now().Add(5 * time.Second)
			for testutil.ToFloat64(f.tun.m.conns.WithLabelValues("sni", tt.result)) != before+1 {
				if time.Now().After(deadline) {
					t.Fatalf("counter %q not incremented", tt.result)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestSNIHandshakeCap(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.MaxHandshakes = 1 })
	idle, err := net.Dial("tcp", f.sni)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	// Wait until the idle connection holds the only handshake slot.
	deadline := time.Now().Add(5 * time.Second)
	for len(f.tun.handshakes) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection never took a handshake slot")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, err := net.Dial("tcp", f.sni)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("second connection read = %d, %v; want EOF", n, err)
	}
	if got := testutil.ToFloat64(f.tun.m.conns.WithLabelValues("sni", "overload")); got != 1 {
		t.Errorf("overload counter = %v, want 1", got)
	}
	// Once the slot is free, connections are served again.
	idle.Close()
	for len(f.tun.handshakes) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("slot not released")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPortUnreachableVM: a session whose VM cannot be dialled (no websocket,
// PostgreSQL down) answers each kind of client start with the tunnel's own
// error, in TLS when the client asked for TLS. Real psql 15 for the classic
// starts, pgx for a direct TLS start.
func TestPortUnreachableVM(t *testing.T) {
	if _, err := exec.LookPath("psql"); err != nil {
		t.Skip("no psql")
	}
	// A loopback port nobody listens on: the dial is refused at once.
	gone, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	goneAddr := gone.Addr().String()
	gone.Close()
	f := newFixture(t, nil)
	s := newLoopSession("u1", goneAddr)
	f.reg2.add(s)
	port, err := f.tun.Attach(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	const want = "FATAL:  cannot reach PostgreSQL in the browser tab"

	tests := []struct {
		sslmode string
	}{
		{"require"},
		{"prefer"},
		{"allow"},
		{"disable"},
	}
	for _, tt := range tests {
		t.Run("psql sslmode="+tt.sslmode, func(t *testing.T) {
			_, stderr, err := psql(t, fmt.Sprintf("host=127.0.0.1 port=%d sslmode=%s", port, tt.sslmode), "x", "select 1")
			if err == nil || !strings.Contains(stderr, want) {
				t.Fatalf("psql sslmode=%s = %v, stderr %q; want %q", tt.sslmode, err, stderr, want)
			}
		})
	}
	t.Run("pgx direct tls", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:x@127.0.0.1:%d/postgres?sslmode=require&sslnegotiation=direct", port))
		if err == nil || !strings.Contains(err.Error(), "cannot reach PostgreSQL in the browser tab") {
			t.Fatalf("connect error = %v, want the tunnel's error", err)
		}
	})
	if got := testutil.ToFloat64(f.tun.m.conns.WithLabelValues("port", "dial_error")); got < 5 {
		t.Errorf("port dial_error counter = %v, want at least 5", got)
	}
}

func TestAttachPreferring(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.PortLast = c.PortFirst + 2 })
	first := f.tun.cfg.PortFirst
	ctx := context.Background()
	holder := newLoopSession("holder", "127.0.0.1:1")
	if p, err := f.tun.AttachPreferring(ctx, holder, first+1); err != nil || p != first+1 {
		t.Fatalf("AttachPreferring(%d) = %d, %v; want %d", first+1, p, err, first+1)
	}
	tests := []struct {
		name string
		want uint16
		ok   func(uint16) bool
	}{
		{"free port in range", first + 2, func(p uint16) bool { return p == first+2 }},
		{"port taken", first + 1, func(p uint16) bool { return p == first }},
		{"outside the range", 1, func(p uint16) bool { return p == 0 }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newLoopSession(fmt.Sprint("s", i), "127.0.0.1:1")
			p, err := f.tun.AttachPreferring(ctx, s, tt.want)
			if tt.ok(0) {
				if !errors.Is(err, ErrNoFreePort) {
					t.Fatalf("AttachPreferring(%d) = %d, %v; want ErrNoFreePort", tt.want, p, err)
				}
				return
			}
			if err != nil || !tt.ok(p) {
				t.Fatalf("AttachPreferring(%d) = %d, %v", tt.want, p, err)
			}
		})
	}
}
