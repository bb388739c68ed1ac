package relay_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/testkit/simvm"
)

var testSecret = []byte("relay-test-secret-0123456789")

func withSecret(c *relay.Config) { c.SessionSecret = testSecret }

// TestRestoreAfterRestart: the relay restarts while a VM is connected. The
// VM reconnects to the same URL, as v86 does every 10 s, and the new
// Manager re-creates its session from the token: same id, token and expiry,
// a fresh network where the VM's old TCP connections are gone and new ones
// (out through the NAT, and in through DialGuest as the tunnel does) work.
func TestRestoreAfterRestart(t *testing.T) {
	e := newEnv(t, withSecret)
	ctx := testCtx(t, 30*time.Second)
	s, vm := e.vm(ctx, t)
	old, err := vm.DialTCP(ctx, e.tcpEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := echoOnce(ctx, old, "before"); err != nil {
		t.Fatal(err)
	}
	url, id, token, expires := e.wsURL(s), s.ID(), s.Token(), s.ExpiresAt()

	e.restart(t, nil)
	if _, ok := e.m.Lookup(id); ok {
		t.Fatal("a new Manager knows the session before the VM reconnects")
	}
	if err := vm.Reconnect(ctx, url); err != nil {
		t.Fatalf("reconnect to the restarted relay: %v", err)
	}
	s2, ok := e.m.Lookup(id)
	if !ok {
		t.Fatal("session not restored by the reconnect")
	}
	if s2.Token() != token || !s2.ExpiresAt().Equal(expires) {
		t.Errorf("restored session: token %q expires %s, want %q %s", s2.Token(), s2.ExpiresAt(), token, expires)
	}
	if got := testutil.ToFloat64(mustVec(t, e.reg, "pgwasm_relay_sessions_restored_total")); got != 1 {
		t.Errorf("sessions_restored_total = %v, want 1", got)
	}

	// The guest keeps its address: a renewal is granted.
	lease, err := vm.DHCP(ctx)
	if err != nil || lease.Addr.Addr() != s2.GuestAddr() {
		t.Fatalf("DHCP after the restart = %v, %v; want %s", lease.Addr, err, s2.GuestAddr())
	}
	// Connections through the old NAT are lost...
	octx, cancel := context.WithTimeout(ctx, 3*time.Second)
	if err := echoOnce(octx, old, "after"); err == nil {
		t.Error("a TCP connection through the old relay survived its restart")
	}
	cancel()
	// ...new ones work, out and in.
	c, err := vm.DialTCP(ctx, e.tcpEcho)
	if err != nil {
		t.Fatalf("new outbound connection: %v", err)
	}
	defer c.Close()
	if err := echoOnce(ctx, c, "after restart"); err != nil {
		t.Fatal(err)
	}
	ln, err := vm.ListenTCP(5432)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := ln.Accept(); err == nil {
			io.Copy(c, c)
			c.Close()
		}
	}()
	in, err := s2.DialGuest(ctx, 5432)
	if err != nil {
		t.Fatalf("inbound connection to the restored VM: %v", err)
	}
	defer in.Close()
	if err := echoOnce(ctx, in, "inbound"); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreRefused: only a token this secret made for this id, within its
// lifetime, restores a session, and under the usual limits.
func TestRestoreRefused(t *testing.T) {
	ctx := testCtx(t, 30*time.Second)
	e := newEnv(t, withSecret)
	client := netip.MustParseAddr("127.0.0.1")
	mk := func(m *relay.Manager) *relay.Session {
		t.Helper()
		s, err := m.Create(ctx, client)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b, del, limited := mk(e.m), mk(e.m), mk(e.m), mk(e.m)
	other := newEnv(t, func(c *relay.Config) { c.SessionSecret = []byte("another-secret-0123456789") })
	foreign := mk(other.m)
	short := newEnv(t, func(c *relay.Config) {
		withSecret(c)
		c.Lifetime = 300 * time.Millisecond
		c.CheckInterval = 20 * time.Millisecond
	})
	expired := mk(short.m)
	select {
	case <-expired.Done():
	case <-ctx.Done():
		t.Fatal("short-lived session did not end")
	}

	e.restart(t, nil)
	// Deleted after its restore: this Manager does not bring it back.
	if code := get(t, e.srv.URL+"/relay/"+del.ID()+"?token="+del.Token()); code != http.StatusUpgradeRequired {
		t.Fatalf("restore of the session to delete: %d", code)
	}
	if err := e.m.Delete(del.ID()); err != nil {
		t.Fatal(err)
	}
	// The same secret on another server accepts a token it never made.
	peer := newEnv(t, withSecret)
	if code := get(t, peer.srv.URL+"/relay/"+b.ID()+"?token="+b.Token()); code != http.StatusUpgradeRequired {
		t.Errorf("token on another server with the same secret: %d, want 426 (restored)", code)
	}

	forged := strings.Repeat("a", len(a.Token()))
	tests := []struct {
		name, id, token string
		want            int
	}{
		{"valid", a.ID(), a.Token(), http.StatusUpgradeRequired}, // restored; not a websocket request
		{"valid again", a.ID(), a.Token(), http.StatusUpgradeRequired},
		{"another session's token", limited.ID(), b.Token(), http.StatusUnauthorized},
		{"forged token", limited.ID(), forged, http.StatusUnauthorized},
		{"truncated token", limited.ID(), limited.Token()[:40], http.StatusUnauthorized},
		{"no token", limited.ID(), "", http.StatusUnauthorized},
		{"another secret", foreign.ID(), foreign.Token(), http.StatusUnauthorized},
		{"expired", expired.ID(), expired.Token(), http.StatusUnauthorized},
		{"deleted", del.ID(), del.Token(), http.StatusNotFound},
	}
	for _, tt := range tests {
		if got := get(t, e.srv.URL+"/relay/"+tt.id+"?token="+tt.token); got != tt.want {
			t.Errorf("%s: GET /relay/{id} = %d, want %d", tt.name, got, tt.want)
		}
	}
	if e.m.Len() != 1 {
		t.Errorf("%d sessions after the refusals, want 1 (a)", e.m.Len())
	}

	// Limits apply: one session per client, and a is there already.
	e.restart(t, func(c *relay.Config) { c.MaxSessionsPerClient = 1 })
	if _, err := e.m.Create(ctx, client); err != nil {
		t.Fatal(err)
	}
	if got := get(t, e.srv.URL+"/relay/"+limited.ID()+"?token="+limited.Token()); got != http.StatusTooManyRequests {
		t.Errorf("restore over the per-client limit = %d, want 429", got)
	}
	if _, err := simvm.Dial(ctx, "ws"+strings.TrimPrefix(e.srv.URL, "http")+"/relay/"+limited.ID()+"?token="+limited.Token()); err == nil {
		t.Error("websocket restored a session over the limit")
	}
}

// TestRestoreConcurrent: many reconnects for one unknown id at once make
// one session.
func TestRestoreConcurrent(t *testing.T) {
	e := newEnv(t, withSecret)
	ctx := testCtx(t, 20*time.Second)
	s, err := e.m.Create(ctx, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	url := e.srv.URL + "/relay/" + s.ID() + "?token=" + s.Token()
	e.restart(t, nil)
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() {
			if code := get(t, url); code != http.StatusUpgradeRequired {
				errs <- errors.New(http.StatusText(code))
				return
			}
			errs <- nil
		}()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Errorf("concurrent restore: %v", err)
		}
	}
	if n := e.m.Len(); n != 1 {
		t.Errorf("%d sessions after concurrent restores, want 1", n)
	}
	if got := testutil.ToFloat64(mustVec(t, e.reg, "pgwasm_relay_sessions_restored_total")); got != 1 {
		t.Errorf("sessions_restored_total = %v, want 1", got)
	}
}

func get(t testing.TB, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}
