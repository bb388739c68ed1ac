package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgwasm/pgwasm/internal/server"
	"github.com/pgwasm/pgwasm/internal/testkit"
	"github.com/pgwasm/pgwasm/internal/testkit/servetest"
	"github.com/pgwasm/pgwasm/internal/vm"
)

// querySpec is bench/queries.json: the SQL run unchanged on PGlite, the VM
// and native PostgreSQL.
type querySpec struct {
	Reset     []string `json:"reset"`
	Setup     []string `json:"setup"`
	SetupRuns int      `json:"setup_runs"`
	Queries   []struct {
		Name   string `json:"name"`
		Label  string `json:"label"`
		SQL    string `json:"sql"`
		Before string `json:"before"`
		Runs   int    `json:"runs"`
		Script *struct {
			Prefix string `json:"prefix"`
			Repeat string `json:"repeat"`
			Count  int    `json:"count"`
			Suffix string `json:"suffix"`
		} `json:"script"`
	} `json:"queries"`
}

func loadQuerySpec(path string) (*querySpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read the query set: %w", err)
	}
	var s querySpec
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("query set %s: %w", path, err)
	}
	return &s, nil
}

// sql is the statement (or script) a query sends; script reports whether it
// goes as one simple-protocol message of many statements.
func (s *querySpec) sql(i int) (sql string, script bool) {
	q := s.Queries[i]
	if q.Script == nil {
		return q.SQL, false
	}
	var b strings.Builder
	b.WriteString(q.Script.Prefix)
	for n := 1; n <= q.Script.Count; n++ {
		b.WriteString(strings.ReplaceAll(q.Script.Repeat, "{i}", strconv.Itoa(n)))
	}
	b.WriteString(q.Script.Suffix)
	return b.String(), true
}

// sqlRunner is one database under test: exec runs a script (simple
// protocol), query one statement.
type sqlRunner struct {
	exec  func(ctx context.Context, sql string) error
	query func(ctx context.Context, sql string) error
}

// runQuerySet runs the setup (setup_runs times, each after the reset
// statements) and times each query; runs is the minimum count (a query's
// own runs wins when larger), one untimed warm-up first. budget stops
// further runs (not the first) once passed. bench/measure.mjs has the same
// loop for the JavaScript databases.
func runQuerySet(ctx context.Context, spec *querySpec, db sqlRunner, runs int, budget time.Time, logger *slog.Logger, who string) (map[string]Sample, Sample, error) {
	out := map[string]Sample{}
	var setup Sample
	for i := range max(spec.SetupRuns, 1) {
		if i > 0 && time.Now().After(budget) {
			logger.Warn("time budget: fewer setup runs", "db", who, "runs", i)
			break
		}
		for _, s := range spec.Reset {
			if err := db.exec(ctx, s); err != nil {
				return out, setup, fmt.Errorf("%s reset %q: %w", who, s, err)
			}
		}
		t := time.Now()
		for _, s := range spec.Setup {
			if err := db.exec(ctx, s); err != nil {
				return out, setup, fmt.Errorf("%s setup %q: %w", who, s, err)
			}
		}
		setup = append(setup, ms(time.Since(t)))
	}
	for i, q := range spec.Queries {
		sql, script := spec.sql(i)
		do := db.query
		if script {
			do = db.exec
		}
		n := max(runs, q.Runs)
		for r := -1; r < n; r++ {
			if r > 0 && time.Now().After(budget) {
				logger.Warn("time budget: fewer runs", "db", who, "query", q.Name, "runs", r)
				break
			}
			if q.Before != "" {
				if err := db.exec(ctx, q.Before); err != nil {
					return out, setup, fmt.Errorf("%s %s: %w", who, q.Before, err)
				}
			}
			t := time.Now()
			if err := do(ctx, sql); err != nil {
				return out, setup, fmt.Errorf("%s %s: %w", who, q.Name, err)
			}
			if r >= 0 { // r = -1 is the warm-up
				out[q.Name] = append(out[q.Name], ms(time.Since(t)))
			}
		}
		logger.Info("query set", "db", who, "query", q.Name, "median_ms", out[q.Name].Summarize().Median)
	}
	return out, setup, nil
}

