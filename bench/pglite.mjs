#!/usr/bin/env node
// PGlite side of `make bench` (cmd/pgwasm-bench runs it and parses the one
// JSON object it prints on stdout; progress goes to stderr).
//
//   node bench/pglite.mjs start               one cold start in this fresh process, then a warm one
//   node bench/pglite.mjs queries [--runs N]  the query set of bench/queries.json, in Node
//   node bench/pglite.mjs browser [--runs N] [--starts N]
//                                             PGlite in headless Chromium: cold and warm
//                                             start, bytes transferred, the query set
//
// Every figure is measured here; nothing is typed in.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import zlib from "node:zlib";
import { register, syncBuiltinESMExports } from "node:module";
import { MessageChannel } from "node:worker_threads";
import { fileURLToPath } from "node:url";
import { runQuerySet, inPage, trackBytes } from "./measure.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkgDir = path.join(here, "node_modules", "@electric-sql", "pglite");
const spec = JSON.parse(fs.readFileSync(path.join(here, "queries.json"), "utf8"));
const version = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;

const args = process.argv.slice(2);
const mode = args[0] || "start";
const flag = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : def;
};
const log = (...a) => console.error("pglite-bench:", ...a);

// countModuleBytes installs a module loader hook that reports each PGlite
// module's source size, so "bytes loaded" includes the JavaScript.
function countModuleBytes() {
  const loaded = new Map();
  const { port1, port2 } = new MessageChannel();
  port1.on("message", m => loaded.set(m.url, m.bytes));
  port1.unref();
  const hook = `let port;
export function initialize(d) { port = d.port; }
export async function load(url, ctx, next) {
  const r = await next(url, ctx);
  if (url.includes("@electric-sql")) port.postMessage({ url, bytes: r.source == null ? 0 : (r.source.byteLength ?? r.source.length) });
  return r;
}`;
  register("data:text/javascript," + encodeURIComponent(hook), { parentURL: import.meta.url, data: { port: port2 }, transferList: [port2] });
  return loaded;
}

// countFileBytes wraps fs reads of files in the PGlite package (the wasm,
// the data file, extensions).
function countFileBytes() {
  const files = new Map();
  const note = (p, data) => {
    const s = String(p instanceof URL ? fileURLToPath(p) : p);
    if (s.includes("@electric-sql") && data) files.set(s, Math.max(files.get(s) || 0, data.byteLength ?? data.length)); // PGlite reads pglite.data twice (initdb, then postgres): count each file once
  };
  const rf = fs.promises.readFile, rfs = fs.readFileSync, rfc = fs.readFile;
  fs.promises.readFile = async function (p, ...a) { const d = await rf.call(this, p, ...a); note(p, d); return d; };
  fs.readFileSync = function (p, ...a) { const d = rfs.call(this, p, ...a); note(p, d); return d; };
  fs.readFile = function (p, ...a) {
    const cb = a.pop();
    return rfc.call(this, p, ...a, (err, d) => { if (!err) note(p, d); cb(err, d); });
  };
  syncBuiltinESMExports();
  return files;
}

const sum = m => [...m.values()].reduce((a, b) => a + b, 0);

async function start() {
  // performance.now() counts from this process's start: "from nothing".
  const modules = countModuleBytes();
  const files = countFileBytes();
  const t0 = performance.now();
  const { PGlite } = await import("@electric-sql/pglite");
  const imported = performance.now();
  const db = await PGlite.create();
  const created = performance.now();
  await db.query("select 1");
  const first = performance.now();
  const pgVersion = (await db.query("select version() as v")).rows[0].v;
  await new Promise(r => setTimeout(r, 50)); // the loader hook's messages
  const cold = {
    process_to_first_query_ms: first, script_to_first_query_ms: first - t0,
    import_ms: imported - t0, create_ms: created - imported, query_ms: first - created,
    module_bytes: sum(modules), file_bytes: sum(files), bytes: sum(modules) + sum(files),
    files: Object.fromEntries([...files].map(([k, v]) => [path.relative(pkgDir, k), v])),
  };
  await db.close();
  modules.clear(); files.clear();
  const t1 = performance.now();
  const db2 = await PGlite.create();
  await db2.query("select 1");
  const warm = { first_query_ms: performance.now() - t1, bytes: sum(modules) + sum(files) };
  await db2.close();
  return { version, postgres: pgVersion, node: process.version, rss: process.memoryUsage().rss, cold, warm };
}

