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

export async function importFile(pg: PgWasm, path: string, kind: ImportKind): Promise<ImportResult> {
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

// parseCSVLine splits one CSV record (RFC 4180 quoting, no embedded newlines).
export function parseCSVLine(line: string): string[] {
  const out: string[] = [];
  let cur = "", q = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (q) {
      if (c === '"' && line[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (c === '"') q = false;
      else cur += c;
    } else if (c === '"') q = true;
    else if (c === ",") {
      out.push(cur);
      cur = "";
    } else cur += c;
  }
  out.push(cur);
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
  const text = new TextDecoder().decode(data.subarray(0, 1 << 20));
  const lines = text.split(/\r?\n/).filter(l => l.length);
  if (!lines.length) return { ok: false, summary: `${path} is empty`, output: "" };
  const header = parseCSVLine(lines[0]).map((h, i) => h.trim() || `column${i + 1}`);
  // Column types from the rows we read: integer, numeric or text.
  const types = header.map((_, i) => {
    let t = "bigint";
    for (const l of lines.slice(1, 1000)) {
      const v = (parseCSVLine(l)[i] ?? "").trim();
      if (v === "") continue;
      if (t === "bigint" && !/^-?\d{1,18}$/.test(v)) t = "numeric";
      if (t === "numeric" && !/^-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(v)) return "text";
    }
    return lines.length > 1 ? t : "text";
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
