// Helpers for the browser tests: a real `pgwasm serve` on loopback and
// Debian's Chromium driven by playwright-core.
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { launchBrowser } from "../chromium.mjs";
export { launchBrowser };

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const artifacts = path.join(root, "build", "test-artifacts");

// startServer runs pgwasm serve on free loopback ports and resolves with
// its base URL once it listens (its --ready-file names the bound address).
// extraArgs go to pgwasm serve as they are.
export async function startServer({ bin = process.env.PGWASM_BIN || path.join(root, "build/bin/pgwasm"), image = process.env.PGWASM_IMAGE || path.join(root, "build/image"), extraArgs = [] } = {}) {
  if (!fs.existsSync(path.join(image, "manifest.json"))) throw new Error(`no VM image in ${image} (make image snapshot)`);
  // Tunnel ports below Linux's ephemeral range (32768-60999), as
  // internal/testkit draws them: an outgoing connection cannot take one.
  const first = 20000 + Math.floor(Math.random() * (32000 - 20000 - 16));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pgwasm-serve-"));
  const ready = path.join(dir, "ready.json");
  const args = ["serve", "--listen", "127.0.0.1:0", "--image", image,
    "--tunnel-sni-listen", "127.0.0.1:0", "--tunnel-ports", `${first}-${first + 15}`,
    "--tunnel-bind", "127.0.0.1", "--tunnel-host", "127.0.0.1", "--ready-file", ready, ...extraArgs];
  const proc = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"] });
  // Never leave a server behind, even when a test run dies.
  process.on("exit", () => proc.kill("SIGKILL"));
  const log = [];
  proc.stderr.setEncoding("utf8");
  proc.stderr.on("data", chunk => log.push(chunk));
  let exited = null;
  proc.on("exit", (code, signal) => { exited = code ?? signal; });
  const deadline = Date.now() + 30000;
  // serve renames the file into place: it is whole once it exists.
  while (!fs.existsSync(ready)) {
    if (exited !== null) throw new Error(`pgwasm serve exited (${exited}):\n` + log.join(""));
    if (Date.now() > deadline) throw new Error("pgwasm serve did not start:\n" + log.join(""));
    await new Promise(r => setTimeout(r, 50));
  }
  const url = `http://${JSON.parse(fs.readFileSync(ready, "utf8")).http}/`;
  return { url, log, stop: () => new Promise(r => { proc.on("exit", () => { fs.rmSync(dir, { recursive: true, force: true }); r(); }); proc.kill("SIGTERM"); }) };
}

// startApp starts what the specs against `pgwasm serve` share: the server
// (serveArgs go to it as they are), Chromium (granted permissions for the
// server's origin) and one page from newPage. newPage's pages print their
// uncaught errors and accept every dialog (a reload with work not yet kept
// asks first), recording its type in dialogs. With autosave false the kept
// session (ui.spec.mjs tests it) is off from the first load; elsewhere it
// would only add saves of the whole VM between the steps. close(name) keeps
// the page's last screen as build/test-artifacts/<name>-final.png and stops
// the browser and the server; a failed start closes what it started.
export async function startApp({ serveArgs = [], autosave = true, permissions = [] } = {}) {
  fs.mkdirSync(artifacts, { recursive: true });
  const app = { srv: null, browser: null, page: null, dialogs: [] };
  app.newPage = async () => {
    const p = await app.browser.ctx.newPage();
    p.on("pageerror", e => console.error("pageerror:", e.message));
    p.on("dialog", d => {
      app.dialogs.push(d.type());
      void d.accept();
    });
    return p;
  };
  app.close = async name => {
    if (app.page && name) await app.page.screenshot({ path: path.join(artifacts, `${name}-final.png`) }).catch(() => {});
    await app.browser?.close();
    await app.srv?.stop();
  };
  try {
    app.srv = await startServer({ extraArgs: serveArgs });
    app.browser = await launchBrowser();
    if (permissions.length) await app.browser.ctx.grantPermissions(permissions, { origin: app.srv.url.replace(/\/$/, "") });
    if (!autosave) {
      await app.browser.ctx.addInitScript(() => {
        if (!localStorage.getItem("pgwasm.settings")) localStorage.setItem("pgwasm.settings", JSON.stringify({ autosave: false }));
      });
    }
    app.page = await app.newPage();
  } catch (err) {
    await app.close();
    throw err;
  }
  return app;
}

