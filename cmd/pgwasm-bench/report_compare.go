package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// loss is a line of "where we lose".
type loss struct {
	what, by, why string
}

// Reasons, by the kind of cost that dominates a figure.
const (
	whyCPU = "every guest instruction runs through v86's x86-to-wasm translation in a 32-bit VM (no SSE4), where PGlite is PostgreSQL compiled to wasm ahead of time; " +
		"what would change it: a faster v86 JIT or fewer emulated instructions per query (postgres built with -O2 for i686 is already used; jit is off everywhere)"
	whyRTT = "each request goes Node → harness → emulated serial port → guest agent → libpq and back, and the VM's timer interrupts and scheduler run in emulation; " +
		"what would change it: a virtio-console or shared-memory channel for the agent instead of the emulated UART"
	whyStart = "restoring means fetching and decompressing the zstd state of the VM's whole RAM and starting v86; " +
		"what would change it: a smaller state (less resident guest memory, see vm.md) or restoring memory lazily"
	whyNet = "every packet crosses the emulated NIC, the guest kernel's TCP, the websocket relay and the host netstack, with TLS inside the VM; " +
		"v86 runs the whole VM on one host thread, so 4 clients share one emulated CPU and get no more throughput than 1; " +
		"what would change it: virtio-net with batched frames, and more emulation speed for the guest's TLS and TCP (more clients cannot help)"
	whyBytes = "our first download is the zstd state of the VM's RAM (kernel, agent, postgres resident) plus v86, where PGlite ships its wasm and a filesystem image; " +
		"what would change it: a smaller state (see vm.md), not more compression"
)

