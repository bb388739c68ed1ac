#!/usr/bin/env node
// long-task-trace.mjs: what the page's main thread does in its longest
// tasks while issue #11's long query runs (docs/web.md, "The main thread
// during a long query"). Runs web/test/lib.mjs mainThreadDuring in a ready
// page under a Chromium trace (DevTools protocol Tracing) and prints the
// --top longest tasks of the renderer's main thread with the events that
// took their time (XHRLoad for a 9p file load, HandlePostMessage for
// v86's main_loop, MajorGC, Commit...; a task with none was the thread
// waiting for the host's CPU), and v86's slices' median, 99th percentile
// and maximum.
//
//   PGWASM_BIN=... PGWASM_IMAGE=... node scripts/long-task-trace.mjs [--top 10] [--out trace.json]
import fs from "node:fs";
import { startServer, launchBrowser, waitReady, waitScreen, mainThreadDuring } from "../web/test/lib.mjs";

const args = process.argv.slice(2);
const arg = (name, def) => (args.includes(name) ? args[args.indexOf(name) + 1] : def);
const top = Number(arg("--top", 10));

const srv = await startServer();
const browser = await launchBrowser();
let trace, busy;
try {
  const page = await browser.ctx.newPage();
  await page.goto(srv.url);
  await waitReady(page, 600000);
  await waitScreen(page, /postgres=# $/m);
  const cdp = await browser.ctx.newCDPSession(page);
  await cdp.send("Tracing.start", {
    transferMode: "ReturnAsStream",
    traceConfig: { includedCategories: ["toplevel", "devtools.timeline", "disabled-by-default-devtools.timeline", "v8", "v8.execute", "disabled-by-default-v8.gc"] },
  });
  busy = await mainThreadDuring(page);
  const complete = new Promise(r => cdp.once("Tracing.tracingComplete", r));
  await cdp.send("Tracing.end");
  const { stream } = await complete;
  const chunks = [];
  for (;;) {
    const r = await cdp.send("IO.read", { handle: stream, size: 1 << 20 });
    chunks.push(r.base64Encoded ? Buffer.from(r.data, "base64").toString() : r.data);
    if (r.eof) break;
  }
  trace = chunks.join("");
} finally {
  await browser.close();
  await srv.stop();
}
if (arg("--out")) fs.writeFileSync(arg("--out"), trace);
console.log(`measured: ${JSON.stringify(busy)}`);

const parsed = JSON.parse(trace);
const events = Array.isArray(parsed) ? parsed : parsed.traceEvents;
const mains = new Set(events.filter(e => e.ph === "M" && e.name === "thread_name" && e.args?.name === "CrRendererMain").map(e => `${e.pid}/${e.tid}`));
const onMain = events.filter(e => e.ph === "X" && mains.has(`${e.pid}/${e.tid}`)).sort((a, b) => a.ts - b.ts);
const ms = us => Math.round(us / 1000);
const tasks = onMain.filter(e => e.name === "ThreadControllerImpl::RunTask").sort((a, b) => b.dur - a.dur).slice(0, top);
for (const t of tasks) {
  const by = new Map();
  for (const e of onMain) {
    if (e === t || e.ts < t.ts || e.ts + (e.dur || 0) > t.ts + t.dur || e.name === "ThreadControllerImpl::RunTask") continue;
    const fn = e.args?.data?.functionName;
    const name = fn ? `${e.name}:${fn}` : e.name;
    by.set(name, (by.get(name) || 0) + (e.dur || 0));
  }
  const inside = [...by].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([n, d]) => `${n} ${ms(d)}`).join(", ");
  console.log(`${ms(t.dur)} ms task: ${inside || "no traced work (the thread waited for the CPU)"}`);
}
const slices = onMain.filter(e => e.name === "HandlePostMessage").map(e => e.dur / 1000).sort((a, b) => a - b);
if (slices.length) {
  const at = q => slices[Math.min(slices.length - 1, Math.floor(q * slices.length))].toFixed(1);
  console.log(`v86 slices (HandlePostMessage): ${slices.length}, median ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${at(1)} ms`);
}
