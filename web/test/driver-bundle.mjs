// One esbuild bundling of PostgreSQL drivers from npm for the browser
// (issue #18), shared by web/test/drivers.spec.mjs, the npm package's
// drivers example (web/test/package.spec.mjs) and the `drivers` part of
// `make bench` (web/test/bench.mjs --drivers), so the tests and the
// measurement run the same build of the same packages (node-postgres,
// postgres.js and Kysely pinned in web/package.json).
//
// Drivers written for Node name modules a page does not have (net, tls,
// dns, ...): with a custom stream (pg.nodeSocket()) they are never used, so
// they are aliased to small shims; Buffer, process and setImmediate are
// injected as globals. `stream` is used: pg-copy-streams and postgres.js
// build their COPY streams on it, so it is the npm readable-stream, Node's
// own streams packaged for browsers.
import fs from "node:fs";
import path from "node:path";
import { root } from "./lib.mjs";

export const webModules = path.join(root, "web", "node_modules");

const shims = {
  // Node modules pg names but does not use with a custom stream.
  "empty.js": "export default {};",
  "util.js": `export const deprecate = f => f; export const inspect = v => String(v);
export const types = { isDate: d => d instanceof Date }; export const isDate = types.isDate;
export default { deprecate, inspect, types };`,
  "crypto.js": "export const webcrypto = globalThis.crypto; export default { webcrypto };",
  "os.js": `export const userInfo = () => ({ username: "postgres" }); export const hostname = () => "pgwasm"; export default { userInfo, hostname };`,
  "perf_hooks.js": "export const performance = globalThis.performance; export default { performance };",
  // pg-copy-streams' COPY TO checks an invariant with Node's assert.
  "assert.js": "module.exports = function assert(ok, message) { if (!ok) throw new Error(message || 'assertion failed'); };",
  // Globals pg expects.
  "globals.js": `import { Buffer } from "buffer"; import process from "process/browser.js"; export { Buffer, process };
export const setImmediate = (f, ...a) => setTimeout(f, 0, ...a); export const clearImmediate = t => clearTimeout(t);`,
};

// bundleDrivers bundles entry (an ES module file that imports the drivers),
// or else main (its source, written to dir/main.js), shims included, into
// outfile. nodePaths are where its imports are found, in order
// (web/node_modules by default; bench/node_modules first for PGlite's
// Kysely dialect, so that Kysely is one copy; the unpacked tarball's
// directory for the package's example); external modules stay imports (an
// import map names them).
// format "iife" makes a script that page.evaluate can run in a page whose
// Content-Security-Policy allows no inline script (pgwasm serve's page).
export async function bundleDrivers({ dir, main, entry, outfile, nodePaths = [webModules], external = [], format = "esm" }) {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(shims)) fs.writeFileSync(path.join(dir, name), text);
  if (!entry) {
    entry = path.join(dir, "main.js");
    fs.writeFileSync(entry, main);
  }
  const esbuild = await import(path.join(webModules, "esbuild", "lib", "main.js"));
  const empty = path.join(dir, "empty.js");
  await esbuild.build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    format,
    platform: "browser",
    target: "es2022",
    nodePaths,
    external,
    inject: [path.join(dir, "globals.js")],
    define: { global: "globalThis" },
    alias: {
      net: empty, tls: empty, dns: empty, fs: empty, path: empty,
      "pg-native": empty, "pg-cloudflare": empty, pgpass: empty,
      stream: path.join(webModules, "readable-stream"),
      util: path.join(dir, "util.js"), "util/types": path.join(dir, "util.js"),
      crypto: path.join(dir, "crypto.js"), os: path.join(dir, "os.js"), perf_hooks: path.join(dir, "perf_hooks.js"),
      assert: path.join(dir, "assert.js"),
    },
    logLevel: "error",
  });
}
