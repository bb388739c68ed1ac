package nat

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/policy"
)

func TestTCPDecisions(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
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
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	open := netip.MustParseAddrPort(l.Addr().String())
	closed := func() netip.AddrPort {
		l2, _ := net.Listen("tcp", "127.0.0.1:0")
		defer l2.Close()
		return netip.MustParseAddrPort(l2.Addr().String())
	}()
	pol, _ := policy.Parse([]string{open.String(), closed.String(), "10.0.2.0/24"})
	src := netip.MustParseAddrPort("10.0.2.15:40000")
	tests := []struct {
		dst    netip.AddrPort
		accept bool
		reason string
	}{
		{open, true, ""},
		{closed, false, ReasonDial},
		{netip.MustParseAddrPort("127.0.0.1:1"), false, policy.ReasonLoopback},
		{netip.MustParseAddrPort("10.0.2.3:80"), false, ReasonLocal}, // allow-listed but local
		{netip.MustParseAddrPort("169.254.169.254:80"), false, policy.ReasonLinkLocal},
	}
	for _, tt := range tests {
		var reason string
		n := New(Config{Policy: pol, Local: netip.MustParsePrefix("10.0.2.0/24"), DialTimeout: 2 * time.Second,
			OnRefused: func(_, r string) { reason = r }}, slog.New(slog.DiscardHandler))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		guest, inside := net.Pipe()
		accepted, rejected := false, false
		done := make(chan struct{})
		go func() {
			defer close(done)
			n.TCP(ctx, src, tt.dst, func() (net.Conn, error) { accepted = true; return inside, nil }, func() { rejected = true })
		}()
		if tt.accept {
			guest.Write([]byte("ping"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(guest, buf); err != nil || string(buf) != "ping" {
				t.Errorf("%s: echo %q, %v", tt.dst, buf, err)
			}
			guest.Close()
		}
		cancel()
		<-done
		n.Wait()
		if accepted != tt.accept || rejected == tt.accept || reason != tt.reason {
			t.Errorf("TCP(%s): accepted %v rejected %v reason %q; want accept %v reason %q", tt.dst, accepted, rejected, reason, tt.accept, tt.reason)
		}
		if tcp, _ := n.Flows(); tcp != 0 {
			t.Errorf("TCP(%s): %d flows left open", tt.dst, tcp)
		}
	}
}

func TestUDPFlowLimitAndIdle(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dst := netip.MustParseAddrPort(pc.LocalAddr().String())
	pol, _ := policy.Parse([]string{dst.String()})
	n := New(Config{Policy: pol, MaxUDP: 1, UDPIdle: 100 * time.Millisecond}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := netip.MustParseAddrPort("10.0.2.15:40000")
	g1, i1 := net.Pipe()
	defer g1.Close()
	if !n.UDP(ctx, src, dst, func() (net.Conn, error) { return i1, nil }) {
		t.Fatal("first flow refused")
	}
	_, i2 := net.Pipe()
	if n.UDP(ctx, src, dst, func() (net.Conn, error) { return i2, nil }) {
		t.Fatal("second flow accepted over a limit of 1")
	}
	// With no traffic the flow closes after UDPIdle, freeing the slot.
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, udp := n.Flows(); udp == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("idle UDP flow not closed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n.UDP(ctx, src, netip.MustParseAddrPort("127.0.0.2:53"), func() (net.Conn, error) { return nil, nil }) {
		t.Error("denied destination accepted")
	}
}

func TestHostAlias(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
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
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	port := netip.MustParseAddrPort(l.Addr().String()).Port()
	pol, _ := policy.Parse([]string{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()})
	alias := netip.MustParseAddr("10.0.2.3")
	src := netip.MustParseAddrPort("10.0.2.15:40000")
	tests := []struct {
		alias  netip.Addr
		dst    netip.AddrPort
		accept bool
		reason string
	}{
		{alias, netip.AddrPortFrom(alias, port), true, ""},
		{alias, netip.AddrPortFrom(alias, port+1), false, policy.ReasonLoopback}, // port not allow-listed
		{netip.Addr{}, netip.AddrPortFrom(alias, port), false, ReasonLocal},      // alias off
		{alias, netip.AddrPortFrom(netip.MustParseAddr("10.0.2.4"), port), false, ReasonLocal},
	}
	for _, tt := range tests {
		var reason string
		n := New(Config{Policy: pol, Local: netip.MustParsePrefix("10.0.2.0/24"), HostAlias: tt.alias, DialTimeout: 2 * time.Second,
			OnRefused: func(_, r string) { reason = r }}, slog.New(slog.DiscardHandler))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		guest, inside := net.Pipe()
		accepted, rejected := false, false
		done := make(chan struct{})
		go func() {
			defer close(done)
			n.TCP(ctx, src, tt.dst, func() (net.Conn, error) { accepted = true; return inside, nil }, func() { rejected = true })
		}()
		if tt.accept {
			guest.Write([]byte("ping"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(guest, buf); err != nil || string(buf) != "ping" {
				t.Errorf("%s: echo %q, %v", tt.dst, buf, err)
			}
			guest.Close()
		}
		cancel()
		<-done
		n.Wait()
		if accepted != tt.accept || rejected == tt.accept || reason != tt.reason {
			t.Errorf("TCP(%s) alias %s: accepted %v rejected %v reason %q; want accept %v reason %q", tt.dst, tt.alias, accepted, rejected, reason, tt.accept, tt.reason)
		}
	}
}
