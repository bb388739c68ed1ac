// COPY both ways over one socket-channel connection (PgWasm.connect()): a
// minimal PostgreSQL frontend (protocol 3.0) that speaks only what COPY
// needs. The agent's JSON path carries at most 1 MiB per request and parses
// every byte as JSON; here the data goes to PostgreSQL as CopyData messages,
// at the socket channel's speed, with its flow control (a slow reader holds
// the server back, a slow server holds the source back).
import type { PgSocket } from "./socket";

export interface CopyOptions {
  // "csv" (the default here) or PostgreSQL's "text" format.
  format?: "csv" | "text";
  // The first line is a header (copyFrom skips it, copyTo writes it).
  header?: boolean;
  // The table's columns the data fills (copyFrom), in the data's order.
  columns?: string[];
  // One character; PostgreSQL's default is "," for csv, tab for text.
  delimiter?: string;
  // The string that stands for NULL (default: "" for csv, \N for text).
  null?: string;
  // Whom to connect as (trusted: no password). Default postgres/postgres.
  database?: string;
  user?: string;
}

// A table name: a string is one identifier, as it is (case kept, a dot is
// part of the name); [schema, name] names a table in another schema.
export type TableName = string | [string, string];

// CopyError is what a failed COPY throws: PostgreSQL's message, with its
// SQLSTATE, detail and hint as the page's query errors carry them.
export interface CopyError extends Error {
  sqlstate?: string;
  detail?: string;
  hint?: string;
  position?: string;
}

// Data sent per CopyData message: big enough that the header is noise,
// small enough that a slow source is not buffered whole.
const CHUNK = 64 << 10;
// copyTo hands out chunks of about this size (PostgreSQL sends one
// CopyData message per row; a stream of 100-byte chunks would be slow).
const OUT_CHUNK = 64 << 10;

