package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

// A trimmed `node web/test/bench.mjs --drivers` output.
const driversJSON = `{
 "load_before": [1.5, 2, 3.25],
 "chromium": "142.0.7444.175",
 "pglite_version": "0.5.16",
 "node_postgres_version": "8.23.1",
 "kysely_version": "0.29.9",
 "kysely_pglite_dialect_version": "1.3.1",
 "ours": {"select1_ms": {"node_postgres": [3, 5, 4], "api": [6, 8, 7]}, "kysely_ms": [900, 1100, 1000]},
 "pglite": {"select1_ms": {"pglite": [0.25, 0.5, 0.75]}, "kysely_ms": [100, 90, 110]},
 "load_after": [2, 2, 3]
}`

func TestDriversResults(t *testing.T) {
	var o ourDrivers
	if err := json.Unmarshal([]byte(driversJSON), &o); err != nil {
		t.Fatal(err)
	}
	r := o.results(3, 10, 3)
	for _, c := range []struct {
		name string
		got  Sample
		want float64
	}{
		{"node-postgres", r.NodePostgres1, 4}, {"api", r.API1, 7}, {"pglite", r.PGlite1, 0.5},
		{"kysely us", r.KyselyUs, 1000}, {"kysely PGlite", r.KyselyPGliteMS, 100},
	} {
		if s := c.got.Summarize(); s.N != 3 || s.Median != c.want {
			t.Errorf("%s: %+v, want n=3 median %v", c.name, s, c.want)
		}
	}
	if r.Chromium != "142.0.7444.175" || r.PGliteVersion != "0.5.16" || r.NodePostgres != "8.23.1" || r.Kysely != "0.29.9" || r.KyselyPGlite != "1.3.1" {
		t.Errorf("versions %+v", r)
	}
	if got := fmtLoad(r.LoadBefore); got != "1.50 2.00 3.25" {
		t.Errorf("load %q", got)
	}
	if got := fmtLoad(nil); got != "n/a" {
		t.Errorf("no load: %q", got)
	}
}

func TestWriteDrivers(t *testing.T) {
	var o ourDrivers
	if err := json.Unmarshal([]byte(driversJSON), &o); err != nil {
		t.Fatal(err)
	}
	rep := &report{Cfg: &Config{}, Drivers: o.results(3, 10, 3)}
	var b bytes.Buffer
	rep.writeDrivers(&b)
	rep.writeMisses(&b)
	out := b.String()
	for _, want := range []string{
		"## Drivers on `pg.nodeSocket()`, side by side with PGlite (issue #18)",
		"| `select 1` round trip, node-postgres over `nodeSocket()` | 4.00 ms (3.00 ms–5.00 ms, n=3) | 0.50 ms (0.25 ms–0.75 ms, n=3) | 8.00x | ≤ 2.00 ms | **missed** | node-postgres / page API: 0.57x |",
		"| `select 1` round trip, page API `pg.query` | 7.00 ms (6.00 ms–8.00 ms, n=3) | 0.50 ms",
		"| Kysely: insert 1,000 rows (one statement) + select them back | 1000 ms (900 ms–1100 ms, n=3) | 100 ms (90 ms–110 ms, n=3) | 10x |",
		"Host load average 1.50 2.00 3.25 before, 2.00 2.00 3.00 after.",
		"- `select 1` round trip, node-postgres over `nodeSocket()`: 4.00 ms against ≤ 2.00 ms: 2.00 ms over (2.0x the target). Why: [web.md](web.md#drivers-pgconnect)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}

	// Met: no miss line.
	rep.Drivers.NodePostgres1 = Sample{1.5}
	rep.targets = nil // as write does
	b.Reset()
	rep.writeDrivers(&b)
	rep.writeMisses(&b)
	if out := b.String(); !strings.Contains(out, "| met |") || !strings.Contains(out, "None of the measured targets.") {
		t.Errorf("a met target:\n%s", out)
	}
}

func TestDriversPart(t *testing.T) {
	cfg, err := parseConfig([]string{"-parts", "drivers", "-quick"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.part("drivers") || cfg.part("vm") {
		t.Errorf("parts %q: want drivers only", cfg.Parts)
	}
	if cfg.DriverRuns != 20 || cfg.KyselyRuns != 3 || cfg.DriverWarm != 10 {
		t.Errorf("quick: driver runs %d, kysely runs %d, warm %d; want 20, 3, 10", cfg.DriverRuns, cfg.KyselyRuns, cfg.DriverWarm)
	}
}
