package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"
)

// The cluster benchmarks of test/cluster (issue #14).
const (
	bSpread        = "BenchmarkClusterSpread"
	bReconnectKill = "BenchmarkClusterReconnect/sigkill"
	bReconnectTerm = "BenchmarkClusterReconnect/sigterm"
	bClusterHA     = "BenchmarkClusterConnect/haproxy"
	bClusterDirect = "BenchmarkClusterConnect/direct"
)

// clusterResults are the measurements of pgwasm as three replicas behind
// HAProxy.
type clusterResults struct {
	Bench    BenchResults
	Commands []string
}

// measureCluster runs test/cluster's benchmarks with `go test -bench`:
// real replicas and a real HAProxy, simulated VMs, the host's PostgreSQL
// behind the tunnel.
func measureCluster(ctx context.Context, cfg *Config, logger *slog.Logger, errs *[]string) *clusterResults {
	r := &clusterResults{}
	runs := []goBench{
		{Pkg: "./test/cluster/", Bench: "^BenchmarkCluster(Spread|Reconnect)$", Benchtime: "1x", Count: cfg.ClusterCount, Timeout: 10 * time.Minute},
		{Pkg: "./test/cluster/", Bench: "^BenchmarkClusterConnect$", Benchtime: cfg.ConnectBenchtime, Count: cfg.Count, Timeout: 10 * time.Minute},
	}
	r.Bench, r.Commands = runGoBenches(ctx, runs, cfg.Go, logger, errs)
	return r
}

// write appends the cluster section to the report.
func (r *clusterResults) write(w io.Writer) {
	fmt.Fprintf(w, "\n## Cluster: three replicas behind HAProxy (issue #14)\n\n")
	fmt.Fprintf(w, "Three `pgwasm serve` processes on 127.0.0.2-4 with the cluster settings of docs/deploy.md behind a real HAProxy (Debian's, `deploy/haproxy` template, `/readyz` checked every second, out after one failure). Sessions are simulated VMs (internal/testkit/simvm: their own TCP/IP stack behind a real websocket), not v86; behind the tunnel, the host's PostgreSQL.\n\n")
	tb := newTable(w, "measure", "result", "notes")
	b := r.Bench
	tb.row("sessions per replica, 300 sessions created and attached through HAProxy: fewest / most",
		b.Get(bSpread, "min-sessions/replica").Format(fmtCount)+" / "+b.Get(bSpread, "max-sessions/replica").Format(fmtCount),
		"an even share is 100; as a share of it "+b.Get(bSpread, "min-share").Format(fmtFloat)+" / "+b.Get(bSpread, "max-share").Format(fmtFloat))
	for _, d := range []struct{ name, what, note string }{
		{bReconnectKill, "replica killed (SIGKILL)", "no close code: the client retries every 250 ms and meets 503 until HAProxy's check (every 1 s) takes the dead replica out; the page waits 3 s before its first retry, v86 alone 10 s"},
		{bReconnectTerm, "replica drained (SIGTERM, --drain-delay 1s)", "close code 4503 after the drain delay, immediate reconnect; the manifests' 5 s delay adds 4 s"},
	} {
		tb.row("reconnect after a "+d.what+", 20 sessions: median / max from the signal to the websocket attached on another replica",
			b.Get(d.name, "median-ms").Format(fmtMS)+" / "+b.Get(d.name, "max-ms").Format(fmtMS), d.note)
	}
	ha, direct := b.Get(bClusterHA, "ns/op"), b.Get(bClusterDirect, "ns/op")
	overhead := "not measured"
	if ha.OK() && direct.OK() {
		overhead = fmtMSFine((ha.Median - direct.Median) / 1e6)
	}
	tb.row("pgx connect (direct TLS, SCRAM) + `select 1` through HAProxy's SNI front", ha.Format(fmtNSasMS), "")
	tb.row("the same straight to the replica's SNI listener", direct.Format(fmtNSasMS), "")
	tb.row("the proxy hop's cost on a tunnel connection (difference of medians)", overhead, "HAProxy's ClientHello inspection (Lua action, SNI hash) and one more loopback TCP hop")
	fmt.Fprintf(w, "\nCommands: %s\n", strings.Join(quoteAll(r.Commands), ", "))
}

func fmtNSasMS(ns float64) string { return fmtMSFine(ns / 1e6) }

func quoteAll(cmds []string) []string {
	out := make([]string, len(cmds))
	for i, c := range cmds {
		out[i] = "`" + c + "`"
	}
	return out
}
