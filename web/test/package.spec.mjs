// The npm package (make package: build/pgwasm-<version>.tgz, or
// PGWASM_PACKAGE): the tarball holds what its package.json says, its types
// compile in a fresh consumer project, and web/package/example, served
// with the unpacked tarball by a plain static server, boots the VM in
// Chromium from a static copy of the image (PGWASM_IMAGE) on another
// origin: no pgwasm serve at all. Its drivers page runs node-postgres,
// bundled by esbuild as an app's bundler would, on the packed module; apps
// bundled by webpack and by Vite run from their bundler's output alone. Offline: the consumer gets the tarball
// and web/node_modules' copy of the one dependency, as npm install would.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { root, artifacts, openStatic } from "./lib.mjs";
import { bundleDrivers } from "./driver-bundle.mjs";

const pkgDir = path.join(root, "web", "package");
const version = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;
const tarball = process.env.PGWASM_PACKAGE || path.join(root, "build", `pgwasm-${version}.tgz`);
const image = process.env.PGWASM_IMAGE || path.join(root, "build", "image");
const tsc = path.join(root, "web", "node_modules", "typescript", "bin", "tsc");

let tmp, unpacked, manifest;

before(() => {
  if (!fs.existsSync(tarball)) throw new Error(`no package at ${tarball} (make package)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), "pgwasm-package-"));
  execFileSync("tar", ["-xzf", tarball, "-C", tmp]);
  unpacked = path.join(tmp, "package"); // npm pack's top directory
  manifest = JSON.parse(fs.readFileSync(path.join(unpacked, "package.json"), "utf8"));
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function listFiles(dir, prefix = "") {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap(e =>
    e.isDirectory() ? listFiles(path.join(dir, e.name), prefix + e.name + "/") : [prefix + e.name]);
}

test("npm pack: the tarball holds what package.json lists, and no more", t => {
  assert.equal(manifest.name, "pgwasm");
  assert.equal(manifest.version, version, "the tarball is stale: make package");
  const files = listFiles(unpacked).sort();
  // npm adds package.json and README itself; "files" lists the rest.
  const listed = f => f === "package.json" || f === "README.md" ||
    manifest.files.some(e => e.endsWith("/") ? f.startsWith(e) : f === e);
  assert.deepEqual(files.filter(f => !listed(f)), [], "files the package.json does not list");
  for (const e of manifest.files) assert.ok(files.some(f => e.endsWith("/") ? f.startsWith(e) : f === e), `${e} is listed but missing`);
  assert.deepEqual(files.filter(f => /\.map$|\.spec\.|(?<!\.d)\.ts$|tsconfig|example/.test(f)), [], "source maps, tests or sources in the tarball");
  // Every entry point the package.json names is in the tarball.
  const targets = [manifest.types, ...Object.values(manifest.exports).flatMap(v => typeof v === "string" ? [v] : Object.values(v))];
  for (const target of targets) assert.ok(files.includes(path.posix.normalize(target)), `${target} (named in package.json) is missing`);
  const packed = fs.statSync(tarball).size;
  const size = files.reduce((n, f) => n + fs.statSync(path.join(unpacked, f)).size, 0);
  t.diagnostic(`${path.basename(tarball)}: ${files.length} files, ${(packed / 1e6).toFixed(2)} MB packed, ${(size / 1e6).toFixed(2)} MB unpacked`);
  // v86's 11 MB debug build or source maps would pass the checks above.
  assert.ok(packed < 1 << 20, `tarball is ${packed} bytes`);
});

// webpack 5 and Vite emit a file the module loads only where they find a
// literal new URL("./name", import.meta.url); the package's own minified
// build must keep that form (the bundler tests below show it is enough).
test("npm pack: the module names the files it loads as webpack and Vite detect them", () => {
  const js = fs.readFileSync(path.join(unpacked, "dist", "pgwasm.js"), "utf8");
  for (const f of ["vm-worker.js", "v86.wasm", "xterm.css"]) {
    assert.ok(js.includes(`new URL("./${f}",import.meta.url)`), `no new URL("./${f}", import.meta.url) in dist/pgwasm.js`);
    assert.ok(manifest.files.includes(`dist/${f}`), `dist/${f} is not in the package`);
  }
});

// A consumer's code: the @ts-expect-error lines fail the compile if the
// API's types are missing or degraded to any.
const consumer = `
import { boot, PgWasm, StateError, SocketError, NodeSocket, MEMORY_SIZES, type BootOptions, type QueryResult, type NetworkInfo, type Status, type PgSocket, type CopyOptions } from "pgwasm";
const opts: BootOptions = { imageBase: "https://static.example.com/image/", headless: true, memory: MEMORY_SIZES[0] };
const pg: PgWasm = await boot(opts);
const r: QueryResult = await pg.query("select $1::int * 7 as answer", [6]);
const first: string | null = r.rows[0][0];
const all: QueryResult[] = await pg.exec("select 1; select 2");
const state: Blob = await pg.saveState();
await pg.restoreState(state);
const net: NetworkInfo = await pg.startNetwork();
const sock: PgSocket = await pg.connect();
const writer: WritableStreamDefaultWriter<Uint8Array> = sock.writable.getWriter();
const ns: NodeSocket = pg.nodeSocket().setNoDelay(true);
ns.on("data", (b: Uint8Array) => console.log(b.length));
// @ts-expect-error the readable side carries bytes, not text
const text: ReadableStream<string> = sock.readable;
console.log(writer, new SocketError("x").name, text);
pg.addEventListener("status", e => console.log((e as CustomEvent<Status>).detail.status));
// @ts-expect-error rows hold text, not numbers
const wrong: number = r.rows[0][0];
// @ts-expect-error imageBase is a URL string
await boot({ imageBase: 42 });
const cp: { rows: number } = await pg.copyFrom("t", "1\\n", { format: "text", header: true } as CopyOptions);
const out: Uint8Array = await pg.copyTo("select 1");
const outs: ReadableStream<Uint8Array> = pg.copyToStream(["public", "t"]);
// @ts-expect-error binary is not a format copyFrom takes
await pg.copyFrom("t", "1\\n", { format: "binary" });
console.log(cp.rows, out.length, outs);
console.log(first, all.length, net.password, new StateError("x").message, wrong);
`;

for (const resolution of ["Bundler", "NodeNext"]) {
  test(`npm pack: the types compile in a consumer project (moduleResolution ${resolution})`, () => {
    const dir = path.join(tmp, `consumer-${resolution}`);
    const modules = path.join(dir, "node_modules");
    fs.mkdirSync(path.join(modules, "@xterm"), { recursive: true });
    fs.cpSync(unpacked, path.join(modules, "pgwasm"), { recursive: true });
    // The package's one dependency (types of the terminal), at the version
    // it names.
    for (const [dep, want] of Object.entries(manifest.dependencies || {})) {
      const src = path.join(root, "web", "node_modules", dep);
      const have = JSON.parse(fs.readFileSync(path.join(src, "package.json"), "utf8")).version;
      assert.equal(have, want, `web/node_modules has ${dep} ${have}, the package wants ${want}`);
      fs.symlinkSync(src, path.join(modules, dep));
    }
    fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
    fs.writeFileSync(path.join(dir, "main.ts"), consumer);
    const module = resolution === "NodeNext" ? "NodeNext" : "ESNext";
    fs.writeFileSync(path.join(dir, "tsconfig.json"), JSON.stringify({
      compilerOptions: { target: "ES2022", module, moduleResolution: resolution, lib: ["ES2022", "DOM"], strict: true, noEmit: true, skipLibCheck: false },
      files: ["main.ts"],
    }));
    try {
      execFileSync(process.execPath, [tsc, "-p", dir], { cwd: dir, encoding: "utf8" });
    } catch (err) {
      assert.fail(`tsc failed in the consumer project:\n${err.stdout}${err.stderr}`);
    }
  });
}

// exampleHTML reads an example page and checks that its import map points
// where npm install puts the package's module.
function exampleHTML(name) {
  const html = fs.readFileSync(path.join(pkgDir, "example", name), "utf8");
  const mapped = JSON.parse(html.match(/<script type="importmap">([\s\S]*?)<\/script>/)[1]).imports.pgwasm;
  assert.equal(mapped, "./node_modules/pgwasm/" + path.posix.normalize(manifest.exports["."].default));
  return html;
}

// failedRequests are the requests of a static page's servers that were not
// answered 200, but for the favicon and the state metadata the page probes
// for each memory size (an image need not have them all).
function failedRequests(...servers) {
  return servers.flatMap(s => s.log).filter(r => r.status !== 200 && r.path !== "/favicon.ico" && !/^\/state-\d+\.json$/.test(r.path));
}

// openExample opens an example page with the unpacked tarball at
// /node_modules/pgwasm/, where npm install puts it.
function openExample(siteDir, page) {
  return openStatic({ "/node_modules/pgwasm/": unpacked, "/": siteDir }, image, page);
}

test("npm pack: the example page boots the VM from the packed package and static image files", async t => {
  if (!fs.existsSync(path.join(image, "manifest.json"))) throw new Error(`no VM image in ${image} (make snapshot)`);
  exampleHTML("index.html");
  const { p, errors, site, images, close } = await openExample(path.join(pkgDir, "example"), "index.html");
  try {
    await p.waitForFunction(() => document.querySelector("#answer").textContent || /failed/.test(document.querySelector("#progress").textContent),
      null, { timeout: 300000, polling: 250 });
    assert.equal(await p.textContent("#answer"), "42", await p.textContent("#progress"));
    const r = await p.evaluate(() => window.pg.query("select 6*7"));
    assert.deepEqual(r.rows, [["42"]]);
    await p.screenshot({ path: path.join(artifacts, "web-package-example.png") });
    assert.deepEqual(errors, []);
    // Everything came from the two static hosts, v86's WebAssembly and the
    // terminal's style sheet from the package's own directory. The only
    // misses: the browser's favicon and the probes for states of memory
    // sizes the image has none for.
    const missed = failedRequests(site, images);
    assert.deepEqual(missed, []);
    for (const f of ["dist/pgwasm.js", "dist/v86.wasm", "dist/xterm.css"]) {
      assert.ok(site.log.some(r => r.path === "/node_modules/pgwasm/" + f), `${f} not loaded from the package`);
    }
    assert.ok(images.log.some(r => /^\/state-\d+\.bin\.zst$/.test(r.path)), "no state loaded from the image host");
    t.diagnostic(`requests: ${site.log.length} to the site, ${images.log.length} to the image host`);
  } finally {
    await close();
  }
});

// The drivers example as an app builds it: esbuild bundles drivers.js and
// node-postgres (web/node_modules), Node's modules aliased as
// driver-bundle.mjs does, pgwasm left to the page's import map, which
// points into the unpacked tarball.
test("npm pack: the drivers example, bundled by esbuild, runs node-postgres on the packed package's pg.nodeSocket()", async t => {
  if (!fs.existsSync(path.join(image, "manifest.json"))) throw new Error(`no VM image in ${image} (make snapshot)`);
  const example = path.join(pkgDir, "example");
  const html = exampleHTML("drivers.html");
  const script = html.match(/<script type="module" src="([^"]+)"><\/script>/)[1];
  const siteDir = path.join(tmp, "drivers-site");
  await bundleDrivers({ dir: path.join(tmp, "drivers-shims"), entry: path.join(example, "drivers.js"),
    outfile: path.join(siteDir, script), external: ["pgwasm"] });
  fs.copyFileSync(path.join(example, "drivers.html"), path.join(siteDir, "drivers.html"));
  const t0 = Date.now();
  const { p, errors, site, close } = await openExample(siteDir, "drivers.html");
  try {
    await p.waitForFunction(() => document.querySelector("#done").textContent, null, { timeout: 300000, polling: 250 });
    const steps = await p.$$eval("#steps li", lis => lis.map(li => [li.id, li.querySelector("output").textContent]));
    t.diagnostic(`drivers example: ${((Date.now() - t0) / 1000).toFixed(1)} s from load to the last step; load ${os.loadavg()[0].toFixed(1)}`);
    await p.screenshot({ path: path.join(artifacts, "web-package-drivers.png"), fullPage: true });
    assert.equal(await p.textContent("#done"), "All steps done.", JSON.stringify(steps));
    assert.match(await p.textContent("#progress"), /^Booted PostgreSQL 17\./);
    assert.deepEqual(steps, [
      ["create", "CREATE"],
      ["insert", "INSERT 2: ids 1, 2"],
      ["select", '[{"id":1,"body":"first note"},{"id":2,"body":"it\'s \\"quoted\\""}]'],
      ["transaction", "3 rows inside, 2 after rollback"],
      ["notify", 'b heard "note 3" on note_added from a'],
      ["error", '23502 null value in column "body" of relation "notes" violates not-null constraint; still 2 rows'],
    ]);
    assert.deepEqual(errors, []);
    for (const f of ["dist/pgwasm.js", "dist/v86.wasm"]) {
      assert.ok(site.log.some(r => r.path === "/node_modules/pgwasm/" + f), `${f} not loaded from the package`);
    }
    assert.deepEqual(site.log.filter(r => r.status !== 200 && r.path !== "/favicon.ico"), []);
  } finally {
    await close();
  }
});

// An app that bundles the package with webpack 5 or Vite (their Node APIs,
// production builds, nothing configured for pgwasm): the bundler must find
// the worker, v86's WebAssembly and the terminal's style sheet through the
// module's new URL("./name", import.meta.url) and emit them into its
// output. Only that output is served (node_modules is not), the image from
// another origin, and the page boots the VM and answers select 1.
const appJS = `
import { boot } from "pgwasm";
const answer = document.querySelector("#answer");
boot({ element: document.querySelector("#term"), imageBase: new URLSearchParams(location.search).get("image") })
  .then(pg => pg.query("select 1 as one"))
  .then(r => { answer.textContent = r.rows[0][0]; }, err => { answer.textContent = "failed: " + err.message; });
`;
const appHTML = script => `<!doctype html>
<html><head><meta charset="utf-8"><title>pgwasm bundled</title></head>
<body><output id="answer"></output><div id="term" style="height: 240px"></div>
${script}
</body></html>
`;

// consumerApp makes a project with the unpacked tarball in node_modules,
// where npm install puts it, and the app's entry point.
function consumerApp(name) {
  const dir = path.join(tmp, `app-${name}`);
  fs.mkdirSync(path.join(dir, "node_modules"), { recursive: true });
  fs.cpSync(unpacked, path.join(dir, "node_modules", "pgwasm"), { recursive: true });
  fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify({ name: `app-${name}`, private: true, type: "module" }));
  fs.writeFileSync(path.join(dir, "main.js"), appJS);
  return dir;
}

// Each build returns its output directory, what it emitted from the
// package ({ "vm-worker.js": "<path in the output>", ... }) and what it
// warned about (pgwasm must build cleanly in an app); a build that fails
// throws.
const bundlers = {
  async webpack(dir) {
    const { default: webpack } = await import("webpack");
    const out = path.join(dir, "dist");
    const stats = await new Promise((resolve, reject) => {
      const compiler = webpack({
        mode: "production", context: dir, entry: "./main.js",
        output: { path: out, filename: "main.js" },
        // Its size hints are about the app, not the package.
        performance: { hints: false },
      });
      compiler.run((err, stats) => compiler.close(() => (err ? reject(err) : resolve(stats))));
    });
    const info = stats.toJson({ all: false, assets: true, cachedAssets: true, errors: true, warnings: true });
    assert.deepEqual(info.errors.map(e => e.message), [], "webpack's errors");
    fs.writeFileSync(path.join(out, "index.html"), appHTML(`<script src="main.js"></script>`));
    const emitted = {};
    for (const a of info.assets) {
      const from = a.info.sourceFilename || "";
      if (from.startsWith("node_modules/pgwasm/")) emitted[path.posix.basename(from)] = a.name;
    }
    return { out, emitted, logged: info.warnings.map(e => e.message) };
  },
  async vite(dir) {
    const { build } = await import("vite");
    const out = path.join(dir, "dist");
    fs.writeFileSync(path.join(dir, "index.html"), appHTML(`<script type="module" src="./main.js"></script>`));
    const logged = [];
    const logger = {
      hasWarned: false,
      info() {},
      warn: m => logged.push(m),
      warnOnce: m => logged.push(m),
      error: m => logged.push(m),
      clearScreen() {},
      hasErrorLogged: () => false,
    };
    const result = await build({ root: dir, configFile: false, logLevel: "warn", customLogger: logger, build: { outDir: out } });
    const emitted = {};
    for (const o of (Array.isArray(result) ? result : [result]).flatMap(r => r.output)) {
      for (const from of o.type === "asset" ? o.originalFileNames : []) {
        if (from.startsWith("node_modules/pgwasm/")) emitted[path.posix.basename(from)] = o.fileName;
      }
    }
    return { out, emitted, logged };
  },
};

for (const [name, bundle] of Object.entries(bundlers)) {
  test(`npm pack: an app bundled by ${name} boots the VM with the files ${name} emitted from the package`, async t => {
    if (!fs.existsSync(path.join(image, "manifest.json"))) throw new Error(`no VM image in ${image} (make snapshot)`);
    const dir = consumerApp(name);
    const t0 = Date.now();
    const { out, emitted, logged } = await bundle(dir);
    t.diagnostic(`${name}: built in ${((Date.now() - t0) / 1000).toFixed(1)} s; emitted ${JSON.stringify(emitted)}`);
    const { p, errors, site, images, close } = await openStatic({ "/": out }, image, "index.html");
    try {
      await p.waitForFunction(() => document.querySelector("#answer").textContent, null, { timeout: 300000, polling: 250 });
      assert.equal(await p.textContent("#answer"), "1");
      await p.screenshot({ path: path.join(artifacts, `web-package-${name}.png`) });
      assert.deepEqual(errors, []);
      assert.deepEqual(logged, [], `${name}'s warnings`);
      // The package's files came from the bundler's output, unchanged where
      // the bundler copies them as they are (v86.wasm; webpack minifies the
      // worker and the style sheet again).
      assert.deepEqual(Object.keys(emitted).sort(), ["v86.wasm", "vm-worker.js", "xterm.css"], `${name} did not emit the package's files`);
      assert.ok(fs.readFileSync(path.join(out, emitted["v86.wasm"])).equals(fs.readFileSync(path.join(unpacked, "dist", "v86.wasm"))), "the emitted v86.wasm differs");
      for (const f of Object.values(emitted)) assert.ok(site.log.some(r => r.path === "/" + f && r.status === 200), `${f} not loaded`);
      const missed = failedRequests(site, images);
      assert.deepEqual(missed, []);
      assert.ok(images.log.some(r => /^\/state-\d+\.bin\.zst$/.test(r.path)), "no state loaded from the image host");
    } finally {
      await close();
    }
  });
}
