// launchBrowser starts Debian's Chromium, headless, in a fresh profile (an
// empty HTTP cache). One launch for the browser tests (web/test/lib.mjs) and
// the bench's PGlite page (bench/pglite.mjs), so both pages of a comparison
// run in the same browser setup.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export async function launchBrowser() {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "pgwasm-chromium-"));
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: { width: 1280, height: 800 },
    acceptDownloads: true,
  });
  return { ctx, close: async () => { await ctx.close(); fs.rmSync(userDataDir, { recursive: true, force: true }); } };
}
