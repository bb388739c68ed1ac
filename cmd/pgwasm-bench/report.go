package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// quoted is a figure of the 2022 postgres-wasm from the articles the
// product comes from; printed as a reference only, never as a measurement.
type quoted struct {
	value  float64
	text   string
	source string
}

var (
	quoted2022Download = quoted{30e6, "~30 MB", "Supabase's article: \"it will download ~30MB\""}
	quoted2022State    = quoted{12.4e6, "12.4 MB", "the demo's state-128.bin.zst, as seen in its traffic by the second article"}
	quoted2022Relay    = quoted{40e3, "40 KB/s", "the design brief's known weaknesses of the 2022 relay"}
)

// target is one goal from the issues and how the run compares with it.
type target struct {
	what     string
	got      Summary
	limit    float64
	atMost   bool // true: lower is better
	format   func(float64) string
	why      string // where the docs explain a miss
	hasLimit bool
}

func atMost(what string, got Summary, limit float64, f func(float64) string, why string) target {
	return target{what: what, got: got, limit: limit, atMost: true, format: f, why: why, hasLimit: true}
}

func atLeast(what string, got Summary, limit float64, f func(float64) string, why string) target {
	return target{what: what, got: got, limit: limit, format: f, why: why, hasLimit: true}
}

func (t target) met() bool {
	if t.atMost {
		return t.got.Median <= t.limit
	}
	return t.got.Median >= t.limit
}

func (t target) goal() string {
	if t.atMost {
		return "≤ " + t.format(t.limit)
	}
	return "≥ " + t.format(t.limit)
}

func (t target) verdict() string {
	switch {
	case !t.got.OK():
		return "not measured"
	case t.met():
		return "met"
	default:
		return "**missed**"
	}
}

// miss is one line saying by how much a target was missed.
func (t target) miss() string {
	m := t.got.Median
	var by string
	if t.atMost {
		by = fmt.Sprintf("%s over (%.1fx the target)", t.format(m-t.limit), m/t.limit)
	} else {
		by = fmt.Sprintf("%s short (%.0f%% of the target)", t.format(t.limit-m), 100*m/t.limit)
	}
	return fmt.Sprintf("- %s: %s against %s: %s. Why: %s.", t.what, t.format(m), t.goal(), by, t.why)
}

// report holds everything one run measured.
type report struct {
	Env     env
	Cfg     *Config
	VM      *vmResults
	Net     *netResults
	Cmp     *compareResults
	Idle    *idleResults
	Busy    *busyResults
	Drivers *driversResults
	Copy    *copyResults
	Errors  []string
	targets []target
}

// table is a markdown table writer.
type table struct {
	w    io.Writer
	cols int
}

