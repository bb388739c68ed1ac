// End-to-end tests of the page and the embedding API in Debian's Chromium
// against a real `pgwasm serve` (PGWASM_BIN, PGWASM_IMAGE). One server and
// one browser for the whole file: each VM start costs seconds.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import tls from "node:tls";
import { promisify } from "node:util";
import { startApp, waitReady, waitScreen, waitMessage, apiQuery, artifacts, screenText } from "./lib.mjs";

const run = promisify(execFile);

// tunnelCertSHA256 asks PostgreSQL behind a tunnel for TLS (SSLRequest) and
// returns its certificate's SHA-256 as aa:bb:...
function tunnelCertSHA256(host, port) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, host, () => sock.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47])));
    sock.once("error", reject);
    sock.once("data", b => {
      if (b[0] !== 0x53) return reject(new Error(`SSLRequest answered ${b[0]}`));
      const t = tls.connect({ socket: sock, rejectUnauthorized: false }, () => {
        resolve(t.getPeerCertificate().fingerprint256.toLowerCase());
        t.destroy();
      });
      t.once("error", reject);
    });
  });
}
let app, srv, browser, page;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "pgwasm-webtest-"));

async function openApp() {
  const t = Date.now();
  await page.goto(srv.url);
  await waitReady(page);
  return Date.now() - t;
}

// The kept session (autosave) has its own tests in ui.spec.mjs; here it
// would only add saves of the whole VM between the steps.
before(async () => {
  app = await startApp({ autosave: false });
  ({ srv, browser, page } = app);
});

after(async () => {
  await app?.close("web");
  fs.rmSync(tmp, { recursive: true, force: true });
});

