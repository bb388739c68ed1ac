package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

// The flood tests use a second loopback address as the attacker's source:
// 127.0.0.0/8 is all loopback on Linux.
var floodSource = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}

// dialFrom connects to addr from src.
func dialFrom(t testing.TB, src *net.TCPAddr, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: src, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial %s from %v: %v", addr, src, err)
	}
	return c
}

// waitClosed waits until every connection reads EOF or a reset.
func waitClosed(t *testing.T, conns []net.Conn, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var wg sync.WaitGroup
	var mu sync.Mutex
	open := 0
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(deadline)
			_, err := io.Copy(io.Discard, c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				mu.Lock()
				open++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if open > 0 {
		t.Fatalf("%d of %d idle connections still open after %v", open, len(conns), within)
	}
}

// TestPortFloodKeepsUserIn is issue #13's attack in port mode: 500 idle
// connections to a session's port from one source, against a VM that takes
// 20 connections (vmSession) in front of a real PostgreSQL. Before the
// limits, each took a slot and the user got "sorry, too many clients
// already". Now the user's real clients (TLS and plaintext) connect,
// authenticate and outlive the deadline, and the tunnel closes the idle
// ones.
func TestPortFloodKeepsUserIn(t *testing.T) {
	pg := pgtest.Start(t)
	// Long enough for a SCRAM login on a loaded test machine (a few ms
	// alone), short enough to watch the deadline act.
	const authTimeout = 5 * time.Second
	f := newFixture(t, func(c *Config) { c.AuthTimeout = authTimeout })
	s := &vmSession{loopSession: newLoopSession("flood1", pg.Addr), slots: make(chan struct{}, 20)}
	f.reg2.add(s)
	port, err := f.tun.Attach(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)

	// Most say nothing; some send a StartupMessage and stall in SCRAM,
	// which holds a backend of the real PostgreSQL too.
	const flood, stallers = 500, 60
	idle := make([]net.Conn, 0, flood)
	for i := range flood {
		c := dialFrom(t, floodSource, addr)
		if i >= flood-stallers {
			c.Write(startupMsg())
		}
		idle = append(idle, c)
	}
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()

	// Let the tunnel take in the whole flood first (what is still queued
	// would only delay the user's connection, not refuse it).
	handled := func() float64 {
		var n float64
		for _, r := range []string{"ok", "idle", "preauth_closed", "source_limit"} {
			n += testutil.ToFloat64(f.tun.m.conns.WithLabelValues("port", r))
		}
		return n
	}
	settle := time.Now().Add(20 * time.Second)
	for handled() < flood-10 {
		if time.Now().After(settle) {
			t.Fatalf("tunnel handled %v of %d flood connections", handled(), flood)
		}
		time.Sleep(10 * time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, sslmode := range []string{"require", "disable"} {
		t.Run("sslmode="+sslmode, func(t *testing.T) {
			conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=%s", pg.Password, addr, sslmode))
			if err != nil {
				t.Fatalf("connect during the flood: %v", err)
			}
			defer conn.Close(ctx)
			// Past the deadline (counted from accept): an authenticated
			// connection stays.
			time.Sleep(authTimeout)
			var n int
			if err := conn.QueryRow(ctx, "select 40+2").Scan(&n); err != nil || n != 42 {
				t.Fatalf("query after the deadline = %d, %v", n, err)
			}
		})
	}
	waitClosed(t, idle, authTimeout+5*time.Second)

	refused := testutil.ToFloat64(f.tun.m.conns.WithLabelValues("port", "source_limit"))
	evicted := testutil.ToFloat64(f.tun.m.preauthClosed.WithLabelValues("evicted"))
	expired := testutil.ToFloat64(f.tun.m.preauthClosed.WithLabelValues("deadline"))
	// Whether the source limit is reached depends on how fast evicted
	// connections give their slots back; eviction and the deadline always act.
	if evicted == 0 || expired == 0 {
		t.Errorf("evicted %v, deadline %v: want both above 0", evicted, expired)
	}
	// The silent ones reach nobody but the tunnel, so the tunnel must have
	// ended each; a staller may also end at the server (its slot limit or
	// PostgreSQL's own timeout) before the tunnel acts.
	if got := refused + evicted + expired; got < flood-stallers {
		t.Errorf("refused+evicted+expired = %v, want at least the %d silent connections", got, flood-stallers)
	}
	if got := testutil.ToFloat64(f.tun.m.preauth); got != 0 {
		t.Errorf("preauth_connections = %v after the flood, want 0", got)
	}
}

// TestSNIFloodOneSource: one source holding idle sockets takes at most its
// share of the SNI handshake slots; another source still connects.
func TestSNIFloodOneSource(t *testing.T) {
	cert, err := selfSignedCert("guest")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *Config) {
		c.MaxHandshakes = 16
		c.MaxHandshakesPerSource = 4
	})
	f.reg2.add(&funcSession{id: "sni1", dial: fakeGuest(t, "vm-sni1", cert), done: make(chan struct{})})
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 20 {
		idle = append(idle, dialFrom(t, floodSource, f.sni))
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(f.tun.m.conns.WithLabelValues("sni", "source_overload")) != 16 || len(f.tun.handshakes) != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("source_overload = %v, handshakes %d; want 16, 4",
				testutil.ToFloat64(f.tun.m.conns.WithLabelValues("sni", "source_overload")), len(f.tun.handshakes))
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := range 3 { // the other source, several times
		got, err := sniClient(t, f.sni, "sni1.pg.localhost")
		if err != nil || got != "vm-sni1" {
			t.Fatalf("second source, try %d: reached %q, %v", i, got, err)
		}
	}
}

// plainGuest plays a VM's PostgreSQL without TLS: it declines TLS, reads
// the StartupMessage and, unless the user is "stall", answers
// AuthenticationOk and ReadyForQuery, then echoes.
func plainGuest(ctx context.Context, port uint16) (net.Conn, error) {
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		br := bufio.NewReader(b)
		kind, body, err := readFirstMessage(br)
		if err == nil && kind == kindSSLRequest {
			b.Write([]byte{'N'})
			kind, body, err = readFirstMessage(br)
		}
		if err != nil || kind != kindStartup {
			return
		}
		if bytes.Contains(body, []byte("stall")) {
			io.Copy(io.Discard, br)
			return
		}
		b.Write(append(pgMsg('R', 0, 0, 0, 0), pgMsg('Z', 'I')...))
		io.Copy(b, br)
	}()
	return a, nil
}

// plainClient connects from src as user and reads the server's first
// message type ('R' when let in, 'E' for an error, 0 when closed).
func plainClient(t *testing.T, src *net.TCPAddr, addr, user string) (net.Conn, byte) {
	t.Helper()
	c := dialFrom(t, src, addr)
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	body := []byte{0, 3, 0, 0}
	body = append(body, "user\x00"+user+"\x00\x00"...)
	msg := append([]byte{0, 0, 0, byte(4 + len(body))}, body...)
	if _, err := c.Write(msg); err != nil {
		return c, 0
	}
	var typ [1]byte
	if _, err := io.ReadFull(c, typ[:]); err != nil {
		return c, 0
	}
	c.SetDeadline(time.Time{})
	return c, typ[0]
}

// alive reports whether c still echoes.
func alive(c net.Conn) bool {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	defer c.SetDeadline(time.Time{})
	// Skip the rest of AuthenticationOk and ReadyForQuery first.
	c.Read(make([]byte, 64))
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	b := make([]byte, 4)
	_, err := io.ReadFull(c, b)
	return err == nil && string(b) == "ping"
}

// TestSessionLimits runs the per-session and per-source limits and the
// deadline in port mode against a plaintext fake PostgreSQL.
func TestSessionLimits(t *testing.T) {
	const authTimeout = 300 * time.Millisecond
	f := newFixture(t, func(c *Config) {
		c.AuthTimeout = authTimeout
		c.MaxConnsPerSession = 3
		c.MaxPreauthPerSession = 2
		c.MaxConnsPerSource = 3
	})
	s := &funcSession{id: "cap1", dial: plainGuest, done: make(chan struct{})}
	f.reg2.add(s)
	port, err := f.tun.Attach(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	user := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)}

	// A connection that never authenticates is closed by the deadline.
	stalled, typ := plainClient(t, user, addr, "stall")
	if typ != 0 {
		t.Fatalf("stalled client read %q, want the tunnel to close it", typ)
	}
	if got := testutil.ToFloat64(f.tun.m.preauthClosed.WithLabelValues("deadline")); got != 1 {
		t.Errorf("deadline counter = %v, want 1", got)
	}
	stalled.Close()
	// Its handler gives the source slot back as it returns.
	waitFor(t, func() bool { return f.tun.sources.count(sourceKey(user)) == 0 })

	// Three authenticated connections fill the session; they outlive the
	// deadline.
	var in []net.Conn
	for i := range 3 {
		c, typ := plainClient(t, user, addr, "postgres")
		if typ != 'R' {
			t.Fatalf("client %d got %q, want AuthenticationOk", i, typ)
		}
		in = append(in, c)
	}
	time.Sleep(2 * authTimeout)
	for i, c := range in {
		if !alive(c) {
			t.Fatalf("authenticated client %d was closed", i)
		}
	}
	// A fourth, from another source, is refused with a readable error.
	if _, typ := plainClient(t, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}, addr, "postgres"); typ != 'E' {
		t.Fatalf("fourth client got %q, want ErrorResponse", typ)
	}
	if got := testutil.ToFloat64(f.tun.m.conns.WithLabelValues("port", "session_limit")); got != 1 {
		t.Errorf("session_limit counter = %v, want 1", got)
	}
	// Until one leaves.
	in[0].Close()
	waitFor(t, func() bool { return f.tun.sources.count(sourceKey(user)) == 2 })
	c, typ := plainClient(t, user, addr, "postgres")
	if typ != 'R' {
		t.Fatalf("client after a close got %q, want AuthenticationOk", typ)
	}
	in[0] = c

	// Per source: 3 connections held, the fourth from that source is closed
	// at once.
	extra := dialFrom(t, user, addr)
	defer extra.Close()
	extra.SetDeadline(time.Now().Add(5 * time.Second))
	if n, err := extra.Read(make([]byte, 1)); n != 0 || err == nil {
		t.Fatalf("connection over the source limit read %d, %v; want closed", n, err)
	}
	if got := testutil.ToFloat64(f.tun.m.conns.WithLabelValues("port", "source_limit")); got != 1 {
		t.Errorf("source_limit counter = %v, want 1", got)
	}
}

// TestSNIAuthDeadline: a TLS client routed to a session that stalls after
// the handshake is closed by the deadline in SNI mode too.
func TestSNIAuthDeadline(t *testing.T) {
	cert, err := selfSignedCert("guest")
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, func(c *Config) { c.AuthTimeout = 300 * time.Millisecond })
	// The guest finishes TLS and then says nothing: a client stalled after
	// the handshake, in PostgreSQL's authentication.
	f.reg2.add(&funcSession{id: "dl1", done: make(chan struct{}), dial: func(ctx context.Context, port uint16) (net.Conn, error) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			var req [8]byte
			if _, err := io.ReadFull(b, req[:]); err != nil {
				return
			}
			b.Write([]byte{'S'})
			tc := tls.Server(b, &tls.Config{Certificates: []tls.Certificate{cert}})
			io.Copy(io.Discard, tc)
		}()
		return a, nil
	}})
	start := time.Now()
	_, err = sniClient(t, f.sni, "dl1.pg.localhost")
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("stalled SNI client closed after %v (%v)", d, err)
	}
	if got := testutil.ToFloat64(f.tun.m.preauthClosed.WithLabelValues("deadline")); got != 1 {
		t.Errorf("deadline counter = %v, want 1", got)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
