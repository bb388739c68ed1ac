package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// cause is why we lose a figure and what would change it; the report groups
// the lost figures under their cause.
type cause struct {
	name, why string
}

var (
	causeCPU = cause{"Emulated CPU",
		"every guest instruction runs through v86's x86-to-wasm translation in a 32-bit VM (no SSE4), where PGlite is PostgreSQL compiled to wasm ahead of time. " +
			"What would change it: a faster v86 JIT or fewer emulated instructions per query (PostgreSQL is Debian's -O2 i686 build; jit is off everywhere)"}
	causeRTT = cause{"The agent's channel",
		"each API request crosses v86's virtio-console device to the guest agent and back, and waits for the emulated machine to notice it: its interrupts, timers and scheduler run in emulation. " +
			"What would change it: see [agent-protocol.md](agent-protocol.md) for where a round trip's time goes"}
	causeStart = cause{"Restoring a whole VM",
		"a start fetches and decompresses the zstd state of the VM's RAM and starts v86. " +
			"What would change it: a smaller state (less resident guest memory, see [vm.md](vm.md#what-the-state-holds-128-mb-after-prepare_snapshot)) or memory restored lazily"}
	causeBytes = cause{"The state is most of the download",
		"our data is the zstd state of the VM's RAM (kernel, agent, PostgreSQL's processes resident), where PGlite ships a filesystem image and creates its cluster in the page. " +
			"What would change it: a smaller state (see [vm.md](vm.md#what-the-state-holds-128-mb-after-prepare_snapshot))"}
	causeNet = cause{"The emulated network path",
		"every packet crosses the emulated NIC (virtio-net at MTU 9000 by default), the guest kernel's TCP, the websocket relay and the host netstack, with TLS inside the VM; " +
			"v86 runs the whole VM on one host thread, so 4 clients share one emulated CPU and get no more throughput than 1. " +
			"What would change it: more emulation speed for the guest's TLS and TCP (virtio-net at MTU 9000 did not move pgbench against the NE2000, see [scenarios.md](scenarios.md), The NIC; more clients cannot help)"}
	causeOrder = []cause{causeStart, causeBytes, causeCPU, causeRTT, causeNet}
)

// scorecard collects, while the tables are written, where we lose and win
// against PGlite (or native, where PGlite cannot take part).
type scorecard struct {
	losses map[string][]string // cause name → lines
	wins   []string
}

func (s *scorecard) lose(c cause, line string) {
	if s.losses == nil {
		s.losses = map[string][]string{}
	}
	s.losses[c.name] = append(s.losses[c.name], line)
}

// sideBySide is a table of us, PGlite and native with the three ratios.
type sideBySide struct {
	tb    *table
	score *scorecard
}

func newSideBySide(w io.Writer, score *scorecard) *sideBySide {
	return &sideBySide{newTable(w, "measure", "us (pgwasm)", "PGlite", "native", "us / native", "PGlite / native", "us / PGlite"), score}
}

// row writes one measure; lower is better. A loss or win against PGlite of
// more than 10% is remembered for the summary under c (none: not scored).
func (t *sideBySide) row(what string, us, pgl, nat Sample, f func(float64) string, c *cause) {
	u, p, n := us.Summarize(), pgl.Summarize(), nat.Summarize()
	cell := func(s Summary, none string) string {
		if !s.OK() {
			return none
		}
		return s.Format(f)
	}
	t.tb.row(what, cell(u, "not measured"), cell(p, "not measured"), cell(n, "—"),
		fmtRatio(Ratio(u, n)), fmtRatio(Ratio(p, n)), fmtRatio(Ratio(u, p)))
	rt := Ratio(u, p)
	switch {
	case c == nil || math.IsNaN(rt):
	case rt > 1.1:
		word := "slower"
		if c.name == causeBytes.name {
			word = "more"
		}
		t.score.lose(*c, fmt.Sprintf("%s: %s against PGlite's %s (%s %s)", what, f(u.Median), f(p.Median), fmtRatio(rt), word))
	case rt < 0.9:
		t.score.wins = append(t.score.wins, fmt.Sprintf("%s: %s against PGlite's %s (%s)", what, f(u.Median), f(p.Median), fmtRatio(rt)))
	}
}

