// The pgwasm page: PostgreSQL in this tab with a psql terminal, states,
// files, network. Built on the same PgWasm class as the embedding API.
import "@xterm/xterm/css/xterm.css";
import { PgWasm, MEMORY_SIZES, UPLOAD_DIR, probeStates, type Manifest, type NetworkInfo, type Progress } from "./pgwasm";
import { readHeader, StateError } from "./statefile";
import * as store from "./store";
import { DEFAULT_MEMORY_MB } from "./memory";
import { importFile, importKind, fileExists } from "./importer";

const $ = <T extends HTMLElement = HTMLElement>(sel: string) => document.querySelector(sel) as T;

interface Settings {
  memory: number;
  fontSize: number;
  fullBoot: boolean;
  autosave: boolean;
  copyOnSelect: boolean;
}
const SETTINGS_KEY = "pgwasm.settings";

function loadSettings(): Settings {
  const d: Settings = { memory: DEFAULT_MEMORY_MB, fontSize: 15, fullBoot: false, autosave: true, copyOnSelect: false };
  try {
    const s = JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}");
    if (MEMORY_SIZES.includes(s.memory)) d.memory = s.memory;
    if (s.fontSize >= 8 && s.fontSize <= 32) d.fontSize = s.fontSize;
    d.fullBoot = !!s.fullBoot;
    if (typeof s.autosave === "boolean") d.autosave = s.autosave;
    d.copyOnSelect = !!s.copyOnSelect;
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
  if (n < 1073741824) return `${(n / 1048576).toFixed(1)} MB`;
  return `${(n / 1073741824).toFixed(1)} GB`;
}

const fmtTime = (iso: string) => new Date(iso).toLocaleString();

const settings = loadSettings();
let manifest: Manifest | null = null;
let pg: PgWasm | null = null;
let busy = false;
let starting = false;

let messageTimer = 0;
let pendingMessage: { text: string; kind: "info" | "error" | "ok" } | null = null;

// message shows a line in the bar under the terminal. Errors stay until
// closed (×) or replaced; others go by themselves after a while.
function message(text: string, kind: "info" | "error" | "ok" = "info"): void {
  // An action's result shows once its controls are back on: whoever reads
  // it (a person, a screen reader, a test) can act on it at once.
  if (busy && text) {
    pendingMessage = { text, kind };
    return;
  }
  showMessage(text, kind);
}

