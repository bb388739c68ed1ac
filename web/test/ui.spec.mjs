// The page's user interface under real conditions (issue #16): the kept
// session and Resume, confirmations, keyboard-only use, a phone with its
// keyboard open, copy, imports, a start that outlasts the engine's wait.
// Real `pgwasm serve`, Debian's Chromium, the real VM.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import path from "node:path";
import { startApp, waitReady, waitScreen, waitMessage, apiQuery, artifacts, screenText, throttleCPU, mainThreadDuring } from "./lib.mjs";

let app, srv, browser, page, dialogs, newPage;

before(async () => {
  app = await startApp({ permissions: ["clipboard-read", "clipboard-write"] });
  ({ srv, browser, page, dialogs, newPage } = app);
});

after(() => app?.close("ui"));

// typeSQL types a line into psql and waits for re to show.
async function typeSQL(p, line, re, timeoutMs = 60000) {
  await p.click("#terminal");
  await p.keyboard.type(line + "\n", { delay: 5 });
  return waitScreen(p, re, timeoutMs);
}

// focusedName describes document.activeElement (id, key or label).
const focusedName = p =>
  p.evaluate(() => {
    const el = document.activeElement;
    if (!el || el === document.body) return "body";
    if (el.closest("#terminal")) return "terminal";
    return el.id ? "#" + el.id : el.dataset.key ? "key:" + el.dataset.key : el.getAttribute("aria-label") || el.tagName.toLowerCase() + ":" + el.textContent.trim();
  });

// The file inputs: Chromium opens a chooser on Enter every time (CDP's
// Page.fileChooserOpened said so in every try), but Playwright turns its
// interception on only when a "filechooser" listener is added, without
// waiting, and Chromium may apply it after the key press: then headless
// Chromium drops the chooser and Playwright never sees it (7 of 14 tries on
// a loaded host; likely session 6's CI too). So the listener is added at
// the start of the test, long before the first key press, and stays until
// its end.
test("keyboard only: every control in the tab order, file inputs included, and a way out of the terminal", async () => {
  const choosers = [];
  const onChooser = c => choosers.push(c);
  page.on("filechooser", onChooser);
  // nextChooser runs press and waits for the file chooser it opens.
  const nextChooser = async press => {
    const n = choosers.length;
    await press();
    const deadline = Date.now() + 30000;
    while (choosers.length === n) {
      if (Date.now() > deadline) throw new Error("no file chooser opened");
      await new Promise(r => setTimeout(r, 100));
    }
    return choosers[n];
  };
  try {
    await keyboardOnly(nextChooser);
  } finally {
    page.off("filechooser", onChooser);
  }
});