func (r *report) writeCompare(w io.Writer) {
	c := r.Cmp
	score := &scorecard{}
	fmt.Fprintf(w, "## Side by side: pgwasm, PGlite, native PostgreSQL and the 2022 postgres-wasm (issue #6)\n\n")
	fmt.Fprintf(w, "Measured in this run: **us** = pgwasm (PostgreSQL %s in v86, %d MB), **PGlite** = npm `@electric-sql/pglite` %s (%s, in-memory), **native** = the host's PostgreSQL %s (`fsync`, `synchronous_commit`, `jit` and parallel workers off, as in the VM). ",
		c.VMVersion, r.Cfg.Memory[0], c.PGliteVersion, c.PGlitePostgres, c.NativeVersion)
	fmt.Fprintf(w, "The 2022 postgres-wasm cannot be run here (its demo and relay are gone); its figures are quoted from the articles, marked as such, and never enter a ratio as if measured. ")
	fmt.Fprintf(w, "Ratios are of medians; \"x slower\" reads the first over the second. Both cores are shared with the emulator, Node and other work on this machine, so single figures move by tens of percent between runs (see the load average above).\n\n")

	r.writeCompareStart(w, score)
	r.writeCompareQueries(w, score)
	r.writeCompareConcurrency(w, score)
	r.writeCompareRelay(w)
	r.writeCompareSize(w, score)
	r.writeCompare2022(w)

	fmt.Fprintf(w, "### Where we lose, by how much, and what would change it\n\n")
	if len(score.losses) == 0 {
		fmt.Fprintf(w, "Nowhere in this run.\n\n")
	}
	for _, k := range causeOrder {
		lines := score.losses[k.name]
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(w, "**%s.** Why: %s.\n\n", k.name, k.why)
		for _, l := range lines {
			fmt.Fprintf(w, "- %s\n", l)
		}
		fmt.Fprintln(w)
	}
	if a, t := c.VMQ["select1"].Summarize(), c.TunnelPsqlRTT.Summarize(); a.OK() && t.OK() && t.Median < a.Median {
		fmt.Fprintf(w, "Our agent path is slower than our network path: `select 1` takes %s through the agent API in Node but %s from psql through the tunnel, so the agent's channel, not the VM, sets the API's round trip.\n\n", fmtQ(a.Median), fmtQ(t.Median))
	}
	if len(score.wins) > 0 {
		fmt.Fprintf(w, "**Where we win against PGlite:**\n\n")
		for _, win := range score.wins {
			fmt.Fprintf(w, "- %s\n", win)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "**Where PGlite cannot compete:** concurrent clients (pgbench above), network clients such as psql and pg_dump on the host, logical replication in and out, and extensions built for Debian run only on us.\n\n")
	if len(c.Notes) > 0 {
		for _, n := range c.Notes {
			fmt.Fprintf(w, "- Cut short: %s.\n", n)
		}
		fmt.Fprintln(w)
	}
}

func (r *report) writeCompareStart(w io.Writer, score *scorecard) {
	c := r.Cmp
	fmt.Fprintf(w, "### 1. Start: from nothing to the first query result\n\n")
	fmt.Fprintf(w, "Node: a new process each time; us = `vm.Start` of the %d MB state to the agent's answer to `select 1`, PGlite = `PGlite.create()` and `query('select 1')` (bytes: what its module loader and file reads took from the package, each file once). Chromium %s: cold = a fresh profile (empty HTTP cache), warm = the same page loaded again in that profile; bytes are as transferred (gzip where the server compresses: `pgwasm serve` for us, a loopback static server gzipping like a CDN for PGlite). Our page is `web/test/bench.mjs` against `pgwasm serve`; PGlite's a page importing the package's `dist/` (bench/pglite.mjs).\n\n", r.Cfg.Memory[0], c.Chromium)
	t := newSideBySide(w, score)
	var usStart, usBytes Sample
	if r.VM != nil {
		usStart = r.VM.Restore
		for _, st := range r.VM.States {
			if st.MemoryMB != r.VM.RestoreMemory {
				continue
			}
			for _, b := range r.VM.RestoreBlob {
				usBytes = append(usBytes, b+float64(st.Size)+float64(r.VM.Image.BIOS+r.VM.Image.V86Runtime))
			}
		}
	}
	t.row("start to first `select 1`, Node, cold", usStart, c.PGliteColdMS, nil, fmtMS, &causeStart)
	t.row("bytes loaded to first query, Node, cold", usBytes, c.PGliteColdBytes, nil, fmtBytes, &causeBytes)
	t.tb.row("start to first query, Node, warm (same process)", "no such mode: each VM is a fresh emulator", c.PGliteWarmMS.Summarize().Format(fmtMS), "—", "", "", "")
	t.row("page load to first query, Chromium, cold", c.OurPageCold, c.PGliteBrowserCold, nil, fmtMS, &causeStart)
	t.row("bytes transferred, Chromium, cold", c.OurPageColdBytes, c.PGliteBrowserColdBytes, nil, fmtBytes, &causeBytes)
	t.row("page load to first query, Chromium, warm", c.OurPageWarm, c.PGliteBrowserWarm, nil, fmtMS, &causeStart)
	t.row("bytes transferred, Chromium, warm", c.OurPageWarmBytes, c.PGliteBrowserWarmBytes, nil, fmtBytes, nil)
	fmt.Fprintln(w)
}

func (r *report) writeCompareQueries(w io.Writer, score *scorecard) {
	c := r.Cmp
	fmt.Fprintf(w, "### 2. Queries: the same SQL everywhere\n\n")
	fmt.Fprintf(w, "The SQL is [bench/queries.json](../bench/queries.json), run unchanged: in Node through our agent API (`internal/vm`), PGlite's `query`/`exec`, and pgx over a Unix socket natively; in Chromium through our page's JavaScript API (`window.pgwasm.query`/`exec`) and PGlite's, both by the same loop ([bench/measure.mjs](../bench/measure.mjs)). A script (the 10,000 INSERTs) goes as one simple-protocol message everywhere. Each query has one untimed warm-up; the setup runs %d times, each after dropping the tables. Chromium rounds `performance.now()` to 0.1 ms, so sub-millisecond figures there are coarse.\n\n", setupRuns(c.Spec))
	t := newSideBySide(w, score)
	spec := c.Spec
	t.row("setup: create and load the 100,000-row table, Node", c.VMSetup, c.PGliteSetup, c.NativeSetup, fmtMS, &causeCPU)
	t.row("setup: create and load the 100,000-row table, Chromium", c.OurBrowserSetup, c.PGliteBrowserSetup, c.NativeSetup, fmtMS, &causeCPU)
	if spec != nil {
		for _, where := range []struct {
			name    string
			us, pgl map[string]Sample
		}{
			{"Node", c.VMQ, c.PGliteQ},
			{"Chromium", c.OurBrowserQ, c.PGliteBrowserQ},
		} {
			for _, q := range spec.Queries {
				why := &causeCPU
				if m := where.us[q.Name].Summarize(); m.OK() && m.Median < 100 {
					why = &causeRTT // a fast query: the channel dominates
				}
				t.row(q.Label+", "+where.name, where.us[q.Name], where.pgl[q.Name], c.NativeQ[q.Name], fmtQ, why)
			}
		}
	}
	na := "not possible (no network listener)"
	t.tb.row("`psql -c 'select 1'` (connect, TLS, auth, query; whole process), through the port tunnel / native loopback TCP",
		c.TunnelPsqlConnect.Summarize().Format(fmtQ), na, c.NativePsqlConnect.Summarize().Format(fmtQ),
		fmtRatio(Ratio(c.TunnelPsqlConnect.Summarize(), c.NativePsqlConnect.Summarize())), "", "")
	t.tb.row("`select 1` round trip in one psql session (`\\timing`), tunnel / native",
		c.TunnelPsqlRTT.Summarize().Format(fmtQ), na, c.NativePsqlRTT.Summarize().Format(fmtQ),
		fmtRatio(Ratio(c.TunnelPsqlRTT.Summarize(), c.NativePsqlRTT.Summarize())), "", "")
	fmt.Fprintln(w)
}

// setupRuns is how many times the query set's setup runs.
func setupRuns(spec *querySpec) int {
	if spec == nil {
		return 1
	}
	return max(spec.SetupRuns, 1)
}

// variantLabel names a pgbenchCase's variant in the table.
var variantLabel = map[string]string{
	"prepared": ", `-M prepared`",
	"async":    ", `synchronous_commit=off`",
}

func (r *report) writeCompareConcurrency(w io.Writer, score *scorecard) {
	c := r.Cmp
	fmt.Fprintf(w, "### 3. Concurrency: pgbench from the host\n\n")
	fmt.Fprintf(w, "The host's pgbench 15, `-j` = clients, `-T %d`, scale 1: through the port tunnel with TLS (`sslmode=require`), password auth, the relay and the VM's network stack; natively over loopback TCP without TLS. Each run is capped at `-T` + 60 s: a stalled connection is reported, not waited for. The `-M prepared` and `synchronous_commit=off` rows each take one cost out of tpcb-like (parse and plan per statement; the wait for the WAL flush), so side by side with the plain row they say where a transaction's time goes (docs/vm.md).\n\n", c.PgbenchSeconds)
	tb := newTable(w, "measure", "us (pgwasm)", "PGlite", "native", "native / us")
	tb.row("`pgbench -i -s 1` through the tunnel", c.PgbenchInitVM.Summarize().Format(fmtMS), "not possible (no network listener)", "", "")
	for _, pc := range pgbenchCases {
		u, n := c.PgbenchVM[pc.key()].Summarize(), c.PgbenchNative[pc.key()].Summarize()
		lu, ln := c.PgbenchVMLat[pc.key()].Summarize(), c.PgbenchNativeLat[pc.key()].Summarize()
		what := fmt.Sprintf("pgbench %s, %d client(s)%s, TPS (mean latency)", pc.Name, pc.Clients, variantLabel[pc.Variant])
		cell := func(t, l Summary) string {
			if !t.OK() {
				return "not measured"
			}
			return fmt.Sprintf("%s (%s)", t.Format(fmtTPS), fmtQ(l.Median))
		}
		rt := Ratio(n, u) // TPS: higher is better
		ratio := ""
		if !math.IsNaN(rt) {
			ratio = fmtRatio(rt) + " fewer TPS"
		}
		tb.row(what, cell(u, lu), "not possible (single connection, no network)", cell(n, ln), ratio)
		if !math.IsNaN(rt) && rt > 1 {
			score.lose(causeNet, fmt.Sprintf("%s: %s TPS against native %s (%s fewer; PGlite cannot run it at all)", what, fmtTPS(u.Median), fmtTPS(n.Median), fmtRatio(rt)))
		}
	}
	fmt.Fprintln(w)
}

func (r *report) writeCompareRelay(w io.Writer) {
	fmt.Fprintf(w, "### 4. Relay: the network the VM gets\n\n")
	if r.Net == nil {
		fmt.Fprintf(w, "Not run (`-parts` without `net`).\n\n")
		return
	}
	b := r.Net.Bench
	fmt.Fprintf(w, "From the relay section above (the same run). PGlite has no network, so nothing to compare; the 2022 relay figure is quoted.\n\n")
	tb := newTable(w, "measure", "us (pgwasm serve)", "PGlite", "2022 postgres-wasm (quoted)", "us / 2022")
	up, down := b.Get(bUpload, "MB/s"), b.Get(bDownload, "MB/s")
	vs2022 := func(s Summary) string {
		if !s.OK() {
			return ""
		}
		return fmtRatio(s.Median*1e6/quoted2022Relay.value) + " faster"
	}
	tb.row("throughput, one session, upload VM→host", up.Format(fmtMBps), "no network", quoted2022Relay.text, vs2022(up))
	tb.row("throughput, one session, download host→VM", down.Format(fmtMBps), "no network", quoted2022Relay.text, vs2022(down))
	rt, direct := b.Get(bRoundTrip, "ns/op"), b.Get(bRoundDirect, "ns/op")
	if rt.OK() && direct.OK() {
		tb.row("round trip added by the relay (64 B echo, relay minus plain loopback)", fmtDur(rt.Median-direct.Median), "no network", "", "")
	}
	idle := r.Net.idleName()
	tb.row("memory per idle session, websocket attached", b.Get(idle, "relay-bytes/attached-session").Format(fmtKB), "no network", "", "")
	tb.row("idle sessions held at once", b.Get(idle, "sessions-held").Format(fmtCount), "no network", "one flat network, no sessions", "")
	fmt.Fprintln(w)
}

func (r *report) writeCompareSize(w io.Writer, score *scorecard) {
	c := r.Cmp
	fmt.Fprintf(w, "### 5. Size\n\n")
	fmt.Fprintf(w, "What a page downloads, split by kind (Chromium, cold, as transferred): code = HTML, JavaScript, CSS, wasm and our BIOS; data = our VM state and the 9p files it reads, PGlite's filesystem bundle (`pglite.data`). Then what we build and serve.\n\n")
	t := newSideBySide(w, score)
	t.row("code transferred, Chromium, cold", c.OurPageColdCode, c.PGliteBrowserColdCode, nil, fmtBytes, nil)
	t.row("data transferred, Chromium, cold", c.OurPageColdData, c.PGliteBrowserColdData, nil, fmtBytes, &causeBytes)
	if b := c.Bundle; b.Files > 0 {
		t.tb.row(fmt.Sprintf("app bundle as served (`internal/web/dist`, %d files, gzip where smaller)", b.Files), fmtBytes(float64(b.Sent)), "", "", "", "", "")
		t.tb.row("app bundle raw", fmtBytes(float64(b.Raw)), "", "", "", "", "")
		t.tb.row("of which v86.wasm, as served / raw", fmtBytes(float64(b.V86Sent))+" / "+fmtBytes(float64(b.V86Raw)), "", "", "", "", "")
	}
	if r.VM != nil {
		im := r.VM.Image
		t.tb.row("image on the server: 9p blobs + kernel + initrd + BIOS (states apart)", fmtBytes(float64(im.BlobBytes+im.Kernel+im.Initrd+im.BIOS)), "", "", "", "", "")
		for _, s := range r.VM.States {
			t.tb.row(fmt.Sprintf("state, %d MB memory (zstd)", s.MemoryMB), fmtBytes(float64(s.Size)), "no snapshot: creates its cluster at start", "", "", "", "")
		}
	}
	fmt.Fprintln(w)
}

func (r *report) writeCompare2022(w io.Writer) {
	c := r.Cmp
	fmt.Fprintf(w, "### Against the 2022 postgres-wasm\n\n")
	tb := newTable(w, "measure", "us (measured in this run)", "2022 (quoted)", "us / 2022", "source of the 2022 figure")
	row := func(what string, us Sample, q quoted, f func(float64) string) {
		s := us.Summarize()
		ratio := ""
		if s.OK() {
			ratio = fmtRatio(s.Median / q.value)
		}
		tb.row(what, s.Format(f), q.text, ratio, q.source)
	}
	row("first download, page to first query (Chromium, cold)", c.OurPageColdBytes, quoted2022Download, fmtBytes)
	if r.VM != nil {
		for _, s := range r.VM.States {
			if s.MemoryMB == 128 {
				row("state, 128 MB memory", Sample{float64(s.Size)}, quoted2022State, fmtBytes)
			}
		}
	}
	if r.Net != nil {
		row("relay throughput, upload (bytes/s)", scale(r.Net.Bench[bUpload]["MB/s"], 1e6), quoted2022Relay, fmtRate)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "The 2022 page also lost its network after every restore and ran an open relay anyone could use; ours reconnects (see [scenarios.md](scenarios.md)) and hands out per-session tokens ([serve.md](serve.md)).\n\n")
}

func scale(s Sample, by float64) Sample {
	out := make(Sample, len(s))
	for i, v := range s {
		out[i] = v * by
	}
	return out
}

// fmtRate prints bytes per second.
func fmtRate(v float64) string {
	if v >= 1e6 {
		return fmtMBps(v / 1e6)
	}
	return fmt.Sprintf("%.0f KB/s", v/1e3)
}

// fmtQ prints a query time with a precision that fits it.
func fmtQ(v float64) string {
	switch {
	case v >= 10000:
		return fmt.Sprintf("%.1f s", v/1000)
	case v >= 100:
		return fmt.Sprintf("%.0f ms", v)
	case v >= 1:
		return fmt.Sprintf("%.1f ms", v)
	case v == 0:
		return "0 ms"
	default:
		return strings.TrimSuffix(strings.TrimRight(fmt.Sprintf("%.3f", v), "0"), ".") + " ms"
	}
}

// fmtBytes picks MB or KB.
func fmtBytes(b float64) string {
	if b >= 1e6 {
		return fmtMB(b)
	}
	return fmtKB(b)
}

func fmtTPS(v float64) string { return fmt.Sprintf("%.0f", v) }
