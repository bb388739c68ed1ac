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
