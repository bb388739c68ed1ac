#!/usr/bin/env node
// Measures the page in headless Chromium against pgwasm serve on loopback:
// navigation to first query result (cold cache, then warm), bytes
// transferred (split into code and data), IndexedDB save/restore times and,
// with --queries FILE, the query set of bench/queries.json through the
// page's JavaScript API (window.pgwasm), the same loop PGlite runs in
// bench/pglite.mjs. Prints one JSON object. Env as for run.mjs.
//
// With --idle SECONDS it measures only the CPU a ready tab uses while
// nothing runs (issue #16 item 5): every Chromium process's user+system
// time over SECONDS, from /proc, once the page has kept its session
// (autosave) and --settle SECONDS (default 10) more have passed; also split
// by Chromium process type and thread; with --late L the same window again
// in the same tab L seconds after it became idle (the figure `make bench`
// holds to the target: a tab left open).
//
// With --channels N it measures only the page API's way to the guest agent
// (issue #11): `select 1` N times and a 1 MB result (10,000 rows of 100
// bytes, as cmd/pgwasm-bench's measureChannels in Node) --mb-runs times
// (default 5) on the page's channel (virtio-console), in one page; with the
// host's load average before and after. (The old channel, ttyS1, is no
// longer compared in the page: v86 runs in a worker the page cannot reach
// into; cmd/pgwasm-bench compares both in Node.)
//
//
// With --busy N it measures only the page's main thread while issue #11's
// long query runs in psql, N times in one page (lib.mjs mainThreadDuring,
// as ui.spec.mjs): long tasks, input delay, the emulator's slices.
//
// With --drivers N it measures only the drivers of issue #18, ours against
// PGlite's in one browser: `select 1` N times (after --warm rounds, default
// 10) by node-postgres over pg.nodeSocket() and by the page API pg.query,
// in turns, in our page; then PGlite's query in a page of PGlite 0.5 (the
// bench/ package, from a loopback static server), with the same loop; then
// Kysely (the same code, bench/measure.mjs kyselyRows) inserting 1,000 rows
// and selecting them back --kysely-runs times (default 5): on node-postgres
// over nodeSocket() in our page, on kysely-pglite-dialect in PGlite's.
// The drivers are bundled by web/test/driver-bundle.mjs, as in
// drivers.spec.mjs.
//
// With --copy N it measures only COPY through the page API (issue #11): a
// --copy-mb MB CSV (default 10, lib.mjs installCSV) loaded N times by
// pg.copyFrom and, in turns, by pg.upload + `COPY ... FROM` a file in the
// VM, then exported by pg.copyTo; then the same CSV in and out of PGlite
// 0.5 in its own page (`COPY ... FROM/TO '/dev/blob'`). Every load is
// checked: row count and sums as the generator made them.
//
//   node web/test/bench.mjs [--queries bench/queries.json] [--runs N]
//   node web/test/bench.mjs --idle 30 [--settle 10] [--late 180]
//   node web/test/bench.mjs --channels 100 [--mb-runs 5]
//   node web/test/bench.mjs --drivers 50 [--warm 10] [--kysely-runs 5]
//   node web/test/bench.mjs --busy 2
//   node web/test/bench.mjs --copy 2 [--copy-mb 10]
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { startServer, launchBrowser, waitReady, waitMessage, waitScreen, mainThreadDuring, installCSV, COPY_TABLE, root } from "./lib.mjs";
import { inPage, trackBytes, roundTrips, kyselyRows } from "../../bench/measure.mjs";
import { bundleDrivers, webModules } from "./driver-bundle.mjs";

// PGlite comes from the bench/ package (npm ci there), as bench/pglite.mjs.
const benchModules = path.join(root, "bench", "node_modules");
const pgliteDir = path.join(benchModules, "@electric-sql", "pglite");

const args = process.argv.slice(2);
const arg = name => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};