async function keyboardOnly(nextChooser) {
  await page.goto(srv.url);
  await waitReady(page);
  await waitScreen(page, /postgres=# $/m);
  // Tab from the top of the page through everything.
  await page.evaluate(() => document.activeElement?.blur());
  await page.evaluate(() => window.getSelection()?.removeAllRanges());
  const seen = [];
  await page.locator("body").focus();
  for (let i = 0; i < 70; i++) {
    await page.keyboard.press("Tab");
    const n = await focusedName(page);
    if (n === "terminal") {
      // The terminal takes Tab (psql completion): Esc then Tab leaves it.
      seen.push(n);
      await page.keyboard.press("Escape");
      await page.keyboard.press("Tab");
      seen.push("left:" + (await focusedName(page)));
      continue;
    }
    seen.push(n);
    // The last control: Tab on would leave the page (and its focus).
    if (n === "#download" && seen.includes("terminal")) break;
    if (n === "#download") {
      await page.focus(".skip");
      seen.push("a:Skip to the controls");
    }
  }
  console.error("tab order:", seen.join(" "));
  for (const want of ["terminal", "key:esc", "key:ctrl-c", "key:ctrl-r", "key:pipe", "key:semicolon", "key:home", "key:end", "key:right",
    "#message-close", "#memory", "#fullboot", "#autosave", "#copyonselect", "#fontsize", "#restart", "#state-name", "#save-idb",
    "#save-file", "#restore-file", "#net-start", "#upload", "#download-path", "#download"]) {
    if (want === "#message-close") continue; // only while a message shows
    assert.ok(seen.includes(want), `${want} is not in the tab order: ${seen.join(" ")}`);
  }
  assert.ok(seen.includes("left:key:esc"), `Esc then Tab did not leave the terminal: ${seen.join(" ")}`);
  // Nothing the leaving Esc should have reached psql: the line is empty.
  assert.match((await screenText(page)).trimEnd().split("\n").pop(), /^postgres=#$/);

  // Each kind of control works from the keyboard.
  const focus = sel => page.focus(sel);
  // File inputs open the file chooser with Enter.
  await focus("#upload");
  assert.equal(await focusedName(page), "#upload");
  const chooser = await nextChooser(() => page.keyboard.press("Enter"));
  await chooser.setFiles({ name: "kb.csv", mimeType: "text/csv", buffer: Buffer.from("a,b\n1,2\n") });
  let m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  await page.waitForFunction(() => !document.querySelector("#restore-file").disabled);
  await focus("#restore-file");
  const chooser2 = await nextChooser(() => page.keyboard.press("Space"));
  await chooser2.setFiles([]);
  // A checkbox with Space (and back).
  const before = await page.isChecked("#copyonselect");
  await focus("#copyonselect");
  await page.keyboard.press("Space");
  assert.equal(await page.isChecked("#copyonselect"), !before);
  await page.keyboard.press("Space");
  // A helper key with Enter: Ctrl-R reaches psql (readline's search).
  await focus('[data-key="ctrl-r"]');
  await page.keyboard.press("Enter");
  await waitScreen(page, /\(reverse-i-search\)/);
  await focus('[data-key="ctrl-c"]');
  await page.keyboard.press("Enter");
  await waitScreen(page, /\^C\n?postgres=# ?$/m);
  // Save in the browser, restore and delete it, all with the keyboard.
  const name = "kb-" + crypto.randomBytes(3).toString("hex");
  await focus("#state-name");
  await page.keyboard.type(name);
  await page.keyboard.press("Tab");
  assert.equal(await focusedName(page), "#save-idb");
  await page.keyboard.press("Enter");
  m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  const restore = page.getByRole("button", { name: `Restore state “${name}”` });
  await restore.focus();
  await page.keyboard.press("Enter");
  m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  await page.getByRole("button", { name: `Delete state “${name}”` }).focus();
  await page.keyboard.press("Enter");
  // The question takes the focus on its safe answer.
  assert.equal(await page.evaluate(() => document.activeElement.className), "confirm-no");
  await page.keyboard.press("Shift+Tab");
  await page.keyboard.press("Enter");
  await page.waitForSelector(`.state-row:has-text("${name}")`, { state: "detached" });
  // A details section opens and closes with Enter on its summary.
  const sum = page.locator("summary", { hasText: "Getting started" });
  await sum.focus();
  await page.keyboard.press("Enter");
  assert.equal(await page.evaluate(() => document.querySelector("details").open), false);
  await page.keyboard.press("Enter");
}

test("status and errors are announced, sit under the terminal, and can be dismissed", async () => {
  for (const sel of ["#status", "#message"]) assert.ok(await page.getAttribute(sel, "aria-live"), `${sel} is no live region`);
  for (const id of ["state-name", "download-path"]) {
    const label = await page.evaluate(id => document.querySelector(`label[for="${id}"]`)?.textContent, id);
    assert.ok(label, `#${id} has no label`);
  }
  await page.fill("#download-path", "relative/path");
  await page.click("#download");
  await page.waitForSelector("#message.error:not([hidden])");
  assert.equal(await page.getAttribute("#message", "aria-live"), "assertive");
  const t = await page.locator("#terminal").boundingBox();
  const msg = await page.locator("#message").boundingBox();
  assert.ok(msg.y >= t.y + t.height, `the message (y ${msg.y}) covers the terminal (bottom ${t.y + t.height})`);
  const rows = await page.evaluate(() => window.pgwasm.terminal.size().rows);
  await page.click("#message-close");
  assert.equal(await page.isHidden("#message"), true);
  assert.equal(await page.evaluate(() => window.pgwasm.terminal.size().rows), rows, "a message resized the terminal");
  await page.fill("#download-path", "");
});

test("CSV with a quoted multi-line field keeps integer columns; imports say what they did; Restart clears the uploads", async () => {
  const csv = 'id,note,amount\n1,"first line\nsecond line",2.5\n2,"plain",3\n3,"a ""quoted"" word\r\nand more",4\n';
  await page.setInputFiles("#upload", { name: "notes.csv", mimeType: "text/csv", buffer: Buffer.from(csv) });
  let m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  await page.click('.upload-row:has-text("notes.csv") >> text=Import as table');
  m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  assert.match(m.text, /3 rows into table notes/);
  const r = await apiQuery(page, "select id, note, amount from notes order by id");
  assert.deepEqual(r.columns.map(c => c.type), ["int8", "text", "numeric"]);
  assert.deepEqual(r.rows[0], ["1", "first line\nsecond line", "2.5"]);
  assert.deepEqual(r.rows[2], ["3", 'a "quoted" word\r\nand more', "4"]);

  // A .sql upload is not sent to COPY; its output replaces the last one
  // and long lines wrap.
  const long = "x".repeat(400);
  await page.setInputFiles("#upload", { name: "long.sql", mimeType: "text/plain", buffer: Buffer.from(`\\echo ${long}\n`) });
  m = await waitMessage(page);
  assert.doesNotMatch(m.text, /COPY/);
  assert.match(m.text, /\\i \/uploads\/long\.sql/);
  await page.click('.upload-row:has-text("long.sql") >> text=Run with psql');
  m = await waitMessage(page, 240000);
  assert.equal(m.kind, "ok", m.text);
  const out = await page.evaluate(() => {
    const el = document.querySelector("#import-output");
    return { text: el.textContent, wraps: el.scrollWidth <= el.clientWidth + 1 };
  });
  assert.match(out.text, new RegExp(long));
  assert.doesNotMatch(out.text, /COPY "notes"/, "the CSV import's output is still there");
  assert.ok(out.wraps, "long output lines are cut off");

  // A file that is gone says so (no word of tmpfs).
  await page.setInputFiles("#upload", { name: "gone.csv", mimeType: "text/csv", buffer: Buffer.from("a\n1\n") });
  await waitMessage(page);
  const rm = await page.evaluate(async () => {
    const r = await window.pgwasm.runProgram("rm /uploads/gone.csv");
    return { ...r, gone: !(await window.pgwasm.fileExists("/uploads/gone.csv")) };
  });
  assert.ok(rm.gone, `rm in the VM: ${rm.output}`);
  await page.click('.upload-row:has-text("gone.csv") >> text=Import as table');
  m = await waitMessage(page);
  assert.equal(m.kind, "error");
  assert.match(m.text, /no longer in the VM/);
  assert.doesNotMatch(m.text, /tmpfs/);

  // Restart VM: a fresh VM has no uploads, and the list says so.
  assert.ok(await page.locator(".upload-row").count() > 0);
  await page.evaluate(() => (window.pgwasm.replaced = true));
  await page.click("#restart");
  await page.waitForFunction(() => !window.pgwasm.replaced, null, { timeout: 60000 });
  await waitReady(page);
  await page.waitForFunction(() => !document.querySelector("#save-idb").disabled);
  assert.equal(await page.locator(".upload-row").count(), 0, "the upload list outlived Restart VM");
});

test("emoji keep psql's table borders in place; Ctrl+C with a selection copies", async () => {
  await waitScreen(page, /postgres=# $/m);
  await typeSQL(page, "select '😀x' as e, 'tail' as t;", /^\s*😀x\s*\|\s*tail\s*$/m);
  // The border column of the header and of the row, in terminal cells.
  const cols = await page.evaluate(() => {
    const b = window.pgwasm.terminal.term.buffer.active;
    const at = [];
    for (let y = 0; y < b.length; y++) {
      const line = b.getLine(y);
      const s = line.translateToString(true);
      if (!/^\s*(e|😀x)\s+\|/.test(s)) continue;
      for (let x = 0; x < line.length; x++) if (line.getCell(x)?.getChars() === "|") { at.push(x); break; }
    }
    return at.slice(-2);
  });
  assert.equal(cols.length, 2);
  assert.equal(cols[0], cols[1], `header border at column ${cols[0]}, row border at ${cols[1]}`);

  await typeSQL(page, "select 'copy-me-' || 41 + 1 as c;", /copy-me-42\s*\n\(1 row\)\n+postgres=# ?$/m);
  const before = await screenText(page);
  await page.evaluate(() => {
    const t = window.pgwasm.terminal.term;
    const b = t.buffer.active;
    for (let y = b.length - 1; y >= 0; y--) {
      const s = b.getLine(y).translateToString(true);
      const x = s.indexOf("copy-me-42");
      if (x >= 0 && !s.includes("select")) return t.select(x, y, "copy-me-42".length);
    }
  });
  await page.keyboard.press("Control+C");
  await page.waitForFunction(async () => (await navigator.clipboard.readText()) === "copy-me-42", null, { timeout: 5000 });
  await page.waitForTimeout(500);
  assert.equal(await screenText(page), before, "Ctrl+C with a selection reached psql");
  assert.equal(await page.evaluate(() => window.pgwasm.terminal.term.hasSelection()), false);
  // Without a selection Ctrl+C is psql's again.
  await page.keyboard.type("select 'never' as n", { delay: 5 });
  await waitScreen(page, /select 'never' as n$/m);
  await page.keyboard.press("Control+C");
  await waitScreen(page, /as n\^C\n?postgres=# $/m);
});

// Issue #11: a long query must leave the page's thread free (v86 runs in a
// worker). Measured on one run of the query.
let busy;
test("a long query leaves the page usable: every click and keystroke while it runs takes effect, and the session is kept after it, not during it", async () => {
  if (!(await page.evaluate(() => !!window.pgwasm))) {
    await page.goto(srv.url);
    await waitReady(page);
  }
  await waitScreen(page, /postgres=# $/m);
  await page.check("#autosave"); // the default; earlier tests may have toggled it
  const kept = () => page.evaluate(() => window.pgwasmPage.autosave.count);
  const before = await kept();
  // keepSoon: keep the session as soon as the page allows, no gap.
  busy = await mainThreadDuring(page, () => page.evaluate(() => window.pgwasmPage.keepSoon()));
  console.error(`long query, main thread: ${JSON.stringify(busy)}`);
  assert.ok(busy.interactions >= 3, `the query took ${busy.queryMs} ms: too short to measure the page under it`);
  assert.equal(busy.missed, 0, `${busy.missed} of ${busy.interactions} clicks or typed words had no effect while the query ran`);
  assert.equal(await kept(), before, "the session was kept (the VM saved, the page frozen) while the query ran");
  await page.waitForFunction(n => window.pgwasmPage.autosave.count > n, before, { timeout: 300000, polling: 500 });
});

test("a long query: no main-thread task over 100 ms (issue #11's target)", () => {
  assert.ok(busy, "the measurement above did not run");
  assert.ok(busy.longestTaskMs <= 100, `longest main-thread task ${busy.longestTaskMs} ms (${busy.tasksOver100} over 100 ms; emulator slices over 100 ms: ${busy.slicesOver100}); longest input delay ${busy.maxInputDelayMs} ms`);
});

test("Delete asks first; a full browser storage loses nothing", async () => {
  if (!(await page.evaluate(() => !!window.pgwasm))) {
    await page.goto(srv.url);
    await waitReady(page);
  }
  const name = "del-" + crypto.randomBytes(3).toString("hex");
  await page.fill("#state-name", name);
  await page.click("#save-idb");
  let m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  await page.click(`[aria-label="Delete state “${name}”"]`);
  await page.waitForSelector(`.state-row.confirm:has-text("${name}")`);
  await page.click(".state-row.confirm .confirm-no");
  await page.waitForSelector(`.state-row:not(.confirm):has-text("${name}")`);
  assert.match(await page.textContent("#storage"), /stores \d+(\.\d)? (MB|KB|GB) in this browser/);

  // A full storage. Chromium 156 does not enforce a quota from CDP's
  // Storage.overrideQuotaForOrigin on IndexedDB (checked: the override
  // active with 1 MB, a 14 MB record of random bytes was committed; the
  // reason this test was todo), so the browser's refusal is injected where
  // it happens: every write of a state (a record holding a blob) fails
  // with a QuotaExceededError and stores nothing.
  const kept = () => page.evaluate(() => new Promise((resolve, reject) => {
    const r = indexedDB.open("pgwasm");
    r.onerror = () => reject(r.error);
    r.onsuccess = () => {
      const g = r.result.transaction("session").objectStore("session").get("current");
      g.onsuccess = () => {
        resolve(g.result ? `${g.result.created} ${g.result.size}` : "none");
        r.result.close();
      };
      g.onerror = () => reject(g.error);
    };
  }));
  const keptBefore = await kept();
  await page.evaluate(() => {
    const P = IDBObjectStore.prototype;
    const orig = { add: P.add, put: P.put };
    for (const k of ["add", "put"]) {
      P[k] = function (...args) {
        if (args[0]?.blob instanceof Blob) throw new DOMException("The quota has been exceeded.", "QuotaExceededError");
        return orig[k].apply(this, args);
      };
    }
    window.storageNotFull = () => Object.assign(P, orig);
  });
  try {
    // Save in browser: a clear message, the state kept before is still there.
    await page.fill("#state-name", name + "-big");
    await page.click("#save-idb");
    m = await waitMessage(page);
    assert.equal(m.kind, "error", m.text);
    assert.match(m.text, /storage is full.*nothing was lost/);
    assert.equal(await page.locator(`.state-row:has-text("${name}-big")`).count(), 0);
    assert.equal(await page.locator(`.state-row:has-text("${name}")`).count(), 1);
    // Autosave: a change, then the page tries to keep the session.
    await apiQuery(page, "create table if not exists quota_full(a int)");
    await page.evaluate(() => window.pgwasmPage.keepSoon());
    await page.waitForFunction(() => /session was not kept/.test(document.querySelector("#message:not([hidden])")?.textContent || ""), null, { timeout: 300000, polling: 250 });
    assert.match(await page.textContent("#message"), /storage is full.*nothing was lost/);
    assert.equal(await kept(), keptBefore, "the kept session changed");
    assert.equal(await page.evaluate(() => window.pgwasmPage.unsaved()), true, "the page took the unsaved change as kept");
    await page.click("#message-close");
  } finally {
    await page.evaluate(() => window.storageNotFull());
  }
  // The VM answers, and has what was done meanwhile.
  assert.deepEqual((await apiQuery(page, "select to_regclass('quota_full') is not null, 2 + 2")).rows, [["t", "4"]]);

  await page.click(`[aria-label="Delete state “${name}”"]`);
  await page.click(".state-row.confirm .confirm-yes");
  await page.waitForSelector(`.state-row:has-text("${name}")`, { state: "detached" });
});

test("resume after a reload restores the last work without a manual save", async () => {
  if (!(await page.evaluate(() => !!window.pgwasm))) {
    await page.goto(srv.url);
    await waitReady(page);
  }
  const marker = crypto.randomBytes(5).toString("hex");
  const count = await page.evaluate(() => window.pgwasmPage.autosave.count);
  await typeSQL(page, `create table kept_work as select '${marker}' as v;`, /^SELECT 1$/m);
  // The page keeps the session by itself once it is idle.
  const t0 = Date.now();
  await page.waitForFunction(c => window.pgwasmPage.autosave.count > c && !window.pgwasmPage.unsaved(), count, { timeout: 120000, polling: 250 });
  console.error(`autosave ${Date.now() - t0} ms after the change: ${JSON.stringify(await page.evaluate(() => window.pgwasmPage.autosave))}; ${await page.textContent("#kept-status")}`);
  // What it cost is shown on the page (measured, not asserted: speed
  // belongs in benchmarks).
  assert.match(await page.textContent("#kept-status"), /took \d+\.\d s, page paused \d+ ms/);

  // Unsaved work warns before leaving: type something and reload at once.
  dialogs.length = 0;
  await page.click("#terminal");
  await page.keyboard.type("select 1;\n", { delay: 5 });
  await page.reload();
  assert.ok(dialogs.includes("beforeunload"), `no beforeunload warning (dialogs: ${dialogs})`);

  // The next visit offers the kept session.
  await page.waitForSelector("#resume:not([hidden])", { timeout: 60000 });
  assert.match(await page.textContent("#resume-text"), /kept your session/);
  await waitReady(page);
  assert.equal((await apiQuery(page, "select to_regclass('kept_work') as t")).rows[0][0], null, "nothing is resumed without asking");
  await page.click("#resume-yes");
  const m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  assert.match(m.text, /Resumed/);
  assert.deepEqual((await apiQuery(page, "select v from kept_work")).rows, [[marker]]);
  await typeSQL(page, "select count(*) as resumed_rows from kept_work;", /^\s*1\s*$/m);
});

test("a phone with its keyboard open keeps the prompt and the keys visible", async () => {
  await page.goto("about:blank"); // one VM at a time
  const p = await newPage();
  try {
    await p.setViewportSize({ width: 390, height: 844 });
    const cdp = await browser.ctx.newCDPSession(p);
    await cdp.send("Emulation.setTouchEmulationEnabled", { enabled: true, maxTouchPoints: 5 });
    await p.goto(srv.url);
    // Start fresh: the kept session from the test before is offered.
    await p.waitForSelector("#resume:not([hidden])", { timeout: 60000 });
    await p.click("#resume-no");
    await waitReady(p);
    await waitScreen(p, /postgres=# $/m);
    // One prompt after the start, not two.
    await p.waitForFunction(() => window.pgwasm.terminal.text().split("\n").filter(l => l.startsWith("postgres=")).length === 1, null, { timeout: 15000 });
    // No text about dropping files on a touch screen.
    assert.equal(await p.locator("text=drop them on the page").isVisible(), false);
    // The settings are part of the page, not a small scroll box.
    const aside = await p.evaluate(() => {
      const a = document.querySelector("aside");
      return { scroll: a.scrollHeight, client: a.clientHeight };
    });
    assert.ok(aside.scroll <= aside.client + 1, `the controls scroll in a box (${aside.scroll} > ${aside.client})`);
    // The arrows stay together.
    const tops = await p.$$eval('[data-key="left"], [data-key="right"]', els => els.map(e => Math.round(e.getBoundingClientRect().top)));
    assert.equal(tops[0], tops[1], "→ wrapped alone");

    await p.click("#terminal");
    const rowsBefore = await p.evaluate(() => window.pgwasm.terminal.size().rows);
    // The on-screen keyboard takes the lower half of the screen.
    await p.setViewportSize({ width: 390, height: 420 });
    await p.waitForFunction(r => window.pgwasm.terminal.size().rows < r && window.pgwasm.terminal.settled(), rowsBefore, { timeout: 30000 });
    await p.keyboard.type("select 'on a phone' as where_;\n", { delay: 5 });
    await waitScreen(p, /^ on a phone\s*$/m);
    await p.waitForTimeout(500);
    const vis = await p.evaluate(() => {
      const t = window.pgwasm.terminal.term;
      const y = t.buffer.active.cursorY;
      const row = document.querySelectorAll("#terminal .xterm-rows > div")[y].getBoundingClientRect();
      const keys = document.querySelector('[data-key="ctrl-c"]').getBoundingClientRect();
      const vv = window.visualViewport;
      return { rowTop: row.top, rowBottom: row.bottom, keysBottom: keys.bottom, top: vv.offsetTop, bottom: vv.offsetTop + vv.height };
    });
    assert.ok(vis.rowTop >= vis.top && vis.rowBottom <= vis.bottom, `prompt line ${vis.rowTop}-${vis.rowBottom} outside the visible ${vis.top}-${vis.bottom}`);
    assert.ok(vis.keysBottom <= vis.bottom, `helper keys at ${vis.keysBottom}, visible up to ${vis.bottom}`);
    // psql knows the smaller size.
    const { rows, cols } = await p.evaluate(() => window.pgwasm.terminal.size());
    await p.keyboard.type("\\! stty size\n", { delay: 5 });
    await waitScreen(p, new RegExp(`^${rows} ${cols}\\s*$`, "m"));
    await p.screenshot({ path: path.join(artifacts, "ui-phone.png") });
  } finally {
    await p.close();
  }
});

// A start that outlasts the engine's waits: the engine gives up (on a
// machine that looks stalled, or after ten times a wait's limit) while the
// VM runs on. The CPU is throttled 4x, as on a slow laptop, so the start is
// slow for real; what no throttle can make happen in a test's time is the
// engine giving up (its waits follow the VM's progress), so that is
// injected: its wait for PostgreSQL fails at once. The page must say so
// with the controls off, then take the VM once PostgreSQL answers, with a
// console that reads what is typed (keys typed meanwhile included).
test("a start that outlasts the engine's wait: the page takes the VM once PostgreSQL answers", async () => {
  const p = await newPage();
  try {
    await throttleCPU(p, 4);
    await p.addInitScript(() => {
      let vm;
      Object.defineProperty(window, "pgwasm", {
        configurable: true,
        get: () => vm,
        set: v => {
          vm = v;
          v.waitPostgres = async () => {
            throw new Error("PostgreSQL did not start: injected timeout");
          };
        },
      });
      // Every message the page shows, with the state of its controls then
      // (the adoption may replace the first one within a second).
      window.messages = [];
      addEventListener("DOMContentLoaded", () => {
        const el = document.querySelector("#message-text");
        new MutationObserver(() => window.messages.push({ text: el.textContent, saveDisabled: document.querySelector("#save-idb").disabled })).observe(el, { childList: true, characterData: true, subtree: true });
      });
    });
    await p.goto(srv.url);
    await p.waitForSelector("#resume:not([hidden])", { timeout: 15000 }).then(() => p.click("#resume-no")).catch(() => {});
    await p.waitForFunction(() => window.messages.some(m => /did not start in time/.test(m.text)), null, { timeout: 300000, polling: 250 });
    const late = await p.evaluate(() => window.messages.find(m => /did not start in time/.test(m.text)));
    assert.match(late.text, /injected timeout.*keeps running/);
    assert.equal(late.saveDisabled, true, "controls were on while the VM was not taken");
    // Typed while the page waits: kept until the console reads.
    await p.click("#terminal");
    await p.keyboard.type("select 'late but ready' as s;\n", { delay: 5 });
    await p.waitForFunction(() => !document.querySelector("#save-idb").disabled, null, { timeout: 300000, polling: 250 });
    assert.ok(await p.evaluate(() => window.messages.some(m => /PostgreSQL is up after all/.test(m.text))));
    assert.match(await p.textContent("#status"), /Ready: PostgreSQL 17/);
    await waitScreen(p, /^ late but ready\s*$/m, 120000);
    assert.deepEqual((await apiQuery(p, "select 6 * 7")).rows, [["42"]]);
    await typeSQL(p, "select 'typed after' as s;", /^ typed after\s*$/m, 120000);
  } finally {
    await p.close();
  }
});
