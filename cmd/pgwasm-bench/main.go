// Command pgwasm-bench measures what issues #2 (the VM image), #3 (relay
// and tunnel) and #6 (side by side with PGlite and native PostgreSQL) ask
// for and writes docs/BENCHMARKS.md:
//
//	PGWASM_IMAGE=build/image go run ./cmd/pgwasm-bench -out docs/BENCHMARKS.md
//	go run ./cmd/pgwasm-bench -quick            # a short run to try it out
//	go run ./cmd/pgwasm-bench -parts net        # only the relay benchmarks
//	go run ./cmd/pgwasm-bench -parts cluster    # only the cluster (HAProxy) benchmarks
//	go run ./cmd/pgwasm-bench -parts drivers    # only node-postgres and Kysely in Chromium against PGlite
//	go run ./cmd/pgwasm-bench -parts copy       # only pg.copyFrom/copyTo in Chromium against PGlite
//
// The VM part boots and restores the real image headless (internal/vm); the
// network part runs the repository's Go benchmarks with `go test -bench` and
// parses their output. The comparison part runs bench/queries.json on the
// VM (agent API), on PGlite (node bench/pglite.mjs, JSON on stdout) and on
// the host's PostgreSQL, then psql and pgbench through a real `pgwasm serve`
// port tunnel, then both pages in Chromium (bench/pglite.mjs browser and
// web/test/bench.mjs). Every figure comes from this run; the report is also
// printed to stdout.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/pgwasm/pgwasm/internal/manifest"
)

// Config is the command's settings: flags, each also settable as a PGWASM_*
// environment variable as in pgwasm itself (-image is PGWASM_IMAGE, -bin
// PGWASM_BIN), so the Makefile hands both programs the same variables.
type Config struct {
	Out          string
	ImageDir     string
	HarnessDir   string
	NativeBinDir string
	Go           string
	Memory       []int
	Parts        []string
	Quick        bool
	Timeout      time.Duration
	VMBudget     time.Duration
	Verbose      bool

	// The comparison with PGlite and native PostgreSQL (issue #6).
	BenchDir                    string
	Bin                         string
	Starts, QuerySetRuns        int
	PgbenchRuns, PgbenchSeconds int
	Browser                     bool
	BrowserStarts               int
	IdleRuns, IdleSeconds       int
	IdleLate                    int
	BusyRuns                    int
	CompareBudget               time.Duration

	Boots, Restores, QueryRuns int
	Count, IdleCount           int
	IdleSessions               int
	Benchtime                  string
	ConnectBenchtime           string
	ClusterCount               int

	// Drivers on pg.nodeSocket() against PGlite (issue #18).
	DriverRuns, DriverWarm, KyselyRuns int

	// COPY through the page API against PGlite (issue #11).
	CopyRuns, CopyMB int

	Args string // the flags given, for the report
}