func vmRunner(v *vm.VM) sqlRunner {
	return sqlRunner{
		exec:  func(ctx context.Context, sql string) error { _, err := v.Exec(ctx, sql); return err },
		query: func(ctx context.Context, sql string) error { _, err := v.Query(ctx, sql); return err },
	}
}

func pgxRunner(c *pgx.Conn) sqlRunner {
	return sqlRunner{
		// Exec without arguments uses the simple protocol: a script goes as one message.
		exec: func(ctx context.Context, sql string) error { _, err := c.Exec(ctx, sql); return err },
		query: func(ctx context.Context, sql string) error {
			rows, err := c.Query(ctx, sql)
			if err != nil {
				return err
			}
			rows.Close()
			return rows.Err()
		},
	}
}

// pgliteStart is `node bench/pglite.mjs start`.
type pgliteStart struct {
	Version  string `json:"version"`
	Postgres string `json:"postgres"`
	RSS      int64  `json:"rss"`
	Cold     struct {
		ProcessMS float64 `json:"process_to_first_query_ms"`
		Bytes     float64 `json:"bytes"`
	} `json:"cold"`
	Warm struct {
		FirstQueryMS float64 `json:"first_query_ms"`
		Bytes        float64 `json:"bytes"`
	} `json:"warm"`
}

// jsQuerySet is what bench/measure.mjs's runQuerySet returns.
type jsQuerySet struct {
	Version string               `json:"version"`
	SetupMS []float64            `json:"setup_ms"`
	Queries map[string][]float64 `json:"queries"`
	RSS     int64                `json:"rss"`
}

type browserStart struct {
	FirstQueryMS float64 `json:"first_query_ms"`
	Bytes        float64 `json:"bytes"`
	CodeBytes    float64 `json:"code_bytes"`
	DataBytes    float64 `json:"data_bytes"`
}

type pgliteBrowser struct {
	Version  string         `json:"version"`
	Chromium string         `json:"chromium"`
	Cold     []browserStart `json:"cold"`
	Warm     []browserStart `json:"warm"`
	QuerySet *jsQuerySet    `json:"query_set"`
}

// ourPage is what web/test/bench.mjs prints.
type ourPage struct {
	ColdMS        float64     `json:"cold_first_query_ms"`
	ColdBytes     float64     `json:"cold_bytes"`
	ColdCodeBytes float64     `json:"cold_code_bytes"`
	ColdDataBytes float64     `json:"cold_data_bytes"`
	WarmMS        float64     `json:"warm_first_query_ms"`
	WarmBytes     float64     `json:"warm_bytes"`
	QuerySet      *jsQuerySet `json:"query_set"`
}

// pgbenchCase is one pgbench configuration.
type pgbenchCase struct {
	Name    string // "select-only" or "tpcb-like"
	Clients int
	// Variant takes one cost out of tpcb-like's transaction, so the rows
	// side by side say where the time goes (docs/vm.md): "prepared" (-M
	// prepared: no parse and plan per statement) or "async"
	// (synchronous_commit=off: no wait for the WAL flush). "" is pgbench's
	// default.
	Variant string
}

func (c pgbenchCase) key() string {
	if c.Variant != "" {
		return fmt.Sprintf("%s/%d/%s", c.Name, c.Clients, c.Variant)
	}
	return fmt.Sprintf("%s/%d", c.Name, c.Clients)
}

