// One-click import of an uploaded file: SQL through psql, custom-format
// dumps through pg_restore, CSV into a new table.
import type { PgWasm } from "./pgwasm";

export type ImportKind = "sql" | "dump" | "csv";

export function importKind(path: string): ImportKind | null {
  const p = path.toLowerCase();
  if (p.endsWith(".sql")) return "sql";
  if (p.endsWith(".dump") || p.endsWith(".backup") || p.endsWith(".pgdump")) return "dump";
  if (p.endsWith(".csv")) return "csv";
  return null;
}

export interface ImportResult {
  ok: boolean;
  summary: string;
  output: string;
}

const shq = (s: string) => "'" + s.replace(/'/g, `'\\''`) + "'";
const sqlLit = (s: string) => "'" + s.replace(/'/g, "''") + "'";
const ident = (s: string) => '"' + s.replace(/"/g, '""') + '"';

// fileExists: the file is in the VM's root file system (9p) now. An upload
// is gone after Restart VM, or after restoring a state saved before it.
export function fileExists(pg: PgWasm, path: string): Promise<boolean> {
  return pg.fileExists(path).catch(() => false);
}

export async function importFile(pg: PgWasm, path: string, kind: ImportKind): Promise<ImportResult> {
  if (!(await fileExists(pg, path))) {
    return { ok: false, summary: `${path} is no longer in the VM (Restart VM or a restored state removed it): upload it again.`, output: "" };
  }
  switch (kind) {
    case "sql": {
      const r = await pg.runProgram(`psql -X -v ON_ERROR_STOP=1 -d postgres -f ${shq(path)}`);
      return { ok: r.ok, summary: r.ok ? `Ran ${path} with psql.` : `psql stopped at an error in ${path} (output below).`, output: r.output };
    }
    case "dump": {
      const r = await pg.runProgram(`pg_restore --no-owner -d postgres ${shq(path)}`);
      return { ok: r.ok, summary: r.ok ? `Restored ${path} with pg_restore.` : `pg_restore reported errors for ${path} (output below).`, output: r.output };
    }
    case "csv":
      return importCSV(pg, path);
  }
}

// parseCSV splits CSV text into records (RFC 4180: quoted fields may hold
// commas, doubled quotes and line breaks). With complete false the text is
// a prefix of the file and a record it cuts off is dropped.
export function parseCSV(text: string, complete = true): string[][] {
  const out: string[][] = [];
  let rec: string[] = [];
  let cur = "", q = false, any = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (q) {
      if (c === '"' && text[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (c === '"') q = false;
      else cur += c;
      continue;
    }
    if (c === '"') {
      q = true;
      any = true;
    } else if (c === ",") {
      rec.push(cur);
      cur = "";
      any = true;
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      if (any || cur) {
        rec.push(cur);
        out.push(rec);
      }
      rec = [];
      cur = "";
      any = false;
    } else {
      cur += c;
      any = true;
    }
  }
  if (complete && !q && (any || cur)) {
    rec.push(cur);
    out.push(rec);
  }
  return out;
}

// tableName makes a table name from a file name: "My Data-1.csv" -> my_data_1.
export function tableName(path: string): string {
  const base = path.split("/").pop()!.replace(/\.csv$/i, "");
  let n = base.toLowerCase().replace(/[^a-z0-9_]+/g, "_").replace(/^_+|_+$/g, "");
  if (!n || /^[0-9]/.test(n)) n = "t_" + n;
  return n.slice(0, 63);
}

async function importCSV(pg: PgWasm, path: string): Promise<ImportResult> {
  const data = await pg.download(path);
  const sample = 1 << 20;
  const text = new TextDecoder().decode(data.subarray(0, sample));
  const records = parseCSV(text, data.length <= sample);
  if (!records.length) return { ok: false, summary: `${path} is empty`, output: "" };
  const header = records[0].map((h, i) => h.trim() || `column${i + 1}`);
  const rows = records.slice(1, 1000);
  // Column types from the rows we read: integer, numeric or text.
  const types = header.map((_, i) => {
    let t = "bigint";
    for (const r of rows) {
      const v = (r[i] ?? "").trim();
      if (v === "") continue;
      if (t === "bigint" && !/^-?\d{1,18}$/.test(v)) t = "numeric";
      if (t === "numeric" && !/^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v)) return "text";
    }
    return rows.length ? t : "text";
  });
  const table = tableName(path);
  const cols = header.map((h, i) => `${ident(h)} ${types[i]}`).join(", ");
  const sql = `CREATE TABLE ${ident(table)} (${cols}); COPY ${ident(table)} FROM ${sqlLit(path)} WITH (FORMAT csv, HEADER true);`;
  try {
    const res = await pg.exec(sql);
    const n = res[1]?.rows_affected ?? 0;
    return { ok: true, summary: `Imported ${n} rows into table ${table} (${header.length} columns).`, output: sql };
  } catch (err) {
    return { ok: false, summary: `CSV import failed: ${(err as Error).message}`, output: sql };
  }
}
