package netstack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var (
	guestMAC   = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x15}
	gatewayMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	guestAddr  = netip.MustParsePrefix("10.0.2.15/24")
	gatewayIP  = netip.MustParseAddr("10.0.2.2")
)

func newStack(t *testing.T, cfg Config) *Stack {
	t.Helper()
	st, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

// link wires two stacks together as the relay's websocket does, one frame
// at a time in each direction, until the test ends.
func link(t *testing.T, a, b *Stack) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	pump := func(from, to *Stack) {
		defer func() { done <- struct{}{} }()
		from.SetBackpressure(true)
		defer from.SetBackpressure(false)
		for {
			f, err := from.ReadFrame(ctx)
			if err != nil {
				return
			}
			to.InjectFrame(f)
		}
	}
	go pump(a, b)
	go pump(b, a)
	t.Cleanup(func() {
		cancel()
		<-done
		<-done
	})
}

// pair is a guest in host mode and a point-to-point gateway, as the
// simulated VM and the relay use them.
func pair(t *testing.T) (guest, gw *Stack) {
	gw = newStack(t, Config{MAC: gatewayMAC, Addr: netip.PrefixFrom(gatewayIP, 24), Promiscuous: true, PointToPoint: true})
	guest = newStack(t, Config{MAC: guestMAC, Addr: guestAddr, Gateway: gatewayIP})
	link(t, guest, gw)
	return guest, gw
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"short MAC", Config{MAC: guestMAC[:4]}, "not 6 bytes"},
		{"small MTU", Config{MAC: guestMAC, MTU: 100}, "MTU 100 out of range"},
		{"large MTU", Config{MAC: guestMAC, MTU: 65000}, "MTU 65000 out of range"},
		{"buffers", Config{MAC: guestMAC, TCPBuffer: BufferSizes{Min: 1 << 20, Default: 1 << 10, Max: 1 << 21}}, "not ordered"},
		{"IPv6 address", Config{MAC: guestMAC, Addr: netip.MustParsePrefix("fd00::1/64")}, "only IPv4"},
		{"IPv6 alias", Config{MAC: guestMAC, Aliases: []netip.Addr{netip.MustParseAddr("fd00::1")}}, "only IPv4"},
	}
	for _, tt := range tests {
		st, err := New(tt.cfg)
		if err == nil {
			st.Close()
			t.Errorf("%s: New(%+v) succeeded, want an error with %q", tt.name, tt.cfg, tt.want)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: New(%+v) = %q, want %q in it", tt.name, tt.cfg, err, tt.want)
		}
	}
}