test("page boots from the snapshot and psql answers in the terminal", async () => {
  const ms = await openApp();
  console.error(`page ready in ${ms} ms; timings ${JSON.stringify(await page.evaluate(() => window.pgwasm.timings))}`);
  await waitScreen(page, /postgres=# $/m);
  const version = await page.textContent("#pg-version");
  assert.match(version, /PostgreSQL 17\./);
  await page.click("#terminal");
  const n = 1000 + Math.floor(Math.random() * 8999);
  await page.keyboard.type(`select ${n} * 3 as answer;\n`, { delay: 5 });
  await waitScreen(page, new RegExp(`^\\s*${n * 3}\\s*$`, "m"));
  // psql knows the terminal's size.
  const { rows, cols } = await page.evaluate(() => window.pgwasm.terminal.size());
  await page.keyboard.type("\\! stty size\n", { delay: 5 });
  await waitScreen(page, new RegExp(`^${rows} ${cols}\\s*$`, "m"));
  await page.screenshot({ path: path.join(artifacts, "web-psql.png") });
});

test("a 300 KB script through the page API, and non-ASCII typed into psql", async () => {
  // v86's UART drains its input queue with shift(): written at once, a
  // script this size took minutes (harness/serial.mjs chunks it).
  const n = 6000;
  let sql = "create table big_script(id int, v text);\nbegin;\n";
  for (let i = 1; i <= n; i++) sql += `insert into big_script values (${i}, 'row ${i} padding padding');\n`;
  sql += "commit;\n";
  assert.ok(sql.length > 300000, `script is ${sql.length} bytes`);
  const t = Date.now();
  const results = await page.evaluate(s => window.pgwasm.exec(s), sql);
  assert.equal(results.length, n + 3);
  const r = await apiQuery(page, "select count(*), sum(id) from big_script");
  assert.deepEqual(r.rows[0], [String(n), String((n * (n + 1)) / 2)]);
  console.error(`300 KB script in ${Date.now() - t} ms`);

  await page.click("#terminal");
  await page.keyboard.type("select 'grüße ✓' as word;\n", { delay: 5 });
  await waitScreen(page, /^\s*grüße ✓\s*$/m);
  await apiQuery(page, "drop table big_script");
});

test("state saved in IndexedDB survives a reload", async () => {
  const marker = crypto.randomBytes(6).toString("hex");
  await apiQuery(page, "create table idb_test(v text)");
  await apiQuery(page, "insert into idb_test values ($1)", [marker]);
  await page.fill("#state-name", `idb ${marker}`);
  await page.click("#save-idb");
  let m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  await page.waitForSelector(`.state-row:has-text("idb ${marker}")`);
  const row = await page.textContent(`.state-row:has-text("idb ${marker}")`);
  assert.match(row, /128 MB/);
  assert.match(row, /\d+(\.\d)? MB ·|KB ·/);

  await openApp();
  const before = await page.evaluate(() => window.pgwasm.query("select to_regclass('idb_test') as t"));
  assert.equal(before.rows[0][0], null, "a fresh start has no table yet");
  await page.click(`.state-row:has-text("idb ${marker}") >> text=Restore`);
  m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  const r = await apiQuery(page, "select v from idb_test");
  assert.deepEqual(r.rows, [[marker]]);
  assert.deepEqual(r.columns.map(c => [c.name, c.type]), [["v", "text"]]);
  // The guest clock was set after the restore.
  const now = await apiQuery(page, "select extract(epoch from now())::bigint");
  assert.ok(Math.abs(Number(now.rows[0][0]) - Date.now() / 1000) < 120, `guest clock ${now.rows[0][0]}`);
  // The terminal works after the restore.
  await page.click("#terminal");
  await page.keyboard.type("select count(*) as c from idb_test;\n", { delay: 5 });
  await waitScreen(page, /^\s*1\s*$/m);
  // Delete it again: the page asks first.
  await page.click(`.state-row:has-text("idb ${marker}") >> text=Delete`);
  await page.click(`.state-row.confirm:has-text("idb ${marker}") >> .confirm-yes`);
  await page.waitForSelector(`.state-row:has-text("idb ${marker}")`, { state: "detached" });
});

let stateFile;
test("state saved to a file restores from it; bad files leave the VM running", async () => {
  await apiQuery(page, "create table file_test as select 7 as seven");
  const [dl] = await Promise.all([page.waitForEvent("download", { timeout: 180000 }), page.click("#save-file")]);
  stateFile = path.join(tmp, "state.pgstate");
  await dl.saveAs(stateFile);
  let m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  await apiQuery(page, "drop table file_test");

  // A truncated file and a foreign file are refused; the VM keeps going.
  const full = fs.readFileSync(stateFile);
  const bad = [
    ["truncated.pgstate", full.subarray(0, Math.floor(full.length / 2)), /truncated|damaged/],
    ["foreign.pgstate", crypto.randomBytes(4096), /not a pgwasm state/],
  ];
  const hdrLen = full.readUInt32LE(8);
  const hdr = JSON.parse(full.subarray(12, 12 + hdrLen).toString());
  const other = Buffer.from(JSON.stringify({ ...hdr, memory_mb: 512 }));
  const len = Buffer.alloc(4);
  len.writeUInt32LE(other.length);
  bad.push(["mem512.pgstate", Buffer.concat([full.subarray(0, 8), len, other, full.subarray(12 + hdrLen)]), /512 MB/]);
  const img = Buffer.from(JSON.stringify({ ...hdr, image_key: "0".repeat(64) }));
  len.writeUInt32LE(img.length);
  bad.push(["image.pgstate", Buffer.concat([full.subarray(0, 8), len, img, full.subarray(12 + hdrLen)]), /another VM image/]);
  for (const [name, data, re] of bad) {
    await page.setInputFiles("#restore-file", { name, mimeType: "application/octet-stream", buffer: data });
    m = await waitMessage(page);
    assert.equal(m.kind, "error", `${name}: ${m.text}`);
    assert.match(m.text, re);
    assert.match(m.text, /not changed/);
    const r = await apiQuery(page, "select 1 + 1 as two");
    assert.deepEqual(r.rows, [["2"]], `${name}: VM still answers`);
  }

  await page.setInputFiles("#restore-file", stateFile);
  m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  const r = await apiQuery(page, "select seven from file_test");
  assert.deepEqual(r.rows, [["7"]]);
});

test("upload a CSV, import it as a table, query it", async () => {
  const csv = "id,name,price\n1,apple,0.5\n2,\"pear, green\",1.25\n3,plum,2\n";
  await page.setInputFiles("#upload", { name: "Fruit List.csv", mimeType: "text/csv", buffer: Buffer.from(csv) });
  let m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  await page.click('.upload-row:has-text("Fruit List") >> text=Import as table');
  m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  assert.match(m.text, /3 rows into table fruit_list/);
  const r = await apiQuery(page, "select id, name, price from fruit_list order by id");
  assert.deepEqual(r.rows, [["1", "apple", "0.5"], ["2", "pear, green", "1.25"], ["3", "plum", "2"]]);
  assert.deepEqual(r.columns.map(c => c.type), ["int8", "text", "numeric"]);
});

test("drag and drop several files uploads them all", async () => {
  const files = [["a.txt", "first file\n"], ["b.bin", "\u0000\u0001\u0002binary"]];
  await page.evaluate(files => {
    const dt = new DataTransfer();
    for (const [name, text] of files) dt.items.add(new File([text], name));
    document.body.dispatchEvent(new DragEvent("dragover", { dataTransfer: dt, bubbles: true, cancelable: true }));
    document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, files);
  const m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  assert.match(m.text, /\/uploads\/a\.txt, \/uploads\/b\.bin/);
  const r = await apiQuery(page, "select pg_read_file('/uploads/a.txt') as a, encode(pg_read_binary_file('/uploads/b.bin'), 'hex') as b");
  assert.deepEqual(r.rows, [["first file\n", "000102" + Buffer.from("binary").toString("hex")]]);
});

test("upload SQL and run it with psql", async () => {
  const sql = "create table from_sql(a int);\ninsert into from_sql select generate_series(1, 10);\n\\echo done-from-psql\n";
  await page.setInputFiles("#upload", { name: "script.sql", mimeType: "text/plain", buffer: Buffer.from(sql) });
  let m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  await page.click('.upload-row:has-text("script") >> text=Run with psql');
  m = await waitMessage(page, 240000);
  assert.equal(m.kind, "ok", m.text);
  assert.match(await page.textContent("#import-output"), /done-from-psql/);
  const r = await apiQuery(page, "select sum(a) from from_sql");
  assert.deepEqual(r.rows, [["55"]]);
});

test("a custom-format dump restores with pg_restore in one click", async () => {
  // Make the dump inside the VM, take it out, drop the table, bring it back.
  await apiQuery(page, "create table dump_test as select generate_series(1, 10) as a");
  const made = await page.evaluate(() => window.pgwasm.runProgram("pg_dump -Fc -t dump_test -f /var/lib/postgresql/dump_test.dump postgres"));
  assert.ok(made.ok, made.output);
  const dump = Buffer.from(await page.evaluate(async () => Array.from(await window.pgwasm.download("/var/lib/postgresql/dump_test.dump"))));
  assert.equal(dump.subarray(0, 5).toString(), "PGDMP");
  await apiQuery(page, "drop table dump_test");
  await page.setInputFiles("#upload", { name: "dump_test.dump", mimeType: "application/octet-stream", buffer: dump });
  let m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  await page.click('.upload-row:has-text("dump_test.dump") >> text=Restore with pg_restore');
  m = await waitMessage(page, 240000);
  assert.equal(m.kind, "ok", m.text);
  const r = await apiQuery(page, "select sum(a) from dump_test");
  assert.deepEqual(r.rows, [["55"]]);
});

test("download files byte for byte", async () => {
  // A binary file uploaded through the page.
  const data = crypto.randomBytes(300000);
  await page.setInputFiles("#upload", { name: "blob.bin", mimeType: "application/octet-stream", buffer: data });
  let m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
  const uploaded = m.text.match(/Uploaded (.+?)\. In SQL/)[1];
  await page.fill("#download-path", uploaded);
  let [dl] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  let out = path.join(tmp, "blob.bin");
  await dl.saveAs(out);
  assert.ok(fs.readFileSync(out).equals(data), "downloaded bytes differ from uploaded ones");
  await waitMessage(page);

  // A file the guest wrote.
  await apiQuery(page, "copy (select n, md5(n::text) from generate_series(1, 500) n) to '/var/lib/postgresql/out.csv' csv");
  await page.fill("#download-path", "/var/lib/postgresql/out.csv");
  [dl] = await Promise.all([page.waitForEvent("download"), page.click("#download")]);
  out = path.join(tmp, "out.csv");
  await dl.saveAs(out);
  const want = Array.from({ length: 500 }, (_, i) => `${i + 1},${crypto.createHash("md5").update(String(i + 1)).digest("hex")}\n`).join("");
  assert.equal(fs.readFileSync(out, "utf8"), want);
  m = await waitMessage(page);
  assert.equal(m.kind, "ok", m.text);
});

test("network start shows connection strings; host psql connects through the tunnel", async () => {
  await page.click("#net-start");
  const m = await waitMessage(page, 120000);
  assert.equal(m.kind, "ok", m.text);
  const conn = await page.inputValue("#conn-port");
  const url = conn.match(/^psql "(.+)"$/)[1];
  assert.doesNotMatch(url, /PASSWORD/);
  const sni = await page.inputValue("#conn-sni");
  assert.match(sni, /sslmode=require/);
  // The VM made its own TLS key at this start (the image's is public): the
  // page shows its fingerprint and the tunnel serves that certificate.
  const shown = (await page.textContent("#tls-fingerprint")).match(/SHA-256 ([0-9a-f:]{95})$/)[1];
  // Nothing in the panel is cut: no field or line wider than its box.
  const cut = await page.$$eval("#net-info textarea, #net-info p", els => els.filter(e => e.scrollWidth > e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1).map(e => e.id || e.textContent.slice(0, 40)));
  assert.deepEqual(cut, []);
  // Copy says it copied, and the clipboard has the whole string.
  await browser.ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: srv.url.replace(/\/$/, "") });
  await page.click('[aria-label="Copy the port mode connection string"]');
  await page.waitForSelector('[aria-label="Copy the port mode connection string"]:has-text("Copied")');
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), conn);
  const copied = await waitMessage(page);
  assert.match(copied.text, /Copied the port mode connection string/);
  const u = new URL(url);
  assert.equal(await tunnelCertSHA256(u.hostname, Number(u.port)), shown);
  await page.screenshot({ path: path.join(artifacts, "web-network.png") });
  await apiQuery(page, "create table if not exists net_test as select 'through the tunnel' as v");
  const { stdout } = await run("psql", [url, "-XAtc", "select v from net_test"], { timeout: 60000 });
  assert.equal(stdout.trim(), "through the tunnel");
  const sniURL = sni.match(/^psql "(.+)"$/)[1];
  const r2 = await run("psql", [sniURL, "-XAtc", "select 40 + 2"], { timeout: 60000 });
  assert.equal(r2.stdout.trim(), "42");
  // A wrong password is refused.
  await assert.rejects(run("psql", [url.replace(/:[^:@/]+@/, ":wrong@"), "-XAtc", "select 1"], { timeout: 60000 }));

  // After restoring a state the network works again with no manual step.
  await page.setInputFiles("#restore-file", stateFile);
  const m2 = await waitMessage(page);
  assert.equal(m2.kind, "ok", m2.text);
  const r3 = await run("psql", [url, "-XAtc", "select seven from file_test"], { timeout: 60000 });
  assert.equal(r3.stdout.trim(), "7");
});