async function queries() {
  const { PGlite } = await import("@electric-sql/pglite");
  const db = await PGlite.create();
  const res = await runQuerySet(db, spec, flag("--runs", 3), log);
  res.rss = process.memoryUsage().rss;
  await db.close();
  return { version, ...res };
}

// The browser page: imports PGlite from the package's dist, starts it and
// runs select 1; window.bench runs the query set.
const pageHTML = `<!doctype html><meta charset="utf-8"><title>PGlite bench</title>
<script type="module">
window.t0 = performance.now();
const { PGlite } = await import("/pglite/dist/index.js");
const db = await PGlite.create();
await db.query("select 1");
window.firstQuery = performance.now();
window.db = db;
</script>`;

const types = { ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".data": "application/octet-stream", ".html": "text/html", ".gz": "application/gzip" };

// gzipped holds the package's files compressed once, before any timing,
// so a cold page load does not wait for the compressor.
const gzipped = new Map();

function precompress(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) precompress(p);
    else if (/\.(js|mjs|wasm|data)$/.test(e.name)) gzipped.set(p, zlib.gzipSync(fs.readFileSync(p), { level: 9 }));
  }
}

function staticServer() {
  if (gzipped.size === 0) precompress(path.join(pkgDir, "dist"));
  const srv = http.createServer((req, res) => {
    const u = new URL(req.url, "http://x");
    if (u.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html", "cache-control": "no-cache" });
      return res.end(pageHTML);
    }
    if (!u.pathname.startsWith("/pglite/")) { res.writeHead(404); return res.end(); }
    const file = path.join(pkgDir, path.normalize(u.pathname.slice("/pglite/".length)).replace(/^(\.\.[/\\])+/, ""));
    fs.readFile(file, (err, data) => {
      if (err) { res.writeHead(404); return res.end(); }
      // Cacheable and gzip-compressed, as a CDN would serve a versioned
      // package and as pgwasm serve sends our bundle: PGlite's wasm and data
      // shrink to about a third.
      const headers = { "content-type": types[path.extname(file)] || "application/octet-stream", "cache-control": "public, max-age=31536000, immutable", "vary": "accept-encoding" };
      if (/\bgzip\b/.test(req.headers["accept-encoding"] || "") && gzipped.has(file)) {
        headers["content-encoding"] = "gzip";
        data = gzipped.get(file);
      }
      res.writeHead(200, headers);
      res.end(data);
    });
  });
  return new Promise(r => srv.listen(0, "127.0.0.1", () => r(srv)));
}

async function browser() {
  // The same Chromium launch as our page's; imported here, not at the top,
  // so that the Node start measurements do not load playwright.
  const { launchBrowser } = await import("../web/chromium.mjs");
  const srv = await staticServer();
  const url = `http://127.0.0.1:${srv.address().port}/`;
  const out = { version, cold: [], warm: [] };
  try {
    const starts = flag("--starts", 3);
    for (let i = 0; i < starts; i++) {
      // Cold: a fresh browser profile (empty HTTP cache); warm: the same
      // page loaded again in that profile (HTTP and code cache filled).
      const b = await launchBrowser();
      try {
        const page = await b.ctx.newPage();
        const cdp = await b.ctx.newCDPSession(page);
        // PGlite's data is its filesystem bundle (pglite.data); its code the
        // JavaScript and the wasm.
        const bytes = await trackBytes(cdp, u => u.endsWith(".data"));
        for (const kind of ["cold", "warm"]) {
          bytes.reset();
          const t = Date.now();
          await page.goto(url);
          await page.waitForFunction(() => window.firstQuery > 0, null, { timeout: 120000, polling: 20 });
          const ms = Date.now() - t;
          const b = bytes.get();
          out[kind].push({ first_query_ms: ms, bytes: b.bytes, code_bytes: b.code, data_bytes: b.data, in_page_ms: await page.evaluate(() => window.firstQuery - window.t0) });
          log("browser", kind, ms, "ms", b.bytes, "bytes");
        }
        if (i === 0) {
          out.chromium = b.ctx.browser()?.version() || "";
          const runs = flag("--runs", 3);
          await page.exposeFunction("benchLog", s => log(s));
          out.query_set = await page.evaluate(inPage("db", spec, runs));
        }
      } finally {
        await b.close();
      }
    }
  } finally {
    srv.close();
  }
  return out;
}

const modes = { start, queries, browser };
if (!modes[mode]) {
  console.error(`unknown mode ${mode}: want ${Object.keys(modes).join(", ")}`);
  process.exit(2);
}
const res = await modes[mode]();
process.stdout.write(JSON.stringify(res) + "\n");
process.exit(0);
