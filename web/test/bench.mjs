#!/usr/bin/env node
// Measures the page in headless Chromium against pgwasm serve on loopback:
// navigation to first query result (cold cache, then warm), bytes
// transferred (split into code and data), IndexedDB save/restore times and,
// with --queries FILE, the query set of bench/queries.json through the
// page's JavaScript API (window.pgwasm), the same loop PGlite runs in
// bench/pglite.mjs. Prints one JSON object. Env as for run.mjs.
//
//   node web/test/bench.mjs [--queries bench/queries.json] [--runs N]
import fs from "node:fs";
import { startServer, launchBrowser, waitReady, waitMessage } from "./lib.mjs";
import { inPage, trackBytes } from "../../bench/measure.mjs";

const args = process.argv.slice(2);
const arg = name => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};

const srv = await startServer();
const browser = await launchBrowser();
const out = {};
try {
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
} finally {
  await browser.close();
  await srv.stop();
}
console.log(JSON.stringify(out, null, 1));