func newTable(w io.Writer, head ...string) *table {
	fmt.Fprintf(w, "| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat("---|", len(head)))
	return &table{w: w, cols: len(head)}
}

func (t *table) row(cells ...string) {
	for len(cells) < t.cols {
		cells = append(cells, "")
	}
	fmt.Fprintf(t.w, "| %s |\n", strings.Join(cells, " | "))
}

// targetRow writes a measurement with its goal and verdict, and remembers
// the target for the summary.
func (r *report) targetRow(tb *table, t target, note string) {
	r.targets = append(r.targets, t)
	tb.row(t.what, t.got.Format(t.format), t.goal(), t.verdict(), note)
}

func (r *report) write(w io.Writer) {
	r.targets = nil
	fmt.Fprintf(w, "# Benchmarks\n\n")
	fmt.Fprintf(w, "Written by `make bench` (`go run ./cmd/pgwasm-bench %s`) from one run on the machine below; do not edit by hand.\n", r.Cfg.Args)
	fmt.Fprintf(w, "Each figure is the median of the runs, with min–max and the number of runs (n).\n")
	fmt.Fprintf(w, "Comparisons are ratios of medians measured in the same run. MB = 10^6 bytes, KB = 10^3 bytes.\n")
	fmt.Fprintf(w, "The machine is shared (other builds and tests run on it), so single figures move by tens of percent between runs; ratios move less.\n\n")
	r.writeEnv(w)
	if r.VM != nil {
		r.writeVM(w)
	}
	if r.Net != nil {
		r.writeNet(w)
	}
	if r.Cmp != nil {
		r.writeCompare(w)
	}
	if r.Idle != nil {
		r.writeIdle(w)
	}
	if r.Busy != nil {
		r.writeBusy(w)
	}
	if r.Drivers != nil {
		r.writeDrivers(w)
	}
	if r.Copy != nil {
		r.writeCopy(w)
	}
	r.writeMisses(w)
	r.writeHow(w)
}

func (r *report) writeEnv(w io.Writer) {
	e := r.Env
	tb := newTable(w, "run", "")
	tb.row("date", e.Date)
	tb.row("machine", fmt.Sprintf("%s, %d cores, %s memory, load average %s at start, %s at end", e.CPU, e.Cores, e.Memory, e.Load, e.LoadEnd))
	tb.row("Go", e.Go)
	tb.row("Node", e.Node)
	tb.row("v86", e.V86)
	pg := "image: " + e.ImagePG
	if r.VM != nil {
		if r.VM.VMVersion != "" {
			pg = "VM: " + r.VM.VMVersion
		}
		if r.VM.NativeVersion != "" {
			pg += "; host (native comparison): " + r.VM.NativeVersion
		}
	}
	tb.row("PostgreSQL", pg)
	tb.row("image key", "`"+e.ImageKey+"`")
	tb.row("git commit", e.Commit)
	tb.row("wall time of this run", e.Wall)
	fmt.Fprintln(w)
}

func (r *report) writeVM(w io.Writer) {
	v := r.VM
	fmt.Fprintf(w, "## VM (issue #2)\n\n")
	fmt.Fprintf(w, "Headless v86 in Node (`internal/vm`), %d MB memory. \"First query result\" is `select 1` through the guest agent, timed from `vm.Start` (Node start, state check, emulator, agent, clock set) to its answer.\n\n", v.RestoreMemory)

	tb := newTable(w, "measure", "measured", "target", "", "note")
	restore := v.Restore.Summarize()
	boot := v.FullBoot.Summarize()
	r.targetRow(tb, atMost("full boot to first query result", boot, 20000, fmtSeconds, "[vm.md](vm.md) and [image.md](image.md#boot): BIOS, kernel decompression and a generic Debian kernel's initialisation"),
		"agent ready at "+v.FullBootAgent.Summarize().Format(fmtSeconds))
	r.targetRow(tb, atMost(fmt.Sprintf("snapshot restore (%d MB) to first query result", v.RestoreMemory), restore, 2000, fmtSeconds, "[vm.md](vm.md#start-sequence)"),
		"emulator running at "+v.RestoreEmulator.Summarize().Format(fmtSeconds))
	if r := Ratio(boot, restore); !math.IsNaN(r) {
		tb.row("full boot / restore", fmtRatio(r), "", "", "restore is this many times faster")
	}
	for _, s := range v.States {
		st := Sample{float64(s.Size)}.Summarize()
		note := fmt.Sprintf("raw %s; quoted 2022 state: %s (not measured here)", fmtMB(float64(s.RawSize)), quoted2022State.text)
		if s.MemoryMB == 128 {
			r.targetRow(tb, atMost("state, 128 MB (zstd, one file)", st, 8e6, fmtMB, "[vm.md](vm.md#what-the-state-holds-128-mb-after-prepare_snapshot): resident kernel, agent, postgres and libraries"), note)
			continue
		}
		tb.row(fmt.Sprintf("state, %d MB (zstd, one file)", s.MemoryMB), fmtMB(float64(s.Size)), "", "", note)
	}
	blobs := v.RestoreBlob.Summarize()
	tb.row("9p blobs fetched, restore to first query result", blobs.Format(fmtMB), "", "", "files: "+v.RestoreFiles.Summarize().Format(fmtCount))
	if len(v.States) > 0 && blobs.OK() {
		var size float64
		for _, s := range v.States {
			if s.MemoryMB == v.RestoreMemory {
				size = float64(s.Size)
			}
		}
		sum := Sample{}
		for _, b := range v.RestoreBlob {
			sum = append(sum, size+b)
		}
		r.targetRow(tb, atMost(fmt.Sprintf("state (%d MB) + blobs to first query result", v.RestoreMemory), sum.Summarize(), 12e6, fmtMB, "the state's size, see [vm.md](vm.md#what-the-state-holds-128-mb-after-prepare_snapshot)"), "")
	}
	tb.row("9p blobs fetched, full boot to first query result", v.FullBootBlob.Summarize().Format(fmtMB), "", "", "files: "+v.FullBootFiles.Summarize().Format(fmtCount))
	tb.row("Node RSS after restore and first query", v.RestoreRSS.Summarize().Format(fmtMB), "", "", "")
	fmt.Fprintln(w)

	im := v.Image
	fmt.Fprintf(w, "### Image size\n\n")
	tb = newTable(w, "part", "bytes", "note")
	total := im.BlobBytes + im.Kernel + im.Initrd + im.BIOS
	tb.row(fmt.Sprintf("9p blobs (%s blobs, as stored: zstd where smaller)", commas(int64(im.Blobs))), fmtMB(float64(im.BlobBytes)), "fetched file by file on first open")
	tb.row("kernel (bzImage)", fmtMB(float64(im.Kernel)), "full boot only")
	tb.row("initrd", fmtMB(float64(im.Initrd)), "full boot only")
	tb.row("BIOS + VGA BIOS", fmtMB(float64(im.BIOS)), "")
	tb.row("**image total** (blobs + kernel + initrd + BIOS)", fmtMB(float64(total)), "states not included")
	tb.row("fs.json (9p tree index)", fmtMB(float64(im.FSJSON)), "full boot only; a state carries the tree")
	tb.row(fmt.Sprintf("9p tree uncompressed (%s files)", commas(int64(im.Files))), fmtMB(float64(im.FSBytes)), "")
	tb.row("v86 runtime (v86.wasm + libv86.mjs)", fmtMB(float64(im.V86Runtime)), "")
	if blobs.OK() {
		var size float64
		for _, s := range v.States {
			if s.MemoryMB == v.RestoreMemory {
				size = float64(s.Size)
			}
		}
		first := size + float64(im.BIOS) + blobs.Median + float64(im.V86Runtime)
		tb.row("first download, restore path: state + BIOS + blobs to first query + v86 runtime", fmtMB(first), "quoted 2022 first download: "+quoted2022Download.text+" (not measured here)")
	}
	if fb := v.FullBootBlob.Summarize(); fb.OK() {
		first := float64(im.Kernel+im.Initrd+im.BIOS+im.FSJSON+im.V86Runtime) + fb.Median
		tb.row("first download, full boot: kernel + initrd + BIOS + fs.json + blobs + v86 runtime", fmtMB(first), "")
	}
	fmt.Fprintln(w)

	fmt.Fprintf(w, "### Query speed: VM against native\n\n")
	fmt.Fprintf(w, "`%s`, wall time seen by the client, in one open session each: in the VM through the guest agent (its round trip is in the second row), natively on the host's PostgreSQL (%s, amd64, started for this run in a temporary directory with `jit = off`).\n\n", countQuery, v.NativeBinDir)
	tb = newTable(w, "query", "VM", "host native", "VM / native")
	vq, nq := v.VMQuery.Summarize(), v.NativeQuery.Summarize()
	tb.row("count(*) of 1,000,000 rows", vq.Format(fmtSeconds), nq.Format(fmtMS), fmtRatio(Ratio(vq, nq)))
	tb.row(fmt.Sprintf("`select 1` round trip (VM: agent over %s)", v.AgentChannel), v.AgentRTT.Summarize().Format(fmtMS), "", "")
	fmt.Fprintln(w)
	if len(v.Channels) > 0 {
		fmt.Fprintf(w, "### The agent's channels (issue #11)\n\n")
		fmt.Fprintf(w, "One VM, every channel its image offers, taken in turns: `ping` (the channel and the agent, without PostgreSQL), `select 1`, and a result of about 1 MB (`%s`).\n\n", mbQuery)
		tb = newTable(w, "channel", "ping", "`select 1`", "1 MB result")
		for _, c := range v.Channels {
			tb.row(c.Channel, c.Ping.Summarize().Format(fmtMSFine), c.SelectOne.Summarize().Format(fmtMSFine), c.MB.Summarize().Format(fmtMS))
		}
		fmt.Fprintln(w)
	}
}

func (r *report) writeNet(w io.Writer) {
	n := r.Net
	b := n.Bench
	fmt.Fprintf(w, "## Relay and tunnel (issue #3)\n\n")
	fmt.Fprintf(w, "The repository's Go benchmarks, run with `go test -bench` (commands below), all on loopback. The simulated VM (its own gVisor netstack and websocket client) runs in the same process as the relay and shares its 2 cores, so MB/s understates the relay alone; `cpu-ns/B` is the whole process's CPU per byte.\n\n")
	tb := newTable(w, "measure", "measured", "target", "", "note")
	r.targetRow(tb, atLeast("throughput, one session, upload VM→host", b.Get(bUpload, "MB/s"), 100, fmtMBps, "[serve.md](serve.md#relay-performance)"),
		"CPU per byte "+b.Get(bUpload, "cpu-ns/B").Format(fmtNsB)+"; quoted 2022 relay: "+quoted2022Relay.text)
	r.targetRow(tb, atLeast("throughput, one session, download host→VM", b.Get(bDownload, "MB/s"), 100, fmtMBps, "[serve.md](serve.md#relay-performance): the simulated VM's netstack shares the CPU"),
		"CPU per byte "+b.Get(bDownload, "cpu-ns/B").Format(fmtNsB))
	n.shortTransferRows(tb)
	rt, direct := b.Get(bRoundTrip, "ns/op"), b.Get(bRoundDirect, "ns/op")
	tb.row("round trip, 64 B echo through the relay", rt.Format(fmtDur), "", "", "")
	tb.row("round trip, plain loopback TCP", direct.Format(fmtDur), "", "", "")
	tb.row("relay / plain loopback round trip", fmtRatio(Ratio(rt, direct)), "", "", fmt.Sprintf("relay adds %s", fmtDur(rt.Median-direct.Median)))
	idle := n.idleName()
	r.targetRow(tb, atMost(fmt.Sprintf("memory per idle session (relay, websocket attached; %s sessions)", commas(int64(n.IdleSessions))), b.Get(idle, "relay-bytes/attached-session"), 100e3, fmtKB, "[serve.md](serve.md#relay-performance)"),
		"without websocket: "+b.Get(idle, "session-bytes/session").Format(fmtKB)+"; goroutines per attached session: "+b.Get(idle, "goroutines/attached-session").Format(fmtFloat))
	r.targetRow(tb, atLeast("idle sessions held at once", b.Get(idle, "sessions-held"), 10000, fmtCount, "the run asked for fewer sessions (-idle-sessions) or the relay refused some; see [serve.md](serve.md#relay-performance)"), "")
	tb.row("tunnel setup to first byte, port mode", b.Get(bSetupPort, "ns/op").Format(fmtDur), "", "", "in-memory guest")
	tb.row("tunnel setup to first byte, SNI mode", b.Get(bSetupSNI, "ns/op").Format(fmtDur), "", "", "SSLRequest + ClientHello routed")
	cd := b.Get(bConnDirect, "ns/op")
	tb.row("pgx connect (TLS, SCRAM, `select 1`), direct to host PostgreSQL", cd.Format(fmtDur), "", "", "")
	for _, m := range []struct{ name, what string }{
		{bConnPort, "through relay + tunnel, port mode"},
		{bConnClassic, "through relay + tunnel, SNI, SSLRequest start"},
		{bConnDirTLS, "through relay + tunnel, SNI, direct TLS"},
	} {
		s := b.Get(m.name, "ns/op")
		tb.row("pgx connect "+m.what, s.Format(fmtDur), "", "", fmtRatio(Ratio(s, cd))+" of direct")
	}
	fmt.Fprintln(w)
}

func (r *report) writeMisses(w io.Writer) {
	fmt.Fprintf(w, "## Targets missed\n\n")
	var any bool
	for _, t := range r.targets {
		if t.hasLimit && t.got.OK() && !t.met() {
			fmt.Fprintln(w, t.miss())
			any = true
		}
	}
	if !any {
		fmt.Fprintln(w, "None of the measured targets.")
	}
	fmt.Fprintln(w)
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "## Not measured in this run\n\n")
		for _, e := range r.Errors {
			first, _, _ := strings.Cut(e, "\n")
			fmt.Fprintf(w, "- %s\n", first)
		}
		fmt.Fprintln(w)
	}
}

