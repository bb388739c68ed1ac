package relay_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/relay"
)

// TestHostAlias: with Config.HostAlias the VM reaches the relay host's
// loopback at 10.0.2.3, for allow-listed ports only; without it, not at all.
func TestHostAlias(t *testing.T) {
	alias := netip.MustParseAddr("10.0.2.3")
	e := newEnv(t, func(c *relay.Config) { c.HostAlias = alias })
	ctx := testCtx(t, 20*time.Second)
	_, vm := e.vm(ctx, t)

	t.Run("tcp allowed", func(t *testing.T) {
		c, err := vm.DialTCP(ctx, netip.AddrPortFrom(alias, e.tcpEcho.Port()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := echoOnce(ctx, c, "hello host"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("udp allowed", func(t *testing.T) {
		c, err := vm.DialUDP(ctx, netip.AddrPortFrom(alias, e.udpEcho.Port()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("hello udp host")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "hello udp host" {
			t.Fatalf("udp echo via alias = %q, %v", buf[:n], err)
		}
	})
	t.Run("port not allow-listed", func(t *testing.T) {
		c, err := vm.DialTCP(ctx, netip.AddrPortFrom(alias, e.denied.Port()))
		if err == nil {
			c.Close()
			t.Fatalf("DialTCP(alias:%d) succeeded, want refused (127.0.0.1:%d is not allow-listed)", e.denied.Port(), e.denied.Port())
		}
	})
	t.Run("other local address", func(t *testing.T) {
		c, err := vm.DialTCP(ctx, netip.AddrPortFrom(netip.MustParseAddr("10.0.2.4"), e.tcpEcho.Port()))
		if err == nil {
			c.Close()
			t.Fatal("DialTCP(10.0.2.4) succeeded, want refused")
		}
	})
}

func TestHostAliasOff(t *testing.T) {
	e := newEnv(t, nil)
	ctx := testCtx(t, 20*time.Second)
	_, vm := e.vm(ctx, t)
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := vm.DialTCP(dctx, netip.AddrPortFrom(netip.MustParseAddr("10.0.2.3"), e.tcpEcho.Port()))
	if err == nil {
		c.Close()
		t.Fatal("DialTCP(10.0.2.3) succeeded without a host alias")
	}
}

func TestHostAliasConfig(t *testing.T) {
	for _, a := range []string{"10.0.2.2", "10.0.2.15", "10.0.3.3", "10.0.2.0"} {
		cfg := relay.DefaultConfig()
		cfg.HostAlias = netip.MustParseAddr(a)
		if m, err := relay.NewManager(cfg, testLogger(t), nil); err == nil {
			m.Close()
			t.Errorf("NewManager(HostAlias %s) succeeded, want an error", a)
		}
	}
}
