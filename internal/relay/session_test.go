package relay_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/testkit/simvm"
)

var (
	gateway = netip.MustParseAddr("10.0.2.2")
	guest   = netip.MustParseAddr("10.0.2.15")
)

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestSpoofedFramesDropped(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 10*time.Second)
	s, vm := e.vm(ctx, t)
	other := net.HardwareAddr{0x00, 0x22, 0x15, 0xde, 0xad, 0x01}
	dnsQ := []byte("not really dns")
	tests := []struct {
		name   string
		frame  []byte
		reason string
	}{
		{"other source MAC", simvm.BuildUDPFrame(other, net.HardwareAddr{0x52, 0x55, 0x0a, 0, 2, 2}, netip.AddrPortFrom(guest, 1000), netip.AddrPortFrom(gateway, 53), dnsQ), "spoofed-mac"},
		{"other source IP", simvm.BuildUDPFrame(vm.MAC(), net.HardwareAddr{0x52, 0x55, 0x0a, 0, 2, 2}, netip.MustParseAddrPort("10.0.2.99:1000"), netip.AddrPortFrom(gateway, 53), dnsQ), "spoofed-ip"},
		{"zero source IP not DHCP", simvm.BuildUDPFrame(vm.MAC(), net.HardwareAddr{0x52, 0x55, 0x0a, 0, 2, 2}, netip.MustParseAddrPort("0.0.0.0:1000"), netip.AddrPortFrom(gateway, 53), dnsQ), "spoofed-ip"},
		{"ARP for another sender", simvm.BuildARPRequest(vm.MAC(), netip.MustParseAddr("10.0.2.3"), gateway), "spoofed-arp"},
		{"multicast source MAC", simvm.BuildUDPFrame(net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1}, net.HardwareAddr{0x52, 0x55, 0x0a, 0, 2, 2}, netip.AddrPortFrom(guest, 1000), netip.AddrPortFrom(gateway, 53), dnsQ), "bad-source-mac"},
		{"runt", []byte{1, 2, 3}, "runt"},
		{"oversized", append(simvm.BuildUDPFrame(vm.MAC(), net.HardwareAddr{0x52, 0x55, 0x0a, 0, 2, 2}, netip.AddrPortFrom(guest, 1000), netip.AddrPortFrom(gateway, 53), nil), make([]byte, relay.DefaultConfig().MaxFrameSize)...), "oversize"},
		{"IPv6", append(append(append([]byte{0x33, 0x33, 0, 0, 0, 1}, vm.MAC()...), 0x86, 0xdd), make([]byte, 40)...), "unsupported-ethertype"},
	}
	for _, tt := range tests {
		before := s.Stats().DropReasons[tt.reason]
		if err := vm.SendFrame(ctx, tt.frame); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		waitFor(t, 5*time.Second, tt.name+" counted as "+tt.reason, func() bool {
			return s.Stats().DropReasons[tt.reason] > before
		})
	}
	// The VM itself still works.
	c, err := vm.DialTCP(ctx, e.tcpEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoOnce(ctx, c, "still alive"); err != nil {
		t.Fatal(err)
	}
}

func TestSessionsIsolated(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 15*time.Second)
	_, a := e.vm(ctx, t)
	_, b := e.vm(ctx, t)
	l, err := b.ListenTCP(7000)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("b was reached\n"))
			c.Close()
		}
	}()
	// Both VMs are 10.0.2.15: a dial from A to 10.0.2.15 reaches A itself,
	// where nothing listens; other addresses in the subnet are refused.
	for _, dst := range []string{"10.0.2.15:7000", "10.0.2.3:7000", "10.0.2.255:7000"} {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := a.DialTCP(dctx, netip.MustParseAddrPort(dst))
		cancel()
		if err == nil {
			buf, _ := io.ReadAll(c)
			c.Close()
			t.Errorf("VM A reached %s (read %q), want refused", dst, buf)
		}
	}
}

func TestReconnectKeepsTCP(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 15*time.Second)
	s, vm := e.vm(ctx, t)
	c, err := vm.DialTCP(ctx, e.tcpEcho)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoOnce(ctx, c, "before"); err != nil {
		t.Fatal(err)
	}
	vm.DropWebsocket()
	waitFor(t, 5*time.Second, "detach", func() bool { return !s.Attached() })
	if err := vm.Reconnect(ctx, e.wsURL(s)); err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(ctx, c, "after"); err != nil {
		t.Fatalf("open TCP connection broken by reconnect: %v", err)
	}
	// A second websocket replaces the first; traffic keeps flowing.
	if err := vm.Reconnect(ctx, e.wsURL(s)); err != nil {
		t.Fatal(err)
	}
	if err := echoOnce(ctx, c, "after replace"); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentWebsocketReplaces(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 10*time.Second)
	s, vm := e.vm(ctx, t)
	// A second VM (a second tab, or v86 reconnecting before the old
	// socket died) attaches to the same session: it takes over.
	vm2, err := simvm.Dial(ctx, e.wsURL(s))
	if err != nil {
		t.Fatal(err)
	}
	defer vm2.Close()
	if _, err := vm2.DHCP(ctx); err != nil {
		t.Fatalf("DHCP on the replacing websocket: %v", err)
	}
	_ = vm
}

func TestGraceExpiry(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Grace = 200 * time.Millisecond })
	ctx := testCtx(t, 10*time.Second)
	s, vm := e.vm(ctx, t)
	vm.DropWebsocket()
	select {
	case <-s.Done():
	case <-ctx.Done():
		t.Fatal("session outlived its grace period")
	}
	if _, ok := e.m.Lookup(s.ID()); ok {
		t.Error("ended session still registered")
	}
	// Its token is still good: a late reconnect (a laptop waking up)
	// re-creates the session.
	if err := vm.Reconnect(ctx, e.wsURL(s)); err != nil {
		t.Errorf("reconnect after the grace period: %v, want the session restored", err)
	}
	if _, ok := e.m.Lookup(s.ID()); !ok {
		t.Error("session not restored by a reconnect after its grace period")
	}
}

