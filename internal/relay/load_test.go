package relay_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/simvm"
)

// TestLoadManySessions runs 1,000 sessions at once, each with a real
// websocket, a DHCP lease and one TCP round trip through the NAT.
func TestLoadManySessions(t *testing.T) {
	if testing.Short() {
		t.Skip("load test skipped with -short")
	}
	const n = 1000
	e := newEnv(t, func(c *relay.Config) { c.MaxSessionsPerClient = n })
	ctx := testCtx(t, 90*time.Second)
	start := time.Now()
	var ok atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(200) // bound concurrent handshakes, not concurrent sessions
	vms := make([]*simvm.VM, n)
	for i := range n {
		g.Go(func() error {
			s, err := e.m.Create(gctx, netip.MustParseAddr("127.0.0.1"))
			if err != nil {
				return fmt.Errorf("session %d: %w", i, err)
			}
			vm, err := simvm.Dial(gctx, e.wsURL(s))
			if err != nil {
				return fmt.Errorf("session %d: %w", i, err)
			}
			vms[i] = vm
			if _, err := vm.DHCP(gctx); err != nil {
				return fmt.Errorf("session %d dhcp: %w", i, err)
			}
			c, err := vm.DialTCP(gctx, e.tcpEcho)
			if err != nil {
				return fmt.Errorf("session %d dial: %w", i, err)
			}
			defer c.Close()
			if err := echoOnce(gctx, c, fmt.Sprintf("session %d", i)); err != nil {
				return fmt.Errorf("session %d echo: %w", i, err)
			}
			ok.Add(1)
			return nil
		})
	}
	err := g.Wait()
	t.Logf("%d sessions ok in %s; relay holds %d", ok.Load(), time.Since(start), e.m.Len())
	if err != nil {
		t.Fatal(err)
	}
	if got := e.m.Len(); got != n {
		t.Errorf("relay holds %d sessions, want %d", got, n)
	}
	for _, vm := range vms {
		if vm != nil {
			vm.Close()
		}
	}
}

// BenchmarkTCPThroughput measures bulk TCP through the relay, VM to host
// (upload) and host to VM (download), on loopback with no bandwidth limit.
func BenchmarkTCPThroughput(b *testing.B) {
	for _, dir := range []string{"upload", "download"} {
		b.Run(dir, func(b *testing.B) {
			// A sink/source server on loopback, allowed by policy.
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			e2 := newEnv(b, func(c *relay.Config) {
				c.Egress.Allow = append(c.Egress.Allow, mustRule(b, l.Addr().String()))
			})
			ctx := testCtx(b, 5*time.Minute)
			_, vm := e2.vm(ctx, b)
			chunk := make([]byte, 64<<10)
			total := int64(b.N) * int64(len(chunk))
			done := make(chan error, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					done <- err
					return
				}
				defer c.Close()
				if dir == "upload" {
					_, err = io.CopyN(io.Discard, c, total)
				} else {
					_, err = io.CopyN(c, zeroReader{}, total)
				}
				done <- err
			}()
			c, err := vm.DialTCP(ctx, netip.MustParseAddrPort(l.Addr().String()))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			if dir == "upload" {
				for range b.N {
					if _, err := c.Write(chunk); err != nil {
						b.Fatal(err)
					}
				}
			} else {
				if _, err := io.CopyN(io.Discard, c, total); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// BenchmarkRoundTrip measures one small request/response through the relay
// (VM -> relay -> host echo -> relay -> VM); compare with BenchmarkRoundTripDirect.
func BenchmarkRoundTrip(b *testing.B) {
	e := newEnv(b, nil)
	ctx := testCtx(b, 5*time.Minute)
	_, vm := e.vm(ctx, b)
	c, err := vm.DialTCP(ctx, e.tcpEcho)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	benchPingPong(b, c)
}

// BenchmarkRoundTripDirect is the same echo over plain loopback TCP.
func BenchmarkRoundTripDirect(b *testing.B) {
	echo := startTCPEcho(b)
	c, err := net.Dial("tcp", echo.String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	benchPingPong(b, c)
}

func benchPingPong(b *testing.B, c net.Conn) {
	buf := make([]byte, 64)
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkIdleSessions holds N idle sessions, each with an attached real
// websocket and a DHCP lease, and reports the relay's heap and goroutine
// cost per session. The VM side (simvm stacks) lives in the same process,
// so its cost is measured separately and subtracted.
func BenchmarkIdleSessions(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for range b.N {
				idleSessions(b, n)
			}
		})
	}
}

func heapInUse() (uint64, int) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse, runtime.NumGoroutine()
}

func idleSessions(b *testing.B, n int) {
	e := newEnv(b, func(c *relay.Config) { c.MaxSessionsPerClient = n; c.MaxSessions = n; c.Grace = time.Hour })
	ctx := testCtx(b, 10*time.Minute)
	base, baseG := heapInUse()

	// Relay sessions without websockets: stack, DHCP, DNS, NAT.
	sessions := make([]*relay.Session, n)
	for i := range n {
		s, err := e.m.Create(ctx, netip.MustParseAddr("127.0.0.1"))
		if err != nil {
			b.Fatal(err)
		}
		sessions[i] = s
	}
	afterCreate, createG := heapInUse()

	// Attach a real websocket to each; the client ends are raw websocket
	// connections (no VM stack), so their cost is small and counted in.
	// Each attachment holds two descriptors in this process (both ends);
	// this machine's hard limit is 20,000, so at most 4,000 attach.
	attachN := min(n, 4000)
	vms := make([]*simvm.VM, attachN)
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(100)
	for i := range attachN {
		g.Go(func() error {
			vm, err := simvm.Dial(gctx, e.wsURL(sessions[i]))
			if err != nil {
				return err
			}
			mu.Lock()
			vms[i] = vm
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	waitFor(b, time.Minute, "all attached", func() bool {
		for _, s := range sessions[:attachN] {
			if !s.Attached() {
				return false
			}
		}
		return true
	})
	afterAttach, attachG := heapInUse()

	// The VM side alone, to subtract: n simvm stacks + websocket clients.
	vmOnly := vmCost(b, attachN)

	perSession := float64(afterCreate-base) / float64(n)
	perAttach := float64(int64(afterAttach-afterCreate)-int64(vmOnly)) / float64(attachN)
	b.ReportMetric(perSession, "session-bytes/session")
	b.ReportMetric(perSession+perAttach, "relay-bytes/attached-session")
	b.ReportMetric(float64(createG-baseG)/float64(n), "goroutines/session")
	b.ReportMetric(float64(attachG-createG)/float64(attachN), "goroutines/websocket-both-ends")
	b.ReportMetric(float64(e.m.Len()), "sessions-held")
	for _, vm := range vms {
		vm.Close()
	}
	e.m.Close()
}

// vmCost measures n simulated VM stacks (not connected) to subtract them.
func vmCost(b *testing.B, n int) uint64 {
	before, _ := heapInUse()
	// A VM's client-side cost is approximated by its stack, which
	// dominates (a websocket client is a few KB, so the relay figure
	// errs high).
	vs := make([]*simvm.VM, 0, n)
	for range n {
		v, err := simvm.NewDetached()
		if err != nil {
			b.Fatal(err)
		}
		vs = append(vs, v)
	}
	after, _ := heapInUse()
	for _, v := range vs {
		v.Close()
	}
	return after - before
}
