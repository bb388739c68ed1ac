package cluster_test

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

// The cluster benchmarks (issue #14; cmd/pgwasm-bench's cluster part runs
// them): the same processes as the tests, three `pgwasm serve` replicas
// behind a real HAProxy checking every second, with simulated VMs
// (internal/testkit/simvm) for the sessions. HAProxy's checks here take a replica
// out after one failure (the manifests: two).

// BenchmarkClusterSpread: 300 sessions created and attached through HAProxy,
// as pages do; how many each replica holds (min and max over the three,
// and as a share of an even third).
func BenchmarkClusterSpread(b *testing.B) {
	const n = 300
	for range b.N {
		c := startCluster(b, 3, "1s", "1s")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		count := map[string]int{}
		for range n {
			s, err := c.createSession()
			if err != nil {
				b.Fatal(err)
			}
			c.startVM(ctx, s, "127.0.0.1:1")
			h := c.holders(s)
			if len(h) != 1 {
				b.Fatalf("session held by %v", h)
			}
			count[h[0]]++
		}
		cancel()
		var per []float64
		for _, r := range c.replicas {
			per = append(per, float64(count[r.name]))
		}
		b.ReportMetric(slices.Min(per), "min-sessions/replica")
		b.ReportMetric(slices.Max(per), "max-sessions/replica")
		b.ReportMetric(slices.Min(per)/(n/3), "min-share")
		b.ReportMetric(slices.Max(per)/(n/3), "max-share")
	}
}

// BenchmarkClusterReconnect: 20 sessions on one replica, which is killed
// (SIGKILL) or drained (SIGTERM, --drain-delay 1s): the time from the
// signal to each session's websocket attached again, on another replica
// that rebuilt the session from its token. The simulated VMs reconnect as
// the harness does: at once on close code 4503, otherwise after 250 ms,
// then every 250 ms (the page waits 3 s first; v86 alone up to 10 s).
func BenchmarkClusterReconnect(b *testing.B) {
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		b.Run(map[syscall.Signal]string{syscall.SIGKILL: "sigkill", syscall.SIGTERM: "sigterm"}[sig], func(b *testing.B) {
			for range b.N {
				reconnect(b, sig)
			}
		})
	}
}

func reconnect(b *testing.B, sig syscall.Signal) {
	const n = 20
	c := startCluster(b, 3, "1s", "1s")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	victim := c.replicas[0]
	var moving []*simVM
	for len(moving) < n {
		s, err := c.createSession()
		if err != nil {
			b.Fatal(err)
		}
		v := c.startVM(ctx, s, "127.0.0.1:1")
		if h := c.holders(s); len(h) == 1 && h[0] == victim.name {
			moving = append(moving, v)
		}
	}
	signalled := time.Now()
	if err := victim.proc.Signal(sig); err != nil {
		b.Fatal(err)
	}
	var ms []float64
	for _, v := range moving {
		select {
		case <-v.moved:
		case <-time.After(30 * time.Second):
			b.Fatalf("session %s not back within 30 s of %v", v.s.ID, sig)
		}
		v.mu.Lock()
		ms = append(ms, float64(v.movedAt.Sub(signalled).Microseconds())/1000)
		v.mu.Unlock()
		// After SIGTERM the victim drains: it keeps its sessions until it
		// exits (HAProxy has it down), as TestClusterDrain allows; only
		// the other replicas count.
		if h := slices.DeleteFunc(c.holders(v.s), func(name string) bool { return name == victim.name }); len(h) != 1 {
			b.Fatalf("session %s after %v held by %v besides the victim", v.s.ID, sig, h)
		}
	}
	slices.Sort(ms)
	b.ReportMetric((ms[n/2-1]+ms[n/2])/2, "median-ms")
	b.ReportMetric(ms[n-1], "max-ms")
	b.ReportMetric(ms[0], "min-ms")
}

// BenchmarkClusterConnect: a pgx connection (sslnegotiation=direct, TLS
// and SCRAM) and one simple query to a session's PostgreSQL, through
// HAProxy's SNI front and straight to the replica's SNI listener; the
// difference is the proxy hop. Behind the session: a simulated VM
// forwarding to the host's PostgreSQL (pgtest), as in TestClusterDrain.
func BenchmarkClusterConnect(b *testing.B) {
	pg := pgtest.Start(b)
	pgAddr := pgtest.Direct17(b, pg.Addr)
	c := startCluster(b, 3, "1s", "1s")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s, err := c.createSession()
	if err != nil {
		b.Fatal(err)
	}
	c.startVM(ctx, s, pgAddr)
	h := c.holders(s)
	if len(h) != 1 {
		b.Fatalf("session held by %v", h)
	}
	var direct string
	for _, r := range c.replicas {
		if r.name == h[0] {
			direct = r.sniAddr
		}
	}
	for _, path := range []struct{ name, addr string }{{"haproxy", c.sniAddr}, {"direct", direct}} {
		b.Run(path.name, func(b *testing.B) {
			cfg, err := pgxConfig(s, pg.Password, path.addr)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				conn, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					b.Fatal(err)
				}
				var one int
				if err := conn.QueryRow(ctx, "select 1").Scan(&one); err != nil || one != 1 {
					b.Fatal(fmt.Errorf("select 1: %d, %w", one, err))
				}
				conn.Close(ctx)
			}
		})
	}
}