// args are pgbench's options for the case, and env what it adds to the
// environment (libpq passes PGOPTIONS to the server as session settings).
func (c pgbenchCase) args(seconds int) (args, env []string) {
	args = []string{"-n", "-c", strconv.Itoa(c.Clients), "-j", strconv.Itoa(c.Clients), "-T", strconv.Itoa(seconds)}
	if c.Name == "select-only" {
		args = append(args, "-S")
	}
	switch c.Variant {
	case "prepared":
		args = append(args, "-M", "prepared")
	case "async":
		env = append(env, "PGOPTIONS=-c synchronous_commit=off")
	}
	return args, env
}

var pgbenchCases = []pgbenchCase{
	{"select-only", 1, ""}, {"select-only", 4, ""}, {"tpcb-like", 1, ""}, {"tpcb-like", 4, ""},
	{"tpcb-like", 4, "prepared"}, {"tpcb-like", 4, "async"},
}

// compareResults are the side-by-side figures of issue #6.
type compareResults struct {
	PGliteVersion, PGlitePostgres, Chromium string
	VMVersion, NativeVersion                string

	// Start in Node.
	PGliteColdMS, PGliteColdBytes, PGliteWarmMS, PGliteWarmBytes Sample

	// Query set: keyed by query name. Browser* ran in Chromium: PGlite's
	// API and our page's (window.pgwasm).
	PGliteQ, VMQ, NativeQ               map[string]Sample
	PGliteSetup, VMSetup, NativeSetup   Sample
	PGliteBrowserQ, OurBrowserQ         map[string]Sample
	PGliteBrowserSetup, OurBrowserSetup Sample

	// psql through the tunnel and natively over loopback TCP.
	TunnelPsqlConnect, NativePsqlConnect Sample // psql -c 'select 1', whole process
	TunnelPsqlRTT, NativePsqlRTT         Sample // \timing of select 1 in one session

	// pgbench TPS and latency, keyed by pgbenchCase.key().
	PgbenchVM, PgbenchNative       map[string]Sample
	PgbenchVMLat, PgbenchNativeLat map[string]Sample
	PgbenchInitVM                  Sample
	PgbenchSeconds                 int

	// Chromium; cold bytes also split into code (JavaScript, wasm, BIOS,
	// HTML, CSS) and data (our VM state and 9p files; PGlite's pglite.data).
	PGliteBrowserCold, PGliteBrowserColdBytes, PGliteBrowserWarm, PGliteBrowserWarmBytes Sample
	PGliteBrowserColdCode, PGliteBrowserColdData                                         Sample
	OurPageCold, OurPageColdBytes, OurPageWarm, OurPageWarmBytes                         Sample
	OurPageColdCode, OurPageColdData                                                     Sample

	Bundle bundleSize // the browser app as built (internal/web/dist)
	Spec   *querySpec // the query set that ran (nil: it could not be read)

	Notes []string
}

