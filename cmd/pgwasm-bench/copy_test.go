package main

import (
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

// A trimmed `node web/test/bench.mjs --copy` output.
const copyJSON = `{
 "load_before": [1, 2, 3],
 "chromium": "142.0.7444.175",
 "pglite_version": "0.5.16",
 "csv_mb": 10,
 "ours": {"bytes": 10000037, "rows": 262144, "copy_from_ms": [40000, 50000], "upload_ms": [60, 80], "in_vm_copy_ms": [20000, 10000], "copy_to_ms": [9000, 11000]},
 "pglite": {"copy_from_ms": [1000, 1200], "copy_to_ms": [300, 500]},
 "load_after": [2, 2, 2]
}`

func TestWriteCopy(t *testing.T) {
	var o ourCopy
	if err := json.Unmarshal([]byte(copyJSON), &o); err != nil {
		t.Fatal(err)
	}
	rep := &report{Cfg: &Config{}, Copy: o.results(2)}
	var b bytes.Buffer
	rep.writeCopy(&b)
	rep.writeMisses(&b)
	out := b.String()
	for _, want := range []string{
		"## COPY through the page API, side by side with PGlite (issue #11)",
		"`node web/test/bench.mjs --copy 2 --copy-mb 10`): a 10.00 MB CSV of 262,144 rows",
		"| 10.00 MB CSV loaded by `pg.copyFrom` | 45.00 s (40.00 s–50.00 s, n=2) | 1.10 s (1.00 s–1.20 s, n=2) | 41x | ≤ 10.00 s | **missed** |",
		"| the same file: `COPY ... FROM` run in the VM | 15.00 s (10.00 s–20.00 s, n=2) |",
		"after `pg.upload`: 0.07 s",
		// Per run: 40/20 = 2x, 50/10 = 5x; the median of two is their mean.
		"| `pg.copyFrom` / in-VM `COPY` | 3.50x (2.00x–5.00x, n=2) |  |  | ≤ 3.00x | **missed** |",
		"| the table exported by `pg.copyTo` | 10.00 s (9.00 s–11.00 s, n=2) | 0.40 s (0.30 s–0.50 s, n=2) | 25x |",
		"Host load average 1.00 2.00 3.00 before, 2.00 2.00 2.00 after.",
		"- 10.00 MB CSV loaded by `pg.copyFrom`: 45.00 s against ≤ 10.00 s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestPerRun(t *testing.T) {
	got := perRun(Sample{4, 9, 5}, Sample{2, 3, 0})
	if len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Errorf("perRun = %v, want [2 3] (a run without a divisor is left out)", got)
	}
}

func TestCopyPart(t *testing.T) {
	cfg, err := parseConfig([]string{"-parts", "copy", "-quick"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.part("copy") || cfg.part("drivers") {
		t.Errorf("parts %q: want copy only", cfg.Parts)
	}
	if cfg.CopyRuns != 1 || cfg.CopyMB != 1 {
		t.Errorf("quick: copy runs %d, MB %d; want 1, 1", cfg.CopyRuns, cfg.CopyMB)
	}
}