export function quoteIdent(name: string): string {
  if (name === "" || name.includes("\0")) throw new Error(`not a valid identifier: ${JSON.stringify(name)}`);
  return '"' + name.replace(/"/g, '""') + '"';
}

function quoteTable(t: TableName): string {
  return Array.isArray(t) ? `${quoteIdent(t[0])}.${quoteIdent(t[1])}` : quoteIdent(t);
}

// An escape-string literal, whatever standard_conforming_strings says.
function quoteLiteral(s: string): string {
  if (s.includes("\0")) throw new Error("a COPY option cannot hold a NUL character");
  return "E'" + s.replace(/\\/g, "\\\\").replace(/'/g, "''") + "'";
}

function withClause(o: CopyOptions): string {
  const format = o.format ?? "csv";
  if (format !== "csv" && format !== "text") throw new Error(`COPY format must be "csv" or "text", not ${JSON.stringify(format)}`);
  const parts = [`FORMAT ${format}`];
  if (o.header) parts.push("HEADER true");
  if (o.delimiter !== undefined) parts.push(`DELIMITER ${quoteLiteral(o.delimiter)}`);
  if (o.null !== undefined) parts.push(`NULL ${quoteLiteral(o.null)}`);
  return `WITH (${parts.join(", ")})`;
}

export function copyFromSQL(table: TableName, o: CopyOptions = {}): string {
  const cols = o.columns?.length ? ` (${o.columns.map(quoteIdent).join(", ")})` : "";
  return `COPY ${quoteTable(table)}${cols} FROM STDIN ${withClause(o)}`;
}

// A query (SELECT, WITH, VALUES, TABLE ...) is copied as its result, any
// other string as the table of that name.
export function copyToSQL(queryOrTable: TableName, o: CopyOptions = {}): string {
  let source: string;
  if (typeof queryOrTable === "string" && /^\s*(select|with|values|table)\b/i.test(queryOrTable)) {
    source = `(${queryOrTable.replace(/[\s;]+$/, "")})`;
  } else {
    source = quoteTable(queryOrTable);
  }
  return `COPY ${source} TO STDOUT ${withClause(o)}`;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

function message(type: string, body: Uint8Array): Uint8Array {
  const m = new Uint8Array(5 + body.length);
  m[0] = type.charCodeAt(0);
  new DataView(m.buffer).setInt32(1, 4 + body.length);
  m.set(body, 5);
  return m;
}

function cstring(s: string): Uint8Array {
  return enc.encode(s + "\0");
}

interface Message {
  type: string;
  body: Uint8Array;
}

function errorOf(body: Uint8Array): CopyError {
  const f: Record<string, string> = {};
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const code = String.fromCharCode(body[i]);
    const end = body.indexOf(0, i + 1);
    f[code] = dec.decode(body.subarray(i + 1, end < 0 ? body.length : end));
    i = end < 0 ? body.length : end + 1;
  }
  const err = new Error(f.M || "PostgreSQL reported an error") as CopyError;
  err.sqlstate = f.C;
  err.detail = f.D;
  err.hint = f.H;
  err.position = f.P;
  return err;
}

// Session is one PostgreSQL connection speaking just enough protocol.
class Session {
  private reader: ReadableStreamDefaultReader<Uint8Array>;
  private writer: WritableStreamDefaultWriter<Uint8Array>;
  private buf: Uint8Array = new Uint8Array(0);
  private pos = 0;

  constructor(private sock: PgSocket) {
    this.reader = sock.readable.getReader();
    this.writer = sock.writable.getWriter();
  }

  write(b: Uint8Array): Promise<void> {
    return this.writer.write(b);
  }

  async next(): Promise<Message> {
    for (;;) {
      const avail = this.buf.length - this.pos;
      if (avail >= 5) {
        const len = new DataView(this.buf.buffer, this.buf.byteOffset + this.pos + 1, 4).getInt32(0);
        if (len < 4) throw new Error(`PostgreSQL sent a message of length ${len}: the connection is out of step`);
        if (avail >= 1 + len) {
          const type = String.fromCharCode(this.buf[this.pos]);
          const body = this.buf.subarray(this.pos + 5, this.pos + 1 + len);
          this.pos += 1 + len;
          return { type, body };
        }
      }
      const { value, done } = await this.reader.read();
      if (done) throw new Error("PostgreSQL closed the connection in the middle of a COPY");
      const rest = this.buf.subarray(this.pos);
      if (rest.length === 0) {
        this.buf = value;
      } else {
        const b = new Uint8Array(rest.length + value.length);
        b.set(rest);
        b.set(value, rest.length);
        this.buf = b;
      }
      this.pos = 0;
    }
  }

  // startup logs in (trust) and waits for the first ReadyForQuery.
  async startup(user: string, database: string): Promise<void> {
    const params = ["user", user, "database", database, "application_name", "pgwasm-copy", "client_encoding", "UTF8"];
    const body = enc.encode(params.join("\0") + "\0\0");
    const m = new Uint8Array(8 + body.length);
    const dv = new DataView(m.buffer);
    dv.setInt32(0, m.length);
    dv.setInt32(4, 196608); // protocol 3.0
    m.set(body, 8);
    await this.write(m);
    for (;;) {
      const msg = await this.next();
      switch (msg.type) {
        case "R": {
          const code = new DataView(msg.body.buffer, msg.body.byteOffset, 4).getInt32(0);
          if (code !== 0) throw new Error(`PostgreSQL asked for a password (authentication request ${code}); the page's connections are trusted, so the guest's pg_hba.conf was changed: COPY cannot log in as ${user}`);
          break;
        }
        case "E":
          throw errorOf(msg.body);
        case "Z":
          return;
        default: // S ParameterStatus, K BackendKeyData, N NoticeResponse
      }
    }
  }

  query(sql: string): Promise<void> {
    return this.write(message("Q", cstring(sql)));
  }

  // finish reads to ReadyForQuery: the COPY's row count, or its error.
  async finish(): Promise<number> {
    let err: CopyError | null = null;
    let rows = 0;
    for (;;) {
      const msg = await this.next();
      if (msg.type === "E") err ??= errorOf(msg.body);
      else if (msg.type === "C") {
        const m = /^COPY (\d+)/.exec(dec.decode(msg.body.subarray(0, msg.body.length - 1)));
        rows = m ? Number(m[1]) : 0;
      } else if (msg.type === "Z") {
        if (err) throw err;
        return rows;
      }
    }
  }

  // close says goodbye (Terminate) and drops the connection.
  async close(): Promise<void> {
    try {
      await this.write(message("X", new Uint8Array(0)));
      await this.writer.close();
    } catch { /* the connection is gone already */ }
    this.sock.close();
  }
}

async function open(connect: () => Promise<PgSocket>, o: CopyOptions): Promise<Session> {
  const s = new Session(await connect());
  try {
    await s.startup(o.user ?? "postgres", o.database ?? "postgres");
  } catch (err) {
    await s.close();
    throw err;
  }
  return s;
}

export type CopySource = string | Uint8Array | ArrayBuffer | Blob | ReadableStream<Uint8Array>;

// chunksOf reads the caller's data in pieces of at most CHUNK bytes.
async function* chunksOf(data: CopySource): AsyncGenerator<Uint8Array> {
  if (typeof data === "string") data = enc.encode(data);
  if (data instanceof ArrayBuffer) data = new Uint8Array(data);
  if (data instanceof Uint8Array) {
    for (let off = 0; off < data.length; off += CHUNK) yield data.subarray(off, off + CHUNK);
    return;
  }
  const stream = data instanceof Blob ? data.stream() : data;
  const r = stream.getReader();
  try {
    for (;;) {
      const { value, done } = await r.read();
      if (done) return;
      if (!(value instanceof Uint8Array)) throw new Error("copyFrom: the stream gave something other than a Uint8Array");
      for (let off = 0; off < value.length; off += CHUNK) yield value.subarray(off, off + CHUNK);
    }
  } finally {
    r.releaseLock();
  }
}

// copyFrom runs COPY table FROM STDIN with the caller's data. COPY is one
// statement: on any error no row of it is in the table.
export async function copyFrom(connect: () => Promise<PgSocket>, table: TableName, data: CopySource, o: CopyOptions = {}): Promise<{ rows: number }> {
  const sql = copyFromSQL(table, o);
  const s = await open(connect, o);
  try {
    await s.query(sql);
    const first = await s.next();
    if (first.type !== "G") {
      // An ErrorResponse (no such table, a bad option): read it to the end.
      if (first.type === "E") {
        const err = errorOf(first.body);
        await s.finish().catch(() => {});
        throw err;
      }
      throw new Error(`PostgreSQL answered COPY FROM STDIN with message ${first.type}, not CopyInResponse`);
    }
    // The server may fail the COPY while data still flows (a bad row): it
    // sends its error and drops what follows, so read while sending and
    // stop the source as soon as the answer is in.
    let answered = false;
    const result = s.finish().finally(() => { answered = true; });
    result.catch(() => {});
    const source = chunksOf(data);
    let sourceErr: unknown = null;
    try {
      for (;;) {
        if (answered) break;
        let step: IteratorResult<Uint8Array>;
        try {
          step = await source.next();
        } catch (err) {
          sourceErr = err;
          break;
        }
        if (step.done) break;
        await s.write(message("d", step.value));
      }
    } finally {
      if (answered || sourceErr) await source.return(undefined).catch(() => {});
    }
    if (sourceErr) {
      const why = sourceErr instanceof Error ? sourceErr.message : String(sourceErr);
      await s.write(message("f", cstring(`the page's data source failed: ${why}`.slice(0, 1000)))).catch(() => {});
      try {
        await result;
      } catch { /* the expected "COPY from stdin failed" */ }
      throw new Error(`copyFrom ${typeof table === "string" ? table : table.join(".")}: the data source failed (${why}); the COPY was cancelled, no row was added`, { cause: sourceErr });
    }
    if (!answered) await s.write(message("c", new Uint8Array(0)));
    return { rows: await result };
  } finally {
    await s.close();
  }
}

// copyToStream runs COPY ... TO STDOUT and streams its output in chunks of
// about 64 KiB; a slow reader holds PostgreSQL back. Cancelling the stream
// drops the connection (its backend ends the COPY).
export function copyToStream(connect: () => Promise<PgSocket>, queryOrTable: TableName, o: CopyOptions = {}): ReadableStream<Uint8Array> {
  let s: Session | null = null;
  let done = false;
  return new ReadableStream<Uint8Array>({
    async start() {
      const sql = copyToSQL(queryOrTable, o);
      s = await open(connect, o);
      try {
        await s.query(sql);
        const first = await s.next();
        if (first.type === "E") {
          const err = errorOf(first.body);
          await s.finish().catch(() => {});
          throw err;
        }
        if (first.type !== "H") throw new Error(`PostgreSQL answered COPY TO STDOUT with message ${first.type}, not CopyOutResponse`);
      } catch (err) {
        await s.close();
        throw err;
      }
    },
    async pull(ctl) {
      const sess = s!;
      const parts: Uint8Array[] = [];
      let size = 0;
      try {
        while (size < OUT_CHUNK) {
          const m = await sess.next();
          if (m.type === "d") {
            // The body is a view into the receive buffer, which is reused.
            parts.push(m.body.slice());
            size += m.body.length;
          } else if (m.type === "c") {
            await sess.finish();
            done = true;
            break;
          } else if (m.type === "E") {
            const err = errorOf(m.body);
            await sess.finish().catch(() => {});
            throw err;
          }
        }
      } catch (err) {
        await sess.close();
        throw err;
      }
      if (size > 0) ctl.enqueue(parts.length === 1 ? parts[0] : concat(parts, size));
      if (done) {
        await sess.close();
        ctl.close();
      }
    },
    async cancel() {
      await s?.close();
    },
  }, { highWaterMark: 1 });
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

export async function copyTo(connect: () => Promise<PgSocket>, queryOrTable: TableName, o: CopyOptions = {}): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  const r = copyToStream(connect, queryOrTable, o).getReader();
  for (;;) {
    const { value, done } = await r.read();
    if (done) break;
    parts.push(value);
    size += value.length;
  }
  return concat(parts, size);
}
