// PostgreSQL drivers from npm on pg.connect() (issue #18), in Chromium,
// against a real VM: a page bundled by esbuild imports node-postgres (`pg`,
// pinned in web/package.json) with browser shims for the Node modules it
// names (net, tls, dns, ...: never used, the stream is ours; the bundling
// is web/test/driver-bundle.mjs, which `make bench` uses too) and the npm
// package's module (web/package/dist, `make package`), boots the image
// from a static host and runs node-postgres over `pgwasm.nodeSocket()`.
// Env: PGWASM_IMAGE (build/image).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { root, artifacts, openStatic } from "./lib.mjs";
import { bundleDrivers } from "./driver-bundle.mjs";

const image = process.env.PGWASM_IMAGE || path.join(root, "build", "image");
const dist = path.join(root, "web", "package", "dist");

// The page: pg's Client on the VM's socket, a few helpers the tests call.
const main = `
import pg from "pg";
import postgres from "postgres";
import { Kysely, PostgresDialect, sql as ksql } from "kysely";
import { from as copyFrom, to as copyTo } from "pg-copy-streams";
import { Buffer } from "buffer";
import { boot, SocketError } from "pgwasm";
// Drivers written for Node parse Buffers: the socket hands out Buffers when
// the page has a global one.
globalThis.Buffer = Buffer;
const progress = document.querySelector("#progress");
const imageBase = new URLSearchParams(location.search).get("image");
const vm = await boot({ imageBase, headless: true, onProgress: p => { progress.textContent = p.message; } })
  .catch(err => { progress.textContent = "Boot failed: " + err.message; throw err; });
window.vm = vm;
window.pgLib = pg;
window.SocketError = SocketError;
window.client = async () => {
  const c = new pg.Client({ user: "postgres", database: "postgres", stream: () => vm.nodeSocket() });
  c.on("error", () => {}); // errors are checked on the calls that see them
  await c.connect();
  return c;
};
// Kysely on node-postgres' Pool: each pooled client gets its own socket.
window.kysely = () => new Kysely({ dialect: new PostgresDialect({
  pool: new pg.Pool({ user: "postgres", database: "postgres", max: 2, stream: () => vm.nodeSocket() }),
}) });
window.ksql = ksql;
window.copyFrom = copyFrom;
window.copyTo = copyTo;
// postgres.js takes a socket that is already connected.
window.sqljs = (max = 2) => postgres({
  user: "postgres", database: "postgres", max, onnotice: () => {},
  socket: () => new Promise((resolve, reject) => {
    const s = vm.nodeSocket();
    s.once("error", reject);
    s.connect(() => { s.off("error", reject); resolve(s); });
  }),
});
progress.textContent = "ready";
`;

let tmp, opened, p, errors;

