package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Benchmark names, as the Go benchmarks in the repository define them.
const (
	bUpload      = "BenchmarkTCPThroughput/upload"
	bDownload    = "BenchmarkTCPThroughput/download"
	bRoundTrip   = "BenchmarkRoundTrip"
	bRoundDirect = "BenchmarkRoundTripDirect"
	bIdlePrefix  = "BenchmarkIdleSessions/"
	bSetupPort   = "BenchmarkSetup/port"
	bSetupSNI    = "BenchmarkSetup/sni"
	bConnDirect  = "BenchmarkConnect/direct-no-tunnel"
	bConnPort    = "BenchmarkConnect/port"
	bConnClassic = "BenchmarkConnect/sni-classic"
	bConnDirTLS  = "BenchmarkConnect/sni-direct"
	bShortUp     = "BenchmarkShortTransfers/upload"
	bShortDown   = "BenchmarkShortTransfers/download"
)

// netResults are the relay and tunnel measurements (issue #3).
type netResults struct {
	Bench        BenchResults
	IdleSessions int
	Commands     []string
}

// idleName is the idle-session benchmark's name for n sessions.
func (r *netResults) idleName() string { return fmt.Sprintf("%s%d", bIdlePrefix, r.IdleSessions) }

// measureNet runs the relay and tunnel benchmarks with `go test -bench`.
func measureNet(ctx context.Context, cfg *Config, logger *slog.Logger, errs *[]string) *netResults {
	r := &netResults{IdleSessions: cfg.IdleSessions}
	runs := []goBench{
		{Pkg: "./internal/relay/", Bench: "^BenchmarkTCPThroughput$", Benchtime: cfg.Benchtime, Count: cfg.Count, Timeout: 10 * time.Minute},
		// 40 transfers of 1 MB a run: a stall shows in the slowest.
		{Pkg: "./internal/relay/", Bench: "^BenchmarkShortTransfers$", Benchtime: "40x", Count: cfg.Count, Timeout: 10 * time.Minute},
		{Pkg: "./internal/relay/", Bench: "^BenchmarkRoundTrip(Direct)?$", Benchtime: cfg.Benchtime, Count: cfg.Count, Timeout: 10 * time.Minute},
		{Pkg: "./internal/relay/", Bench: fmt.Sprintf("^BenchmarkIdleSessions$/^%d$", cfg.IdleSessions), Benchtime: "1x", Count: cfg.IdleCount, Timeout: 15 * time.Minute},
		{Pkg: "./internal/tunnel/", Bench: "^BenchmarkSetup$", Benchtime: cfg.Benchtime, Count: cfg.Count, Timeout: 10 * time.Minute},
		{Pkg: "./test/relay/", Bench: "^BenchmarkConnect$", Benchtime: cfg.ConnectBenchtime, Count: cfg.Count, Timeout: 10 * time.Minute},
	}
	r.Bench, r.Commands = runGoBenches(ctx, runs, cfg.Go, logger, errs)
	return r
}

// shortTransferRows adds the short-transfer rows (issue #13, item 9): the
// median transfer and the slowest of every run, so an occasional stall
// stays visible instead of averaging away in the throughput figures.
func (r *netResults) shortTransferRows(tb *table) {
	for _, d := range []struct{ name, what string }{
		{bShortUp, "upload"},
		{bShortDown, "download"},
	} {
		med, slow := r.Bench.Get(d.name, "median-ms"), r.Bench.Get(d.name, "slowest-ms")
		if !med.OK() {
			tb.row("short transfers, "+d.what, "not measured", "", "", "")
			continue
		}
		tb.row("short transfers, 1 MB on a new connection, "+d.what+": median / slowest of a run",
			fmtMSFine(med.Median)+" / "+slow.Format(fmtMSFine), "", "",
			"slowest/median "+r.Bench.Get(d.name, "slowest/median").Format(fmtFloat)+"; a retransmission timeout would add ≥ 200 ms")
	}
}