test("phone keys, font size and terminal size", async () => {
  const keys = sel => page.click(`[data-key="${sel}"]`);
  await page.click("#terminal");
  await page.keyboard.type("select 1 as never_run", { delay: 5 });
  // Ctrl-C flushes what the tty has not handed to psql yet (as a real tty
  // does), so on a slow machine wait for the echo before pressing it.
  await waitScreen(page, /select 1 as never_run$/m);
  await keys("ctrl-c");
  // The tty flushes its input on Ctrl-C: type on at the fresh prompt.
  await waitScreen(page, /never_run\^C\n?postgres=# $/m);
  await page.keyboard.type("select 'after' || ' ctrl-c' as x;\n", { delay: 5 });
  let text = await waitScreen(page, /^ after ctrl-c\s*$/m);
  assert.doesNotMatch(text, /^\s*never_run\s*$/m, "Ctrl-C did not discard the line");
  // Up recalls the last line; Enter runs it again.
  await keys("up");
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => (window.pgwasm.terminal.text().match(/^ after ctrl-c\s*$/gm) || []).length === 2, null, { timeout: 30000 });
  // Tab completes a table name.
  // (file_test is in the state the network test restored.)
  await page.keyboard.type("select 'tab-' || seven as r from file_t", { delay: 5 });
  await keys("tab");
  await page.keyboard.type(";\n", { delay: 5 });
  await waitScreen(page, /^ tab-7\s*$/m);
  // Esc reaches psql (readline ignores a lone Esc followed by Ctrl-C).
  await keys("esc");
  await keys("ctrl-c");

  // Font size: applied at once, remembered, and psql learns the new size.
  await page.fill("#fontsize", "20");
  await page.dispatchEvent("#fontsize", "input");
  await page.waitForFunction(() => window.pgwasm.terminal.term.options.fontSize === 20);
  const stored = await page.evaluate(() => JSON.parse(localStorage.getItem("pgwasm.settings")).fontSize);
  assert.equal(stored, 20);
  await page.setViewportSize({ width: 1000, height: 700 });
  await page.waitForTimeout(1000);
  await page.click("#terminal"); // the font size field had the focus
  await page.keyboard.press("Enter");
  await page.waitForFunction(() => window.pgwasm.terminal.settled(), null, { timeout: 30000, polling: 100 });
  const { rows, cols } = await page.evaluate(() => window.pgwasm.terminal.size());
  await page.keyboard.type("\\! stty size\n", { delay: 5 });
  // Wait for psql's next prompt: readline draws it once the tty is raw
  // again; a key pressed before that is echoed by the cooked tty as ^[[A.
  await waitScreen(page, new RegExp(`^${rows} ${cols}\\s*\\npostgres=# $`, "m"));
  // The page's hidden size commands stay out of psql's history: Up
  // recalls the user's own last line.
  await page.keyboard.press("ArrowUp");
  await page.waitForTimeout(1000);
  const last = (await screenText(page)).trimEnd().split("\n").pop();
  assert.equal(last, "postgres=# \\! stty size");
  await page.keyboard.press("Control+U");
  await page.screenshot({ path: path.join(artifacts, "web-small.png") });
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.fill("#fontsize", "15");
  await page.dispatchEvent("#fontsize", "input");
});

