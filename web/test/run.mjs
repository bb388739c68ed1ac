#!/usr/bin/env node
// Runs the browser tests (web/test/*.spec.mjs) with node's test runner.
// Env: PGWASM_BIN (default build/bin/pgwasm), PGWASM_IMAGE (build/image),
// CHROMIUM (/usr/bin/chromium). Screenshots go to build/test-artifacts/.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const dir = path.dirname(fileURLToPath(import.meta.url));
const only = process.argv.slice(2);
const specs = fs.readdirSync(dir).filter(f => f.endsWith(".spec.mjs")).map(f => path.join(dir, f));
const args = ["--test", "--test-concurrency=1", "--test-timeout=1800000", ...(only.length ? ["--test-name-pattern", only.join("|")] : []), ...specs];
const r = spawnSync(process.execPath, args, { stdio: "inherit" });
process.exit(r.status ?? 1);
