package relay_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/sync/errgroup"

	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/testkit/simvm"
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
			cpu0 := cpuTime()
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
			// CPU time is steadier than wall time on a shared machine.
			// It covers the whole process: relay, simulated VM (its own
			// netstack and websocket client) and the host end.
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(total), "cpu-ns/B")
		})
	}
}

// BenchmarkShortTransfers times short transfers, each 1 MB on a new
// connection through one session, and reports the median and the slowest:
// a stall (issue #13, item 9: a retransmission timeout costs 200 ms) shows
// in slowest-ms and slowest/median, where a long throughput run would
// average it away.
func BenchmarkShortTransfers(b *testing.B) {
	for _, dir := range []string{"upload", "download"} {
		b.Run(dir, func(b *testing.B) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			e := newEnv(b, func(c *relay.Config) {
				c.Egress.Allow = append(c.Egress.Allow, mustRule(b, l.Addr().String()))
			})
			ctx := testCtx(b, 5*time.Minute)
			_, vm := e.vm(ctx, b)
			dst := netip.MustParseAddrPort(l.Addr().String())
			const size = 1 << 20
			b.SetBytes(size)
			var times []float64
			b.ResetTimer()
			for range b.N {
				d, err := transfer(ctx, l, vm, dst, dir, size)
				if err != nil {
					b.Fatal(err)
				}
				times = append(times, float64(d)/1e6)
			}
			slices.Sort(times)
			median, slowest := times[len(times)/2], times[len(times)-1]
			b.ReportMetric(median, "median-ms")
			b.ReportMetric(times[0], "fastest-ms")
			b.ReportMetric(slowest, "slowest-ms")
			b.ReportMetric(slowest/median, "slowest/median")
		})
	}
}

// cpuTime returns the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
// websocket, and reports the relay's heap+stack and goroutines per session.
// Only the relay is measured: the client ends of the websockets (the
// browser's, in production) live in a child process (this test binary
// re-run as TestHelperIdleClients), which also keeps the two ends'
// descriptors from sharing one process's limit.
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

	// Sessions without websockets: stack, DHCP, DNS, NAT.
	sessions := make([]*relay.Session, n)
	for i := range n {
		s, err := e.m.Create(ctx, netip.MustParseAddr("127.0.0.1"))
		if err != nil {
			b.Fatal(err)
		}
		sessions[i] = s
	}
	afterCreate, createG := heapInUse()

	// The child dials every session's websocket and holds them.
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperIdleClients$")
	cmd.Env = append(os.Environ(), "PGWASM_IDLE_CLIENTS=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	w := bufio.NewWriter(stdin)
	for _, s := range sessions {
		fmt.Fprintln(w, e.wsURL(s))
	}
	fmt.Fprintln(w) // end of list
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "ready\n" {
		b.Fatalf("idle clients: %q, %v", line, err)
	}
	waitFor(b, time.Minute, "all attached", func() bool {
		for _, s := range sessions {
			if !s.Attached() {
				return false
			}
		}
		return true
	})
	afterAttach, attachG := heapInUse()

	b.ReportMetric(float64(afterCreate-base)/float64(n), "session-bytes/session")
	b.ReportMetric(float64(afterAttach-base)/float64(n), "relay-bytes/attached-session")
	b.ReportMetric(float64(createG-baseG)/float64(n), "goroutines/session")
	b.ReportMetric(float64(attachG-baseG)/float64(n), "goroutines/attached-session")
	b.ReportMetric(float64(e.m.Len()), "sessions-held")
	stdin.Close()
	_ = cmd.Wait()
	e.m.Close()
}

// TestHelperIdleClients is BenchmarkIdleSessions' child process: it dials
// the websocket URLs read from stdin (up to an empty line), says "ready",
// and holds them until stdin closes. Plain websockets, like an idle v86.
func TestHelperIdleClients(t *testing.T) {
	if os.Getenv("PGWASM_IDLE_CLIENTS") == "" {
		t.Skip("child process of BenchmarkIdleSessions")
	}
	in := bufio.NewScanner(os.Stdin)
	var urls []string
	for in.Scan() && in.Text() != "" {
		urls = append(urls, in.Text())
	}
	ctx := testCtx(t, 10*time.Minute)
	conns := make([]*websocket.Conn, len(urls))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(100)
	for i, u := range urls {
		g.Go(func() error {
			c, _, err := websocket.Dial(gctx, u, &websocket.DialOptions{CompressionMode: websocket.CompressionDisabled})
			conns[i] = c
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.CloseNow()
	}
}