func (r *report) writeHow(w io.Writer) {
	fmt.Fprintf(w, "## How\n\n")
	fmt.Fprintf(w, "Source: [cmd/pgwasm-bench](../cmd/pgwasm-bench). VM figures come from `internal/vm` (timings and the harness's 9p blob accounting); state sizes from the files in the image directory")
	if r.VM != nil && len(r.VM.SnapshotsTaken) > 0 {
		fmt.Fprintf(w, " (snapshots taken in this run: %s MB)", strings.Join(r.VM.SnapshotsTaken, ", "))
	}
	fmt.Fprintf(w, ".")
	if r.VM != nil {
		for _, n := range r.VM.Notes {
			fmt.Fprintf(w, " Cut short: %s.", n)
		}
	}
	if r.Net != nil {
		fmt.Fprintf(w, " Relay and tunnel figures are parsed from:\n\n")
		for _, c := range r.Net.Commands {
			fmt.Fprintf(w, "    %s\n", c)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprint(w, "\n\n")
	}
	if r.Drivers != nil {
		fmt.Fprintf(w, "Drivers: `node web/test/bench.mjs --drivers` (parsed by [drivers.go](../cmd/pgwasm-bench/drivers.go)) bundles node-postgres and Kysely from web/node_modules, and Kysely with `kysely-pglite-dialect` from bench/node_modules, with web/test/driver-bundle.mjs; the loops are bench/measure.mjs's `roundTrips` and `kyselyRows`, the same source in both pages.\n\n")
	}
	if r.Cmp != nil {
		fmt.Fprintf(w, "Side by side: PGlite figures come from `node bench/pglite.mjs start|queries|browser` (one JSON object each, parsed by [compare.go](../cmd/pgwasm-bench/compare.go); bytes in Node are what PGlite's module loader and file reads took from its package), ours in Chromium from `node web/test/bench.mjs`. The VM of the comparison runs behind a real `pgwasm serve` (relay and port tunnel on loopback); psql and pgbench are the host's PostgreSQL 15 clients.\n\n")
	}
}