function showMessage(text: string, kind: "info" | "error" | "ok"): void {
  const el = $("#message");
  el.setAttribute("aria-live", kind === "error" ? "assertive" : "polite");
  $("#message-text").textContent = text;
  el.className = "message " + kind;
  el.hidden = !text;
  clearTimeout(messageTimer);
  if (text && kind !== "error") messageTimer = window.setTimeout(() => (el.hidden = true), 12000);
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
// A running autosave is let finish first.
async function withBusy(label: string, fn: () => Promise<void>): Promise<void> {
  if (busy) {
    showMessage("Another action is still running; wait for it to finish.", "error");
    return;
  }
  busy = true;
  enableVMControls(false);
  message("");
  setProgress(label);
  try {
    if (auto.running) {
      setProgress(`${label}: waiting for the autosave to finish`);
      await auto.running;
      setProgress(label);
    }
    await fn();
  } catch (err) {
    const e = err as Error;
    message(e instanceof StateError ? `Cannot restore: ${e.message}. The running VM was not changed.` : `${label} failed: ${e.message}`, "error");
  } finally {
    setProgress("");
    busy = false;
    enableVMControls(!!pg);
    if (pendingMessage) message(pendingMessage.text, pendingMessage.kind);
    pendingMessage = null;
    scheduleAutosave();
  }
}

// ---- resume where you left off (autosave) ----

// IDLE_MS: the session is kept this long after the last activity.
// MIN_GAP_MS: at least this long between two autosaves, and at least
// GAP_FACTOR times what the last one cost, so a slow machine saves less.
const IDLE_MS = 4000;
// IDLE_TYPING_MS: the same while psql holds a half-typed line or runs a
// statement (no prompt): the user is likely still at it.
const IDLE_TYPING_MS = 30000;
const MIN_GAP_MS = 20000;
const GAP_FACTOR = 8;

interface AutosaveStats {
  count: number;
  lastMs: number; // whole autosave: guest preparation, save, compression, IndexedDB
  lastPauseMs: number; // longest main-thread stall during it (the page froze that long)
  lastSize: number;
  lastAt: string;
}

const auto = {
  changes: 0, // activity counter
  saved: 0, // value of changes at the start of the last successful save (autosave or manual)
  lastActivity: 0,
  inflight: 0, // API calls running
  running: null as Promise<void> | null,
  active: false, // an autosave runs (set before its first step)
  timer: 0,
  notBefore: 0,
  offerOpen: false, // a kept session waits for Resume / Start fresh: do not overwrite it
  stats: { count: 0, lastMs: 0, lastPauseMs: 0, lastSize: 0, lastAt: "" } as AutosaveStats,
};

const unsaved = () => !!pg && auto.changes !== auto.saved;
// For the tests and the benchmark: what the autosave did and cost, and
// keepSoon, which drops the wait between two autosaves (up to minutes on
// a slow machine) so a test sees the next one once the page is idle.
const keepSoon = () => {
  auto.notBefore = 0;
  scheduleAutosave(0);
};
(window as any).pgwasmPage = { autosave: auto.stats, unsaved, keepSoon };

// touch records a change to the VM (a query, typing in psql, an upload).
function touch(): void {
  auto.changes++;
  auto.lastActivity = performance.now();
  scheduleAutosave();
}

function scheduleAutosave(delay = IDLE_MS): void {
  clearTimeout(auto.timer);
  if (!settings.autosave || auto.offerOpen || !pg || !unsaved()) return;
  auto.timer = window.setTimeout(tryAutosave, delay);
}

function tryAutosave(): void {
  if (!settings.autosave || auto.offerOpen || !pg || !unsaved() || auto.running) return;
  const now = performance.now();
  const idle = pg.terminal && !pg.terminal.atPrompt() ? IDLE_TYPING_MS : IDLE_MS;
  const wait = Math.max(auto.lastActivity + idle - now, auto.notBefore - now);
  // Not while a console statement runs: saving stops the VM, checkpoints
  // and freezes the page for seconds (the emulator shares its thread),
  // in the middle of the user's query; its end is kept instead.
  if (busy || starting || auto.inflight > 0 || pg.statementRunning) return scheduleAutosave(IDLE_MS);
  if (wait > 0) return scheduleAutosave(wait + 50);
  auto.running = autosave().finally(() => {
    auto.running = null;
    scheduleAutosave();
  });
}

async function autosave(): Promise<void> {
  const vm = pg!;
  const mark = auto.changes;
  const t0 = performance.now();
  // The emulator runs on this thread: measure how long the page stalls.
  let last = t0, pause = 0;
  const probe = window.setInterval(() => {
    const t = performance.now();
    pause = Math.max(pause, t - last - 50);
    last = t;
  }, 50);
  keptStatus("Keeping this session…");
  auto.active = true;
  try {
    const blob = await vm.saveState();
    if (pg !== vm) return; // restarted meanwhile
    const { header } = await readHeader(blob);
    await store.putSession({ created: header.created, size: blob.size, memory_mb: header.memory_mb, image_key: header.image_key, blob });
    auto.saved = mark;
    const s = auto.stats;
    s.count++;
    s.lastMs = Math.round(performance.now() - t0);
    s.lastPauseMs = Math.round(Math.max(pause, performance.now() - last - 50));
    s.lastSize = blob.size;
    s.lastAt = header.created;
    auto.notBefore = performance.now() + Math.max(MIN_GAP_MS, GAP_FACTOR * s.lastMs);
  } catch (err) {
    if (store.isQuotaError(err)) {
      message("Browser storage is full, so this session was not kept: nothing was lost (the running VM and the session kept before are unchanged). Delete saved states or save to a file.", "error");
      auto.notBefore = performance.now() + 60000;
    } else {
      message(`Could not keep this session in the browser: ${(err as Error).message}`, "error");
      auto.notBefore = performance.now() + 60000;
    }
  } finally {
    auto.active = false;
    clearInterval(probe);
    await refreshKept();
  }
}

function keptStatus(text: string): void {
  const el = $("#kept-status");
  if (el) el.textContent = text;
}

// refreshKept shows the kept session and the storage the site uses.
async function refreshKept(): Promise<void> {
  const box = $("#kept");
  box.innerHTML = "";
  let kept: store.KeptSession | undefined;
  try {
    kept = await store.getSession();
  } catch {
    kept = undefined;
  }
  const line = document.createElement("div");
  line.className = "state-row";
  const info = document.createElement("span");
  info.className = "state-info";
  info.id = "kept-status";
  if (kept) {
    const s = auto.stats;
    const cost = s.count ? ` · took ${(s.lastMs / 1000).toFixed(1)} s, page paused ${s.lastPauseMs} ms` : "";
    info.textContent = `Kept session · ${fmtTime(kept.created)} · ${fmtSize(kept.size)} · ${kept.memory_mb} MB${cost}`;
    line.appendChild(info);
    const resume = document.createElement("button");
    resume.textContent = "Resume";
    resume.dataset.needsVm = "";
    resume.disabled = !pg || busy;
    resume.setAttribute("aria-label", `Resume the kept session of ${fmtTime(kept.created)}`);
    resume.onclick = () => void resumeKept();
    const forget = document.createElement("button");
    forget.textContent = "Forget";
    forget.setAttribute("aria-label", `Forget the kept session of ${fmtTime(kept.created)}`);
    forget.onclick = () =>
      confirmInRow(line, `Forget the kept session of ${fmtTime(kept.created)}?`, "Forget", async () => {
        await store.removeSession();
        closeOffer();
        await refreshKept();
        message("The kept session is gone.", "ok");
      });
    line.append(resume, forget);
  } else {
    info.textContent = settings.autosave ? "No session kept yet: it is kept a few seconds after you change something." : "Autosave is off (Settings).";
    line.appendChild(info);
  }
  box.appendChild(line);
  await refreshStorage();
}

async function refreshStorage(): Promise<void> {
  const el = $("#storage");
  try {
    const u = await store.usage();
    el.textContent = u ? `This site stores ${fmtSize(u.usage)} in this browser${u.quota ? ` (it may use up to ${fmtSize(u.quota)})` : ""}.` : "";
  } catch {
    el.textContent = "";
  }
}

// confirmInRow turns a row into a question with a button that does it and
// one that does not (the emulator runs on this thread, so no confirm()
// dialog, which would stop it).
function confirmInRow(row: HTMLElement, question: string, yes: string, act: () => Promise<void>): void {
  const saved = Array.from(row.childNodes);
  row.classList.add("confirm");
  const q = document.createElement("span");
  q.className = "state-info";
  q.textContent = question;
  q.setAttribute("role", "alert");
  const ok = document.createElement("button");
  ok.textContent = yes;
  ok.className = "confirm-yes";
  const no = document.createElement("button");
  no.textContent = "Cancel";
  no.className = "confirm-no";
  const back = () => {
    row.classList.remove("confirm");
    row.replaceChildren(...saved);
    (saved.find(n => n instanceof HTMLButtonElement && n.textContent === yes) as HTMLElement | undefined)?.focus();
  };
  no.onclick = back;
  ok.onclick = async () => {
    ok.disabled = no.disabled = true;
    try {
      await act();
    } catch (err) {
      message(`${yes} failed: ${(err as Error).message}`, "error");
      back();
    }
  };
  row.replaceChildren(q, ok, no);
  no.focus();
}

let offered: store.KeptSession | null = null;
let resumeWanted = false;

function showOffer(kept: store.KeptSession): void {
  offered = kept;
  auto.offerOpen = true;
  $("#resume-text").textContent = `This browser kept your session of ${fmtTime(kept.created)} (${fmtSize(kept.size)}, ${kept.memory_mb} MB). Resume it, or start fresh; starting fresh replaces it as soon as you change something.`;
  $("#resume").hidden = false;
  $("#resume-yes").focus();
}

function closeOffer(): void {
  $("#resume").hidden = true;
  offered = null;
  auto.offerOpen = false;
  scheduleAutosave();
}

async function resumeKept(): Promise<void> {
  const kept = await store.getSession();
  closeOffer();
  if (!kept) {
    message("There is no kept session any more.", "error");
    return;
  }
  if (!pg) {
    // Start has not finished: resume once it has.
    resumeWanted = true;
    setStatus("The kept session is restored as soon as the VM is up…");
    return;
  }
  if (kept.memory_mb !== pg.memoryMB) {
    // The state needs a VM of its own memory size.
    await start(kept.memory_mb);
    if (!pg) return;
  }
  await withBusy("Resume", async () => {
    await pg!.restoreState(kept.blob);
    auto.saved = auto.changes; // this is what is kept: no need to save it again
    message(`Resumed your session of ${fmtTime(kept.created)}.`, "ok");
  });
  await refreshUploads();
  pg?.terminal?.focus();
}

function initResume(): void {
  $("#resume-yes").onclick = () => void resumeKept();
  $("#resume-no").onclick = () => {
    closeOffer();
    pg?.terminal?.focus();
  };
  window.addEventListener("beforeunload", e => {
    if (!unsaved() && !auto.running) return;
    e.preventDefault();
    e.returnValue = ""; // older browsers want it set
  });
}

// watchActivity counts what changes the VM: API calls (the page's and the
// console's) and typing in psql. The engine has no activity event, so its
// public methods are wrapped on this instance.
function watchActivity(vm: PgWasm): void {
  const methods = ["query", "exec", "upload", "runProgram", "restoreState"] as const;
  for (const name of methods) {
    const orig = (vm[name] as (...a: unknown[]) => Promise<unknown>).bind(vm);
    (vm as any)[name] = async (...args: unknown[]) => {
      auto.inflight++;
      touch();
      try {
        return await orig(...args);
      } finally {
        auto.inflight--;
        touch();
      }
    };
  }
  vm.terminal?.term.onData(() => touch());
  // Output (a query still printing) keeps the session "busy" without
  // being a change of its own.
  vm.terminal?.term.onWriteParsed(() => {
    if (auto.changes !== auto.saved) auto.lastActivity = performance.now();
  });
}

// ---- start ----

let bootNoteAt = 0;

function onEngineProgress(vm: PgWasm, p: Progress): void {
  if (auto.active && p.phase === "save") return; // the autosave is quiet
  let text = p.message;
  if (p.phase === "boot") {
    // The engine's text promises a duration a slow machine does not keep.
    text = text.replace(/\s*\(a full boot takes about \d+ s\)/, "");
    if (vm.fullBoot) {
      text += " (a full boot takes one to several minutes; longer on a slow or busy machine)";
      const s = Math.floor((performance.now() - bootNoteAt) / 1000);
      if (vm.terminal && bootNoteAt && s >= 15) {
        bootNoteAt = performance.now();
        vm.terminal.note(`pgwasm: ${p.message.replace(/\s*\(.*\)$/, "")}`);
      }
    }
  } else if (p.phase === "postgres" && vm.fullBoot) {
    vm.terminal?.note("pgwasm: Linux is up; starting PostgreSQL…");
  }
  setProgress(text, p.loaded, p.total);
  if (starting) setStatus("Starting…");
}

async function start(memory = settings.memory): Promise<void> {
  starting = true;
  enableVMControls(false);
  clearTimeout(auto.timer);
  if (auto.running) await auto.running;
  if (pg) {
    const old = pg;
    pg = null;
    await old.destroy();
  }
  clearUploads();
  const term = $("#terminal");
  term.innerHTML = "";
  setProgress("Starting");
  message("");
  setStatus("Starting…");
  const vm = new PgWasm({
    element: term,
    memory,
    fullBoot: settings.fullBoot,
    imageBase: new URL("image/", location.href).href,
    apiBase: new URL("./", location.href).href,
    fontSize: settings.fontSize,
    onProgress: p => onEngineProgress(vm, p),
    // While it starts the progress line says what happens; the status line
    // would only repeat an older step of it.
    onStatus: s => {
      if (s.status === "dead" && pg === vm) {
        // Nothing but Restart can help: say so where errors go.
        enableVMControls(false);
        message(s.message, "error");
      }
      if (s.status !== "starting") setStatus(s.message);
    },
  });
  vm.addEventListener("network", e => showNetwork((e as CustomEvent).detail));
  (window as any).pgwasm = vm; // for the console and the tests
  bootNoteAt = performance.now();
  // The terminal exists once the state is downloaded: say what goes on.
  const noteTimer = window.setInterval(() => {
    if (!vm.terminal) return;
    clearInterval(noteTimer);
    vm.terminal.note(vm.fullBoot ? "pgwasm: booting Linux and PostgreSQL in the emulator…" : "pgwasm: resuming the VM from its snapshot…");
    configureTerminal(vm);
  }, 100);
  try {
    await vm.start();
  } catch (err) {
    clearInterval(noteTimer);
    starting = false;
    setProgress("");
    if (!vm.emulatorRunning) {
      message(`The VM did not start: ${(err as Error).message}`, "error");
      return;
    }
    // The engine gave up waiting, but the VM runs on: a slow machine may
    // still get there. Watch for PostgreSQL and take the VM when it is up.
    message(`The VM did not start in time (${(err as Error).message}). It keeps running: the controls come on if PostgreSQL gets up; Restart VM to try again.`, "error");
    void adoptLate(vm);
    return;
  } finally {
    clearInterval(noteTimer);
  }
  starting = false;
  ready(vm);
}

function configureTerminal(vm: PgWasm): void {
  const t = vm.terminal;
  if (!t) return;
  t.copyOnSelect = settings.copyOnSelect;
  t.onCopy = text => message(`Copied ${text.length} characters.`, "info");
}

function ready(vm: PgWasm): void {
  pg = vm;
  configureTerminal(vm);
  watchActivity(vm);
  setProgress("");
  $("#pg-version").textContent = `PostgreSQL ${vm.serverVersion}`;
  const mode = vm.fullBoot ? "full boot" : "quick start from snapshot";
  const secs = vm.timings.ready ? ` in ${(vm.timings.ready / 1000).toFixed(1)} s` : "";
  setStatus(`Ready: PostgreSQL ${vm.serverVersion}, ${vm.memoryMB} MB, ${mode}${secs}`);
  enableVMControls(true);
  showNetwork(vm.network);
  auto.saved = auto.changes; // a fresh start is nothing to keep
  void refreshStates();
  void refreshUploads();
  if (resumeWanted) {
    resumeWanted = false;
    void resumeKept();
  }
}

// adoptLate waits for PostgreSQL in a VM whose start timed out, and makes
// it the page's VM once it answers (or the prompt shows).
async function adoptLate(vm: PgWasm): Promise<void> {
  const t0 = performance.now();
  while ((window as any).pgwasm === vm && vm.emulatorRunning) {
    try {
      if (vm.agent.ready) {
        const st = await vm.agent.call({ op: "status" }, 20000);
        if (st.postgres === "ready") {
          vm.serverVersion = st.server_version || vm.serverVersion;
          break;
        }
      }
    } catch {
      // not yet
    }
    setStatus(`Still starting… ${Math.round((performance.now() - t0) / 1000)} s more so far`);
    await new Promise(r => setTimeout(r, 2000));
  }
  if ((window as any).pgwasm !== vm || !vm.emulatorRunning) return;
  // start() gave up before it opened the console: keys typed since wait
  // in the engine until this. After a quick start psql must redraw its
  // prompt first, as in the engine's start: the snapshot's prompt is on
  // the screen, but the resumed tty drops what is typed before the redraw.
  await vm.openConsole(!vm.fullBoot || !vm.terminal?.atPrompt()).catch(() => undefined);
  vm.timings.ready = Math.round(performance.now() - t0) + (vm.timings.agent_ready || 0);
  message("PostgreSQL is up after all: the VM is ready.", "ok");
  ready(vm);
  vm.terminal?.focus();
}

// ---- settings ----

async function initSettings(): Promise<void> {
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
  const autosaveBox = $<HTMLInputElement>("#autosave");
  autosaveBox.checked = settings.autosave;
  const cos = $<HTMLInputElement>("#copyonselect");
  cos.checked = settings.copyOnSelect;
  mem.onchange = () => {
    settings.memory = Number(mem.value);
    saveSettings(settings);
    message("Memory size saved: press Restart VM to use it.");
  };
  full.onchange = () => {
    settings.fullBoot = full.checked;
    saveSettings(settings);
  };
  autosaveBox.onchange = () => {
    settings.autosave = autosaveBox.checked;
    saveSettings(settings);
    if (settings.autosave) scheduleAutosave(0);
    else clearTimeout(auto.timer);
    message(settings.autosave ? "Your session is kept in this browser as you work." : "Autosave is off: the page warns before you leave with unsaved changes. The session kept so far stays until you forget it.");
    void refreshKept();
  };
  cos.onchange = () => {
    settings.copyOnSelect = cos.checked;
    saveSettings(settings);
    if (pg?.terminal) pg.terminal.copyOnSelect = settings.copyOnSelect;
  };
  font.oninput = () => {
    settings.fontSize = Number(font.value);
    saveSettings(settings);
    pg?.terminal?.setFontSize(settings.fontSize);
  };
  $("#restart").onclick = () => {
    if (busy) {
      showMessage("Another action is still running; wait for it to finish.", "error");
      return;
    }
    void start();
  };
}

// ---- phone keys ----

const KEYS: Record<string, string> = {
  "ctrl-c": "\x03", "ctrl-d": "\x04", "ctrl-r": "\x12", tab: "\t", esc: "\x1b",
  up: "\x1b[A", down: "\x1b[B", right: "\x1b[C", left: "\x1b[D",
  home: "\x1b[H", end: "\x1b[F", pipe: "|", semicolon: ";",
};

function initKeys(): void {
  for (const b of document.querySelectorAll<HTMLButtonElement>("[data-key]")) {
    // Keep the focus (and the phone's keyboard) in the terminal.
    b.addEventListener("pointerdown", e => e.preventDefault());
    b.onclick = () => {
      // Through the engine, like typed keys: held until psql reads, and a
      // Ctrl-C on a running statement cancels it at once.
      pg?.sendConsole(KEYS[b.dataset.key!]);
      touch();
      if (document.activeElement === b && b.matches(":focus-visible")) return; // keyboard user: stay here
      pg?.terminal?.focus();
    };
  }
}

// ---- visible area (phones: the on-screen keyboard) ----

function initViewport(): void {
  const vv = window.visualViewport;
  const fit = () => {
    const h = vv ? vv.height : window.innerHeight;
    document.documentElement.style.setProperty("--vvh", `${Math.round(h)}px`);
    const phone = window.matchMedia("(max-width: 800px)").matches;
    const typing = phone && !!document.activeElement?.closest("#terminal");
    document.body.classList.toggle("typing", typing);
    if (typing) {
      // The console fills the visible area: the prompt and the keys stay
      // above the keyboard.
      window.scrollTo(0, $(".console").getBoundingClientRect().top + window.scrollY);
    }
    pg?.terminal?.refit();
  };
  vv?.addEventListener("resize", fit);
  window.addEventListener("resize", fit);
  document.addEventListener("focusin", fit);
  document.addEventListener("focusout", () => setTimeout(fit, 50));
  fit();
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
  let items: Omit<store.SavedState, "blob">[];
  try {
    items = await store.list();
  } catch (err) {
    list.textContent = `Browser storage unavailable: ${(err as Error).message}`;
    return;
  }
  list.innerHTML = "";
  if (!items.length) {
    list.innerHTML = `<p class="muted">No saved states yet.</p>`;
  }
  for (const s of items) {
    const row = document.createElement("div");
    row.className = "state-row";
    row.dataset.id = String(s.id);
    const info = document.createElement("span");
    info.className = "state-info";
    info.textContent = `${s.name} · ${fmtTime(s.created)} · ${fmtSize(s.size)} · ${s.memory_mb} MB`;
    const restore = document.createElement("button");
    restore.textContent = "Restore";
    restore.setAttribute("aria-label", `Restore state “${s.name}”`);
    restore.dataset.needsVm = "";
    restore.disabled = !pg || busy;
    restore.onclick = () => void restoreSaved(s);
    const del = document.createElement("button");
    del.textContent = "Delete";
    del.setAttribute("aria-label", `Delete state “${s.name}”`);
    del.onclick = () =>
      confirmInRow(row, `Delete “${s.name}” (${fmtSize(s.size)})? This cannot be undone.`, "Delete", async () => {
        await store.remove(s.id!);
        message(`Deleted “${s.name}”.`, "ok");
        await refreshStates();
        ($("#save-idb") as HTMLElement).focus();
      });
    row.append(info, restore, del);
    list.appendChild(row);
  }
  await refreshKept();
}

async function restoreSaved(s: Omit<store.SavedState, "blob">): Promise<void> {
  if (pg && s.memory_mb !== pg.memoryMB) {
    message(`“${s.name}” needs a ${s.memory_mb} MB VM: restarting with ${s.memory_mb} MB first.`);
    await start(s.memory_mb);
    if (!pg) return;
  }
  await withBusy("Restore", async () => {
    const rec = await store.get(s.id!);
    if (!rec) throw new Error("that state is gone");
    await pg!.restoreState(rec.blob);
    message(`Restored “${s.name}”.`, "ok");
  });
  await refreshUploads();
}

function initStates(): void {
  $("#save-file").onclick = () =>
    withBusy("Save to file", async () => {
      const mark = auto.changes;
      const blob = await pg!.saveState();
      download(blob, `pgwasm-${pg!.memoryMB}mb-${new Date().toISOString().replace(/[:.]/g, "-")}.pgstate`);
      if (!settings.autosave) auto.saved = mark;
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
    }).then(refreshUploads);
  };
  $("#save-idb").onclick = () =>
    withBusy("Save in browser", async () => {
      const name = ($<HTMLInputElement>("#state-name").value || "").trim() || `state ${new Date().toLocaleString()}`;
      const mark = auto.changes;
      const blob = await pg!.saveState();
      const { header } = await readHeader(blob);
      try {
        await store.put({ name, created: header.created, size: blob.size, memory_mb: header.memory_mb, image_key: header.image_key, blob });
      } catch (err) {
        if (store.isQuotaError(err)) {
          const u = await store.usage().catch(() => null);
          throw new Error(`browser storage is full (${fmtSize(blob.size)} needed${u ? `, ${fmtSize(u.usage)} of ${fmtSize(u.quota)} used` : ""}): nothing was lost and the VM runs on; delete saved states or save to a file instead`);
        }
        throw err;
      }
      if (!settings.autosave) auto.saved = mark;
      message(`Saved “${name}” in this browser (${fmtSize(blob.size)}).`, "ok");
      await refreshStates();
    });
}