func (r *report) writeCompare(w io.Writer) {
	c := r.Cmp
	fmt.Fprintf(w, "## Side by side: pgwasm, PGlite and native PostgreSQL (issue #6)\n\n")
	vmPG, nativePG := c.VMVersion, c.NativeVersion
	fmt.Fprintf(w, "Measured in this run: **us** = pgwasm (PostgreSQL %s in v86, %d MB), **PGlite** = npm `@electric-sql/pglite` %s (%s, in-memory), **native** = the host's PostgreSQL %s (`fsync`, `synchronous_commit`, `jit` and parallel workers off, as in the VM). ",
		vmPG, r.Cfg.Memory[0], c.PGliteVersion, c.PGlitePostgres, nativePG)
	fmt.Fprintf(w, "The SQL is [bench/queries.json](../bench/queries.json), run unchanged on all three: in Node through our agent API (`internal/vm`), through PGlite's `query`/`exec`, and with pgx over a Unix socket natively. A script (the 10,000 INSERTs) goes as one simple-protocol message everywhere. Each query has one untimed warm-up. ")
	fmt.Fprintf(w, "Ratios are of medians; \"x slower\" reads the first over the second. Both cores are shared with the emulator, Node and other work on this machine, so single figures move by tens of percent between runs (see the load average above).\n\n")

	tb := newTable(w, "measure", "us (pgwasm)", "PGlite", "native", "us / native", "PGlite / native", "us / PGlite")
	var losses []loss
	var wins []string
	row := func(what string, us, pgl, nat Sample, f func(float64) string, why string) {
		u, p, n := us.Summarize(), pgl.Summarize(), nat.Summarize()
		fmtS := func(s Summary, none string) string {
			if !s.OK() {
				return none
			}
			return s.Format(f)
		}
		natCell := fmtS(n, "—")
		tb.row(what, fmtS(u, "not measured"), fmtS(p, "not measured"), natCell,
			fmtRatio(Ratio(u, n)), fmtRatio(Ratio(p, n)), fmtRatio(Ratio(u, p)))
		if rt := Ratio(u, p); !math.IsNaN(rt) && rt > 1.1 && why != "" {
			word := "slower"
			if why == whyBytes {
				word = "more"
			}
			losses = append(losses, loss{what, fmt.Sprintf("%s against PGlite's %s (%s %s)", f(u.Median), f(p.Median), fmtRatio(rt), word), why})
		} else if !math.IsNaN(rt) && rt < 0.9 && why != "" {
			wins = append(wins, fmt.Sprintf("%s: %s against PGlite's %s (%s)", what, f(u.Median), f(p.Median), fmtRatio(rt)))
		}
	}

	// Start.
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
	row("start to first `select 1`, Node, cold (new process)", usStart, c.PGliteColdMS, nil, fmtMS, whyStart)
	row("bytes loaded to first query, Node, cold", usBytes, c.PGliteColdBytes, nil, fmtBytes, whyBytes)
	tb.row("start to first query, Node, warm (same process)", "no such mode: each VM is a fresh emulator", c.PGliteWarmMS.Summarize().Format(fmtMS), "—", "", "", "")
	row("page load to first query, Chromium, cold (fresh profile)", c.OurPageCold, c.PGliteBrowserCold, nil, fmtMS, whyStart)
	row("bytes transferred, Chromium, cold", c.OurPageColdBytes, c.PGliteBrowserColdBytes, nil, fmtBytes, whyBytes)
	row("page load to first query, Chromium, warm (reload)", c.OurPageWarm, c.PGliteBrowserWarm, nil, fmtMS, whyStart)
	row("bytes transferred, Chromium, warm", c.OurPageWarmBytes, c.PGliteBrowserWarmBytes, nil, fmtBytes, "")

	// Query set.
	spec, _ := loadQuerySpec(r.Cfg.BenchDir + "/queries.json")
	row("setup: create and load the 100,000-row table (once)", c.VMSetup, c.PGliteSetup, c.NativeSetup, fmtMS, whyCPU)
	if spec != nil {
		for _, q := range spec.Queries {
			why := whyCPU
			if m := c.VMQ[q.Name].Summarize(); m.OK() && m.Median < 100 {
				why = whyRTT
			}
			row(q.Label+", Node", c.VMQ[q.Name], c.PGliteQ[q.Name], c.NativeQ[q.Name], fmtQ, why)
		}
		for _, q := range spec.Queries {
			if s := c.PGliteBrowserQ[q.Name]; len(s) > 0 {
				tb.row(q.Label+", PGlite in Chromium", "", s.Summarize().Format(fmtQ), "", "", fmtRatio(Ratio(s.Summarize(), c.NativeQ[q.Name].Summarize())), "")
			}
		}
	}

	// psql and pgbench through the port-mode tunnel.
	na := "not possible (no network listener)"
	tb.row("`psql -c 'select 1'` (connect, TLS, auth, query; whole process), through the port tunnel / native loopback TCP",
		c.TunnelPsqlConnect.Summarize().Format(fmtQ), na, c.NativePsqlConnect.Summarize().Format(fmtQ),
		fmtRatio(Ratio(c.TunnelPsqlConnect.Summarize(), c.NativePsqlConnect.Summarize())), "", "")
	tb.row("`select 1` round trip in one psql session (`\\timing`)",
		c.TunnelPsqlRTT.Summarize().Format(fmtQ), na, c.NativePsqlRTT.Summarize().Format(fmtQ),
		fmtRatio(Ratio(c.TunnelPsqlRTT.Summarize(), c.NativePsqlRTT.Summarize())), "", "")
	tb.row("`pgbench -i -s 1` through the tunnel", c.PgbenchInitVM.Summarize().Format(fmtMS), na, "", "", "", "")
	for _, pc := range pgbenchCases {
		u, n := c.PgbenchVM[pc.key()].Summarize(), c.PgbenchNative[pc.key()].Summarize()
		lu, ln := c.PgbenchVMLat[pc.key()].Summarize(), c.PgbenchNativeLat[pc.key()].Summarize()
		what := fmt.Sprintf("pgbench %s, scale 1, %d client(s), %d s, TPS (latency)", pc.Name, pc.Clients, c.PgbenchSeconds)
		cell := func(t, l Summary) string {
			if !t.OK() {
				return "not measured"
			}
			return fmt.Sprintf("%s (%s)", t.Format(fmtTPS), fmtQ(l.Median))
		}
		rt := Ratio(n, u) // TPS: higher is better, so native over us reads as "x slower"
		ratio := ""
		if !math.IsNaN(rt) {
			ratio = fmtRatio(rt) + " fewer TPS"
		}
		tb.row(what, cell(u, lu), "not possible (single connection, no network)", cell(n, ln), ratio, "", "")
		if !math.IsNaN(rt) && rt > 1 {
			losses = append(losses, loss{what, fmt.Sprintf("%s TPS against native %s (%s fewer; PGlite cannot run it at all)", fmtTPS(u.Median), fmtTPS(n.Median), fmtRatio(rt)), whyNet})
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Chromium is %s; it rounds `performance.now()` to 0.1 ms, so PGlite's sub-millisecond figures in Chromium are coarse. Cold = a fresh profile (empty HTTP cache); warm = the same page loaded again in that profile. Our page is `web/test/bench.mjs` against `pgwasm serve`; PGlite's is a page importing the package's `dist/` from a loopback static server (bench/pglite.mjs).\n\n", c.Chromium)
	fmt.Fprintf(w, "Native psql and pgbench connect over loopback TCP without TLS; through the tunnel they use TLS (`sslmode=require`) to the VM's PostgreSQL, password auth, the relay and the VM's network stack. pgbench uses `-j` = clients, `-T %d`, the host's pgbench 15.\n\n", c.PgbenchSeconds)

	fmt.Fprintf(w, "### Where we lose, by how much, and what would change it\n\n")
	if len(losses) == 0 {
		fmt.Fprintf(w, "Nowhere in this run.\n")
	}
	for _, l := range losses {
		fmt.Fprintf(w, "- **%s**: %s. Why: %s.\n", l.what, l.by, l.why)
	}
	for _, win := range wins {
		fmt.Fprintf(w, "- **We win**: %s.\n", win)
	}
	if a, t := c.VMQ["select1"].Summarize(), c.TunnelPsqlRTT.Summarize(); a.OK() && t.OK() && t.Median < a.Median {
		fmt.Fprintf(w, "- **Our agent path is slower than our network path**: `select 1` takes %s through the agent API but %s from psql through the tunnel, so the agent's serial channel, not the VM, sets the API's round trip.\n", fmtQ(a.Median), fmtQ(t.Median))
	}
	fmt.Fprintf(w, "- **Where PGlite cannot compete**: concurrent clients (pgbench above), network clients such as psql, logical replication and extensions built for Debian run only on us.\n")
	for _, n := range c.Notes {
		fmt.Fprintf(w, "- Cut short: %s.\n", n)
	}
	fmt.Fprintln(w)
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
