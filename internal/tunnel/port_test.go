package tunnel

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestPort: the tunnel tells which port a session has, or why it has
// none, until the session ends.
func TestPort(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.PortLast = c.PortFirst }) // one port
	ctx := context.Background()
	a := newLoopSession("a", "127.0.0.1:1")
	b := newLoopSession("b", "127.0.0.1:1")
	pa, err := f.tun.Attach(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := f.tun.Port("a"); p != pa || err != nil {
		t.Errorf("Port(a) = %d, %v; want %d", p, err, pa)
	}
	if _, err := f.tun.Attach(ctx, b); !errors.Is(err, ErrNoFreePort) {
		t.Fatalf("second Attach = %v, want ErrNoFreePort", err)
	}
	if p, err := f.tun.Port("b"); p != 0 || !errors.Is(err, ErrNoFreePort) {
		t.Errorf("Port(b) = %d, %v; want ErrNoFreePort", p, err)
	}
	if p, err := f.tun.Port("nobody"); p != 0 || err != nil {
		t.Errorf("Port(nobody) = %d, %v; want 0, nil", p, err)
	}
	a.end()
	b.end()
	for deadline := time.Now().Add(10 * time.Second); ; {
		pa, erra := f.tun.Port("a")
		pb, errb := f.tun.Port("b")
		if pa == 0 && erra == nil && pb == 0 && errb == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the sessions ended: Port(a) = %d, %v; Port(b) = %d, %v", pa, erra, pb, errb)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
