package main

import (
	"bytes"
	"strings"
	"testing"
)

// The comparison report puts each lost figure under its cause, marks the
// 2022 figures as quoted and says "not measured" for what a run lacked.
func TestWriteCompare(t *testing.T) {
	cmp := &compareResults{
		VMQ:            map[string]Sample{"select1": {6, 7, 8}, "count1m": {6000, 6500}},
		PGliteQ:        map[string]Sample{"select1": {0.1, 0.1}, "count1m": {170}},
		NativeQ:        map[string]Sample{"select1": {0.05}, "count1m": {70}},
		OurBrowserQ:    map[string]Sample{},
		PGliteBrowserQ: map[string]Sample{},
		OurPageCold:    Sample{1300, 1400, 1500}, PGliteBrowserCold: Sample{2200, 2300},
		OurPageColdBytes: Sample{15e6}, PGliteBrowserColdBytes: Sample{5e6},
		OurPageColdData: Sample{12.5e6}, PGliteBrowserColdData: Sample{2e6},
		PgbenchVM:        map[string]Sample{"tpcb-like/1": {40}},
		PgbenchNative:    map[string]Sample{"tpcb-like/1": {1500}},
		PgbenchVMLat:     map[string]Sample{"tpcb-like/1": {24}},
		PgbenchNativeLat: map[string]Sample{"tpcb-like/1": {0.6}},
		Bundle:           bundleSize{Files: 3, Raw: 3e6, Sent: 7e5, V86Raw: 2e6, V86Sent: 4e5},
	}
	spec, err := loadQuerySpec("../../bench/queries.json")
	if err != nil {
		t.Fatal(err)
	}
	cmp.Spec = spec
	net := &netResults{Bench: BenchResults{bUpload: {"MB/s": {170, 172}}}, IdleSessions: 10000}
	r := &report{Cfg: &Config{Memory: []int{128}, BenchDir: "../../bench"}, Cmp: cmp, Net: net,
		VM: &vmResults{States: []stateInfo{{MemoryMB: 128, Size: 12.48e6}, {MemoryMB: 256, Size: 12.6e6}}}}
	var buf bytes.Buffer
	r.writeCompare(&buf)
	out := buf.String()
	for _, want := range []string{
		"**Emulated CPU.**",                      // count1m lost under the CPU cause
		"**The agent's channel.**",               // select1 is fast: the channel dominates
		"**The state is most of the download.**", // bytes
		"**The emulated network path.**",         // pgbench
		"page load to first query, Chromium, cold: 1400 ms against PGlite's 2250 ms", // a win
		"| state, 256 MB memory (zstd) | 12.60 MB |",
		"| first download, page to first query (Chromium, cold) | 15.00 MB (n=1) | ~30 MB | 0.50x |",
		"| relay throughput, upload (bytes/s) | 171.0 MB/s (170.0 MB/s–172.0 MB/s, n=2) | 40 KB/s | 4275x |",
		"setup: create and load the 100,000-row table, Chromium | not measured | not measured",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if t.Failed() {
		t.Log(out)
	}
}