// browserCPU sums user+system CPU seconds of this process's descendants
// that are not the pgwasm server (Chromium: browser, renderer, GPU,
// utility processes), from /proc/<pid>/stat, in all and by Chromium's
// process type (--type=renderer and so on; the browser process has none).
function browserCPU() {
  const hz = 100; // USER_HZ on Linux
  const procs = new Map();
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const comm = st.slice(st.indexOf("(") + 1, st.lastIndexOf(")"));
      const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
      const type = /--type=([\w-]+)/.exec(fs.readFileSync(`/proc/${d}/cmdline`, "utf8"))?.[1] || "browser";
      procs.set(Number(d), { comm, type, ppid: Number(f[1]), cpu: (Number(f[11]) + Number(f[12])) / hz, threads: threadCPU(d, hz) });
    } catch {
      // gone
    }
  }
  const mine = new Set([process.pid]);
  let grew = true;
  while (grew) {
    grew = false;
    for (const [pid, p] of procs) if (!mine.has(pid) && mine.has(p.ppid) && p.comm !== "pgwasm") (mine.add(pid), (grew = true));
  }
  mine.delete(process.pid);
  let total = 0;
  const byType = {};
  const byThread = {};
  for (const pid of mine) {
    const p = procs.get(pid);
    total += p.cpu;
    byType[p.type] = (byType[p.type] || 0) + p.cpu;
    for (const [name, cpu] of Object.entries(p.threads)) byThread[`${p.type}/${name}`] = (byThread[`${p.type}/${name}`] || 0) + cpu;
  }
  return { seconds: total, processes: mine.size, byType, byThread };
}

// threadCPU is a process's CPU seconds by thread name (Chromium names them:
// the page's main thread is the renderer's first, "chromium"; v86's timer
// worker runs in "DedicatedWorker"; V8's background compiles and GC in
// "ThreadPoolForeg").
function threadCPU(pid, hz) {
  const by = {};
  let tasks = [];
  try {
    tasks = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return by;
  }
  for (const t of tasks) {
    try {
      const st = fs.readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8");
      const name = st.slice(st.indexOf("(") + 1, st.lastIndexOf(")"));
      const f = st.slice(st.lastIndexOf(")") + 2).split(" ");
      by[name] = (by[name] || 0) + (Number(f[11]) + Number(f[12])) / hz;
    } catch {
      // gone
    }
  }
  return by;
}