func TestDialGuest(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 10*time.Second)
	s, vm := e.vm(ctx, t)
	l, err := vm.ListenTCP(5432)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := s.DialGuest(ctx, 5432)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoOnce(ctx, c, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.DialGuest(ctx, 5433); err == nil {
		t.Error("DialGuest to a closed port succeeded")
	}
}

func TestFlowLimit(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.MaxTCPFlows = 2 })
	ctx := testCtx(t, 10*time.Second)
	_, vm := e.vm(ctx, t)
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	for i := range 2 {
		c, err := vm.DialTCP(ctx, e.tcpEcho)
		if err != nil {
			t.Fatalf("flow %d: %v", i, err)
		}
		if err := echoOnce(ctx, c, "x"); err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	if c, err := vm.DialTCP(ctx, e.tcpEcho); err == nil {
		c.Close()
		t.Fatal("third flow accepted over a limit of 2")
	}
	// Another session is unaffected.
	_, vm2 := e.vm(ctx, t)
	c, err := vm2.DialTCP(ctx, e.tcpEcho)
	if err != nil {
		t.Fatalf("other session refused: %v", err)
	}
	c.Close()
	// Closing a flow frees a slot.
	open[0].Close()
	open = open[1:]
	waitFor(t, 5*time.Second, "a free flow slot", func() bool {
		c, err := vm.DialTCP(ctx, e.tcpEcho)
		if err != nil {
			return false
		}
		open = append(open, c)
		return true
	})
}

func TestSessionLimits(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.MaxSessionsPerClient = 2; c.MaxSessions = 3 })
	ctx := testCtx(t, 10*time.Second)
	a := netip.MustParseAddr("192.0.2.1")
	b := netip.MustParseAddr("192.0.2.2")
	var made []*relay.Session
	for range 2 {
		s, err := e.m.Create(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		made = append(made, s)
	}
	if _, err := e.m.Create(ctx, a); !errors.Is(err, relay.ErrTooManySessionsForClient) {
		t.Fatalf("third session for one client: %v, want ErrTooManySessionsForClient", err)
	}
	if _, err := e.m.Create(ctx, b); err != nil {
		t.Fatalf("other client refused: %v", err)
	}
	if _, err := e.m.Create(ctx, netip.MustParseAddr("192.0.2.3")); !errors.Is(err, relay.ErrTooManySessions) {
		t.Fatalf("fourth session: %v, want ErrTooManySessions", err)
	}
	if err := e.m.Delete(made[0].ID()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Create(ctx, a); err != nil {
		t.Fatalf("after a delete: %v", err)
	}
	if err := e.m.Delete(made[0].ID()); !errors.Is(err, relay.ErrUnknownSession) {
		t.Errorf("second Delete = %v, want ErrUnknownSession", err)
	}
}

func TestHTTPErrors(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 10*time.Second)
	s, err := e.m.Create(ctx, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	base := e.srv.URL + "/relay/"
	tests := []struct {
		url  string
		want int
	}{
		{base + "nosuchsessionxxxxxxxxxxxxx?token=x", http.StatusUnauthorized},
		{base + "../etc?token=x", http.StatusNotFound},
		{base + s.ID() + "?token=wrong", http.StatusUnauthorized},
		{base + s.ID(), http.StatusUnauthorized},
		{base + s.ID() + "?token=" + s.Token(), http.StatusUpgradeRequired},
	}
	for _, tt := range tests {
		resp, err := http.Get(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("GET %s = %d %q, want %d", tt.url, resp.StatusCode, body, tt.want)
		}
	}
	if id := s.ID(); len(id) < 26 || strings.ToLower(id) != id {
		t.Errorf("ID %q: want >= 26 lowercase chars", id)
	}
}

func FuzzFrame(f *testing.F) {
	e := newEnv(f, nil)
	ctx := context.Background()
	s, err := e.m.Create(ctx, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		f.Fatal(err)
	}
	mac := net.HardwareAddr{0x00, 0x22, 0x15, 1, 2, 3}
	gwMAC := net.HardwareAddr{0x52, 0x55, 0x0a, 0, 2, 2}
	f.Add(simvm.BuildUDPFrame(mac, gwMAC, netip.AddrPortFrom(guest, 1000), netip.AddrPortFrom(gateway, 53), []byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}))
	f.Add(simvm.BuildUDPFrame(mac, []byte{255, 255, 255, 255, 255, 255}, netip.MustParseAddrPort("0.0.0.0:68"), netip.MustParseAddrPort("255.255.255.255:67"), make([]byte, 300)))
	f.Add(simvm.BuildARPRequest(mac, guest, gateway))
	f.Add([]byte{})
	f.Add(make([]byte, 14))
	f.Fuzz(func(t *testing.T, frame []byte) {
		s.InjectFrame(frame)
		select {
		case <-s.Done():
			t.Fatal("frame ended the session")
		default:
		}
	})
}

func TestExpiresAt(t *testing.T) {
	e := newEnv(t, func(c *relay.Config) { c.Lifetime = 2 * time.Hour })
	before := time.Now()
	s, err := e.m.Create(testCtx(t, 10*time.Second), netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	if got := s.ExpiresAt(); got.Before(before.Add(2*time.Hour)) || got.After(after.Add(2*time.Hour)) {
		t.Errorf("ExpiresAt() = %s, want creation + 2h (created between %s and %s)", got, before, after)
	}
}