// measureCompare runs the comparison with PGlite and native PostgreSQL.
func measureCompare(ctx context.Context, cfg *Config, logger *slog.Logger, errs *[]string) *compareResults {
	r := &compareResults{
		VMQ: map[string]Sample{}, NativeQ: map[string]Sample{}, PGliteQ: map[string]Sample{}, PGliteBrowserQ: map[string]Sample{}, OurBrowserQ: map[string]Sample{},
		PgbenchVM: map[string]Sample{}, PgbenchNative: map[string]Sample{}, PgbenchVMLat: map[string]Sample{}, PgbenchNativeLat: map[string]Sample{},
		PgbenchSeconds: cfg.PgbenchSeconds,
	}
	fail := func(what string, err error) {
		logger.Error(what, "err", err)
		*errs = append(*errs, fmt.Sprintf("%s: %v", what, err))
	}
	budget := time.Now().Add(cfg.CompareBudget)
	spec, err := loadQuerySpec(filepath.Join(cfg.BenchDir, "queries.json"))
	if err != nil {
		fail("query set", err)
		return r
	}
	r.Spec = spec
	script := filepath.Join(cfg.BenchDir, "pglite.mjs")
	if b, err := measureBundle(filepath.Join("internal", "web", "dist")); err != nil {
		fail("app bundle size", err)
	} else {
		r.Bundle = b
	}

	// 1. PGlite in Node: each start in a fresh process.
	for i := range cfg.Starts {
		if i > 0 && time.Now().After(budget) {
			break
		}
		var s pgliteStart
		if err := runJSON(ctx, logger, &s, 3*time.Minute, nil, "node", script, "start"); err != nil {
			fail("PGlite start in Node", err)
			break
		}
		r.PGliteVersion, r.PGlitePostgres = s.Version, shortVersion(s.Postgres)
		r.PGliteColdMS = append(r.PGliteColdMS, s.Cold.ProcessMS)
		r.PGliteColdBytes = append(r.PGliteColdBytes, s.Cold.Bytes)
		r.PGliteWarmMS = append(r.PGliteWarmMS, s.Warm.FirstQueryMS)
		r.PGliteWarmBytes = append(r.PGliteWarmBytes, s.Warm.Bytes)
		logger.Info("PGlite start", "run", i+1, "cold_ms", s.Cold.ProcessMS, "warm_ms", s.Warm.FirstQueryMS)
	}
	var pq jsQuerySet
	if err := runJSON(ctx, logger, &pq, 5*time.Minute, nil, "node", script, "queries", "--runs", strconv.Itoa(cfg.QuerySetRuns)); err != nil {
		fail("PGlite query set in Node", err)
	} else {
		r.PGliteSetup = pq.into(r.PGliteQ)
	}

	// 2. Native: the host's PostgreSQL, query set over its Unix socket.
	pg, err := startNativePG(ctx, cfg.NativeBinDir, logger)
	if err != nil {
		fail("native PostgreSQL", err)
	} else {
		defer pg.stop()
		if conn, err := pg.connect(ctx); err != nil {
			fail("native PostgreSQL", err)
		} else {
			var ver string
			if err := conn.QueryRow(ctx, "select version()").Scan(&ver); err == nil {
				r.NativeVersion = shortVersion(ver)
			}
			q, setup, err := runQuerySet(ctx, spec, pgxRunner(conn), max(cfg.QuerySetRuns, 5), budget.Add(time.Hour), logger, "native")
			r.NativeQ, r.NativeSetup = q, setup
			if err != nil {
				fail("native query set", err)
			}
			conn.Close(context.WithoutCancel(ctx))
		}
	}

	// 3. Us: pgwasm serve + the VM restored with its NIC on the relay; the
	// query set through the agent, psql and pgbench through the port tunnel.
	if cfg.Bin == "" {
		fail("VM comparison", fmt.Errorf("no pgwasm binary: set PGWASM_BIN or -bin"))
	} else if err := compareVM(ctx, cfg, spec, pg, r, budget, logger, fail); err != nil {
		fail("VM comparison", err)
	}

	// 4. Chromium: PGlite's page, then ours.
	if cfg.Browser {
		var pb pgliteBrowser
		if err := runJSON(ctx, logger, &pb, 8*time.Minute, nil, "node", script, "browser", "--starts", strconv.Itoa(cfg.BrowserStarts), "--runs", strconv.Itoa(cfg.QuerySetRuns)); err != nil {
			fail("PGlite in Chromium", err)
		} else {
			r.Chromium = pb.Chromium
			for _, s := range pb.Cold {
				r.PGliteBrowserCold = append(r.PGliteBrowserCold, s.FirstQueryMS)
				r.PGliteBrowserColdBytes = append(r.PGliteBrowserColdBytes, s.Bytes)
				r.PGliteBrowserColdCode = append(r.PGliteBrowserColdCode, s.CodeBytes)
				r.PGliteBrowserColdData = append(r.PGliteBrowserColdData, s.DataBytes)
			}
			for _, s := range pb.Warm {
				r.PGliteBrowserWarm = append(r.PGliteBrowserWarm, s.FirstQueryMS)
				r.PGliteBrowserWarmBytes = append(r.PGliteBrowserWarmBytes, s.Bytes)
			}
			if pb.QuerySet != nil {
				r.PGliteBrowserSetup = pb.QuerySet.into(r.PGliteBrowserQ)
			}
		}
		env := cfg.pageEnv()
		for i := range cfg.BrowserStarts {
			if i > 0 && time.Now().After(budget) {
				r.Notes = append(r.Notes, fmt.Sprintf("our page in Chromium: %d of %d runs (time budget)", i, cfg.BrowserStarts))
				break
			}
			var op ourPage
			a := []string{"web/test/bench.mjs"}
			if i == 0 { // the query set once, as for PGlite
				a = append(a, "--queries", filepath.Join(cfg.BenchDir, "queries.json"), "--runs", strconv.Itoa(cfg.QuerySetRuns))
			}
			if err := runJSON(ctx, logger, &op, 15*time.Minute, env, "node", a...); err != nil {
				fail("our page in Chromium", err)
				break
			}
			if op.QuerySet != nil {
				r.OurBrowserSetup = op.QuerySet.into(r.OurBrowserQ)
			}
			r.OurPageCold = append(r.OurPageCold, op.ColdMS)
			r.OurPageColdBytes = append(r.OurPageColdBytes, op.ColdBytes)
			r.OurPageColdCode = append(r.OurPageColdCode, op.ColdCodeBytes)
			r.OurPageColdData = append(r.OurPageColdData, op.ColdDataBytes)
			r.OurPageWarm = append(r.OurPageWarm, op.WarmMS)
			r.OurPageWarmBytes = append(r.OurPageWarmBytes, op.WarmBytes)
			logger.Info("our page", "run", i+1, "cold_ms", op.ColdMS, "warm_ms", op.WarmMS)
		}
	}
	return r
}