// RegisterFlags defines the flags on fs.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Out, "out", "", "write the report (markdown) to this file as well as stdout")
	fs.StringVar(&c.ImageDir, "image", "build/image", "built image directory with state-<MB>.bin.zst")
	fs.StringVar(&c.HarnessDir, "harness", "", "Node harness directory (found from the working directory when empty)")
	fs.StringVar(&c.NativeBinDir, "native-pg", "/usr/lib/postgresql/15/bin", "host PostgreSQL server binaries for the native query comparison")
	fs.StringVar(&c.Go, "go", "go", "go command that runs the Go benchmarks")
	fs.Func("memory", "comma list of memory sizes (MB): each gets a snapshot (cached by image key); the first is restored and booted (default 128,256,512)", func(s string) error {
		c.Memory = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return fmt.Errorf("bad memory size %q", f)
			}
			if err := manifest.CheckMemory(n); err != nil {
				return err
			}
			c.Memory = append(c.Memory, n)
		}
		return nil
	})
	fs.Func("parts", "comma list of parts to run: vm, net, compare, idle, busy, cluster, drivers, copy (default all)", func(s string) error {
		c.Parts = strings.Split(s, ",")
		for _, p := range c.Parts {
			if !slices.Contains([]string{"vm", "net", "compare", "idle", "busy", "cluster", "drivers", "copy"}, p) {
				return fmt.Errorf("unknown part %q (want vm, net, compare, idle, busy, cluster, drivers or copy)", p)
			}
		}
		return nil
	})
	fs.StringVar(&c.BenchDir, "bench-dir", "bench", "directory of the Node comparison scripts (queries.json, pglite.mjs; npm ci there)")
	fs.StringVar(&c.Bin, "bin", "", "pgwasm binary for serve (relay + tunnel) in the comparison")
	fs.IntVar(&c.Starts, "starts", 3, "PGlite starts in Node (each a fresh process)")
	fs.IntVar(&c.QuerySetRuns, "queryset-runs", 3, "timed runs of each query of bench/queries.json (a query's own runs wins when larger; native: at least 5)")
	fs.IntVar(&c.PgbenchRuns, "pgbench-runs", 3, "pgbench runs per case and database")
	fs.IntVar(&c.PgbenchSeconds, "pgbench-seconds", 10, "pgbench -T of each run")
	fs.BoolVar(&c.Browser, "browser", true, "run the Chromium comparison (PGlite's page and ours)")
	fs.IntVar(&c.BrowserStarts, "browser-starts", 3, "cold+warm page loads in Chromium, each in a fresh profile")
	fs.IntVar(&c.IdleRuns, "idle-runs", 3, "idle-page CPU measurements in Chromium, each a fresh browser")
	fs.IntVar(&c.IdleSeconds, "idle-seconds", 30, "how long each idle-page measurement lasts")
	fs.IntVar(&c.IdleLate, "idle-late", 180, "seconds after the page became idle when its second idle measurement starts")
	fs.IntVar(&c.BusyRuns, "busy-runs", 2, "runs of the long query in one page in Chromium, measuring the main thread meanwhile")
	fs.DurationVar(&c.CompareBudget, "compare-budget", 14*time.Minute, "start no further comparison run after this long; the first of each kind always runs")
	fs.BoolVar(&c.Quick, "quick", false, "few runs and short benchmarks (about 3 minutes), to try the program; flags given explicitly still win")
	fs.DurationVar(&c.Timeout, "timeout", 60*time.Minute, "stop everything after this long: a fail-safe; a quiet 2-core machine needs 40-50 minutes, and the comparison, which runs last, takes fewer runs when time is short")
	fs.DurationVar(&c.VMBudget, "vm-budget", 12*time.Minute, "start no further VM run (restore, query, boot) after this long; the first of each kind always runs")
	fs.BoolVar(&c.Verbose, "v", false, "debug logs (VM harness included)")
	fs.IntVar(&c.Boots, "boots", 3, "full boots to first query")
	fs.IntVar(&c.Restores, "restores", 5, "snapshot restores to first query")
	fs.IntVar(&c.QueryRuns, "query-runs", 3, "runs of the count query in the VM (natively: at least 5)")
	fs.IntVar(&c.Count, "count", 5, "go test -count for the relay and tunnel benchmarks")
	fs.IntVar(&c.IdleCount, "idle-count", 3, "go test -count for the idle-session benchmark")
	fs.IntVar(&c.IdleSessions, "idle-sessions", 10000, "idle sessions to hold (the benchmark has 1000 and 10000)")
	fs.StringVar(&c.Benchtime, "benchtime", "1s", "go test -benchtime for throughput, round trip and tunnel setup")
	fs.StringVar(&c.ConnectBenchtime, "connect-benchtime", "30x", "go test -benchtime for the full pgx connection benchmarks (tunnel and cluster)")
	fs.IntVar(&c.DriverRuns, "driver-runs", 50, "timed select 1 round trips of each driver in Chromium (node-postgres, page API, PGlite)")
	fs.IntVar(&c.DriverWarm, "driver-warm", 10, "untimed select 1 rounds before those")
	fs.IntVar(&c.KyselyRuns, "kysely-runs", 5, "timed Kysely inserts+selects of 1,000 rows, on us and on PGlite (after one warm-up)")
	fs.IntVar(&c.CopyRuns, "copy-runs", 2, "loads of the CSV by pg.copyFrom and by upload + in-VM COPY, in turns, in Chromium (PGlite: as many)")
	fs.IntVar(&c.CopyMB, "copy-mb", 10, "size of that CSV in MB")
	fs.IntVar(&c.ClusterCount, "cluster-count", 1, "go test -count for the cluster spread and reconnect benchmarks (each run starts three replicas and HAProxy)")
}

