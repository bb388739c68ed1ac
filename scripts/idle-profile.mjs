#!/usr/bin/env node
// idle-profile.mjs: where an idle VM's CPU goes (docs/vm.md, "Idle CPU").
//
// Restores an image's snapshot in v86 under Node, as the harness does, then
// leaves it idle for a while and measures:
//   - the host: this process's CPU time over the idle period (user+system,
//     as a share of one core);
//   - v86: every main_loop call (how many, how many ended with the CPU in
//     HLT, guest instructions run), and with --debug the profiler counters
//     of a v86-debug.wasm built with v86's profiler feature (MAIN_LOOP_IDLE,
//     PAGE_FAULT, ...; the npm package's is not: the script says so);
//   - the guest: its instruction pointer whenever a main_loop call ends
//     with the CPU running, named through the kernel's own kallsyms table
//     (read from guest memory: /proc/kallsyms gives the names in table
//     order, the table in memory gives the addresses);
//   - inside the guest (through the agent and PostgreSQL): /proc/interrupts,
//     /proc/stat and every process's context switches, before and after.
//
// Usage: node scripts/idle-profile.mjs --image build/image [--seconds 30]
//        [--debug] [--memory 128] [--no-guest] [--cmdline-note TEXT]
// Prints one JSON object on stdout. Run it under `nice -n 10` on a shared
// machine; it needs harness/node_modules (make setup).

import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const harnessDir = path.join(here, "..", "harness");

const args = process.argv.slice(2);
const opt = (name, def) => {
    const i = args.indexOf("--" + name);
    return i >= 0 ? args[i + 1] : def;
};
const flag = name => args.includes("--" + name);
const imageDir = opt("image", "build/image");
const seconds = Number(opt("seconds", "30"));
const memoryMB = Number(opt("memory", "128"));
const debug = flag("debug");
const guestStats = !flag("no-guest");
// --yield v86 (v86's own), ceil: how v86 waits for its next timer event
// while the guest halts (see patchYield).
const yieldMode = opt("yield", "v86");

const { lineCollector } = await import(path.join(harnessDir, "lines.mjs"));
const { keepTSCOnRestore } = await import(path.join(harnessDir, "tsc.mjs"));
const { virtioConsoleWriter } = await import(path.join(harnessDir, "virtio-console.mjs"));
const v86dir = path.join(harnessDir, "node_modules", "v86", "build");
const { V86 } = await import(path.join(v86dir, debug ? "libv86-debug.mjs" : "libv86.mjs"));

// v86 and the debug build print a lot; keep stdout for the result.
const out = process.stdout.write.bind(process.stdout);
console.log = (...a) => process.stderr.write(a.join(" ") + "\n");
console.info = console.log;
console.warn = console.log;
console.debug = () => {};

const manifest = JSON.parse(fs.readFileSync(path.join(imageDir, "manifest.json"), "utf8"));
const statePath = path.join(imageDir, `state-${memoryMB}.bin.zst`);
const stateMeta = JSON.parse(fs.readFileSync(path.join(imageDir, `state-${memoryMB}.json`), "utf8"));

const emulator = new V86({
    wasm_path: path.join(v86dir, debug ? "v86-debug.wasm" : "v86.wasm"),
    bios: { url: path.join(imageDir, "bios.bin") },
    vga_bios: { url: path.join(imageDir, "vgabios.bin") },
    memory_size: memoryMB * 1024 * 1024,
    vga_memory_size: (stateMeta.vga_memory_mb || 2) * 1024 * 1024,
    autostart: false,
    disable_keyboard: true,
    disable_mouse: true,
    disable_speaker: true,
    uart1: true,
    virtio_console: !!stateMeta.virtio_console,
    acpi: !!manifest.acpi,
    net_device: { type: manifest.net_device },
    preserve_mac_from_state_image: true,
    filesystem: { baseurl: path.resolve(imageDir, manifest.fs.blob_dir) + "/" },
});