// serveStatic serves mounts (URL path prefix → directory) as any static
// host would, for the pages that use the npm package without `pgwasm
// serve`: GET only, no server routes, a CORS header when cors (as a CDN
// serving the image to another origin needs). log records every request.
export function serveStatic(mounts, { cors = false } = {}) {
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".json": "application/json", ".wasm": "application/wasm" };
  const log = [];
  const server = http.createServer((req, res) => {
    const p = decodeURIComponent(new URL(req.url, "http://x").pathname);
    const [prefix, dir] = Object.entries(mounts).find(([m]) => p.startsWith(m)) || [];
    const file = dir && path.join(dir, p.slice(prefix.length));
    const st = file && file.startsWith(dir) ? fs.statSync(file, { throwIfNoEntry: false }) : undefined;
    const ok = !!st?.isFile();
    log.push({ path: p, status: ok ? 200 : 404 });
    const headers = cors ? { "Access-Control-Allow-Origin": "*" } : {};
    if (!ok) { res.writeHead(404, headers).end(); return; }
    headers["Content-Type"] = types[path.extname(file)] || "application/octet-stream";
    headers["Content-Length"] = st.size;
    res.writeHead(200, headers);
    fs.createReadStream(file).pipe(res);
  });
  return new Promise(resolve => server.listen(0, "127.0.0.1", () =>
    resolve({ url: `http://127.0.0.1:${server.address().port}/`, log, close: () => new Promise(r => { server.close(r); server.closeAllConnections(); }) })));
}

// openStatic serves mounts as a page's site and the VM image in imageDir
// from another origin (as a CDN would: it needs CORS, nothing more), and
// opens pagePath?image=<that origin> in Chromium. errors collects the
// page's uncaught errors; close() stops the browser and both servers.
export async function openStatic(mounts, imageDir, pagePath) {
  const site = await serveStatic(mounts);
  const images = await serveStatic({ "/": imageDir }, { cors: true });
  const browser = await launchBrowser();
  const close = async () => { await browser.close(); await site.close(); await images.close(); };
  try {
    const p = await browser.ctx.newPage();
    const errors = [];
    p.on("pageerror", e => errors.push(e.message));
    if (process.env.PGWASM_DEBUG) p.on("console", m => console.error("page:", m.text()));
    await p.goto(`${site.url}${pagePath}?image=${encodeURIComponent(images.url)}`);
    return { p, errors, site, images, close };
  } catch (err) {
    await close();
    throw err;
  }
}

// waitReady waits until the page's VM reports ready (or fails).
export async function waitReady(page, timeoutMs = 240000) {
  await page.waitForFunction(() => {
    const pg = window.pgwasm;
    if (document.querySelector("#message.error:not([hidden])")) return true;
    return pg && pg.timings && pg.timings.ready > 0;
  }, null, { timeout: timeoutMs, polling: 250 });
  const err = await page.evaluate(() => {
    const m = document.querySelector("#message.error:not([hidden])");
    return m ? m.textContent : "";
  });
  if (err) throw new Error("page error: " + err);
}

// screenText is what the xterm terminal shows (its whole buffer).
export function screenText(page) {
  return page.evaluate(() => window.pgwasm.terminal.text());
}

export async function waitScreen(page, re, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  let text = "";
  while (Date.now() < deadline) {
    text = await screenText(page);
    if (re.test(text)) return text;
    await new Promise(r => setTimeout(r, 200));
  }
  throw new Error(`terminal never showed ${re}; it shows:\n${text.trimEnd().split("\n").slice(-15).join("\n")}`);
}

// waitMessage waits for the page's message line to change to a final kind.
export async function waitMessage(page, timeoutMs = 180000) {
  await page.waitForFunction(() => {
    const m = document.querySelector("#message");
    return m && !m.hidden && /\b(ok|error)\b/.test(m.className);
  }, null, { timeout: timeoutMs, polling: 200 });
  return page.evaluate(() => {
    const m = document.querySelector("#message");
    const r = { kind: m.className.includes("error") ? "error" : "ok", text: m.textContent };
    m.hidden = true;
    m.className = "message";
    return r;
  });
}

export function apiQuery(page, sql, params) {
  return page.evaluate(([sql, params]) => window.pgwasm.query(sql, params), [sql, params]);
}

// throttleCPU slows the page's CPU through the DevTools protocol (rate 4:
// four times slower; 1: full speed again), as a slow laptop or a busy
// machine would run the emulator. CDP throttles only the page's own thread
// (for a worker target it answers "Operation is only supported for pages,
// not workers"), so the emulator's worker, created on the next navigation,
// gets the same rate by its "throttle" message (web/src/vm-protocol.ts).
export async function throttleCPU(page, rate) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Emulation.setCPUThrottlingRate", { rate });
  await page.addInitScript(rate => {
    const W = window.Worker;
    window.Worker = class extends W {
      constructor(url, opts) {
        super(url, opts);
        if (opts?.name === "pgwasm-vm") this.postMessage({ t: "throttle", rate });
      }
    };
  }, rate);
  return cdp;
}

// pageStatus is the VM's last status event ({status, message}).
export function pageStatus(page) {
  return page.evaluate(() => window.pgwasm?.lastStatus || null);
}

