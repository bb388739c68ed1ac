package relay_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/pgwasm/pgwasm/internal/netstack"
	"github.com/pgwasm/pgwasm/internal/relay"
	"github.com/pgwasm/pgwasm/internal/testkit/simvm"
)

// TestShortTransfersNoStall runs many short bulk transfers through one
// session, each way, and wants the slowest within 5x of the median (issue
// #13, item 9). The relay's outbound queue used to drop frames when a burst
// outran the websocket; losing the tail of a window left TCP waiting for
// its retransmission timeout (≥ 200 ms, doubling), so a transfer of a few
// milliseconds took 200 ms to seconds now and then. With backpressure the
// relay drops nothing while a websocket is attached, which the test also
// checks exactly.
func TestShortTransfersNoStall(t *testing.T) {
	if testing.Short() {
		t.Skip("transfer loop skipped with -short")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	e := newEnv(t, func(c *relay.Config) {
		c.Egress.Allow = append(c.Egress.Allow, mustRule(t, l.Addr().String()))
	})
	ctx := testCtx(t, 3*time.Minute)
	s, vm := e.vm(ctx, t)
	dst := netip.MustParseAddrPort(l.Addr().String())

	// 2 MB takes ~15-40 ms here; one retransmission timeout is 200 ms.
	const size, runs = 2 << 20, 25
	for _, dir := range []string{"upload", "download"} {
		t.Run(dir, func(t *testing.T) {
			// Frames lost on a full queue were the cause; none may be
			// lost in any attempt. The timing bound is checked over up
			// to three attempts: on a machine loaded far beyond its
			// cores a runnable goroutine can wait hundreds of
			// milliseconds, which no relay can help.
			var fails []string
			for attempt := range 3 {
				msg, drops := stallAttempt(ctx, t, s, vm, l, dst, dir, size, runs)
				if drops != "" {
					t.Fatalf("attempt %d: %s", attempt+1, drops)
				}
				if msg == "" {
					return
				}
				t.Logf("attempt %d: %s", attempt+1, msg)
				fails = append(fails, msg)
			}
			t.Errorf("in 3 attempts, a transfer was slower than 5 × the median every time: %v", fails)
		})
	}
}

// stallAttempt runs one loop of transfers. It returns why the timing
// bound failed (or "") and, separately, any frames the queues dropped.
func stallAttempt(ctx context.Context, t *testing.T, s *relay.Session, vm *simvm.VM, l net.Listener, dst netip.AddrPort, dir string, size int64, runs int) (slow, drops string) {
	r0, v0 := s.NetStats(), vm.NetStats()
	var times []time.Duration
	var loaded []bool // the transfer's only timeouts were spurious
	for i := range runs {
		ra, va := s.NetStats(), vm.NetStats()
		d, err := transfer(ctx, l, vm, dst, dir, size)
		if err != nil {
			t.Fatalf("transfer %d: %v", i, err)
		}
		rb, vb := s.NetStats(), vm.NetStats()
		times = append(times, d)
		timeouts := rb.Timeouts - ra.Timeouts + vb.Timeouts - va.Timeouts
		spurious := rb.SpuriousRTO - ra.SpuriousRTO + vb.SpuriousRTO - va.SpuriousRTO
		loaded = append(loaded, timeouts > 0 && timeouts == spurious)
	}
	r1, v1 := s.NetStats(), vm.NetStats()
	sorted := slices.Clone(times)
	slices.Sort(sorted)
	median, slowest := sorted[len(sorted)/2], sorted[len(sorted)-1]
	counters := fmt.Sprintf("relay stack: %s; VM stack: %s", statsDelta(r0, r1), statsDelta(v0, v1))
	t.Logf("%d × %d MB %s: median %v, fastest %v, slowest %v; %s", runs, size>>20, dir,
		median.Round(time.Millisecond/10), sorted[0].Round(time.Millisecond/10), slowest.Round(time.Millisecond/10), counters)
	if d := r1.QueueDrops - r0.QueueDrops + v1.QueueDrops - v0.QueueDrops; d > 0 {
		drops = fmt.Sprintf("%d outbound frames dropped on a full queue with a websocket attached; %s", d, counters)
	}
	// A goroutine starved of CPU for longer than the minimum RTO (200 ms)
	// makes its sender time out although nothing was lost; gVisor detects
	// the timeout as spurious. Up to two such transfers are forgiven.
	forgiven := 0
	for i, d := range times {
		if d <= 5*median {
			continue
		}
		if loaded[i] && forgiven < 2 {
			forgiven++
			t.Logf("transfer %d took %v (> 5 × median %v) with only spurious retransmission timeouts: the machine's load, not the relay", i, d, median)
			continue
		}
		return fmt.Sprintf("transfer %d took %v > 5 × median %v (all: %v); %s", i, d, median, times, counters), drops
	}
	return "", drops
}

// transfer moves size bytes between the VM and a host socket accepted on l,
// in dir, and returns how long it took from the connection's start to the
// last byte's arrival.
func transfer(ctx context.Context, l net.Listener, vm *simvm.VM, dst netip.AddrPort, dir string, size int64) (time.Duration, error) {
	start := time.Now()
	c, err := vm.DialTCP(ctx, dst)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	h, err := l.Accept()
	if err != nil {
		return 0, err
	}
	defer h.Close()
	if d, ok := ctx.Deadline(); ok {
		c.SetDeadline(d)
		h.SetDeadline(d)
	}
	from, to := c, h
	if dir == "download" {
		from, to = h, c
	}
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyN(from, zeroReader{}, size)
		errc <- err
	}()
	if _, err := io.CopyN(io.Discard, to, size); err != nil {
		return 0, fmt.Errorf("receive: %w", err)
	}
	d := time.Since(start)
	if err := <-errc; err != nil {
		return 0, fmt.Errorf("send: %w", err)
	}
	return d, nil
}

func statsDelta(a, b netstack.Stats) string {
	return fmt.Sprintf("queue drops %d, inbound drops %d, retransmits %d, timeouts %d, fast retransmits %d, SACK recoveries %d, TLP %d, spurious RTO %d",
		b.QueueDrops-a.QueueDrops, b.Dropped-a.Dropped, b.Retransmits-a.Retransmits, b.Timeouts-a.Timeouts,
		b.FastRetransmit-a.FastRetransmit, b.SACKRecovery-a.SACKRecovery, b.TLPRecovery-a.TLPRecovery, b.SpuriousRTO-a.SpuriousRTO)
}