// patchYield replaces v86's wait between main_loop calls. v86 (src/main.js)
// runs the next call at once (setImmediate, or an immediate postMessage in
// a browser) whenever main_loop asks to wait less than 1 ms, so a halted
// guest whose next timer event is 0-1 ms away makes v86 spin through
// main_loop until it is due. "ceil" sleeps a timer's wait rounded up to a
// whole millisecond instead and keeps setImmediate for 0 (the guest runs).
function patchYield(v, mode) {
    if (mode !== "ceil") throw new Error(`--yield ${mode}: want v86 or ceil`);
    v.yield = function (t, tick) {
        if (t <= 0) setImmediate(() => this.yield_callback(tick));
        else setTimeout(() => this.yield_callback(tick), Math.ceil(t));
    };
}

// ---- the agent on virtio-console port 1 (docs/agent-protocol.md) ----
const pending = new Map();
let nextID = 1;
const agentBytes = lineCollector(line => {
    if (!line.trim()) return;
    let msg;
    try { msg = JSON.parse(line); } catch { return; }
    const p = pending.get(msg.id);
    if (p) { pending.delete(msg.id); p(msg); }
});
emulator.add_listener("virtio-console1-output-bytes", agentBytes);
const agentWrite = virtioConsoleWriter(() => emulator, 1);
function agent(req, timeoutMs = 20000) {
    const id = nextID++;
    return new Promise((resolve, reject) => {
        const t = setTimeout(() => { pending.delete(id); reject(new Error(`agent: no answer to ${req.op}`)); }, timeoutMs);
        pending.set(id, msg => { clearTimeout(t); resolve(msg); });
        agentWrite(Buffer.from(JSON.stringify({ ...req, id }) + "\n"));
    });
}
async function sql(q) {
    const r = await agent({ op: "query", sql: q });
    if (!r.ok) throw new Error(`${q}: ${r.error}`);
    return r.rows;
}

await new Promise(resolve => emulator.add_listener("emulator-loaded", resolve));
keepTSCOnRestore(emulator);
if (yieldMode !== "v86") patchYield(emulator.v86, yieldMode);
const buf = fs.readFileSync(statePath);
await emulator.restore_state(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength));
const started = new Promise(resolve => emulator.add_listener("emulator-started", resolve));
await emulator.run();
await started;
for (let i = 0; ; i++) {
    try { await agent({ op: "ping" }, 2000); break; } catch (e) { if (i > 20) throw e; }
}
await agent({ op: "set_time", unix_ms: Date.now() });

const cpu = emulator.v86.cpu;
// npm v86 0.5.462's v86-debug.wasm is built without the profiler feature:
// every counter stays 0. Say so rather than print an empty table.
if (debug && !cpu.wm.exports.profiler_is_enabled()) {
    throw new Error("--debug: this v86-debug.wasm has no profiler (profiler_is_enabled() is 0; v86 must be built with its profiler feature)");
}
const mem8 = cpu.mem8;
const rd32 = a => mem8[a] | mem8[a + 1] << 8 | mem8[a + 2] << 16 | mem8[a + 3] << 24;

// ---- the guest's view ----
async function guestSnapshot() {
    if (!guestStats) return null;
    const [irq] = await sql("select pg_read_file('/proc/interrupts')");
    const [stat] = await sql("select pg_read_file('/proc/stat')");
    // Context switches of every process (the guest's ps has no such column).
    const procs = await sql(`select pid, coalesce(nullif(split_part(encode(pg_read_binary_file('/proc/'||pid||'/cmdline', 0, 4096, true), 'escape'), '\\000', 1), ''), '['||split_part(split_part(st, E'\\n', 1), E'\\t', 2)||']') as cmd,
        (regexp_match(st, E'\\nvoluntary_ctxt_switches:\\s+(\\d+)'))[1]::bigint as vol,
        (regexp_match(st, 'nonvoluntary_ctxt_switches:\\s+(\\d+)'))[1]::bigint as invol
        from (select pid, pg_read_file('/proc/'||pid||'/status', 0, 65536, true) as st
              from pg_ls_dir('/proc') as pid where pid ~ '^[0-9]+$') p where st is not null`);
    return { irq: irq[0], stat: stat[0], procs };
}
// Our kernel has no kallsyms (guest/kernel/pgwasm.config): then no names.
const kallsymsText = guestStats ? ((await sql("select pg_read_file('/proc/kallsyms', 0, 100000000, true)"))[0][0] || "") : "";

