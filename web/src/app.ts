// The pgwasm page: PostgreSQL in this tab with a psql terminal, states,
// files, network. Built on the same PgWasm class as the embedding API.
import "@xterm/xterm/css/xterm.css";
import { PgWasm, MEMORY_SIZES, UPLOAD_DIR, probeStates, type Manifest, type NetworkInfo } from "./pgwasm";
import { readHeader, StateError } from "./statefile";
import * as store from "./store";
import { importFile, importKind } from "./importer";

const $ = <T extends HTMLElement = HTMLElement>(sel: string) => document.querySelector(sel) as T;

interface Settings {
  memory: number;
  fontSize: number;
  fullBoot: boolean;
}
const SETTINGS_KEY = "pgwasm.settings";

function loadSettings(): Settings {
  const d: Settings = { memory: 128, fontSize: 15, fullBoot: false };
  try {
    const s = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
    if (MEMORY_SIZES.includes(s.memory)) d.memory = s.memory;
    if (s.fontSize >= 8 && s.fontSize <= 32) d.fontSize = s.fontSize;
    d.fullBoot = !!s.fullBoot;
  } catch {
    // defaults
  }
  return d;
}

function saveSettings(s: Settings): void {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(s));
}

function fmtSize(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1048576).toFixed(1)} MB`;
}

const settings = loadSettings();
let pg: PgWasm | null = null;
let busy = false;

let messageTimer = 0;

// message shows a line over the terminal; click closes it; success and
// info lines close by themselves after a while.
function message(text: string, kind: "info" | "error" | "ok" = "info"): void {
  const el = $("#message");
  el.textContent = text;
  el.className = "message " + kind;
  el.hidden = !text;
  el.onclick = () => (el.hidden = true);
  clearTimeout(messageTimer);
  if (text && kind !== "error") messageTimer = window.setTimeout(() => (el.hidden = true), 15000);
}

function setProgress(text: string, loaded?: number, total?: number): void {
  const box = $("#progress");
  box.hidden = !text;
  $("#progress-text").textContent = text;
  const bar = $<HTMLProgressElement>("#progress-bar");
  if (loaded !== undefined && total) {
    bar.max = total;
    bar.value = loaded;
  } else {
    bar.removeAttribute("value"); // indeterminate
  }
}

function setStatus(text: string): void {
  $("#status").textContent = text;
}

function enableVMControls(on: boolean): void {
  for (const el of document.querySelectorAll<HTMLButtonElement | HTMLInputElement>("[data-needs-vm]")) el.disabled = !on;
}

// withBusy runs one page action at a time, with errors shown to the user.
async function withBusy(label: string, fn: () => Promise<void>): Promise<void> {
  if (busy) {
    message("Another action is still running; wait for it to finish.", "error");
    return;
  }
  busy = true;
  enableVMControls(false);
  message("");
  setProgress(label);
  try {
    await fn();
  } catch (err) {
    const e = err as Error;
    message(e instanceof StateError ? `Cannot restore: ${e.message}. The running VM was not changed.` : `${label} failed: ${e.message}`, "error");
  } finally {
    setProgress("");
    busy = false;
    enableVMControls(!!pg);
  }
}

async function start(): Promise<void> {
  enableVMControls(false);
  if (pg) {
    await pg.destroy();
    pg = null;
  }
  const term = $("#terminal");
  term.innerHTML = "";
  setProgress("Starting");
  message("");
  const vm = new PgWasm({
    element: term,
    memory: settings.memory,
    fullBoot: settings.fullBoot,
    imageBase: new URL("image/", location.href).href,
    apiBase: new URL("./", location.href).href,
    fontSize: settings.fontSize,
    onProgress: p => setProgress(p.message, p.loaded, p.total),
    onStatus: s => setStatus(s.message),
  });
  vm.addEventListener("network", e => showNetwork((e as CustomEvent).detail));
  (window as any).pgwasm = vm; // for the console and the tests
  try {
    await vm.start();
  } catch (err) {
    setProgress("");
    message(`The VM did not start: ${(err as Error).message}`, "error");
    return;
  }
  pg = vm;
  setProgress("");
  $("#pg-version").textContent = `PostgreSQL ${vm.serverVersion}`;
  const mode = vm.fullBoot ? "full boot" : "quick start from snapshot";
  setStatus(`Ready: PostgreSQL ${vm.serverVersion}, ${vm.memoryMB} MB, ${mode}, in ${((vm.timings.ready || 0) / 1000).toFixed(1)} s`);
  enableVMControls(true);
  showNetwork(null);
}

// ---- settings ----

async function initSettings(manifest: Manifest | null): Promise<void> {
  const mem = $<HTMLSelectElement>("#memory");
  const states = manifest ? await probeStates(new URL("image/", location.href).href, manifest) : new Map();
  mem.innerHTML = "";
  for (const mb of MEMORY_SIZES) {
    const o = document.createElement("option");
    o.value = String(mb);
    o.textContent = `${mb} MB${states.has(mb) ? "" : " (full boot only)"}`;
    mem.appendChild(o);
  }
  mem.value = String(settings.memory);
  const full = $<HTMLInputElement>("#fullboot");
  full.checked = settings.fullBoot;
  const font = $<HTMLInputElement>("#fontsize");
  font.value = String(settings.fontSize);
  mem.onchange = () => {
    settings.memory = Number(mem.value);
    saveSettings(settings);
    message("Memory size saved: press Restart to use it.");
  };
  full.onchange = () => {
    settings.fullBoot = full.checked;
    saveSettings(settings);
  };
  font.oninput = () => {
    settings.fontSize = Number(font.value);
    saveSettings(settings);
    pg?.terminal?.setFontSize(settings.fontSize);
  };
  $("#restart").onclick = () => {
    if (busy) return;
    void start();
  };
}

// ---- phone keys ----

const KEYS: Record<string, string> = {
  "ctrl-c": "\x03", "ctrl-d": "\x04", tab: "\t", esc: "\x1b",
  up: "\x1b[A", down: "\x1b[B", right: "\x1b[C", left: "\x1b[D",
};

function initKeys(): void {
  for (const b of document.querySelectorAll<HTMLButtonElement>("[data-key]")) {
    b.onclick = () => {
      pg?.emulator?.serial0_send(KEYS[b.dataset.key!]);
      pg?.terminal?.focus();
    };
  }
}

// ---- states ----

function download(blob: Blob, name: string): void {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function refreshStates(): Promise<void> {
  const list = $("#states");
  list.innerHTML = "";
  let items: Omit<store.SavedState, "blob">[];
  try {
    items = await store.list();
  } catch (err) {
    list.textContent = `Browser storage unavailable: ${(err as Error).message}`;
    return;
  }
  if (!items.length) {
    list.innerHTML = `<p class="muted">No saved states yet.</p>`;
    return;
  }
  for (const s of items) {
    const row = document.createElement("div");
    row.className = "state-row";
    row.dataset.id = String(s.id);
    const info = document.createElement("span");
    info.className = "state-info";
    info.textContent = `${s.name} · ${new Date(s.created).toLocaleString()} · ${fmtSize(s.size)} · ${s.memory_mb} MB`;
    const restore = document.createElement("button");
    restore.textContent = "Restore";
    restore.dataset.needsVm = "";
    restore.disabled = !pg || busy;
    restore.onclick = () =>
      withBusy("Restore", async () => {
        const rec = await store.get(s.id!);
        if (!rec) throw new Error("that state is gone");
        await pg!.restoreState(rec.blob);
        message(`Restored "${s.name}".`, "ok");
      });
    const del = document.createElement("button");
    del.textContent = "Delete";
    del.onclick = async () => {
      await store.remove(s.id!);
      await refreshStates();
    };
    row.append(info, restore, del);
    list.appendChild(row);
  }
}

function initStates(): void {
  $("#save-file").onclick = () =>
    withBusy("Save to file", async () => {
      const blob = await pg!.saveState();
      download(blob, `pgwasm-${pg!.memoryMB}mb-${new Date().toISOString().replace(/[:.]/g, "-")}.pgstate`);
      message(`State saved to a file (${fmtSize(blob.size)}).`, "ok");
    });
  const fileInput = $<HTMLInputElement>("#restore-file");
  fileInput.onchange = () => {
    const f = fileInput.files?.[0];
    fileInput.value = "";
    if (!f) return;
    void withBusy("Restore from file", async () => {
      await pg!.restoreState(f);
      message(`Restored ${f.name}.`, "ok");
    });
  };
  $("#save-idb").onclick = () =>
    withBusy("Save in browser", async () => {
      const name = ($<HTMLInputElement>("#state-name").value || "").trim() || `state ${new Date().toLocaleString()}`;
      const blob = await pg!.saveState();
      const { header } = await readHeader(blob);
      try {
        await store.put({ name, created: header.created, size: blob.size, memory_mb: header.memory_mb, image_key: header.image_key, blob });
      } catch (err) {
        const e = err as DOMException;
        if (e?.name === "QuotaExceededError") {
          throw new Error(`browser storage is full (${fmtSize(blob.size)} needed): delete saved states or save to a file instead`);
        }
        throw err;
      }
      message(`Saved "${name}" in this browser (${fmtSize(blob.size)}).`, "ok");
      await refreshStates();
    });
}

// ---- files ----

function addImportRow(path: string, size: number): void {
  const list = $("#uploads");
  const row = document.createElement("div");
  row.className = "upload-row";
  const name = document.createElement("code");
  name.textContent = path;
  row.append(name, ` ${fmtSize(size)} `);
  const kind = importKind(path);
  if (kind) {
    const b = document.createElement("button");
    b.textContent = { sql: "Run with psql", dump: "Restore with pg_restore", csv: "Import as table" }[kind];
    b.dataset.needsVm = "";
    b.onclick = () =>
      withBusy("Import", async () => {
        setProgress(`Importing ${path}`);
        const r = await importFile(pg!, path, kind);
        message(r.summary, r.ok ? "ok" : "error");
        if (r.output) $("#import-output").textContent = r.output;
      });
    row.appendChild(b);
  }
  list.prepend(row);
}

async function uploadFiles(files: FileList | File[]): Promise<void> {
  if (!pg) {
    message("Start the VM before uploading.", "error");
    return;
  }
  await withBusy("Upload", async () => {
    const done: string[] = [];
    for (const f of Array.from(files)) {
      setProgress(`Uploading ${f.name} (${fmtSize(f.size)})`);
      const path = await pg!.upload(`${UPLOAD_DIR}/${f.name.replace(/[/\\]/g, "_")}`, f);
      addImportRow(path, f.size);
      done.push(path);
    }
    message(`Uploaded ${done.join(", ")}. In SQL: COPY ... FROM '${done[0]}'.`, "ok");
  });
}

function initFiles(): void {
  const input = $<HTMLInputElement>("#upload");
  input.onchange = () => {
    if (input.files?.length) void uploadFiles(Array.from(input.files));
    input.value = "";
  };
  const drop = document.body;
  drop.addEventListener("dragover", e => {
    e.preventDefault();
    document.body.classList.add("dragging");
  });
  drop.addEventListener("dragleave", e => {
    if (e.target === document.body || !(e.relatedTarget as Node | null)) document.body.classList.remove("dragging");
  });
  drop.addEventListener("drop", e => {
    e.preventDefault();
    document.body.classList.remove("dragging");
    if (e.dataTransfer?.files.length) void uploadFiles(Array.from(e.dataTransfer.files));
  });
  $("#download").onclick = () =>
    withBusy("Download", async () => {
      const path = $<HTMLInputElement>("#download-path").value.trim();
      if (!path.startsWith("/")) throw new Error("give an absolute path, e.g. /var/lib/postgresql/out.csv");
      const data = await pg!.download(path);
      download(new Blob([data.slice()]), path.split("/").pop() || "download");
      message(`Downloaded ${path} (${fmtSize(data.length)}).`, "ok");
    });
}

// ---- network ----

function showNetwork(info: NetworkInfo | null): void {
  const box = $("#net-info");
  $<HTMLButtonElement>("#net-start").hidden = !!info;
  $<HTMLButtonElement>("#net-stop").hidden = !info;
  if (!info) {
    box.innerHTML = `<p class="muted">Off. Start it to reach the internet from the VM and to connect to this database from your computer.</p>`;
    return;
  }
  box.innerHTML = "";
  const add = (label: string, url: string | undefined, id: string) => {
    if (!url) return;
    const p = document.createElement("div");
    p.className = "conn";
    const l = document.createElement("label");
    l.textContent = label;
    const input = document.createElement("input");
    input.readOnly = true;
    input.id = id;
    input.value = `psql "${url}"`;
    const copy = document.createElement("button");
    copy.textContent = "Copy";
    copy.onclick = () => {
      input.select();
      void navigator.clipboard?.writeText(input.value).catch(() => document.execCommand("copy"));
    };
    p.append(l, input, copy);
    box.appendChild(p);
  };
  const addr = document.createElement("p");
  addr.textContent = `VM address ${info.address || "?"} · password for postgres: ${info.password}`;
  box.appendChild(addr);
  add("Port mode (any client)", info.port?.url, "conn-port");
  add("SNI mode (one port for all; TLS with SNI)", info.sni?.url, "conn-sni");
  if (info.portError) box.append(`Port mode unavailable: ${info.portError}`);
  if (info.tlsSHA256) {
    const tls = document.createElement("p");
    tls.className = "muted";
    tls.id = "tls-fingerprint";
    tls.textContent = `TLS certificate made in the VM at this start, SHA-256 ${info.tlsSHA256.match(/../g)!.join(":")}`;
    box.appendChild(tls);
  }
  box.scrollIntoView({ block: "nearest" });
}

function initNetwork(): void {
  $("#net-start").onclick = () =>
    withBusy("Network start", async () => {
      setProgress("Starting the network (relay session, DHCP, password)");
      const info = await pg!.startNetwork();
      showNetwork(info);
      message("Network is up. Connection strings below carry a fresh password.", "ok");
    });
  $("#net-stop").onclick = () =>
    withBusy("Network stop", async () => {
      await pg!.stopNetwork();
      showNetwork(null);
    });
}

async function main(): Promise<void> {
  let manifest: Manifest | null = null;
  try {
    const r = await fetch("image/manifest.json", { cache: "no-cache" });
    if (r.ok) manifest = await r.json();
  } catch {
    // shown by start()
  }
  if (manifest?.postgres_version) $("#pg-version").textContent = `PostgreSQL ${manifest.postgres_version}`;
  await initSettings(manifest);
  initKeys();
  initStates();
  initFiles();
  initNetwork();
  showNetwork(null);
  await refreshStates();
  await start();
  await refreshStates();
}

void main();
