package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// BenchResults maps a benchmark name (without the -GOMAXPROCS suffix) and a
// unit ("ns/op", "MB/s", "relay-bytes/attached-session", ...) to the values
// of every run.
type BenchResults map[string]map[string]Sample

// Get returns the summary of one benchmark's metric.
func (r BenchResults) Get(name, unit string) Summary {
	return r[name][unit].Summarize()
}

// merge adds o's values to r.
func (r BenchResults) merge(o BenchResults) {
	for name, units := range o {
		if r[name] == nil {
			r[name] = map[string]Sample{}
		}
		for u, v := range units {
			r[name][u] = append(r[name][u], v...)
		}
	}
}

// benchLine is a result line of `go test -bench`:
// "BenchmarkX/sub-2   1234   5678 ns/op   12.3 MB/s   4.5 cpu-ns/B".
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)

// parseBench reads `go test -bench` output and returns its results.
func parseBench(r io.Reader) (BenchResults, error) {
	res := BenchResults{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		fields := strings.Fields(m[3])
		if len(fields)%2 != 0 {
			continue
		}
		name := m[1]
		for i := 0; i < len(fields); i += 2 {
			v, err := strconv.ParseFloat(fields[i], 64)
			if err != nil {
				continue
			}
			if res[name] == nil {
				res[name] = map[string]Sample{}
			}
			res[name][fields[i+1]] = append(res[name][fields[i+1]], v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read benchmark output: %w", err)
	}
	return res, nil
}

// goBench is one `go test -bench` invocation.
type goBench struct {
	Pkg       string // ./internal/relay/
	Bench     string // -bench pattern
	Benchtime string
	Count     int
	Timeout   time.Duration
}

func (g goBench) args() []string {
	return []string{"test", "-run", "^$", "-bench", g.Bench, "-benchtime", g.Benchtime,
		"-count", strconv.Itoa(g.Count), "-timeout", g.Timeout.String(), g.Pkg}
}

// String is the command line, for the report.
func (g goBench) String() string {
	a := g.args()
	for i, s := range a {
		if strings.ContainsAny(s, "^$|/()") {
			a[i] = "'" + s + "'"
		}
	}
	return "go " + strings.Join(a, " ")
}

// run runs the benchmarks and parses their output. A failing or skipped
// benchmark is an error carrying the tail of its output.
func (g goBench) run(ctx context.Context, goCmd string, logger *slog.Logger) (BenchResults, error) {
	logger.Info("go benchmark", "cmd", g.String())
	t := time.Now()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, goCmd, g.args()...)
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	res, perr := parseBench(bytes.NewReader(out.Bytes()))
	logger.Info("go benchmark done", "pkg", g.Pkg, "bench", g.Bench, "seconds", time.Since(t).Round(time.Second).Seconds(), "results", len(res))
	if err != nil {
		return res, fmt.Errorf("%s: %w\n%s", g, err, tail(out.String(), 2000))
	}
	if perr != nil {
		return res, perr
	}
	if len(res) == 0 {
		return res, fmt.Errorf("%s: no benchmark results (skipped?)\n%s", g, tail(out.String(), 2000))
	}
	if s := out.String(); strings.Contains(s, "--- SKIP") {
		fmt.Fprintln(os.Stderr, tail(s, 2000))
	}
	return res, nil
}

// runGoBenches runs each benchmark in turn and merges the results; a
// failing run is logged and added to errs, and the rest still run.
func runGoBenches(ctx context.Context, runs []goBench, goCmd string, logger *slog.Logger, errs *[]string) (BenchResults, []string) {
	all := BenchResults{}
	var commands []string
	for _, g := range runs {
		commands = append(commands, g.String())
		res, err := g.run(ctx, goCmd, logger)
		all.merge(res)
		if err != nil {
			logger.Error("go benchmark failed", "err", err)
			*errs = append(*errs, err.Error())
		}
	}
	return all, commands
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