// ---- kallsyms: names from /proc/kallsyms (table order), addresses from memory ----
// kernel/kallsyms.c (6.1, KALLSYMS_BASE_RELATIVE): kallsyms_offsets[num]
// (int32), then kallsyms_relative_base (a pointer), then kallsyms_num_syms.
function kallsyms() {
    const lines = kallsymsText.split("\n").filter(l => l && !l.includes("["));
    const n = lines.length;
    if (n < 1000) return null;
    const names = lines.map(l => l.split(" ")[2]);
    // Find num_syms preceded by a kernel-space base and ascending offsets.
    // The count from /proc/kallsyms may miss a few hidden entries, so try
    // a small window around it.
    for (let a = 0x100000; a + 4 <= mem8.length; a += 4) {
        const v = rd32(a) >>> 0;
        if (v < n - 64 || v > n + 64) continue;
        const base = rd32(a - 4) >>> 0;
        if (base < 0xa0000000) continue;
        const first = a - 4 - v * 4;
        if (first < 0 || (rd32(first) >>> 0) > 0x100000 || (rd32(a - 8) >>> 0) > 0x4000000) continue;
        let ok = true;
        for (let i = 1; i < v && ok; i++) ok = (rd32(first + 4 * i) >>> 0) >= (rd32(first + 4 * (i - 1)) >>> 0);
        if (!ok) continue;
        const addrs = new Float64Array(v);
        for (let i = 0; i < v; i++) addrs[i] = (base + (rd32(first + 4 * i) >>> 0)) >>> 0;
        return { count: v, listed: n, base, names: v === n ? names : null, addrs, table: first };
    }
    return null;
}

// ---- sampling main_loop ----
const st = { calls: 0, hltAfter: 0, runningAfter: 0, busyMs: 0, samples: new Map(), user: 0, instr: 0, sleeps: new Map(), firstReturns: [], hltEIP: new Map(), compiles: 0, compileBytes: 0 };
const inHlt = cpu.in_hlt;
const eipView = cpu.instruction_pointer;
let sampling = false;
// v86's JIT hands each compiled guest code block to V8 as a new
// WebAssembly module through codegen_finalize.
const fin = cpu.codegen_finalize;
cpu.codegen_finalize = (...a) => {
    if (sampling) { st.compiles++; st.compileBytes += a[4] || 0; }
    return fin.apply(cpu, a);
};
const origMainLoop = cpu.main_loop;
cpu.main_loop = function () {
    if (!sampling) return origMainLoop.call(cpu);
    const t = performance.now();
    const before = cpu.instruction_counter[0];
    const r = origMainLoop.call(cpu);
    if (st.calls < 2000) st.firstReturns.push(+r.toFixed(3));
    st.busyMs += performance.now() - t;
    st.instr += (cpu.instruction_counter[0] - before) >>> 0;
    st.calls++;
    const bucket = r <= 0 ? "0" : r < 1 ? "<1" : r < 4 ? "1-4" : r < 10 ? "4-10" : r < 50 ? "10-50" : ">=50";
    st.sleeps.set(bucket, (st.sleeps.get(bucket) || 0) + 1);
    if (inHlt[0]) {
        st.hltAfter++;
        const eip = eipView[0] >>> 0;
        st.hltEIP.set(eip, (st.hltEIP.get(eip) || 0) + 1);
    }
    else {
        st.runningAfter++;
        const eip = eipView[0] >>> 0;
        if (eip < 0xc0000000) st.user++;
        else st.samples.set(eip, (st.samples.get(eip) || 0) + 1);
    }
    return r;
};

