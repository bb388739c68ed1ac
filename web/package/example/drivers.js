// node-postgres (npm `pg`) on the tab's PostgreSQL: what a web app does
// with the pgwasm package and its bundler. Bundle this file for the
// browser with Node's modules aliased away and pgwasm external
// (docs/web.md, "Bundling a driver") into drivers.bundle.js.
import { Buffer } from "buffer";
import pg from "pg";
import { boot } from "pgwasm";

// pg parses Buffers; the socket hands them out when the page has a global
// Buffer.
globalThis.Buffer = Buffer;

const progress = document.querySelector("#progress");
const steps = document.querySelector("#steps");

// step runs one part of the tour and shows what it gave (or its error).
async function step(id, title, sqlText, run) {
  const li = document.createElement("li");
  li.id = id;
  li.innerHTML = "<b></b> <code></code> → <output></output>";
  li.querySelector("b").textContent = title;
  li.querySelector("code").textContent = sqlText;
  steps.append(li);
  const out = li.querySelector("output");
  out.textContent = "…";
  try {
    out.textContent = await run();
  } catch (err) {
    out.textContent = `error ${err.code || ""}: ${err.message}`;
    li.className = "error";
    throw err;
  }
}

const imageBase = new URLSearchParams(location.search).get("image") || "./image/";
try {
  const vm = await boot({ imageBase, headless: true, onProgress: p => { progress.textContent = p.message; } });
  window.vm = vm;
  progress.textContent = `Booted PostgreSQL ${vm.serverVersion}; node-postgres over pg.nodeSocket():`;
  // Each client is a connection of its own, a backend of its own.
  const connect = async () => {
    const c = new pg.Client({ user: "postgres", database: "postgres", stream: () => vm.nodeSocket() });
    await c.connect();
    return c;
  };
  const a = await connect();
  const b = await connect();

  await step("create", "Create a table", "create table notes (id serial primary key, body text not null)", async () =>
    (await a.query("create table notes (id serial primary key, body text not null)")).command);

  await step("insert", "Insert with parameters", "insert into notes (body) values ($1), ($2) returning id", async () => {
    const r = await a.query("insert into notes (body) values ($1), ($2) returning id", ["first note", "it's \"quoted\""]);
    return `${r.command} ${r.rowCount}: ids ${r.rows.map(row => row.id).join(", ")}`;
  });

  await step("select", "Select", "select id, body from notes order by id", async () =>
    JSON.stringify((await a.query("select id, body from notes order by id")).rows));

  await step("transaction", "A transaction, rolled back", "begin; insert ...; rollback", async () => {
    await a.query("begin");
    await a.query("insert into notes (body) values ($1)", ["never kept"]);
    const inside = (await a.query("select count(*)::int as n from notes")).rows[0].n;
    await a.query("rollback");
    const after = (await a.query("select count(*)::int as n from notes")).rows[0].n;
    return `${inside} rows inside, ${after} after rollback`;
  });

  await step("notify", "LISTEN/NOTIFY between two connections", "b: listen note_added; a: select pg_notify('note_added', ...)", async () => {
    await b.query("listen note_added");
    const heard = new Promise((resolve, reject) => {
      b.once("notification", n => resolve(n));
      setTimeout(() => reject(new Error("no notification in 20 s")), 20000);
    });
    const sender = (await a.query("select pg_backend_pid() as pid, pg_notify('note_added', $1)", ["note 3"])).rows[0].pid;
    const n = await heard;
    return `b heard "${n.payload}" on ${n.channel} from ${n.processId === sender ? "a" : "pid " + n.processId}`;
  });

  await step("error", "An error and its SQLSTATE", "insert into notes (body) values (null)", async () => {
    try {
      await a.query("insert into notes (body) values (null)");
      return "no error";
    } catch (err) {
      // The connection is still usable after the error.
      const n = (await a.query("select count(*)::int as n from notes")).rows[0].n;
      return `${err.code} ${err.message}; still ${n} rows`;
    }
  });

  await a.query("drop table notes");
  await a.end();
  await b.end();
  document.querySelector("#done").textContent = "All steps done.";
} catch (err) {
  document.querySelector("#done").textContent = "Failed: " + err.message;
  throw err;
}
