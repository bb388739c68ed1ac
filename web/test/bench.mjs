#!/usr/bin/env node
// Measures the page in headless Chromium against pgwasm serve on loopback:
// navigation to first query result (cold cache, then warm), bytes
// transferred, and IndexedDB save/restore times. Prints one JSON object.
// Env as for run.mjs.
import { startServer, launchBrowser, waitReady, waitMessage } from "./lib.mjs";

const srv = await startServer();
const browser = await launchBrowser();
const out = {};
try {
  const page = await browser.ctx.newPage();
  const cdp = await browser.ctx.newCDPSession(page);
  await cdp.send("Network.enable");
  let bytes = 0;
  cdp.on("Network.loadingFinished", e => { bytes += e.encodedDataLength; });
  for (const run of ["cold", "warm"]) {
    bytes = 0;
    const t0 = Date.now();
    await page.goto(srv.url);
    await waitReady(page);
    await page.evaluate(() => window.pgwasm.query("select 1"));
    out[`${run}_first_query_ms`] = Date.now() - t0;
    out[`${run}_bytes`] = bytes;
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
} finally {
  await browser.close();
  await srv.stop();
}
console.log(JSON.stringify(out, null, 1));