// gVisor's errors come out as Go errors that errors.Is tells apart.
func TestErrorKinds(t *testing.T) {
	_, err := New(Config{MAC: gatewayMAC, Addr: netip.PrefixFrom(gatewayIP, 24), Aliases: []netip.Addr{gatewayIP}})
	if !errors.Is(err, ErrDuplicateAddress) || errors.Is(err, ErrPortInUse) {
		t.Errorf("alias equal to the address: err = %v, want ErrDuplicateAddress only", err)
	}

	st := newStack(t, Config{MAC: guestMAC, Addr: guestAddr})
	addr := netip.AddrPortFrom(guestAddr.Addr(), 68)
	c, err := st.ListenUDP(addr, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = st.ListenUDP(addr, false)
	if !errors.Is(err, ErrPortInUse) || errors.Is(err, ErrDuplicateAddress) {
		t.Errorf("second bind of %s: err = %v, want ErrPortInUse only", addr, err)
	}
	if err != nil && !strings.Contains(err.Error(), "cannot bind udp "+addr.String()) {
		t.Errorf("err = %q, want the step in it", err)
	}
}

// A connection the guest opens to any address reaches the gateway's
// handler with its real source and destination, and carries data both ways.
func TestTCPThroughGateway(t *testing.T) {
	guest, gw := pair(t)
	dst := netip.MustParseAddrPort("192.0.2.7:5432")
	reqs := make(chan *TCPRequest, 1)
	gw.HandleTCP(func(r *TCPRequest) { reqs <- r })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type dialed struct {
		c   net.Conn
		err error
	}
	dc := make(chan dialed, 1)
	go func() {
		c, err := guest.DialTCP(ctx, dst)
		dc <- dialed{c, err}
	}()
	var r *TCPRequest
	select {
	case r = <-reqs:
	case <-ctx.Done():
		t.Fatal("the gateway saw no connection")
	}
	if r.Dst != dst || r.Src.Addr() != guestAddr.Addr() {
		t.Errorf("request %s->%s, want %s->%s", r.Src, r.Dst, guestAddr.Addr(), dst)
	}
	server, err := r.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	d := <-dc
	if d.err != nil {
		t.Fatal(d.err)
	}
	defer d.c.Close()

	// More than a window's worth, so flow control and the frame queue's
	// backpressure take part.
	payload := bytes.Repeat([]byte("pgwasm"), 200_000)
	go func() {
		_, _ = d.c.Write(payload)
		_ = d.c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(server)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Fatalf("gateway read %d bytes, want the %d sent", len(got), len(payload))
	}
	if _, err := server.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(d.c, buf); err != nil || string(buf) != "ok" {
		t.Fatalf("guest read %q, %v; want ok", buf, err)
	}
	if s := gw.Stats(); s.QueueDrops != 0 || s.SegmentsReceived == 0 {
		t.Errorf("gateway stats %+v: want segments and no queue drops with a reader attached", s)
	}
}

// A UDP flow to any address reaches the gateway's handler, its first
// datagram readable from the accepted socket; a refused one is not.
func TestUDPThroughGateway(t *testing.T) {
	guest, gw := pair(t)
	allowed := netip.MustParseAddrPort("192.0.2.53:53")
	reqs := make(chan *UDPRequest, 4)
	gw.HandleUDP(func(r *UDPRequest) bool {
		if r.Dst != allowed {
			return false
		}
		reqs <- r
		return true
	})
	c, err := guest.DialUDP(allowed)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("query")); err != nil {
		t.Fatal(err)
	}
	var r *UDPRequest
	select {
	case r = <-reqs:
	case <-time.After(30 * time.Second):
		t.Fatal("the gateway saw no datagram")
	}
	if r.Src.Addr() != guestAddr.Addr() {
		t.Errorf("source %s, want %s", r.Src, guestAddr.Addr())
	}
	server, err := r.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	buf := make([]byte, 64)
	_ = server.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := server.Read(buf)
	if err != nil || string(buf[:n]) != "query" {
		t.Fatalf("gateway read %q, %v; want query", buf[:n], err)
	}
	if _, err := server.Write([]byte("answer")); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err = c.Read(buf)
	if err != nil || string(buf[:n]) != "answer" {
		t.Fatalf("guest read %q, %v; want answer", buf[:n], err)
	}
}

// A point-to-point stack sends to the MAC that last sent it a frame, and
// broadcasts before any has.
func TestPointToPointDestination(t *testing.T) {
	gw := newStack(t, Config{MAC: gatewayMAC, Addr: netip.PrefixFrom(gatewayIP, 24), Promiscuous: true, PointToPoint: true})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	send := func() []byte {
		t.Helper()
		c, err := gw.DialUDP(netip.AddrPortFrom(guestAddr.Addr(), 9))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		f, err := gw.ReadFrame(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	if f := send(); !bytes.Equal(f[:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) {
		t.Errorf("destination before any frame came in: %x, want broadcast", f[:6])
	}
	// Any frame teaches the peer's address, even one the stack drops.
	frame := append(append(append([]byte{}, gatewayMAC...), guestMAC...), 0x88, 0xb5)
	gw.InjectFrame(append(frame, make([]byte, 46)...))
	if f := send(); !bytes.Equal(f[:6], guestMAC) {
		t.Errorf("destination after a frame from %s: %x", guestMAC, f[:6])
	}
}

// Without a reader, a full queue drops frames and counts them; Close ends
// ReadFrame with ErrClosed.
func TestQueueDropsWithoutReader(t *testing.T) {
	st, err := New(Config{MAC: gatewayMAC, Addr: netip.PrefixFrom(gatewayIP, 24), PointToPoint: true, QueueLen: 4})
	if err != nil {
		t.Fatal(err)
	}
	c, err := st.DialUDP(netip.AddrPortFrom(guestAddr.Addr(), 9))
	if err != nil {
		t.Fatal(err)
	}
	q0, d0 := st.Queued(), st.Stats().QueueDrops
	for range 10 {
		if _, err := c.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	if q, d := st.Queued(), st.Stats().QueueDrops-d0; q != 4 || d != uint64(6+q0) {
		t.Errorf("after 10 datagrams into a queue of 4 holding %d: %d queued, %d dropped; want 4 and %d", q0, q, d, 6+q0)
	}
	st.Close()
	if _, err := st.ReadFrame(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadFrame after Close = %v, want ErrClosed", err)
	}
}
