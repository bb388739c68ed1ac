// Measuring helpers shared by the JavaScript side of `make bench`.
//
// The query-set loop of issue #6 for every JavaScript database under test:
// PGlite in Node and in Chromium, and our page's API (window.pgwasm) in
// Chromium. One loop, so each database runs exactly the same statements in
// the same order; cmd/pgwasm-bench has the same loop in Go for the VM's
// agent API in Node and for native PostgreSQL.
//
// runQuerySet must stay self-contained (no imports, no outer names): the
// Chromium runs send its source into the page with Function.prototype.toString.
//
// db has exec(sql) for a script (simple protocol, many statements) and
// query(sql) for one statement; both PGlite and window.pgwasm have them.
// runs is the default count of timed runs (a query's own "runs" wins when
// larger), after one untimed warm-up. The setup runs setup_runs times, each
// after the reset statements, so it is timed like everything else.
export async function runQuerySet(db, spec, runs, log) {
  const say = log || (() => {});
  const expand = q => {
    if (!q.script) return q.sql;
    let s = q.script.prefix;
    for (let i = 1; i <= q.script.count; i++) s += q.script.repeat.replaceAll("{i}", String(i));
    return s + q.script.suffix;
  };
  const out = { setup_ms: [], queries: {} };
  for (let i = 0; i < (spec.setup_runs || 1); i++) {
    for (const sql of spec.reset || []) await db.exec(sql);
    const t = performance.now();
    for (const sql of spec.setup) await db.exec(sql);
    out.setup_ms.push(performance.now() - t);
  }
  say("setup " + out.setup_ms.map(x => x.toFixed(0)).join(" "));
  for (const q of spec.queries) {
    const sql = expand(q), n = Math.max(runs, q.runs || 0), times = [];
    for (let i = -1; i < n; i++) { // i = -1 is the warm-up
      if (q.before) await db.exec(q.before);
      const t = performance.now();
      if (q.script) await db.exec(sql);
      else await db.query(sql);
      if (i >= 0) times.push(performance.now() - t);
    }
    out.queries[q.name] = times;
    say(q.name + " " + times.map(x => x.toFixed(2)).join(" "));
  }
  return out;
}

// inPage is the expression that runs runQuerySet inside a page on the
// database object window[dbName], logging through window.benchLog when the
// page has it.
export function inPage(dbName, spec, runs) {
  return `(${runQuerySet})(window[${JSON.stringify(dbName)}], ${JSON.stringify(spec)}, ${Number(runs)}, s => window.benchLog && window.benchLog(s))`;
}

// trackBytes counts the bytes a page transfers (encoded, as on the wire),
// split into "data" (URLs that isData accepts: a VM state, PGlite's
// filesystem bundle) and "code" (everything else), from the DevTools
// protocol's network events. reset() starts a new count.
export async function trackBytes(cdp, isData) {
  await cdp.send("Network.enable");
  const urls = new Map();
  let counts;
  const reset = () => { counts = { code: 0, data: 0 }; };
  reset();
  cdp.on("Network.responseReceived", e => urls.set(e.requestId, e.response.url));
  cdp.on("Network.loadingFinished", e => {
    counts[isData(urls.get(e.requestId) || "") ? "data" : "code"] += e.encodedDataLength;
  });
  return { reset, get: () => ({ bytes: counts.code + counts.data, ...counts }) };
}

// roundTrips times each of fns (name → () => Promise) runs times after
// warm warm-up rounds, in turns whose order alternates, so that drift on a
// shared machine falls on all of them alike; returns name → ms[]. Sent
// into pages with toString, as runQuerySet: self-contained.
export async function roundTrips(fns, runs, warm) {
  const names = Object.keys(fns), out = {};
  for (const n of names) out[n] = [];
  for (let i = -warm; i < runs; i++) {
    const order = i % 2 ? names : [...names].reverse();
    for (const n of order) {
      const t = performance.now();
      await fns[n]();
      if (i >= 0) out[n].push(performance.now() - t);
    }
  }
  return out;
}

// kyselyRows times, on a Kysely db, one insert of 1,000 rows (one
// multi-row INSERT statement, its 2,000 values as parameters) and the
// select of them back, runs times after one untimed warm-up, each on a
// fresh table (created untimed). The same code for every database: only
// the Kysely dialect differs. Self-contained, as runQuerySet.
export async function kyselyRows(db, runs) {
  const rows = Array.from({ length: 1000 }, (_, i) => ({ id: i, name: "row " + i }));
  const times = [];
  for (let i = -1; i < runs; i++) {
    await db.schema.dropTable("bench_kysely").ifExists().execute();
    await db.schema.createTable("bench_kysely").addColumn("id", "integer", c => c.primaryKey()).addColumn("name", "text").execute();
    const t = performance.now();
    await db.insertInto("bench_kysely").values(rows).execute();
    const got = await db.selectFrom("bench_kysely").selectAll().orderBy("id").execute();
    const ms = performance.now() - t;
    if (got.length !== rows.length || got[999].name !== "row 999") throw new Error(`kysely: ${got.length} rows back, want ${rows.length}`);
    if (i >= 0) times.push(ms);
  }
  await db.schema.dropTable("bench_kysely").execute();
  return times;
}
