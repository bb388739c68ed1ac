// pg.copyFrom / pg.copyTo / pg.copyToStream (issue #11) in Chromium against
// a real VM: the page of `pgwasm serve`, COPY over the socket channel.
// The data is made in the page (a 10 MB CSV) and checked against
// PostgreSQL's own sums through pg.query (the JSON agent, another path).
// The times are `make bench`'s (web/test/bench.mjs --copy), not a test's.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { startApp, waitReady, apiQuery, installCSV, COPY_TABLE } from "./lib.mjs";

let app, page;

before(async () => {
  app = await startApp({ autosave: false });
  page = app.page;
  await page.goto(app.srv.url);
  await waitReady(page);
  await page.evaluate(installCSV);
  await page.evaluate(() => {
    window.sumsOf = async table => {
      const r = await window.pgwasm.query(`select count(*)::int, coalesce(sum(id), 0)::bigint, coalesce(sum(length(name)), 0)::bigint, coalesce(sum(amount * 100), 0)::bigint from ${table}`);
      const [n, ids, names, cents] = r.rows[0].map(Number);
      return { n, ids, names, cents };
    };
    window.errOf = e => ({ message: e.message, sqlstate: e.sqlstate, detail: e.detail, hint: e.hint });
  });
  await apiQuery(page, COPY_TABLE);
});

after(() => app?.close("copy"));

test("copyFrom: a 10 MB CSV string, then the same as a ReadableStream; row count and sums match", async () => {
  const r = await page.evaluate(async () => {
    const { text, sums } = window.makeCSV(10 << 20);
    const out = { bytes: text.length, sums };
    let t = performance.now();
    out.fromString = await window.pgwasm.copyFrom("cp", text);
    out.stringMs = performance.now() - t;
    out.afterString = await window.sumsOf("cp");
    await window.pgwasm.query("truncate cp");
    // The stream gives odd-sized pieces (rows cut anywhere) on its own
    // schedule: copyFrom must take what comes and not buffer it whole.
    const bytes = new TextEncoder().encode(text);
    let off = 0, pulls = 0;
    const stream = new ReadableStream({
      async pull(ctl) {
        if (off >= bytes.length) { ctl.close(); return; }
        const n = 1000 + ((pulls++ * 7919) % 90000);
        ctl.enqueue(bytes.slice(off, off + n));
        off += n;
        if (pulls % 16 === 0) await new Promise(res => setTimeout(res, 1));
      },
    }, { highWaterMark: 0 });
    t = performance.now();
    out.fromStream = await window.pgwasm.copyFrom("cp", stream);
    out.streamMs = performance.now() - t;
    out.pulls = pulls;
    out.afterStream = await window.sumsOf("cp");
    return out;
  });
  console.error(`copyFrom ${r.bytes} bytes: string ${Math.round(r.stringMs)} ms, stream ${Math.round(r.streamMs)} ms (${r.pulls} pieces)`);
  assert.ok(r.bytes >= 10 << 20);
  assert.deepEqual(r.fromString, { rows: r.sums.n });
  assert.deepEqual(r.afterString, r.sums);
  assert.deepEqual(r.fromStream, { rows: r.sums.n });
  assert.deepEqual(r.afterStream, r.sums);
});

test("copyTo and copyToStream give back exactly what copyFrom loaded", async () => {
  const r = await page.evaluate(async () => {
    const { text } = window.makeCSV(10 << 20);
    const dec = new TextDecoder();
    const whole = await window.pgwasm.copyTo("select id, name, amount from cp order by id");
    const chunks = [];
    const reader = window.pgwasm.copyToStream("select id, name, amount from cp order by id;").getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      chunks.push(value);
    }
    const streamed = dec.decode(await new Blob(chunks).arrayBuffer());
    const withHeader = dec.decode(await window.pgwasm.copyTo("cp", { header: true }));
    return {
      wholeSame: dec.decode(whole) === text, wholeLen: whole.length, textLen: text.length,
      streamSame: streamed === text, chunks: chunks.length, maxChunk: Math.max(...chunks.map(c => c.length)),
      headerFirst: withHeader.slice(0, withHeader.indexOf("\n")), headerRows: withHeader.split("\n").length - 2,
      rows: text.split("\n").length - 1,
    };
  });
  assert.equal(r.wholeLen, r.textLen);
  assert.ok(r.wholeSame, "copyTo equals the CSV loaded");
  assert.ok(r.streamSame, "copyToStream equals the CSV loaded");
  assert.ok(r.chunks > 50, `a 10 MB export comes in pieces (got ${r.chunks})`);
  assert.ok(r.maxChunk <= 1 << 20, `pieces stay small (largest ${r.maxChunk})`);
  assert.equal(r.headerFirst, "id,name,amount");
  assert.equal(r.headerRows, r.rows);
});

