package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// driversResults are issue #18's targets: PostgreSQL drivers from npm on
// pg.nodeSocket() in Chromium, side by side with PGlite in the same
// browser; one `node web/test/bench.mjs --drivers` run.
type driversResults struct {
	Runs, Warm, KyselyRuns int

	Chromium, PGliteVersion, NodePostgres, Kysely, KyselyPGlite string

	// `select 1` round trips (ms): node-postgres over nodeSocket() and the
	// page API's pg.query, in turns in our page; PGlite's query in its own.
	NodePostgres1, API1, PGlite1 Sample
	// Kysely: one INSERT of 1,000 rows and the select of them back (ms).
	KyselyUs, KyselyPGliteMS Sample

	LoadBefore, LoadAfter []float64
}

// ourDrivers is what web/test/bench.mjs --drivers prints.
type ourDrivers struct {
	Chromium      string    `json:"chromium"`
	PGliteVersion string    `json:"pglite_version"`
	NodePostgres  string    `json:"node_postgres_version"`
	Kysely        string    `json:"kysely_version"`
	KyselyPGlite  string    `json:"kysely_pglite_dialect_version"`
	LoadBefore    []float64 `json:"load_before"`
	LoadAfter     []float64 `json:"load_after"`
	Ours          struct {
		Select1 struct {
			NodePostgres []float64 `json:"node_postgres"`
			API          []float64 `json:"api"`
		} `json:"select1_ms"`
		Kysely []float64 `json:"kysely_ms"`
	} `json:"ours"`
	PGlite struct {
		Select1 struct {
			PGlite []float64 `json:"pglite"`
		} `json:"select1_ms"`
		Kysely []float64 `json:"kysely_ms"`
	} `json:"pglite"`
}

func (o *ourDrivers) results(runs, warm, kyRuns int) *driversResults {
	return &driversResults{
		Runs: runs, Warm: warm, KyselyRuns: kyRuns,
		Chromium: o.Chromium, PGliteVersion: o.PGliteVersion, NodePostgres: o.NodePostgres, Kysely: o.Kysely, KyselyPGlite: o.KyselyPGlite,
		NodePostgres1: o.Ours.Select1.NodePostgres, API1: o.Ours.Select1.API, PGlite1: o.PGlite.Select1.PGlite,
		KyselyUs: o.Ours.Kysely, KyselyPGliteMS: o.PGlite.Kysely,
		LoadBefore: o.LoadBefore, LoadAfter: o.LoadAfter,
	}
}

func measureDrivers(ctx context.Context, cfg *Config, logger *slog.Logger, errs *[]string) *driversResults {
	env := cfg.pageEnv()
	var out ourDrivers
	err := runJSON(ctx, logger, &out, 15*time.Minute, env, "node", "web/test/bench.mjs",
		"--drivers", strconv.Itoa(cfg.DriverRuns), "--warm", strconv.Itoa(cfg.DriverWarm), "--kysely-runs", strconv.Itoa(cfg.KyselyRuns))
	if err != nil {
		*errs = append(*errs, fmt.Sprintf("drivers in Chromium: %v", err))
		return nil
	}
	r := out.results(cfg.DriverRuns, cfg.DriverWarm, cfg.KyselyRuns)
	logger.Info("drivers", "node_postgres_select1_ms", r.NodePostgres1.Summarize().Median, "api_select1_ms", r.API1.Summarize().Median,
		"pglite_select1_ms", r.PGlite1.Summarize().Median, "kysely_ms", r.KyselyUs.Summarize().Median, "kysely_pglite_ms", r.KyselyPGliteMS.Summarize().Median)
	return r
}

// fmtLoad prints a load average triple as uptime does.
func fmtLoad(l []float64) string {
	if len(l) == 0 {
		return "n/a"
	}
	s := make([]string, len(l))
	for i, v := range l {
		s[i] = fmt.Sprintf("%.2f", v)
	}
	return strings.Join(s, " ")
}

// driversWhy is where the docs explain a missed driver target.
const driversWhy = "[web.md](web.md#drivers-pgconnect): the socket's bytes take the agent's path through the emulated machine (virtio-console, the guest's scheduler and PostgreSQL at 20-30 MIPS), see [agent-protocol.md](agent-protocol.md)"

func (r *report) writeDrivers(w io.Writer) {
	d := r.Drivers
	fmt.Fprintf(w, "## Drivers on `pg.nodeSocket()`, side by side with PGlite (issue #18)\n\n")
	fmt.Fprintf(w, "One Chromium %s (`node web/test/bench.mjs --drivers %d --warm %d --kysely-runs %d`): our page from `pgwasm serve` with node-postgres %s and Kysely %s on `pg.nodeSocket()` (bundled by web/test/driver-bundle.mjs, as web/test/drivers.spec.mjs), then a page of PGlite %s (in-memory) with the same Kysely on `kysely-pglite-dialect` %s. ",
		d.Chromium, d.Runs, d.Warm, d.KyselyRuns, d.NodePostgres, d.Kysely, d.PGliteVersion, d.KyselyPGlite)
	fmt.Fprintf(w, "`select 1`: %d round trips after %d warm-up rounds; in our page node-postgres and the page API `pg.query` take turns (the order alternates), PGlite's `query` runs the same loop alone. ", d.Runs, d.Warm)
	fmt.Fprintf(w, "Kysely: one `insertInto(...).values(rows)` of 1,000 rows (a single multi-row INSERT, 2,000 parameters, no explicit transaction) and `selectFrom(...).selectAll()` of them back, timed together, each run on a fresh table, after one warm-up run. ")
	fmt.Fprintf(w, "Times are the pages' `performance.now()`, which Chromium rounds to 0.1 ms in a page that is not cross-origin isolated (neither is): PGlite's `select 1` is at that grain. ")
	fmt.Fprintf(w, "Host load average %s before, %s after.\n\n", fmtLoad(d.LoadBefore), fmtLoad(d.LoadAfter))

	tb := newTable(w, "measure", "us (pgwasm)", "PGlite", "us / PGlite", "target", "", "note")
	np, api, pgl := d.NodePostgres1.Summarize(), d.API1.Summarize(), d.PGlite1.Summarize()
	t := atMost("`select 1` round trip, node-postgres over `nodeSocket()`", np, 2, fmtMSFine2, driversWhy)
	r.targets = append(r.targets, t)
	tb.row(t.what, np.Format(fmtMSFine2), pgl.Format(fmtMSFine2), fmtRatio(Ratio(np, pgl)), t.goal(), t.verdict(),
		fmt.Sprintf("node-postgres / page API: %s", fmtRatio(Ratio(np, api))))
	tb.row("`select 1` round trip, page API `pg.query`", api.Format(fmtMSFine2), pgl.Format(fmtMSFine2), fmtRatio(Ratio(api, pgl)), "", "", "the guest agent's JSON path")
	ku, kp := d.KyselyUs.Summarize(), d.KyselyPGliteMS.Summarize()
	tb.row("Kysely: insert 1,000 rows (one statement) + select them back", ku.Format(fmtMS), kp.Format(fmtMS), fmtRatio(Ratio(ku, kp)), "against PGlite", "", "issue #18 sets no limit")
	fmt.Fprintln(w)
}

// fmtMSFine2 prints milliseconds with two decimals: PGlite's round trips
// are a fraction of one.
func fmtMSFine2(ms float64) string { return fmt.Sprintf("%.2f ms", ms) }