// applyQuick lowers every run count the user did not set.
func (c *Config) applyQuick(set map[string]bool) {
	if !c.Quick {
		return
	}
	quick := map[string]func(){
		"boots":             func() { c.Boots = 1 },
		"restores":          func() { c.Restores = 2 },
		"query-runs":        func() { c.QueryRuns = 1 },
		"count":             func() { c.Count = 1 },
		"idle-count":        func() { c.IdleCount = 1 },
		"idle-sessions":     func() { c.IdleSessions = 1000 },
		"benchtime":         func() { c.Benchtime = "300ms" },
		"connect-benchtime": func() { c.ConnectBenchtime = "5x" },
		"starts":            func() { c.Starts = 1 },
		"queryset-runs":     func() { c.QuerySetRuns = 1 },
		"pgbench-runs":      func() { c.PgbenchRuns = 1 },
		"pgbench-seconds":   func() { c.PgbenchSeconds = 5 },
		"browser-starts":    func() { c.BrowserStarts = 1 },
		"idle-runs":         func() { c.IdleRuns = 1 },
		"idle-late":         func() { c.IdleLate = 60 },
		"busy-runs":         func() { c.BusyRuns = 1 },
		"driver-runs":       func() { c.DriverRuns = 20 },
		"kysely-runs":       func() { c.KyselyRuns = 3 },
		"copy-runs":         func() { c.CopyRuns = 1 },
		"copy-mb":           func() { c.CopyMB = 1 },
	}
	for name, f := range quick {
		if !set[name] {
			f()
		}
	}
}