before(async () => {
  if (!fs.existsSync(path.join(dist, "pgwasm.js"))) throw new Error(`no npm package build in ${dist} (make package)`);
  if (!fs.existsSync(path.join(image, "manifest.json"))) throw new Error(`no VM image in ${image} (make snapshot)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "pgwasm-drivers-"));
  await bundleDrivers({ dir: tmp, main, outfile: path.join(tmp, "site", "main.js"), external: ["pgwasm"] });
  fs.writeFileSync(path.join(tmp, "site", "index.html"), `<!doctype html><meta charset="utf-8"><title>drivers</title>
<script type="importmap">{ "imports": { "pgwasm": "./pgwasm/pgwasm.js" } }</script>
<p id="progress">Loading…</p><script type="module" src="main.js"></script>`);
  opened = await openStatic({ "/pgwasm/": dist, "/": path.join(tmp, "site") }, image, "index.html");
  ({ p, errors } = opened);
  await p.waitForFunction(() => /ready|failed/.test(document.querySelector("#progress").textContent), null, { timeout: 300000, polling: 250 });
  assert.equal(await p.textContent("#progress"), "ready");
});

after(async () => {
  await opened?.close();
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test("node-postgres: table, insert, select, transaction, prepared statement, SQLSTATE", async () => {
  const r = await p.evaluate(async () => {
    const c = await window.client();
    const out = {};
    await c.query("create table drv (id int primary key, name text)");
    await c.query("insert into drv values ($1, $2), ($3, $4)", [1, "one", 2, "two"]);
    out.select = (await c.query("select id, name from drv order by id")).rows;
    await c.query("begin");
    await c.query("insert into drv values (3, 'three')");
    out.inTx = (await c.query("select count(*)::int as n from drv")).rows[0].n;
    await c.query("rollback");
    out.afterRollback = (await c.query("select count(*)::int as n from drv")).rows[0].n;
    const prepared = [];
    for (const id of [1, 2]) prepared.push((await c.query({ name: "by_id", text: "select name from drv where id = $1", values: [id] })).rows[0].name);
    out.prepared = prepared;
    out.isPrepared = (await c.query("select count(*)::int as n from pg_prepared_statements where name = 'by_id'")).rows[0].n;
    try { await c.query("select 1/0"); } catch (err) { out.error = { code: err.code, message: err.message }; }
    out.afterError = (await c.query("select 'fine' as v")).rows[0].v;
    await c.query("drop table drv");
    await c.end();
    return out;
  });
  assert.deepEqual(r.select, [{ id: 1, name: "one" }, { id: 2, name: "two" }]);
  assert.equal(r.inTx, 3);
  assert.equal(r.afterRollback, 2);
  assert.deepEqual(r.prepared, ["one", "two"]);
  assert.equal(r.isPrepared, 1);
  assert.deepEqual(r.error, { code: "22012", message: "division by zero" });
  assert.equal(r.afterError, "fine");
});

test("node-postgres: two connections at once, LISTEN/NOTIFY between them", async () => {
  const r = await p.evaluate(async () => {
    const [a, b] = await Promise.all([window.client(), window.client()]);
    // b looks at a's backend while a's query runs: both are served at once.
    const slow = a.query("select pg_backend_pid() as pid, pg_sleep(3)");
    await new Promise(res => setTimeout(res, 500));
    const pb = await b.query("select pg_backend_pid() as pid, (select count(*)::int from pg_stat_activity where query like 'select pg_backend_pid() as pid, pg_sleep(3)%' and state = 'active') as busy");
    const pa = await slow;
    const got = new Promise(res => a.on("notification", n => res({ channel: n.channel, payload: n.payload })));
    await a.query("listen drv_events");
    await b.query("select pg_notify('drv_events', 'hello from b')");
    const note = await Promise.race([got, new Promise(res => setTimeout(() => res("timeout"), 20000))]);
    await a.end();
    await b.end();
    return { pids: [pa.rows[0].pid, pb.rows[0].pid], busy: pb.rows[0].busy, note };
  });
  assert.notEqual(r.pids[0], r.pids[1], "two backends");
  assert.equal(r.busy, 1, "b's query ran while a's was running");
  assert.deepEqual(r.note, { channel: "drv_events", payload: "hello from b" });
});

test("postgres.js: table, insert, select, transaction, prepared statement, SQLSTATE", async () => {
  const r = await p.evaluate(async () => {
    const sql = window.sqljs();
    const out = {};
    await sql`create table pj (id int primary key, name text)`;
    await sql`insert into pj ${sql([{ id: 1, name: "one" }, { id: 2, name: "two" }])}`;
    out.select = [...await sql`select id, name from pj order by id`];
    try {
      await sql.begin(async tx => {
        await tx`insert into pj values (3, 'three')`;
        out.inTx = (await tx`select count(*)::int as n from pj`)[0].n;
        throw new Error("roll back");
      });
    } catch (err) { out.txError = err.message; }
    out.afterRollback = (await sql`select count(*)::int as n from pj`)[0].n;
    // postgres.js prepares parameterised queries by default.
    for (const id of [1, 2]) await sql`select name from pj where id = ${id}`;
    out.prepared = (await sql`select count(*)::int as n from pg_prepared_statements where statement like 'select name from pj where id = $1'`)[0].n;
    try { await sql`select 1/0`; } catch (err) { out.error = { code: err.code, message: err.message }; }
    await sql`drop table pj`;
    await sql.end();
    return out;
  });
  assert.deepEqual(r.select, [{ id: 1, name: "one" }, { id: 2, name: "two" }]);
  assert.equal(r.inTx, 3);
  assert.equal(r.txError, "roll back");
  assert.equal(r.afterRollback, 2);
  assert.ok(r.prepared >= 1, "no prepared statement");
  assert.deepEqual(r.error, { code: "22012", message: "division by zero" });
});

// COPY through drivers from npm, each for the direction it handles on a
// nodeSocket(): node-postgres + pg-copy-streams for COPY FROM STDIN (its
// Writable reports a row the server rejects as an 'error' and leaves the
// client usable; postgres.js 3.4.9's `.writable()` never settles when the
// server rejects the data after end(), porsager/postgres#1173: this spec
// hung on it), postgres.js's built-in `.readable()` for COPY TO STDOUT
// (pg-copy-streams' COPY TO, which reads the socket in Node's paused mode,
// has its own test below). Both build on Node's stream module: the bundle
// takes it from readable-stream.
test("COPY FROM STDIN (node-postgres + pg-copy-streams) and TO STDOUT (postgres.js): escapes kept; a bad row fails with its SQLSTATE", async () => {
  const r = await p.evaluate(async () => {
    const out = {};
    // Text format: backslash, tab, newline and carriage return escaped, \N
    // for NULL.
    const esc = v => v === null ? "\\N" : v.replace(/[\\\t\n\r]/g, c => ({ "\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r" })[c]);
    const rows = Array.from({ length: 5000 }, (_, i) => [String(i), `row ${i} é ✓`, i % 7 ? `n${i}` : null]);
    rows[1234][1] = "tab\there, new\nline, back\\slash, \\N, cr\r";
    const encode = rows => new TextEncoder().encode(rows.map(r => r.map(esc).join("\t") + "\n").join(""));
    // Pieces of 7,001 bytes (some end inside a UTF-8 character), each
    // written when the stream takes more.
    const copyIn = async (client, bytes) => {
      const w = client.query(window.copyFrom("copy pjc from stdin"));
      const done = new Promise((resolve, reject) => { w.on("finish", resolve); w.on("error", reject); });
      done.catch(() => {});
      for (let i = 0; i < bytes.length && !w.destroyed; i += 7001) {
        if (!w.write(bytes.subarray(i, i + 7001))) await Promise.race([new Promise(res => w.once("drain", res)), done]);
      }
      w.end();
      await done;
      return w.rowCount;
    };
    const timeout = (what, ms = 30000) => new Promise((_, reject) => setTimeout(() => reject(new Error(what + ": no answer in " + ms + " ms")), ms));
    const c = await window.client();
    await c.query("create table pjc (id int primary key, name text, note text)");
    const bytes = encode(rows);
    out.bytes = bytes.length;
    out.copied = await copyIn(c, bytes);
    // One connection, so the query after the COPY TO runs on it.
    const sql = window.sqljs(1);
    const parts = [];
    const readable = await sql`copy (select * from pjc order by id) to stdout`.readable();
    await Promise.race([(async () => { for await (const chunk of readable) parts.push(new Uint8Array(chunk)); })(), timeout("COPY TO")]);
    const back = new Uint8Array(parts.reduce((n, b) => n + b.length, 0));
    parts.reduce((at, b) => { back.set(b, at); return at + b.length; }, 0);
    out.pieces = parts.length;
    out.backBytes = back.length;
    out.firstDiff = back.findIndex((b, i) => b !== bytes[i]);
    out.afterCopyTo = await Promise.race([sql`select 'usable' as v`.then(r => r[0].v), timeout("query after COPY TO")]);
    await sql.end();
    const selected = (await c.query("select id, name, note from pjc order by id")).rows;
    out.selectSame = JSON.stringify(selected.map(r => [String(r.id), r.name, r.note])) === JSON.stringify(rows);
    out.special = (await c.query("select name from pjc where id = 1234")).rows[0].name;
    // A bad value near the end, on a connection of its own.
    const bad = await window.client();
    const badRows = rows.map(r => [String(Number(r[0]) + 5000), r[1], r[2]]);
    badRows[4500][0] = "x9500";
    try { await copyIn(bad, encode(badRows)); out.bad = "no error"; } catch (err) { out.bad = { code: err.code, message: err.message, where: err.where }; }
    out.sameAfterBad = (await bad.query("select 'same' as v")).rows[0].v;
    await bad.end();
    await c.end();
    const fresh = await window.client();
    out.after = (await fresh.query("select count(*)::int as n, max(id) as max from pjc")).rows[0];
    await fresh.query("drop table pjc");
    await fresh.end();
    return out;
  });
  assert.ok(r.bytes > 100000, `only ${r.bytes} bytes copied in`);
  assert.equal(r.copied, 5000);
  assert.equal(r.backBytes, r.bytes, "COPY TO gave back another length");
  assert.equal(r.firstDiff, -1, `COPY TO differs from what was copied in at byte ${r.firstDiff}`);
  assert.ok(r.pieces > 1, "COPY TO came in one piece");
  assert.equal(r.afterCopyTo, "usable");
  assert.ok(r.selectSame, "select differs from what was copied in");
  assert.equal(r.special, "tab\there, new\nline, back\\slash, \\N, cr\r");
  assert.deepEqual(r.bad, { code: "22P02", message: 'invalid input syntax for type integer: "x9500"', where: 'COPY pjc, line 4501, column id: "x9500"' });
  assert.equal(r.sameAfterBad, "same");
  assert.deepEqual(r.after, { n: 5000, max: 4999 });
});

// pg-copy-streams' COPY TO takes the socket over in Node's paused mode
// (pause(), read() in a loop on 'readable', then resume() and pg's own
// 'data' handler for what it did not consume): a slow consumer must hold
// the data back, and the client must be usable after the end and after an
// error in the middle of the copy.
test("COPY TO STDOUT through node-postgres + pg-copy-streams: paused-mode reads, a slow reader, an error mid-copy", async () => {
  const r = await p.evaluate(async () => {
    const out = {};
    const timeout = (what, ms = 60000) => new Promise((_, reject) => setTimeout(() => reject(new Error(what + ": no answer in " + ms + " ms")), ms));
    const c = await window.client();
    await c.query("create table pjt as select i as id, repeat(md5(i::text), 3) as body from generate_series(1, 20000) i");
    const expect = (await c.query("select md5(string_agg(id || E'\\t' || body || E'\\n', '' order by id)) as h, sum(length(id::text) + length(body) + 2)::int as n from pjt")).rows[0];
    const readAll = async (stream, slowMs) => {
      const parts = [];
      await Promise.race([(async () => {
        for await (const chunk of stream) {
          parts.push(new Uint8Array(chunk));
          if (slowMs && parts.length <= 5) await new Promise(res => setTimeout(res, slowMs));
        }
      })(), timeout("COPY TO")]);
      return parts;
    };
    const digest = async parts => {
      const all = new Uint8Array(parts.reduce((n, b) => n + b.length, 0));
      parts.reduce((at, b) => { all.set(b, at); return at + b.length; }, 0);
      return { n: all.length, text: new TextDecoder().decode(all) };
    };
    // A reader that sleeps on its first chunks: the rest waits in the page
    // (unread, not granted back to the channel) until it reads on.
    const s1 = c.query(window.copyTo("copy (select id, body from pjt order by id) to stdout"));
    const got = await digest(await readAll(s1, 300));
    out.bytes = got.n;
    out.expectBytes = expect.n;
    out.rowCount = s1.rowCount;
    out.sameMd5 = (await c.query("select md5($1) as h", [got.text])).rows[0].h === expect.h;
    out.after = (await Promise.race([c.query("select 'usable' as v"), timeout("query after COPY TO")])).rows[0].v;
    // An error once rows have been sent: the stream fails with the
    // SQLSTATE and the client takes the next query.
    const s2 = c.query(window.copyTo("copy (select id, 1 / (id - 15000) from pjt order by id) to stdout"));
    try { await readAll(s2); out.err = "no error"; } catch (e) { out.err = { code: e.code, message: e.message }; }
    out.afterErr = (await Promise.race([c.query("select 'again' as v"), timeout("query after a failed COPY TO")])).rows[0].v;
    await c.query("drop table pjt");
    await c.end();
    return out;
  });
  assert.ok(r.bytes > 1_000_000, `only ${r.bytes} bytes`);
  assert.equal(r.bytes, r.expectBytes);
  assert.equal(r.rowCount, 20000);
  assert.ok(r.sameMd5, "COPY TO differs from the table");
  assert.equal(r.after, "usable");
  assert.deepEqual(r.err, { code: "22012", message: "division by zero" });
  assert.equal(r.afterErr, "again");
});

test("Kysely on node-postgres: schema, insert, select, transaction", async t => {
  const r = await p.evaluate(async () => {
    const db = window.kysely();
    const out = {};
    await db.schema.createTable("ky").addColumn("id", "integer", c => c.primaryKey()).addColumn("name", "text").execute();
    const rows = Array.from({ length: 1000 }, (_, i) => ({ id: i, name: "row " + i }));
    const t0 = performance.now();
    await db.insertInto("ky").values(rows).execute();
    out.all = (await db.selectFrom("ky").selectAll().execute()).length;
    out.ms = performance.now() - t0;
    out.count = Number((await db.selectFrom("ky").select(eb => eb.fn.countAll().as("n")).executeTakeFirst()).n);
    out.row = await db.selectFrom("ky").selectAll().where("id", "=", 500).executeTakeFirst();
    try {
      await db.transaction().execute(async tx => {
        await tx.deleteFrom("ky").execute();
        throw new Error("roll back");
      });
    } catch (err) { out.txError = err.message; }
    out.after = Number((await db.selectFrom("ky").select(eb => eb.fn.countAll().as("n")).executeTakeFirst()).n);
    try { await window.ksql`select 1/0`.execute(db); } catch (err) { out.code = err.code; }
    await db.schema.dropTable("ky").execute();
    await db.destroy();
    return out;
  });
  assert.equal(r.count, 1000);
  assert.equal(r.all, 1000);
  t.diagnostic(`Kysely insert of 1,000 rows (one statement) + select of them: ${r.ms.toFixed(0)} ms; load ${os.loadavg()[0].toFixed(1)}`);
  assert.deepEqual(r.row, { id: 500, name: "row 500" });
  assert.equal(r.txError, "roll back");
  assert.equal(r.after, 1000);
  assert.equal(r.code, "22012");
});

test("bad input: garbage on one connection fails that one; the others and pg.query keep working", async () => {
  const r = await p.evaluate(async () => {
    const good = await window.client();
    await good.query("select 1");
    // Raw streams. readAll reads until the connection ends.
    const readAll = async reader => {
      let got = new Uint8Array(0), end = "";
      for (;;) {
        try {
          const { value, done } = await reader.read();
          if (done) { end = "closed"; break; }
          const all = new Uint8Array(got.length + value.length);
          all.set(got); all.set(value, got.length); got = all;
          if (got.length > 4 && got[got.length - 6] === 90) break; // ReadyForQuery ('Z', 5 bytes)
        } catch (err) { end = "error: " + err.message; break; }
      }
      return { text: new TextDecoder().decode(got), end };
    };
    // Garbage where the startup packet belongs: PostgreSQL logs "invalid
    // length of startup packet" and closes.
    const s1 = await window.vm.connect();
    const w1 = s1.writable.getWriter();
    await w1.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    const http = await readAll(s1.readable.getReader());
    // Garbage after a login: PostgreSQL answers with a FATAL and closes.
    const s2 = await window.vm.connect();
    const w2 = s2.writable.getWriter();
    const params = new TextEncoder().encode("user\0postgres\0database\0postgres\0\0");
    const startup = new Uint8Array(8 + params.length);
    new DataView(startup.buffer).setUint32(0, startup.length);
    new DataView(startup.buffer).setUint32(4, 196608);
    startup.set(params, 8);
    await w2.write(startup);
    const r2 = s2.readable.getReader();
    const login = await readAll(r2);
    await w2.write(new TextEncoder().encode("\xfe garbage garbage garbage"));
    const fatal = await readAll(r2);
    // A client dropped in the middle of a query: only it ends.
    const dropped = await window.client();
    const pending = dropped.query("select pg_sleep(30)").then(() => "finished", err => "failed: " + err.message);
    await new Promise(res => setTimeout(res, 300));
    dropped.connection.stream.destroy();
    const droppedResult = await pending;
    const after = (await good.query("select 'good' as v")).rows[0].v;
    const api = (await window.vm.query("select 'api'")).rows[0][0];
    await good.end();
    return { http, login: login.end, fatal, droppedResult, after, api };
  });
  assert.deepEqual(r.http, { text: "", end: "closed" });
  assert.equal(r.login, "");
  assert.match(r.fatal.text, /^E.*FATAL.*08P01.*invalid frontend message type/s);
  assert.equal(r.fatal.end, "closed");
  assert.match(r.droppedResult, /^failed: /);
  assert.equal(r.after, "good");
  assert.equal(r.api, "api");
});

test("restore: open connections fail clearly, new ones work", async () => {
  const r = await p.evaluate(async () => {
    const c = await window.client();
    await c.query("select 1");
    const s = await window.vm.saveState();
    const failed = new Promise(res => c.on("error", err => res(err.message)));
    await window.vm.restoreState(s);
    const message = await Promise.race([failed, new Promise(res => setTimeout(() => res("no error"), 20000))]);
    let query;
    try { await c.query("select 1"); query = "worked"; } catch (err) { query = err.message; }
    const fresh = await window.client();
    const v = (await fresh.query("select 'fresh' as v")).rows[0].v;
    await fresh.end();
    return { message, query, v };
  });
  assert.match(r.message, /restored/);
  assert.notEqual(r.query, "worked");
  assert.equal(r.v, "fresh");
});

test("measure: node-postgres select 1 over connect() against the page API's query", async t => {
  const r = await p.evaluate(async () => {
    const c = await window.client();
    const median = a => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
    const runs = 30, drv = [], api = [];
    for (let i = 0; i < 5; i++) { await c.query("select 1"); await window.vm.query("select 1"); }
    for (let i = 0; i < runs; i++) {
      let t0 = performance.now();
      await c.query("select 1");
      drv.push(performance.now() - t0);
      t0 = performance.now();
      await window.vm.query("select 1");
      api.push(performance.now() - t0);
    }
    await c.end();
    return { drv: median(drv), api: median(api), drvMin: Math.min(...drv), apiMin: Math.min(...api), runs };
  });
  t.diagnostic(`select 1, median of ${r.runs} (alternating): node-postgres over connect() ${r.drv.toFixed(2)} ms (min ${r.drvMin.toFixed(2)}), pg.query ${r.api.toFixed(2)} ms (min ${r.apiMin.toFixed(2)}), ratio ${(r.drv / r.api).toFixed(2)}; load ${os.loadavg()[0].toFixed(1)}`);
  assert.ok(r.drv > 0 && r.api > 0);
  await p.screenshot({ path: path.join(artifacts, "web-drivers.png") });
  assert.deepEqual(errors, []);
});