const statNames = debug ? profilerNames() : [];
function profilerNames() {
    const src = fs.readFileSync(path.join(v86dir, "libv86-debug.mjs"), "utf8");
    const m = src.match(/"(COMPILE COMPILE_SKIPPED[^"]*)"\.split\(" "\)/);
    return m ? m[1].split(" ") : [];
}
function profiler() {
    const get = cpu.wm.exports.profiler_stat_get;
    const o = {};
    // The list has ratio entries ("A/B") that are not counters: a
    // counter's index skips them, as v86's own stats dump does.
    let ratios = 0;
    statNames.forEach((name, i) => {
        if (name.includes("/")) ratios++;
        else o[name] = get(i - ratios);
    });
    return o;
}

const g0 = await guestSnapshot();
const p0 = debug ? profiler() : null;
await new Promise(r => setTimeout(r, 1000));
const c0 = process.cpuUsage();
const w0 = performance.now();
sampling = true;
await new Promise(r => setTimeout(r, seconds * 1000));
sampling = false;
const wall = (performance.now() - w0) / 1000;
const c1 = process.cpuUsage(c0);
const p1 = debug ? profiler() : null;
const g1 = await guestSnapshot();

// What the wait costs a query: `select 1` and a 10 ms pg_sleep (a timer
// wake-up in the guest) through the agent, --latency times each.
async function median(n, q) {
    const ts = [];
    for (let i = 0; i < n; i++) {
        const t = performance.now();
        await sql(q);
        ts.push(performance.now() - t);
    }
    ts.sort((a, b) => a - b);
    return +ts[ts.length >> 1].toFixed(2);
}
const latN = Number(opt("latency", "0"));
const latency = latN > 0 ? { select1_ms: await median(latN, "select 1"), pg_sleep_10ms_ms: await median(latN, "select pg_sleep(0.01)") } : null;

// The emulated timers that decide how long v86 sleeps while the guest halts
// (run_hardware_timers: the minimum of the PIT's, the RTC's and, with ACPI,
// the ACPI PM timer's and the local APIC timer's next event).
function timerState() {
    const d = cpu.devices;
    const pit = d.pit, rtc = d.rtc;
    const now = performance.now();
    return {
        acpi_enabled: cpu.acpi_enabled ? cpu.acpi_enabled[0] : null,
        pit0: pit ? { mode: pit.counter_mode[0], reload: pit.counter_reload[0], enabled: pit.counter_enabled[0], next_ms: +pit.timer(now, true).toFixed(3) } : null,
        rtc: rtc ? { periodic_interrupt: rtc.periodic_interrupt, periodic_ms: rtc.periodic_interrupt_time, update_interrupt: rtc.update_interrupt, alarm: rtc.next_interrupt_alarm } : null,
        apic_timer_ms: typeof cpu.apic_timer === "function" ? +cpu.apic_timer(now).toFixed(3) : null,
    };
}

