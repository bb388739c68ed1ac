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
	r := &netResults{Bench: BenchResults{}, IdleSessions: cfg.IdleSessions}
	runs := []goBench{
		{Pkg: "./internal/relay/", Bench: "^BenchmarkTCPThroughput$", Benchtime: cfg.Benchtime, Count: cfg.Count, Timeout: 10 * time.Minute},
		{Pkg: "./internal/relay/", Bench: "^BenchmarkRoundTrip(Direct)?$", Benchtime: cfg.Benchtime, Count: cfg.Count, Timeout: 10 * time.Minute},
		{Pkg: "./internal/relay/", Bench: fmt.Sprintf("^BenchmarkIdleSessions$/^%d$", cfg.IdleSessions), Benchtime: "1x", Count: cfg.IdleCount, Timeout: 15 * time.Minute},
		{Pkg: "./internal/tunnel/", Bench: "^BenchmarkSetup$", Benchtime: cfg.Benchtime, Count: cfg.Count, Timeout: 10 * time.Minute},
		{Pkg: "./test/relay/", Bench: "^BenchmarkConnect$", Benchtime: cfg.ConnectBenchtime, Count: cfg.Count, Timeout: 10 * time.Minute},
	}
	for _, g := range runs {
		r.Commands = append(r.Commands, g.String())
		res, err := g.run(ctx, cfg.Go, logger)
		r.Bench.merge(res)
		if err != nil {
			logger.Error("go benchmark failed", "err", err)
			*errs = append(*errs, err.Error())
		}
	}
	return r
}