const srv = await startServer();
const browser = await launchBrowser();
const out = {};
const idle = Number(arg("--idle") || 0);
const channels = Number(arg("--channels") || 0);
const drivers = Number(arg("--drivers") || 0);
const busy = Number(arg("--busy") || 0);
const copy = Number(arg("--copy") || 0);
try {
  if (copy > 0) {
    await measureCopy(out, copy, Number(arg("--copy-mb") || 10));
  } else if (busy > 0) {
    const page = await browser.ctx.newPage();
    await page.goto(srv.url);
    await waitReady(page);
    out.busy = [];
    for (let i = 0; i < busy; i++) {
      await waitScreen(page, /postgres=# $/m);
      out.busy.push(await mainThreadDuring(page));
      console.error(`busy run ${i + 1}: ${JSON.stringify(out.busy.at(-1))}`);
    }
  } else if (drivers > 0) {
    await measureDrivers(out, drivers, Number(arg("--warm") || 10), Number(arg("--kysely-runs") || 5));
  } else if (channels > 0) {
    await measureChannels(out, channels, Number(arg("--mb-runs") || 5));
  } else if (idle > 0) {
    const page = await browser.ctx.newPage();
    await page.goto(srv.url);
    await waitReady(page);
    await page.evaluate(() => window.pgwasm.query("select 1"));
    // That query is a change the page keeps (autosave, a few seconds of
    // work): the tab is idle once it is kept.
    await page.waitForFunction(() => !window.pgwasmPage.unsaved(), null, { timeout: 300000, polling: 500 });
    const idleFrom = Date.now();
    await new Promise(r => setTimeout(r, Number(arg("--settle") || 10) * 1000));
    Object.assign(out, await idleWindow(page, idle));
    // A tab left open: v86's JIT has compiled what the idle guest runs
    // (its wasm modules' tier-up on V8's threads is most of the first
    // minute's CPU), so the same window again, --late seconds after the
    // tab became idle (docs/web.md, "Idle CPU").
    const late = Number(arg("--late") || 0);
    if (late > 0) {
      await new Promise(r => setTimeout(r, Math.max(0, idleFrom + late * 1000 - Date.now())));
      out.late = { after_seconds: late, ...(await idleWindow(page, idle)) };
    }
  } else {
    await measurePage(out);
  }
} finally {
  await browser.close();
  await srv.stop();
}
console.log(JSON.stringify(out, null, 1));

// idleWindow measures seconds of an idle page: the CPU of every Chromium
// process (by process type and thread) and what the emulator did meanwhile
// (docs/vm.md, "Idle CPU"), counted in its worker (pg.emulatorStats()):
// every main_loop call, whether it left the CPU in HLT, the wait it asked
// for, the guest instructions it ran, and the wasm modules v86's JIT
// handed to V8 (compiled on V8's thread pool).
async function idleWindow(page, seconds) {
  const out = {};
  const stats = () => page.evaluate(() => window.pgwasm.emulatorStats());
  const e0 = await stats();
  const a = browserCPU(), t0 = Date.now();
  await new Promise(r => setTimeout(r, seconds * 1000));
  const b = browserCPU(), wall = (Date.now() - t0) / 1000;
  const e1 = await stats();
  const em = {
    calls: e1.mainLoopCalls - e0.mainLoopCalls, hlt: e1.endedInHlt - e0.endedInHlt, sub1ms: e1.askedUnder1ms - e0.askedUnder1ms,
    zero: e1.askedZero - e0.askedZero, instr: e1.mainLoopInstructions - e0.mainLoopInstructions, busyMs: e1.mainLoopMs - e0.mainLoopMs,
    compiles: e1.jitModules - e0.jitModules, compileBytes: e1.jitBytes - e0.jitBytes,
  };
  out.idle_cpu_percent_by_thread = Object.fromEntries(Object.entries(b.byThread)
    .map(([k, v]) => [k, +((100 * (v - (a.byThread[k] || 0))) / wall).toFixed(1)]).filter(([, v]) => v >= 0.5).sort((x, y) => y[1] - x[1]));
  out.idle_emulator = {
    main_loop_per_s: +(em.calls / wall).toFixed(1),
    ended_in_hlt_pct: +((100 * em.hlt) / Math.max(1, em.calls)).toFixed(1),
    asked_under_1ms_pct: +((100 * em.sub1ms) / Math.max(1, em.calls)).toFixed(1),
    asked_0_pct: +((100 * em.zero) / Math.max(1, em.calls)).toFixed(1),
    guest_instr_per_s: Math.round(em.instr / wall),
    main_loop_busy_pct: +((100 * em.busyMs) / 1000 / wall).toFixed(1),
    jit_modules_per_s: +(em.compiles / wall).toFixed(1),
    jit_kb_per_s: +(em.compileBytes / 1024 / wall).toFixed(1),
  };
  out.idle_seconds = wall;
  out.idle_cpu_seconds = b.seconds - a.seconds;
  out.idle_cpu_percent = (100 * (b.seconds - a.seconds)) / wall;
  out.idle_processes = b.processes;
  // By process type: the renderer runs the page and the emulator's worker.
  out.idle_cpu_percent_by_type = Object.fromEntries(Object.entries(b.byType).map(([k, v]) => [k, (100 * (v - (a.byType[k] || 0))) / wall]));
  return out;
}

async function measurePage(out) {
  const page = await browser.ctx.newPage();
  const cdp = await browser.ctx.newCDPSession(page);
  // Our data is the VM: its state and the 9p files it reads; the code is
  // the page, v86 and the BIOS.
  const bytes = await trackBytes(cdp, u => /\/state-\d+\.(bin\.zst|json)$|\/9p\//.test(u));
  for (const run of ["cold", "warm"]) {
    bytes.reset();
    const t0 = Date.now();
    await page.goto(srv.url);
    await waitReady(page);
    await page.evaluate(() => window.pgwasm.query("select 1"));
    out[`${run}_first_query_ms`] = Date.now() - t0;
    const b = bytes.get();
    out[`${run}_bytes`] = b.bytes;
    out[`${run}_code_bytes`] = b.code;
    out[`${run}_data_bytes`] = b.data;
    out[`${run}_timings`] = await page.evaluate(() => window.pgwasm.timings);
  }
  let t = Date.now();
  await page.fill("#state-name", "bench");
  await page.click("#save-idb");
  const m = await waitMessage(page);
  out.idb_save_ms = Date.now() - t;
  out.idb_save_message = m.text;
  t = Date.now();
  await page.click('.state-row:has-text("bench") >> text=Restore');
  await waitMessage(page);
  out.idb_restore_ms = Date.now() - t;

  const queries = arg("--queries");
  if (queries) {
    const spec = JSON.parse(fs.readFileSync(queries, "utf8"));
    await page.exposeFunction("benchLog", s => console.error("page-bench:", s));
    await waitReady(page);
    out.query_set = await page.evaluate(inPage("pgwasm", spec, Number(arg("--runs") || 3)));
  }
}

// measureChannels times the page's API on the agent's two channels in turns
// (which goes first alternates), in one page restored from the snapshot.
async function measureChannels(out, runs, mbRuns) {
  const page = await browser.ctx.newPage();
  await page.goto(srv.url);
  await waitReady(page);
  out.load_before = os.loadavg();
  out.channels = await page.evaluate(async ([runs, mbRuns]) => {
    const pg = window.pgwasm;
    // Only the page's channel: the old one (ttyS1, compared here until v86
    // moved into a worker) would need the worker to run a second client.
    const paths = { "virtio-console": sql => pg.query(sql) };
    const res = { "virtio-console": { select1_ms: [], result_1mb_ms: [] } };
    const cases = [
      ["select1_ms", "select 1", runs, 1],
      ["result_1mb_ms", "select repeat('x', 100) from generate_series(1, 10000)", mbRuns, 10000],
    ];
    for (const [key, sql, n, rows] of cases) {
      for (let i = -1; i < n; i++) { // i = -1 is the warm-up
        for (const ch of Object.keys(paths)) {
          const t = performance.now();
          const r = await paths[ch](sql);
          const ms = performance.now() - t;
          if (r.rows.length !== rows) throw new Error(`${ch}: ${sql}: ${r.rows.length} rows, want ${rows}`);
          if (i >= 0) res[ch][key].push(ms);
        }
      }
    }
    return res;
  }, [runs, mbRuns]);
  out.load_after = os.loadavg();
  for (const ch of Object.values(out.channels)) {
    for (const key of ["select1_ms", "result_1mb_ms"]) {
      const v = [...ch[key]].sort((a, b) => a - b);
      ch[key.replace(/_ms$/, "_median_ms")] = v[Math.floor(v.length / 2)];
      ch[key.replace(/_ms$/, "_min_max_ms")] = [v[0], v[v.length - 1]];
    }
  }
}

// servePGlite serves a page that runs main (a module; "@electric-sql/pglite"
// resolves to the bench/ package's dist, as bench/pglite.mjs serves it) on
// loopback.
function servePGlite(main) {
  if (!fs.existsSync(pgliteDir)) throw new Error(`no PGlite in ${benchModules} (npm ci in bench/)`);
  return serveFiles({
    "/index.html": `<!doctype html><meta charset="utf-8"><title>PGlite bench</title>
<script type="importmap">{ "imports": { "@electric-sql/pglite": "/pglite/dist/index.js" } }</script>
<script type="module" src="/main.js"></script>`,
    "/main.js": main,
  }, { "/pglite/": pgliteDir });
}

function pgliteVersion() {
  return JSON.parse(fs.readFileSync(path.join(pgliteDir, "package.json"), "utf8")).version;
}

// measureCopy is --copy: see the top of the file.
async function measureCopy(out, runs, mb) {
  out.load_before = os.loadavg();
  out.chromium = browser.ctx.browser()?.version() || "";
  out.pglite_version = pgliteVersion();
  out.csv_mb = mb;
  // An autosave stops the VM for seconds: not part of a load.
  await browser.ctx.addInitScript(() => localStorage.setItem("pgwasm.settings", JSON.stringify({ autosave: false })));
  const page = await browser.ctx.newPage();
  await page.goto(srv.url);
  await waitReady(page);
  await page.evaluate(installCSV);
  out.ours = await page.evaluate(async ([runs, bytes, table]) => {
    const pg = window.pgwasm;
    await pg.query(table);
    const { text, sums } = window.makeCSV(bytes);
    const csv = new TextEncoder().encode(text);
    // Each load must leave what the generator made, or its time means nothing.
    const check = async how => {
      const r = await pg.query("select count(*)::int, coalesce(sum(id), 0)::bigint from cp");
      const [n, ids] = r.rows[0].map(Number);
      if (n !== sums.n || ids !== sums.ids) throw new Error(`${how}: ${n} rows (ids ${ids}), want ${sums.n} (ids ${sums.ids})`);
    };
    const r = { bytes: csv.length, rows: sums.n, copy_from_ms: [], upload_ms: [], in_vm_copy_ms: [], copy_to_ms: [] };
    const viaCopyFrom = async () => {
      await pg.query("truncate cp");
      const t = performance.now();
      await pg.copyFrom("cp", csv);
      r.copy_from_ms.push(performance.now() - t);
      await check("copyFrom");
    };
    const viaFile = async i => {
      await pg.query("truncate cp");
      let t = performance.now();
      const file = await pg.upload(`/uploads/bench-copy-${i}.csv`, csv);
      r.upload_ms.push(performance.now() - t);
      t = performance.now();
      await pg.exec(`COPY cp FROM '${file}' WITH (FORMAT csv)`);
      r.in_vm_copy_ms.push(performance.now() - t);
      await check("COPY FROM a file");
    };
    for (let i = 0; i < runs; i++) {
      // In turns, the first one alternating: neither way always runs on a
      // warmer VM.
      if (i % 2 === 0) { await viaCopyFrom(); await viaFile(i); } else { await viaFile(i); await viaCopyFrom(); }
      const t = performance.now();
      const back = await pg.copyTo("select id, name, amount from cp order by id");
      r.copy_to_ms.push(performance.now() - t);
      if (back.length !== csv.length) throw new Error(`copyTo gave ${back.length} bytes, want ${csv.length}`);
    }
    return r;
  }, [runs, mb * 1e6, COPY_TABLE]);
  await page.close();

  const site = await servePGlite(`import { PGlite } from "@electric-sql/pglite";
window.db = await PGlite.create();
window.ready = true;
`);
  try {
    const pp = await browser.ctx.newPage();
    await pp.goto(site.url + "index.html");
    await pp.waitForFunction(() => window.ready, null, { timeout: 120000, polling: 50 });
    await pp.evaluate(installCSV);
    out.pglite = await pp.evaluate(async ([runs, bytes, table]) => {
      const db = window.db;
      await db.query(table);
      const { text, sums } = window.makeCSV(bytes);
      const blob = new Blob([text]);
      const r = { copy_from_ms: [], copy_to_ms: [] };
      for (let i = 0; i < runs; i++) {
        await db.query("truncate cp");
        let t = performance.now();
        await db.query("COPY cp FROM '/dev/blob' WITH (FORMAT csv)", [], { blob });
        r.copy_from_ms.push(performance.now() - t);
        const n = (await db.query("select count(*)::int as n from cp")).rows[0].n;
        if (n !== sums.n) throw new Error(`PGlite COPY FROM: ${n} rows, want ${sums.n}`);
        t = performance.now();
        const back = await db.query("COPY (select id, name, amount from cp order by id) TO '/dev/blob' WITH (FORMAT csv)");
        r.copy_to_ms.push(performance.now() - t);
        if (back.blob.size !== blob.size) throw new Error(`PGlite COPY TO gave ${back.blob.size} bytes, want ${blob.size}`);
      }
      return r;
    }, [runs, mb * 1e6, COPY_TABLE]);
    await pp.close();
  } finally {
    await site.close();
  }
  out.load_after = os.loadavg();
}

// measureDrivers is --drivers: see the top of the file.
async function measureDrivers(out, runs, warm, kyRuns) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "pgwasm-bench-drivers-"));
  try {
    // Ours: node-postgres and Kysely on window.pgwasm.nodeSocket(), a
    // script run by page.evaluate (the page's CSP allows no inline script).
    await bundleDrivers({ dir: path.join(tmp, "ours"), outfile: path.join(tmp, "ours.js"), format: "iife", main: `
import pg from "pg";
import { Kysely, PostgresDialect } from "kysely";
import { Buffer } from "buffer";
globalThis.Buffer = Buffer;
const vm = window.pgwasm;
const stream = () => vm.nodeSocket();
window.benchDrivers = {
  client: async () => {
    const c = new pg.Client({ user: "postgres", database: "postgres", stream });
    await c.connect();
    return c;
  },
  kysely: () => new Kysely({ dialect: new PostgresDialect({ pool: new pg.Pool({ user: "postgres", database: "postgres", max: 1, stream }) }) }),
};
` });
    // PGlite's: the same Kysely on kysely-pglite-dialect; PGlite itself is
    // the package's dist, as bench/pglite.mjs serves it.
    await bundleDrivers({ dir: path.join(tmp, "pglite"), outfile: path.join(tmp, "pglite.js"), nodePaths: [benchModules, webModules], external: ["@electric-sql/pglite"], main: `
import { PGlite } from "@electric-sql/pglite";
import { Kysely } from "kysely";
import { PGliteDialect } from "kysely-pglite-dialect";
const db = await PGlite.create();
await db.query("select 1");
window.db = db;
window.kysely = () => new Kysely({ dialect: new PGliteDialect(db) });
window.ready = true;
` });
    const site = await servePGlite(fs.readFileSync(path.join(tmp, "pglite.js")));
    try {
      out.load_before = os.loadavg();
      out.chromium = browser.ctx.browser()?.version() || "";
      out.pglite_version = pgliteVersion();
      const ver = name => JSON.parse(fs.readFileSync(path.join(webModules, name, "package.json"), "utf8")).version;
      out.node_postgres_version = ver("pg");
      out.kysely_version = ver("kysely");
      out.kysely_pglite_dialect_version = JSON.parse(fs.readFileSync(path.join(benchModules, "kysely-pglite-dialect", "package.json"), "utf8")).version;

      const page = await browser.ctx.newPage();
      await page.goto(srv.url);
      await waitReady(page);
      await page.evaluate(fs.readFileSync(path.join(tmp, "ours.js"), "utf8"));
      out.ours = await page.evaluate(`(async () => {
        const d = window.benchDrivers, c = await d.client();
        const select1 = await (${roundTrips})({
          node_postgres: () => c.query("select 1"),
          api: () => window.pgwasm.query("select 1"),
        }, ${runs}, ${warm});
        await c.end();
        const db = d.kysely();
        const kysely = await (${kyselyRows})(db, ${kyRuns});
        await db.destroy();
        return { select1_ms: select1, kysely_ms: kysely };
      })()`);
      await page.close();

      const pp = await browser.ctx.newPage();
      await pp.goto(site.url + "index.html");
      await pp.waitForFunction(() => window.ready, null, { timeout: 120000, polling: 50 });
      out.pglite = await pp.evaluate(`(async () => {
        const select1 = await (${roundTrips})({ pglite: () => window.db.query("select 1") }, ${runs}, ${warm});
        const db = window.kysely();
        const kysely = await (${kyselyRows})(db, ${kyRuns});
        return { select1_ms: select1, kysely_ms: kysely };
      })()`);
      await pp.close();
      out.load_after = os.loadavg();
    } finally {
      await site.close();
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

// serveFiles serves fixed files and directories (prefix → dir) on loopback.
function serveFiles(files, dirs) {
  const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".data": "application/octet-stream" };
  const server = http.createServer((req, res) => {
    const p = decodeURIComponent(new URL(req.url, "http://x").pathname);
    if (files[p] !== undefined) {
      res.writeHead(200, { "Content-Type": types[path.extname(p)] || "application/octet-stream" }).end(files[p]);
      return;
    }
    const [prefix, dir] = Object.entries(dirs).find(([m]) => p.startsWith(m)) || [];
    const file = dir && path.join(dir, p.slice(prefix.length));
    if (!file || !file.startsWith(dir) || !fs.existsSync(file) || !fs.statSync(file).isFile()) { res.writeHead(404).end(); return; }
    res.writeHead(200, { "Content-Type": types[path.extname(file)] || "application/octet-stream" });
    fs.createReadStream(file).pipe(res);
  });
  return new Promise(resolve => server.listen(0, "127.0.0.1", () =>
    resolve({ url: `http://127.0.0.1:${server.address().port}/`, close: () => new Promise(r => { server.close(r); server.closeAllConnections(); }) })));
}