// into copies the query times into m and returns the setup times.
func (q *jsQuerySet) into(m map[string]Sample) Sample {
	for k, v := range q.Queries {
		m[k] = v
	}
	return q.SetupMS
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// compareVM runs the VM's share of the comparison.
func compareVM(ctx context.Context, cfg *Config, spec *querySpec, native *nativePG, r *compareResults, budget time.Time, logger *slog.Logger, fail func(string, error)) error {
	srv, err := startServe(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer srv.stop(logger)
	se, err := srv.createSession(ctx)
	if err != nil {
		return err
	}
	v, err := vm.Start(ctx, vm.Options{ImageDir: cfg.ImageDir, Memory: cfg.Memory[0], RelayURL: se.RelayURL,
		HarnessDir: cfg.HarnessDir, Logger: logger, ReadyTimeout: 3 * time.Minute})
	if err != nil {
		return fmt.Errorf("cannot start the VM: %w", err)
	}
	defer closeVM(v, logger)
	if _, err := v.Request(ctx, map[string]any{"op": "net_up"}); err != nil {
		return fmt.Errorf("net_up: %w", err)
	}
	password := fmt.Sprintf("bench%d", time.Now().UnixNano())
	if _, err := v.Request(ctx, map[string]any{"op": "set_password", "user": "postgres", "password": password}); err != nil {
		return fmt.Errorf("set_password: %w", err)
	}

	if res, err := v.Query(ctx, "select version()"); err == nil && len(res.Rows) == 1 && res.Rows[0][0] != nil {
		r.VMVersion = shortVersion(*res.Rows[0][0])
	}
	q, setup, err := runQuerySet(ctx, spec, vmRunner(v), cfg.QuerySetRuns, budget, logger, "VM")
	r.VMQ, r.VMSetup = q, setup
	if err != nil {
		fail("VM query set", err)
	}

	tunnel := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=require connect_timeout=30", se.Tunnel.Port.Port)
	tunnelEnv := append(os.Environ(), "PGPASSWORD="+password, "PAGER=cat")
	var nativeConn string
	if native != nil && native.Port > 0 {
		nativeConn = fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable connect_timeout=10", native.Port)
	}
	psqlRuns := max(cfg.QuerySetRuns, 5)
	for _, t := range []struct {
		conn       string
		connect    *Sample
		rtt        *Sample
		who        string
		psqlBinDir string
	}{{tunnel, &r.TunnelPsqlConnect, &r.TunnelPsqlRTT, "tunnel", cfg.NativeBinDir}, {nativeConn, &r.NativePsqlConnect, &r.NativePsqlRTT, "native", cfg.NativeBinDir}} {
		if t.conn == "" {
			continue
		}
		psql := filepath.Join(t.psqlBinDir, "psql")
		for range psqlRuns {
			start := time.Now()
			if _, err := cmdRun(ctx, tunnelEnv, "", psql, "-XAtq", "-d", t.conn, "-c", "select 1"); err != nil {
				fail("psql "+t.who, err)
				break
			}
			*t.connect = append(*t.connect, ms(time.Since(start)))
		}
		in := "\\timing on\n" + strings.Repeat("select 1;\n", 21)
		out, err := cmdRun(ctx, tunnelEnv, in, psql, "-XAtq", "-d", t.conn)
		if err != nil {
			fail("psql round trips "+t.who, err)
			continue
		}
		for i, m := range psqlTimeRE.FindAllStringSubmatch(out, -1) {
			if f, err := strconv.ParseFloat(m[1], 64); err == nil && i > 0 { // the first is a warm-up
				*t.rtt = append(*t.rtt, f)
			}
		}
	}

	// pgbench: initialise through the tunnel, then each case on both.
	pgbench := filepath.Join(cfg.NativeBinDir, "pgbench")
	for i := range cfg.PgbenchRuns {
		if i > 0 && time.Now().After(budget) {
			break
		}
		start := time.Now()
		if _, err := cmdRun(ctx, tunnelEnv, "", pgbench, "-i", "-q", "-s", "1", tunnel); err != nil {
			return fmt.Errorf("pgbench -i through the tunnel: %w", err)
		}
		r.PgbenchInitVM = append(r.PgbenchInitVM, ms(time.Since(start)))
	}
	if nativeConn != "" {
		if _, err := cmdRun(ctx, tunnelEnv, "", pgbench, "-i", "-q", "-s", "1", nativeConn); err != nil {
			fail("pgbench -i native", err)
			nativeConn = ""
		}
	}
	for _, c := range pgbenchCases {
		for i := range cfg.PgbenchRuns {
			if i > 0 && time.Now().After(budget) {
				r.Notes = append(r.Notes, fmt.Sprintf("pgbench %s: %d of %d runs (time budget)", c.key(), i, cfg.PgbenchRuns))
				break
			}
			for _, t := range []struct {
				conn     string
				tps, lat map[string]Sample
				who      string
			}{{tunnel, r.PgbenchVM, r.PgbenchVMLat, "VM"}, {nativeConn, r.PgbenchNative, r.PgbenchNativeLat, "native"}} {
				if t.conn == "" {
					continue
				}
				a, env := c.args(cfg.PgbenchSeconds)
				// pgbench -T waits for transactions in flight: a stalled
				// connection would hold the whole bench, so cap each run.
				pctx, cancel := context.WithTimeout(ctx, time.Duration(cfg.PgbenchSeconds+60)*time.Second)
				out, err := cmdRun(pctx, append(tunnelEnv[:len(tunnelEnv):len(tunnelEnv)], env...), "", pgbench, append(a, t.conn)...)
				stalled := pctx.Err() != nil && ctx.Err() == nil
				cancel()
				if stalled {
					err = fmt.Errorf("no result %d s after its -T %d (a stalled connection): %w", 60, cfg.PgbenchSeconds, err)
				}
				if err != nil {
					fail("pgbench "+c.key()+" "+t.who, err)
					continue
				}
				tps, lat, ok := parsePgbench(out)
				if !ok {
					fail("pgbench "+c.key()+" "+t.who, fmt.Errorf("no tps in output: %s", tail(out, 500)))
					continue
				}
				t.tps[c.key()] = append(t.tps[c.key()], tps)
				t.lat[c.key()] = append(t.lat[c.key()], lat)
				logger.Info("pgbench", "case", c.key(), "db", t.who, "tps", tps, "latency_ms", lat)
			}
		}
	}
	return nil
}

var (
	psqlTimeRE      = regexp.MustCompile(`(?m)^Time: ([0-9.]+) ms`)
	pgbenchTPSRE    = regexp.MustCompile(`(?m)^tps = ([0-9.]+)`)
	pgbenchLatencRE = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
)

// parsePgbench returns tps (without initial connection time) and the
// average latency in ms.
func parsePgbench(out string) (tps, lat float64, ok bool) {
	m := pgbenchTPSRE.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, false
	}
	tps, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, 0, false
	}
	if l := pgbenchLatencRE.FindStringSubmatch(out); l != nil {
		lat, _ = strconv.ParseFloat(l[1], 64)
	}
	return tps, lat, true
}