test("full boot from scratch, with progress, chosen in the settings", async () => {
  await page.check("#fullboot");
  await page.click("#restart");
  await page.waitForFunction(() => /Downloading VM files|Booting/.test(document.querySelector("#progress-text").textContent), null, { timeout: 60000, polling: 100 });
  await page.waitForFunction(() => /Booting Linux/.test(document.querySelector("#progress-text").textContent), null, { timeout: 120000, polling: 200 });
  // No promise of a duration a slow machine does not keep; the terminal
  // says what goes on instead of staying black.
  assert.doesNotMatch(await page.textContent("#progress-text"), /about 30 s/);
  await waitScreen(page, /^pgwasm: booting Linux and PostgreSQL/m, 30000);
  await waitReady(page, 600000);
  assert.equal(await page.evaluate(() => window.pgwasm.fullBoot), true);
  const r = await apiQuery(page, "select current_setting('server_version_num')::int >= 170000 as ok");
  assert.deepEqual(r.rows, [["t"]]);
  await waitScreen(page, /postgres=# $/m, 60000);
  console.error(`full boot timings ${JSON.stringify(await page.evaluate(() => window.pgwasm.timings))}`);
  // The setting is remembered; switch back for the tests after this one.
  assert.equal(await page.evaluate(() => JSON.parse(localStorage.getItem("pgwasm.settings")).fullBoot), true);
  await page.uncheck("#fullboot");
});

test("the example page runs a query through the embedding API", async () => {
  const p = await app.newPage();
  try {
    await p.goto(srv.url + "example.html");
    await p.waitForSelector("#result table", { timeout: 240000 });
    const cells = await p.$$eval("#result td", tds => tds.map(td => td.textContent));
    assert.deepEqual(cells, ["1", "1", "2", "4", "3", "9", "4", "16", "5", "25"]);
    const heads = await p.$$eval("#result th", ths => ths.map(th => th.textContent));
    assert.deepEqual(heads, ["n (int4)", "square (int4)"]);
    const r = await p.evaluate(async () => {
      try {
        await window.pg.query("select from nope");
        return "no error";
      } catch (e) {
        return e.sqlstate;
      }
    });
    assert.equal(r, "42P01");
    // The box runs scripts: several statements, a result for each.
    await p.fill("#sql", "create table ex(a int); insert into ex values (1), (2); select sum(a) as s from ex;");
    await p.click("#run");
    await p.waitForFunction(() => document.querySelectorAll("#result table").length === 1 && document.querySelectorAll("#result p").length === 2, null, { timeout: 60000 });
    assert.deepEqual(await p.$$eval("#result td", tds => tds.map(td => td.textContent)), ["3"]);
    assert.deepEqual(await p.$$eval("#result p", ps => ps.map(e => e.textContent)), ["CREATE TABLE", "INSERT 0 2"]);
    // A server the page cannot reach: a message that says what to do.
    await p.route("**/api/sessions", r => r.abort("failed"));
    await p.click("#net");
    await p.waitForFunction(() => /allowed-origins/.test(document.querySelector("#net-result").textContent), null, { timeout: 30000 });
    assert.match(await p.textContent("#net-result"), /Cannot reach the pgwasm server's network API/);
    await p.unroute("**/api/sessions");
    await p.screenshot({ path: path.join(artifacts, "web-example.png") });
    // A second, headless VM through the same module: no terminal, same API.
    const h = await p.evaluate(async () => {
      const { boot } = await import("./pgwasm.js");
      const vm = await boot({ headless: true });
      const q = await vm.query("select $1::text || '!' as s", ["headless"]);
      const res = { rows: q.rows, terminal: vm.terminal === null, memory: vm.memoryMB };
      await vm.destroy();
      return res;
    });
    assert.deepEqual(h, { rows: [["headless!"]], terminal: true, memory: 128 });
  } finally {
    await p.close();
  }
});