test("text format, header, columns, NULL and names that need quoting", async () => {
  const r = await page.evaluate(async () => {
    const pg = window.pgwasm;
    await pg.query(`create table "Odd ""Name""" ("Id" int, "a b" text, note text default 'dflt')`);
    // Text format: tab separated, \N is NULL, backslash escapes a tab.
    const text = "Id\ta b\n1\tplain\n2\t\\N\n3\ttab\\there\n";
    const loaded = await pg.copyFrom('Odd "Name"', text, { format: "text", header: true, columns: ["Id", "a b"] });
    const rows = (await pg.query(`select "Id", "a b", "a b" is null, note from "Odd ""Name""" order by 1`)).rows;
    const back = new TextDecoder().decode(await pg.copyTo('Odd "Name"', { format: "text" }));
    // A CSV with ; and a NULL marker of our own, into a schema-qualified name.
    const semi = await pg.copyFrom(["public", 'Odd "Name"'], "4;NIL;x\n", { delimiter: ";", null: "NIL" });
    const nil = (await pg.query(`select "a b" is null, note from "Odd ""Name""" where "Id" = 4`)).rows;
    // Identifiers are quoted, never pasted: this is a (missing) table's name.
    let inj;
    try { await pg.copyFrom('cp" FROM STDIN; DROP TABLE cp; --', "1\n"); } catch (e) { inj = window.errOf(e); }
    const cpStill = (await pg.query("select count(*)::int from cp")).rows[0][0];
    return { loaded, rows, back, semi, nil, inj, cpStill };
  });
  assert.deepEqual(r.loaded, { rows: 3 });
  assert.deepEqual(r.rows, [["1", "plain", "f", "dflt"], ["2", null, "t", "dflt"], ["3", "tab\there", "f", "dflt"]]);
  assert.equal(r.back, "1\tplain\tdflt\n2\t\\N\tdflt\n3\ttab\\there\tdflt\n");
  assert.deepEqual(r.semi, { rows: 1 });
  assert.deepEqual(r.nil, [["t", "x"]]);
  assert.equal(r.inj.sqlstate, "42P01");
  assert.ok(r.cpStill > 0, "cp is still there");
});

test("a bad row: an error with SQLSTATE 22P02, the table unchanged, the next copyFrom and query work", async () => {
  const r = await page.evaluate(async () => {
    const pg = window.pgwasm;
    const before = await window.sumsOf("cp");
    // 2 MB of new rows with one bad amount near the end.
    const lines = [];
    for (let i = 0; i < 40000; i++) lines.push(window.csvRow(1000000 + i));
    lines[39000] = "1039000,bad,not-a-number\n";
    let err;
    try { await pg.copyFrom("cp", lines.join("")); } catch (e) { err = window.errOf(e); }
    const after = await window.sumsOf("cp");
    const next = await pg.copyFrom("cp", window.csvRow(2000001));
    const q = await pg.query("select name from cp where id = 2000001");
    await pg.query("delete from cp where id = 2000001");
    return { before, after, err, next, q: q.rows };
  });
  assert.equal(r.err.sqlstate, "22P02");
  assert.match(r.err.message, /invalid input syntax for type numeric: "not-a-number"/);
  assert.deepEqual(r.after, r.before, "no row of the failed COPY is in the table");
  assert.deepEqual(r.next, { rows: 1 });
  assert.deepEqual(r.q, [["name-2000001-" + "x".repeat(2000001 % 23)]]);
});

test("a source that fails mid-way: CopyFail, a clear error, nothing added, the VM fine", async () => {
  const r = await page.evaluate(async () => {
    const pg = window.pgwasm;
    const before = await window.sumsOf("cp");
    let sent = 0, k = 3000000;
    const stream = new ReadableStream({
      pull(ctl) {
        if (sent >= 1 << 20) { ctl.error(new Error("the network went away")); return; }
        let s = "";
        for (let i = 0; i < 500; i++) s += window.csvRow(k++);
        sent += s.length;
        ctl.enqueue(new TextEncoder().encode(s));
      },
    });
    let err;
    try { await pg.copyFrom("cp", stream); } catch (e) { err = { ...window.errOf(e), cause: e.cause?.message }; }
    const after = await window.sumsOf("cp");
    const active = (await pg.query("select count(*)::int from pg_stat_activity where application_name = 'pgwasm-copy'")).rows[0][0];
    return { before, after, err, active, sent };
  });
  assert.match(r.err.message, /data source failed \(the network went away\).*cancelled/);
  assert.equal(r.err.cause, "the network went away");
  assert.deepEqual(r.after, r.before);
  assert.ok(r.sent >= 1 << 20, "the COPY was under way when the source failed");
  // The COPY's connection says goodbye; its backend may take a moment to go.
  assert.ok(r.active <= 1, `copy connections left: ${r.active}`);
});

test("a missing table or column: 42P01 / 42703, and bad options are refused before connecting", async () => {
  const r = await page.evaluate(async () => {
    const pg = window.pgwasm;
    const out = {};
    try { await pg.copyFrom("no_such_table", "1\n"); } catch (e) { out.from = window.errOf(e); }
    try { await pg.copyTo("no_such_table"); } catch (e) { out.to = window.errOf(e); }
    try { await pg.copyFrom("cp", "1\n", { columns: ["nope"] }); } catch (e) { out.col = window.errOf(e); }
    try { await pg.copyTo("select 1/0"); } catch (e) { out.div = window.errOf(e); }
    try { await pg.copyFrom("cp", "1\n", { format: "binary" }); } catch (e) { out.format = window.errOf(e); }
    out.after = (await pg.query("select 'fine'")).rows[0][0];
    return out;
  });
  assert.equal(r.from.sqlstate, "42P01");
  assert.match(r.from.message, /relation "no_such_table" does not exist/);
  assert.equal(r.to.sqlstate, "42P01");
  assert.equal(r.col.sqlstate, "42703");
  assert.equal(r.div.sqlstate, "22012");
  assert.match(r.format.message, /format must be "csv" or "text"/);
  assert.equal(r.after, "fine");
});