// ---- report ----
const ks = guestStats ? kallsyms() : null;
function symbolize(eip) {
    if (!ks || !ks.names) return null;
    let lo = 0, hi = ks.count - 1;
    if (eip < ks.addrs[0]) return null;
    while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (ks.addrs[mid] <= eip) lo = mid; else hi = mid - 1;
    }
    return `${ks.names[lo]}+0x${(eip - ks.addrs[lo]).toString(16)}`;
}
const byFunc = new Map();
for (const [eip, n] of st.samples) {
    const s = symbolize(eip) || "0x" + (eip & ~0xff).toString(16);
    const f = s.split("+")[0];
    byFunc.set(f, (byFunc.get(f) || 0) + n);
}
const topEIP = [...st.samples].sort((a, b) => b[1] - a[1]).slice(0, 12).map(([e, n]) => [symbolize(e) || "0x" + e.toString(16), n]);
const delta = {};
if (p0) for (const k of Object.keys(p1)) if (p1[k] !== p0[k]) delta[k] = p1[k] - p0[k];
function procDelta() {
    if (!g0 || !g1) return null;
    const before = new Map(g0.procs.map(r => [r[0], r]));
    return g1.procs.map(r => {
        const b = before.get(r[0]);
        return b ? { pid: r[0], cmd: r[1], vol: (r[2] - b[2]) / wall, invol: (r[3] - b[3]) / wall } : null;
    }).filter(x => x && (x.vol > 0 || x.invol > 0)).sort((a, b) => b.vol - a.vol);
}
function irqDelta() {
    if (!g0 || !g1) return null;
    const parse = t => new Map(t.split("\n").slice(1).filter(Boolean).map(l => {
        const f = l.trim().split(/\s+/);
        return [f[0].replace(":", ""), { n: Number(f[1]), name: f.slice(2).join(" ") }];
    }));
    const a = parse(g0.irq), b = parse(g1.irq);
    const o = {};
    for (const [k, v] of b) { const d = v.n - (a.get(k)?.n || 0); if (d) o[`${k} ${v.name}`] = +(d / wall).toFixed(1); }
    return o;
}
function statDelta() {
    if (!g0 || !g1) return null;
    const line = (t, k) => t.split("\n").find(l => l.startsWith(k + " ")).split(/\s+/).slice(1).map(Number);
    const a = line(g0.stat, "cpu"), b = line(g1.stat, "cpu");
    const d = b.map((v, i) => v - a[i]);
    const tot = d.reduce((x, y) => x + y, 0);
    const names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"];
    const o = {};
    names.forEach((n, i) => { o[n] = +(100 * d[i] / tot).toFixed(1); });
    o.ctxt_per_s = +((line(g1.stat, "ctxt")[0] - line(g0.stat, "ctxt")[0]) / wall).toFixed(1);
    return o;
}
const result = {
    image: imageDir,
    cmdline: manifest.cmdline,
    debug,
    yield: yieldMode,
    seconds: +wall.toFixed(2),
    host_cpu_pct: +(100 * (c1.user + c1.system) / 1e6 / wall).toFixed(1),
    main_loop: {
        calls_per_s: +(st.calls / wall).toFixed(1),
        ended_in_hlt: st.hltAfter,
        ended_running: st.runningAfter,
        busy_pct: +(100 * st.busyMs / 1000 / wall).toFixed(1),
        guest_instr_per_s: Math.round(st.instr / wall),
        user_samples: st.user,
        jit_modules_per_s: +(st.compiles / wall).toFixed(1),
        jit_kb_per_s: +(st.compileBytes / 1024 / wall).toFixed(1),
        returned_sleep_ms: Object.fromEntries(st.sleeps),
        first_returns: st.firstReturns.slice(0, 40),
    },
    timers: timerState(),
    latency_median: latency,
    kallsyms: ks ? { count: ks.count, listed: ks.listed, base: "0x" + ks.base.toString(16), named: !!ks.names } : null,
    kernel_by_function: [...byFunc].sort((a, b) => b[1] - a[1]).slice(0, 15),
    kernel_top_eip: topEIP,
    // Where the CPU halts, and the byte before each place (0xf4: HLT).
    halted_at: [...st.hltEIP].sort((a, b) => b[1] - a[1]).slice(0, 4).map(([e, n]) => {
        const phys = cpu.translate_address_system_read(e - 1);
        return [symbolize(e) || "0x" + e.toString(16), n, "0x" + mem8[phys >>> 0].toString(16)];
    }),
    profiler_counters: statNames.length,
    profiler_per_s: p0 ? Object.fromEntries(Object.entries(delta).map(([k, v]) => [k, +(v / wall).toFixed(1)]).sort((a, b) => b[1] - a[1])) : null,
    guest_irq_per_s: irqDelta(),
    guest_cpu_pct: statDelta(),
    guest_switches_per_s: procDelta(),
};
out(JSON.stringify(result, null, 1) + "\n");
emulator.destroy();
setImmediate(() => process.exit(0));