// cmdRun runs a command with stdin and returns stdout and stderr together.
func cmdRun(ctx context.Context, env []string, stdin string, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w: %s", filepath.Base(name), err, tail(out.String(), 800))
	}
	return out.String(), nil
}

// runJSON runs a Node script that prints one JSON object as its last line.
func runJSON(ctx context.Context, logger *slog.Logger, v any, timeout time.Duration, env []string, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	logger.Info("running", "cmd", name+" "+strings.Join(args, " "))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(stderr.String(), 800))
	}
	logger.Debug("node output", "stderr", tail(stderr.String(), 2000))
	out := strings.TrimSpace(stdout.String())
	// The last JSON object on stdout (bench.mjs pretty-prints one object).
	if i := strings.LastIndex(out, "\n{"); i >= 0 && !json.Valid([]byte(out)) {
		out = out[i+1:]
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("%s %s: output: %w: %s", name, strings.Join(args, " "), err, tail(out, 300))
	}
	return nil
}

// serveProc is a `pgwasm serve` on loopback with a port-mode tunnel range.
type serveProc struct {
	*servetest.Proc
	log *os.File
}

func startServe(ctx context.Context, cfg *Config, logger *slog.Logger) (*serveProc, error) {
	first, err := testkit.FindRange("127.0.0.1", 8)
	if err != nil {
		return nil, fmt.Errorf("no free tunnel ports for pgwasm serve: %w", err)
	}
	f, err := os.CreateTemp("", "pgwasm-bench-serve-*.log")
	if err != nil {
		return nil, err
	}
	p, err := servetest.Start(ctx, servetest.Options{Bin: cfg.Bin, Output: f, Args: []string{
		"--listen", "127.0.0.1:0",
		"--image", cfg.ImageDir,
		"--tunnel-ports", fmt.Sprintf("%d-%d", first, first+7),
		"--tunnel-bind", "127.0.0.1", "--tunnel-host", "127.0.0.1",
		"--tunnel-sni-listen", "127.0.0.1:0",
		"--dns", "127.0.0.1:1", "--shutdown-timeout", "3s"}})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%w (log: %s)", err, f.Name())
	}
	logger.Info("pgwasm serve up", "http", p.URL, "log", f.Name())
	return &serveProc{Proc: p, log: f}, nil
}

func (s *serveProc) createSession(ctx context.Context) (*server.SessionInfo, error) {
	se, err := servetest.CreateSession(ctx, s.URL)
	if err != nil {
		return nil, err
	}
	if se.Tunnel == nil || se.Tunnel.Port == nil {
		return nil, fmt.Errorf("POST /api/sessions: no port tunnel in %+v", se)
	}
	return se, nil
}

func (s *serveProc) stop(logger *slog.Logger) {
	s.Stop()
	s.log.Close()
	os.Remove(s.log.Name())
	logger.Debug("pgwasm serve stopped")
}