func (c *Config) part(p string) bool { return len(c.Parts) == 0 || slices.Contains(c.Parts, p) }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// parseConfig reads the flags and their PGWASM_* variables; a variable
// counts as given, so -quick does not lower a count set in the environment.
func parseConfig(args []string, stderr io.Writer) (*Config, error) {
	var cfg Config
	fs := flag.NewFlagSet("pgwasm-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.RegisterFlags(fs)
	// The usage text is laid out as pgwasm's own commands lay theirs out.
	fs.Usage = func() {
		fmt.Fprint(stderr, ffcli.DefaultUsageFunc(&ffcli.Command{
			Name:       "pgwasm-bench",
			ShortUsage: "pgwasm-bench [flags] (every flag also as PGWASM_<NAME>, e.g. PGWASM_IMAGE)",
			ShortHelp:  "measure pgwasm side by side with PGlite and native PostgreSQL; write docs/BENCHMARKS.md",
			FlagSet:    fs,
		}))
	}
	if err := ff.Parse(fs, args, ff.WithEnvVarPrefix("PGWASM")); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	cfg.applyQuick(set)
	if len(cfg.Memory) == 0 {
		// Issue #6 asks for the state per memory size; the first is the one
		// the page restores by default.
		cfg.Memory = []int{manifest.DefaultMemoryMB, 256, 512}
	}
	cfg.Args = strings.Join(args, " ")
	return &cfg, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseConfig(args, stderr)
	if err != nil {
		// Help and bad flags exit 2, as pgwasm's own commands do.
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stderr, "pgwasm-bench: %v\n", err)
		}
		return 2
	}
	level := slog.LevelInfo
	if cfg.Verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	if err := checkModuleRoot(); err != nil {
		logger.Error("cannot run", "err", err)
		return 1
	}
	start := time.Now()
	rep := &report{Cfg: cfg, Env: collectEnv(ctx, cfg, logger)}
	if cfg.part("vm") {
		rep.VM = measureVM(ctx, cfg, logger, &rep.Errors)
	}
	if cfg.part("net") {
		rep.Net = measureNet(ctx, cfg, logger, &rep.Errors)
	}
	if cfg.part("idle") {
		rep.Idle = measureIdle(ctx, cfg, logger, &rep.Errors)
	}
	if cfg.part("busy") {
		rep.Busy = measureBusy(ctx, cfg, logger, &rep.Errors)
	}
	if cfg.part("drivers") {
		rep.Drivers = measureDrivers(ctx, cfg, logger, &rep.Errors)
	}
	if cfg.part("copy") {
		rep.Copy = measureCopy(ctx, cfg, logger, &rep.Errors)
	}
	var cluster *clusterResults
	if cfg.part("cluster") {
		cluster = measureCluster(ctx, cfg, logger, &rep.Errors)
	}
	// The comparison goes last: it is the one part that takes fewer runs
	// when time is short, so it gets what the fixed-length parts left.
	if cfg.part("compare") {
		cfg.CompareBudget = fitBudget(ctx, cfg.CompareBudget, compareTail)
		rep.Cmp = measureCompare(ctx, cfg, logger, &rep.Errors)
	}
	rep.Env.Wall = time.Since(start).Round(time.Second).String()
	rep.Env.LoadEnd = loadAvg()

	var buf bytes.Buffer
	rep.write(&buf)
	if cluster != nil {
		cluster.write(&buf)
	}
	if _, err := stdout.Write(buf.Bytes()); err != nil {
		logger.Error("cannot write the report", "err", err)
		return 1
	}
	if cfg.Out != "" {
		if err := writeFileAtomic(cfg.Out, buf.Bytes()); err != nil {
			logger.Error("cannot write the report", "err", err)
			return 1
		}
		logger.Info("report written", "path", cfg.Out, "wall", rep.Env.Wall)
	}
	if len(rep.Errors) > 0 {
		logger.Error("some measurements failed; the report lists them", "failures", len(rep.Errors))
		return 1
	}
	return 0
}

// compareTail is what the comparison still takes after its budget has run
// out: the first run of each kind always runs (PGlite and our page in Node
// and Chromium, the query sets, one run of each pgbench case).
const compareTail = 8 * time.Minute

// fitBudget shortens a part's budget so that the part, with the tail it runs
// past its budget, ends before ctx's deadline.
func fitBudget(ctx context.Context, budget, tail time.Duration) time.Duration {
	deadline, ok := ctx.Deadline()
	if !ok {
		return budget
	}
	return max(0, min(budget, time.Until(deadline)-tail))
}

// checkModuleRoot makes sure `go test ./internal/...` runs in this module.
func checkModuleRoot() error {
	data, err := os.ReadFile("go.mod")
	if err != nil {
		return fmt.Errorf("run from the repository root (go.mod): %w", err)
	}
	if !bytes.Contains(data, []byte("module github.com/pgwasm/pgwasm")) {
		return errors.New("go.mod here is not github.com/pgwasm/pgwasm: run from the repository root")
	}
	return nil
}

// writeFileAtomic writes through a temporary file and a rename, so an
// interrupted run leaves the previous report in place.
func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".bench-*")
	if err != nil {
		return fmt.Errorf("cannot create the report file: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("cannot write the report file: %w", err)
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return fmt.Errorf("cannot write the report file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cannot write the report file: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("cannot put the report in place: %w", err)
	}
	return nil
}

// pageEnv is the environment of web/test/bench.mjs: this run's pgwasm
// binary and image, for its `pgwasm serve`.
func (c *Config) pageEnv() []string {
	return append(os.Environ(), "PGWASM_BIN="+c.Bin, "PGWASM_IMAGE="+absPath(c.ImageDir))
}