// ---- files ----

function clearUploads(): void {
  $("#uploads").innerHTML = "";
  $("#import-output").textContent = "";
}

// refreshUploads lists what is in /uploads now (after a start or a restore
// the VM's files are those of its state).
async function refreshUploads(): Promise<void> {
  const vm = pg;
  let files: { name: string; size: number }[] = [];
  if (vm?.emulatorRunning) files = await vm.listFiles(UPLOAD_DIR).catch(() => []);
  if (pg !== vm) return; // another VM's refresh is under way
  clearUploads();
  for (const f of files.sort((a, b) => (a.name < b.name ? 1 : a.name > b.name ? -1 : 0))) addImportRow(`${UPLOAD_DIR}/${f.name}`, f.size);
}

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
    b.setAttribute("aria-label", `${b.textContent}: ${path}`);
    b.dataset.needsVm = "";
    b.disabled = !pg || busy;
    b.onclick = () =>
      withBusy("Import", async () => {
        const out = $("#import-output");
        out.textContent = "";
        if (!(await fileExists(pg!, path))) {
          row.remove();
          throw new Error(`${path} is no longer in the VM (Restart VM or a restored state removed it): upload it again`);
        }
        setProgress(`Importing ${path}`);
        const r = await importFile(pg!, path, kind);
        message(r.summary, r.ok ? "ok" : "error");
        out.textContent = r.output ? `${b.textContent}: ${path}\n${r.output}` : "";
      });
    row.appendChild(b);
  }
  list.prepend(row);
}

