#!/usr/bin/env node
// idle-page-profile.mjs: where a ready, idle page's renderer CPU goes
// (docs/vm.md, "Idle CPU"). Loads the page as web/test/bench.mjs --idle
// does, waits --settle seconds, then takes a CPU profile of the page's main
// thread for --seconds with the DevTools protocol and prints the functions
// with the most self time, and the guest's interrupts and context switches
// over the same time (through the page's API, window.pgwasm).
//
//   PGWASM_BIN=... PGWASM_IMAGE=... node scripts/idle-page-profile.mjs [--seconds 15] [--settle 10]
import fs from "node:fs";
import { startServer, launchBrowser, waitReady } from "../web/test/lib.mjs";

// threadCPU: user+system seconds of every thread of this process's
// descendants but the pgwasm server, by thread name (Chromium names its
// threads: the page's main thread is CrRendererMain, a Worker's
// DedicatedWorker thread, V8's compiler threads V8 DefaultWorker...).
function threadCPU() {
  const procs = new Map();
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      procs.set(Number(d), { comm: st.slice(st.indexOf("(") + 1, st.lastIndexOf(")")), ppid: Number(st.slice(st.lastIndexOf(")") + 2).split(" ")[1]) });
    } catch {}
  }
  const mine = new Set([process.pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, p] of procs) if (!mine.has(pid) && mine.has(p.ppid) && p.comm !== "pgwasm") (mine.add(pid), (grew = true));
  }
  mine.delete(process.pid);
  const by = {};
  for (const pid of mine) {
    let tasks = [];
    try { tasks = fs.readdirSync(`/proc/${pid}/task`); } catch {}
    for (const t of tasks) {
      try {
        const st = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
        const comm = st.slice(st.indexOf("(") + 1, st.lastIndexOf(")"));
        const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
        const key = `${procs.get(pid).comm}/${comm}`;
        by[key] = (by[key] || 0) + (Number(f[11]) + Number(f[12])) / 100;
      } catch {}
    }
  }
  return by;
}

const args = process.argv.slice(2);
const arg = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};
const seconds = Number(arg("--seconds", "15"));

const srv = await startServer();
const browser = await launchBrowser();
try {
  const page = await browser.ctx.newPage();
  await page.goto(srv.url);
  await waitReady(page);
  await page.evaluate(() => window.pgwasm.query("select 1"));
  await page.waitForFunction(() => !window.pgwasmPage.unsaved(), null, { timeout: 300000, polling: 500 });
  await new Promise(r => setTimeout(r, Number(arg("--settle", "10")) * 1000));
  const guest = () => page.evaluate(async () => {
    const q = async sql => (await window.pgwasm.query(sql)).rows[0][0];
    return { irq: await q("select pg_read_file('/proc/interrupts')"), stat: await q("select pg_read_file('/proc/stat')") };
  });
  const cdp = await browser.ctx.newCDPSession(page);
  if (args.includes("--trace")) {
    // A Chrome trace instead of the CPU profile: the events on the
    // renderer's threads by thread and name (which work the V8 thread pool
    // does while the page idles).
    const events = [];
    cdp.on("Tracing.dataCollected", e => events.push(...e.value));
    const done = new Promise(r => cdp.once("Tracing.tracingComplete", r));
    await cdp.send("Tracing.start", { traceConfig: { includedCategories: ["v8", "v8.wasm", "disabled-by-default-v8.compile", "disabled-by-default-v8.wasm.turbofan", "disabled-by-default-v8.wasm.detailed", "disabled-by-default-v8.gc", "toplevel", "blink", "devtools.timeline"] } });
    await new Promise(r => setTimeout(r, seconds * 1000));
    await cdp.send("Tracing.end");
    await done;
    const threads = new Map();
    for (const e of events) if (e.name === "thread_name") threads.set(`${e.pid}/${e.tid}`, e.args.name);
    const by = new Map();
    for (const e of events) {
      if (e.ph !== "X" || !e.dur) continue;
      const k = `${threads.get(`${e.pid}/${e.tid}`) || e.tid} ${e.cat} ${e.name}`;
      by.set(k, (by.get(k) || 0) + e.dur / 1000);
    }
    console.log(JSON.stringify([...by].sort((a, b) => b[1] - a[1]).slice(0, 30).map(([k, ms]) => [k, +((100 * ms) / (seconds * 1000)).toFixed(1)]), null, 1));
    process.exit(0);
  }
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval: 500 });
  const g0 = await guest();
  const th0 = threadCPU();
  await cdp.send("Profiler.start");
  const t0 = Date.now();
  await new Promise(r => setTimeout(r, seconds * 1000));
  const { profile } = await cdp.send("Profiler.stop");
  const wall = (Date.now() - t0) / 1000;
  const th1 = threadCPU();
  const g1 = await guest();
  // Self time per function from the sample counts.
  const byId = new Map(profile.nodes.map(n => [n.id, n]));
  const counts = new Map();
  for (const id of profile.samples) counts.set(id, (counts.get(id) || 0) + 1);
  const self = new Map();
  const total = profile.samples.length;
  for (const [id, c] of counts) {
    const f = byId.get(id).callFrame;
    const key = `${f.functionName || "(anonymous)"} ${f.url.split("/").pop()}:${f.lineNumber}`;
    self.set(key, (self.get(key) || 0) + c);
  }
  const top = [...self].sort((a, b) => b[1] - a[1]).slice(0, 25).map(([k, c]) => [k, +((100 * c) / total).toFixed(1)]);
  const irqs = t => Object.fromEntries(t.split("\n").slice(1).filter(Boolean).map(l => {
    const f = l.trim().split(/\s+/);
    return [f[0] + " " + f.slice(2).join(" "), Number(f[1])];
  }));
  const a = irqs(g0.irq), b = irqs(g1.irq);
  const irqRate = Object.fromEntries(Object.keys(b).map(k => [k, +((b[k] - (a[k] || 0)) / wall).toFixed(1)]).filter(([, v]) => v));
  const ctxt = t => Number(t.split("\n").find(l => l.startsWith("ctxt ")).split(" ")[1]);
  console.log(JSON.stringify({
    seconds: wall,
    samples: total,
    thread_cpu_pct: Object.fromEntries(Object.entries(th1).map(([k, v]) => [k, +((100 * (v - (th0[k] || 0))) / wall).toFixed(1)]).filter(([, v]) => v > 0.2).sort((x, y) => y[1] - x[1])),
    self_time_pct_of_wall: top,
    guest_irq_per_s: irqRate,
    guest_ctxt_per_s: +((ctxt(g1.stat) - ctxt(g0.stat)) / wall).toFixed(1),
  }, null, 1));
} finally {
  await browser.close();
  await srv.stop();
}