// COPY_TABLE is the table installCSV's rows load into: an int primary key
// (an index to maintain, as a real import has), text and numeric.
export const COPY_TABLE = "create table cp (id int primary key, name text, amount numeric(8,2))";

// installCSV, run in a page (page.evaluate(installCSV)), defines the CSV
// that copy.spec.mjs loads and `make bench` times (web/test/bench.mjs
// --copy): window.makeCSV(bytes) gives the text of rows "id,name,amount"
// past that size and the sums PostgreSQL must find after loading it. Made in
// the page: 10 MB never crosses the DevTools protocol.
export function installCSV() {
  window.csvRow = i => `${i},name-${i}-${"x".repeat(i % 23)},${(i * 7) % 1000}.${String(i % 100).padStart(2, "0")}\n`;
  window.makeCSV = bytes => {
    const parts = [];
    let size = 0, n = 0, ids = 0, names = 0, cents = 0;
    while (size < bytes) {
      n++;
      const line = window.csvRow(n);
      parts.push(line);
      size += line.length;
      ids += n;
      names += `name-${n}-`.length + (n % 23);
      cents += ((n * 7) % 1000) * 100 + (n % 100);
    }
    return { text: parts.join(""), sums: { n, ids, names, cents } };
  };
}

// LONG_QUERY is issue #11's long query: seconds of guest CPU in one
// statement, typed into psql as a user would.
export const LONG_QUERY = "select pg_sleep(0), count(*) from generate_series(1,3000000);";

// mainThreadDuring types LONG_QUERY into the psql console of a ready page
// and, until its result shows, uses the page as a user would every
// 400 ms: toggles a <details> and types into a text field. It reports what
// the main thread did meanwhile: every long task (the browser's
// PerformanceObserver "longtask": a task over 50 ms, in which no input is
// handled), the input delay of every click and key (Event Timing:
// processingStart - startTime, reported from 16 ms), the emulator's own
// slices (v86's main_loop calls, in its worker: pg.emulatorStats()) over 50
// and 100 ms and the longest, and whether every toggle and keystroke took
// effect. Shared by ui.spec.mjs
// and `make bench` (web/test/bench.mjs --busy). started, if given, runs
// once the query is typed.
export async function mainThreadDuring(page, started) {
  await page.evaluate(() => {
    const s = (window.__busy = { t0: performance.now(), tasks: [], inputs: [] });
    s.obs = [
      new PerformanceObserver(l => { for (const e of l.getEntries()) s.tasks.push(e.duration); }),
      new PerformanceObserver(l => {
        for (const e of l.getEntries()) if (/^(pointerdown|click|keydown)$/.test(e.name)) s.inputs.push(e.processingStart - e.startTime);
      }),
    ];
    s.obs[0].observe({ type: "longtask" });
    s.obs[1].observe({ type: "event", durationThreshold: 16 });
  });
  const emu0 = await page.evaluate(() => window.pgwasm.emulatorStats(true));
  const before = await page.evaluate(() => window.pgwasm.terminal.text().length);
  await page.click("#terminal");
  const t0 = Date.now();
  await page.keyboard.type(LONG_QUERY + "\n");
  await started?.();
  const details = page.locator("details").first();
  const field = page.locator("#state-name");
  let interactions = 0, missed = 0;
  for (;;) {
    const text = await page.evaluate(n => window.pgwasm.terminal.text().slice(n), before);
    if (/\|\s*3000000\s*$/m.test(text)) break;
    if (Date.now() - t0 > 900000) throw new Error(`the long query gave no result in 900 s; the terminal shows:\n${text.slice(-600)}`);
    const open = await details.evaluate(d => d.open);
    await details.locator("summary").click();
    const word = `w${interactions}`;
    await field.fill("");
    await field.pressSequentially(word);
    if ((await details.evaluate(d => d.open)) === open || (await field.inputValue()) !== word) missed++;
    interactions++;
    await new Promise(r => setTimeout(r, 400));
  }
  const queryMs = Date.now() - t0;
  const s = await page.evaluate(() => {
    const s = window.__busy;
    for (const o of s.obs) o.disconnect();
    return { tasks: s.tasks, inputs: s.inputs };
  });
  const emu = await page.evaluate(() => window.pgwasm.emulatorStats());
  await field.fill("");
  const max = a => Math.round(Math.max(0, ...a));
  return {
    query: LONG_QUERY, queryMs, interactions, missed,
    longestTaskMs: max(s.tasks),
    tasksOver100: s.tasks.filter(d => d > 100).length,
    longTasks: s.tasks.length,
    maxInputDelayMs: max(s.inputs),
    longestSliceMs: Math.round(emu.longestSliceMs),
    slicesOver50: emu.slicesOver50 - emu0.slicesOver50,
    slicesOver100: emu.slicesOver100 - emu0.slicesOver100,
    worstTasksMs: s.tasks.sort((a, b) => b - a).slice(0, 5).map(Math.round),
  };
}