// uploadHint says what to do with an uploaded file, by its kind.
function uploadHint(path: string): string {
  switch (importKind(path)) {
    case "sql":
      return `Run it with its button below, or in psql: \\i ${path}`;
    case "dump":
      return "Restore it with its button below (pg_restore).";
    case "csv":
      return `Import it with its button below, or in SQL: COPY table FROM '${path}' (FORMAT csv, HEADER).`;
    default:
      return `In SQL: pg_read_binary_file('${path}'), or COPY ... FROM '${path}' for text data.`;
  }
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
    message(`Uploaded ${done.join(", ")}. ${uploadHint(done[0])}`, "ok");
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

async function copyText(text: string, field: HTMLTextAreaElement, button: HTMLButtonElement, what: string): Promise<void> {
  let ok = true;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    field.focus();
    field.select();
    ok = document.execCommand("copy");
  }
  button.textContent = ok ? "Copied" : "Select and copy";
  message(ok ? `Copied the ${what} connection string.` : "The browser does not let the page copy: the text is selected, press Ctrl+C.", ok ? "ok" : "error");
  setTimeout(() => (button.textContent = "Copy"), 2500);
}

function showNetwork(info: NetworkInfo | null): void {
  const box = $("#net-info");
  $<HTMLButtonElement>("#net-start").hidden = !!info;
  $<HTMLButtonElement>("#net-stop").hidden = !info;
  if (!info) {
    box.innerHTML = `<p class="muted">Off. Start it to reach the internet from the VM and to connect to this database from your computer.</p>`;
    return;
  }
  box.innerHTML = "";
  const add = (label: string, url: string | undefined, id: string, what: string) => {
    if (!url) return;
    const p = document.createElement("div");
    p.className = "conn";
    const l = document.createElement("label");
    l.textContent = label;
    l.htmlFor = id;
    const input = document.createElement("textarea");
    input.readOnly = true;
    input.id = id;
    input.rows = 2;
    input.value = `psql "${url}"`;
    const copy = document.createElement("button");
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy the ${what} connection string`);
    copy.onclick = () => void copyText(input.value, input, copy, what);
    const r = document.createElement("div");
    r.className = "connrow";
    r.append(input, copy);
    p.append(l, r);
    box.appendChild(p);
  };
  const addr = document.createElement("p");
  addr.textContent = `VM address ${info.address || "?"} · password for postgres: ${info.password}`;
  box.appendChild(addr);
  add("Port mode (any client)", info.port?.url, "conn-port", "port mode");
  add("SNI mode (one port for all; TLS with SNI)", info.sni?.url, "conn-sni", "SNI mode");
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
      let info: NetworkInfo;
      try {
        info = await pg!.startNetwork();
      } catch (err) {
        if (err instanceof TypeError) throw new Error(`the pgwasm server did not answer (${err.message}): is it still running?`);
        throw err;
      }
      showNetwork(info);
      message("Network is up. Connection strings below carry a fresh password.", "ok");
    });
  $("#net-stop").onclick = () =>
    withBusy("Network stop", async () => {
      await pg!.stopNetwork();
      showNetwork(null);
    });
}

function initMessages(): void {
  $("#message-close").onclick = () => {
    $("#message").hidden = true;
    pg?.terminal?.focus();
  };
}

async function main(): Promise<void> {
  try {
    const r = await fetch("image/manifest.json", { cache: "no-cache" });
    if (r.ok) manifest = await r.json();
  } catch {
    // shown by start()
  }
  if (manifest?.postgres_version) $("#pg-version").textContent = `PostgreSQL ${manifest.postgres_version}`;
  initMessages();
  initResume();
  initViewport();
  await initSettings();
  initKeys();
  initStates();
  initFiles();
  initNetwork();
  showNetwork(null);
  let kept: store.KeptSession | undefined;
  try {
    kept = await store.getSession();
  } catch {
    kept = undefined; // no IndexedDB (private mode): nothing to resume
  }
  void refreshStates();
  let memory = settings.memory;
  if (kept && settings.autosave) {
    if (manifest && kept.image_key !== manifest.key) {
      message(`The session kept on ${fmtTime(kept.created)} was made with another version of the VM image and cannot be resumed here; it is replaced when you change something.`);
    } else {
      showOffer(kept);
      memory = kept.memory_mb; // resuming needs a VM of its size
    }
  }
  await start(memory);
}

void main();
