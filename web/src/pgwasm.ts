// pgwasm embedding API: PostgreSQL 17 in a v86 VM in this browser tab.
//
//   import { boot } from "/pgwasm.js";
//   const pg = await boot({ element: document.querySelector("#term") });
//   const r = await pg.query("select $1::int + 1 as n", ["41"]);
//   // r.columns = [{name: "n", type: "int4"}], r.rows = [["42"]]
//
// Events (pg.addEventListener): "progress" (detail: {phase, loaded, total,
// message}), "status" (detail: {status, message}), "network" (detail:
// NetworkInfo or null), "dead" (detail: {reason}: the VM stopped for good;
// only a restart helps), "memory" (detail: {memoryMB}: a restore switched
// the VM to another memory size).
import type { Channel, EmulatorStats, FromWorker, ToWorker } from "./vm-protocol";
import { SocketMux, NodeSocket, streamsOf, type PgSocket } from "./socket";
import { Agent, type QueryResult } from "./agent";
import { copyFrom, copyTo, copyToStream, type CopyOptions, type CopySource, type TableName } from "./copy";
import { PsqlTerminal } from "./terminal";
import { openState, readHeader, wrapState, StateError } from "./statefile";
// The memory rule is internal/manifest's, generated into memory.ts.
import { MEMORY_SIZES, DEFAULT_MEMORY_MB, VGA_MEMORY_MB } from "./memory";

export { StateError } from "./statefile";
export { SocketError, NodeSocket, SOCKET_PROTOCOL_VERSION, type PgSocket } from "./socket";
export type { QueryResult, Column } from "./agent";
export { quoteIdent, type CopyOptions, type CopySource, type CopyError, type TableName } from "./copy";

export type { EmulatorStats } from "./vm-protocol";

export { MEMORY_SIZES };
export { UPLOAD_DIR } from "./vm-protocol";
// localStorage key prefix of the network sessions saved states had.
const NET_KEY = "pgwasm.network.";
// The relay's close code when its server drains (docs/serve.md).
const RELAY_DRAINING = 4503;

export interface BootOptions {
  element?: HTMLElement; // terminal goes here; omit (or headless) for none
  headless?: boolean;
  memory?: number; // MB
  fullBoot?: boolean;
  imageBase?: string; // URL of the image directory; default: image/ next to this module
  apiBase?: string; // URL of the pgwasm server (sessions API); default: next to this module
  fontSize?: number;
  onProgress?: (p: Progress) => void;
  onStatus?: (s: Status) => void;
}

export interface Progress {
  phase: "download" | "restore" | "boot" | "postgres" | "save" | "network";
  loaded?: number;
  total?: number;
  message: string;
}

// dead: the VM stopped for good (kernel panic, halted CPU, or no progress
// at all while a request waited): only a restart helps. recovering:
// PostgreSQL runs crash recovery; the page waits on.
export interface Status {
  status: "starting" | "ready" | "busy" | "error" | "stopped" | "dead" | "recovering";
  message: string;
}

// Waits on the VM follow its progress, not the clock alone (docs/web.md,
// "Waits and timeouts"). A wait past its first limit goes on while the VM
// shows progress (CPU busy, console or agent output, 9p file loads, network
// frames) within STALL_MS, up to HARD_CAP times the first limit.
const STALL_MS = 30000;
const HARD_CAP = 10;
// The first limit of the agent's cancel of the console's statement (see
// cancelConsole); past it, it waits on while the VM makes progress.
const CANCEL_LIMIT_MS = 10000;
// A psql prompt at the end of the console output.
const PROMPT = /[=\-('"*]?[#>] $/;
// The console output kept for prompt and panic detection and the boot's
// progress line: the last CONSOLE_KEEP to 2 * CONSOLE_KEEP characters.
const CONSOLE_KEEP = 16384;
const PANIC = /Kernel panic - not syncing[^\r\n]*/;
// The agent's channel: virtio-console port 1, /dev/hvc1 in the guest
// (docs/agent-protocol.md, "Channels"). Every image the page can start has
// it (checkAgentChannel), so there is no serial fallback.
const AGENT_PORT = 1;
// Page connections into PostgreSQL (connect(), nodeSocket()): port 2,
// /dev/hvc2 in the guest (docs/socket-protocol.md).
const SOCKET_PORT = 2;
const AGENT_CHANNEL = "virtio-console";

export interface Manifest {
  key: string;
  cmdline: string;
  net_device: string;
  // virtio-net's MTU, which the guest takes when it probes the NIC: a full
  // boot offers it, a restored guest keeps its own. Absent: v86's 1500.
  net_mtu?: number;
  acpi?: boolean; // v86's local APIC, which our kernel's timer uses
  postgres_version?: string;
  // The guest agent's channels (docs/agent-protocol.md, "Channels"); with
  // "virtio-console" the image's states hold that v86 device.
  agent_channels?: string[];
  [k: string]: unknown;
}

export interface StateMeta {
  image_key: string;
  memory_mb: number;
  vga_memory_mb: number;
  net_device: string;
  v86_version?: string;
  file: string;
  size: number;
  raw_size?: number;
}

export interface NetworkInfo {
  session: string;
  address?: string;
  password: string;
  // tlsSHA256: the SHA-256 (hex) of the TLS certificate the VM made for
  // this network start (clients can compare it; sslmode=require does not).
  tlsSHA256?: string;
  port?: { host: string; port: number; url: string };
  sni?: { host: string; port: number; url: string };
  portError?: string;
}

// The files this module loads from its own directory, each named by a
// literal new URL("./name", import.meta.url): webpack 5 and Vite recognise
// exactly that form in an app's bundle, emit the file into their output and
// point the URL at it; unbundled (import map, pgwasm serve) or bundled by
// esbuild, which leaves it alone, it is the file next to the module.
const workerURL = (): URL => new URL("./vm-worker.js", import.meta.url);
const wasmURL = (): URL => new URL("./v86.wasm", import.meta.url);
const terminalCSSURL = (): URL => new URL("./xterm.css", import.meta.url);

// here is where the package's files are served from, which the image and
// the server default to: the module's directory, or the bundler's output
// directory. Not new URL(".", import.meta.url): Vite warns about that in
// every app build (no such file), and webpack resolves it against the page.
const here = (): string => new URL(".", workerURL()).href;

function fmtMB(n: number): string {
  return (n / 1048576).toFixed(n < 10485760 ? 1 : 0) + " MB";
}

// fetchWithProgress downloads a URL and reports bytes as they arrive.
async function fetchWithProgress(url: string, expected: number, onBytes: (loaded: number, total: number) => void): Promise<ArrayBuffer> {
  const resp = await fetch(url);
  if (!resp.ok || !resp.body) throw new Error(`cannot download ${url}: HTTP ${resp.status}`);
  const total = Number(resp.headers.get("Content-Length")) || expected || 0;
  const reader = resp.body.getReader();
  const parts: Uint8Array[] = [];
  let loaded = 0;
  onBytes(0, total);
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    loaded += value.length;
    onBytes(loaded, total);
  }
  const out = new Uint8Array(loaded);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out.buffer;
}

// probeStates says which memory sizes have a quick-start state for this image.
export async function probeStates(imageBase: string, manifest: Manifest): Promise<Map<number, StateMeta>> {
  const out = new Map<number, StateMeta>();
  await Promise.all(
    MEMORY_SIZES.map(async mb => {
      try {
        const r = await fetch(new URL(`state-${mb}.json`, imageBase), { cache: "no-cache" });
        if (!r.ok) return;
        const m = (await r.json()) as StateMeta;
        if (m.image_key === manifest.key && m.memory_mb === mb && m.net_device === manifest.net_device) out.set(mb, m);
      } catch {
        // no state for this size
      }
    }),
  );
  return out;
}

// ChannelWriter is the contract of the harness's writers (virtio-console.mjs,
// serial.mjs), which agent.ts and socket.ts write through: a call queues
// bytes, reset() drops what is still queued.
interface ChannelWriter {
  (bytes: Uint8Array): void;
  reset(): void;
}

export class PgWasm extends EventTarget {
  agent: Agent;
  terminal: PsqlTerminal | null = null;
  manifest!: Manifest;
  memoryMB: number;
  fullBoot = false;
  serverVersion = "";
  network: NetworkInfo | null = null;
  timings: Record<string, number> = {};
  readonly imageBase: string;
  readonly apiBase: string;
  private t0 = performance.now();
  private consoleDecoder = new TextDecoder();
  private consoleText = "";
  private ws: WebSocket | null = null;
  private wsQueue: Uint8Array<ArrayBuffer>[] = [];
  private sessionToken = "";
  private relayURL = "";
  private reconnectTimer = 0;
  private sessionID = "";
  private opts: BootOptions;
  // Liveness (see STALL_MS): when the VM last showed progress.
  private lastIO = 0;
  private lastBusy = 0;
  private loadsInFlight = 0;
  private deadReason = "";
  // The emulator's worker (vm-worker.ts) and the calls it has not answered.
  private worker: Worker | null = null;
  private calls = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();
  private nextCall = 1;
  // Console input waits here until psql really reads it (consoleReady).
  private consoleReady = false;
  private inputQueue: string[] = [];
  // consoleBusy: Enter was sent and psql has not shown a prompt since.
  private consoleBusy = false;
  // statementRunning: a statement typed into the psql console runs (Enter
  // was sent, no prompt since). The page keeps no session meanwhile.
  get statementRunning(): boolean {
    return this.consoleBusy;
  }
  private consoleBytes = 0;
  private lastConsoleAt = 0;
  private toConsole: ((d: string) => void) | null = null;
  // warming: warmCancel runs; cancelling: a Ctrl-C is being handled.
  private warming = false;
  private cancelling = false;
  private consoleWriter: ChannelWriter | null = null;
  private sockets: SocketMux;

  constructor(opts: BootOptions = {}) {
    super();
    this.opts = opts;
    this.memoryMB = opts.memory || DEFAULT_MEMORY_MB;
    this.imageBase = new URL(opts.imageBase || "image/", here()).href.replace(/\/?$/, "/");
    this.apiBase = new URL(opts.apiBase || "./", here()).href;
    this.agent = new Agent(this.channelWriter(`virtio${AGENT_PORT}`));
    this.agent.judge = (op, waited, limit) => this.judgeWait(op, waited, limit);
    this.sockets = new SocketMux(this.channelWriter(`virtio${SOCKET_PORT}`));
  }

  // ---- the emulator's worker (vm-worker.ts, messages of vm-protocol.ts) ----

  // emulatorRunning: an emulator exists (from start() until destroy(),
  // also when start() gave up waiting for PostgreSQL).
  get emulatorRunning(): boolean {
    return this.worker !== null;
  }

  private send(m: ToWorker, transfer: Transferable[] = []): void {
    this.worker?.postMessage(m, transfer);
  }

  // call runs an operation of the worker's (vm-worker.ts ops) on its
  // emulator. Buffers in args are given to the worker (transferred).
  private call<T = unknown>(op: string, args: unknown[] = [], transfer: Transferable[] = []): Promise<T> {
    if (!this.worker) return Promise.reject(new Error("the VM is not running"));
    const id = this.nextCall++;
    return new Promise<T>((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.send({ t: "call", id, op, args }, transfer);
    });
  }

  // channelWriter writes into the VM through the worker's writer of that
  // channel. The bytes are copied (the caller may hold a view into a
  // larger buffer) and the copy is transferred. The queue that waits for
  // the guest lives in the worker, as unbounded as the harness's writer
  // it is: what bounds it is the protocols above it, as before (the
  // socket mux sends within the window the agent grants per connection,
  // so a big copyFrom has at most that in flight; the agent client writes
  // the requests its callers make, as big as they are).
  private channelWriter(channel: Channel): ChannelWriter {
    const write = (bytes: Uint8Array) => {
      if (bytes.length === 0 || !this.worker) return;
      const copy = bytes.slice();
      this.send({ t: "write", channel, bytes: copy }, [copy.buffer]);
    };
    write.reset = () => this.send({ t: "reset", channel });
    return write;
  }

  // emulatorStats are the worker's counters of its emulator (v86's
  // slices, JIT, instruction counter, channel bytes, the TSC at the last
  // save and restore): for the tests and web/test/bench.mjs, which used to
  // reach into pg.emulator for them. resetPeak starts longestSliceMs anew
  // after this reading.
  emulatorStats(resetPeak = false): Promise<EmulatorStats> {
    return this.call<EmulatorStats>("stats", [resetPeak]);
  }

  // debugBreakFile makes reads of a file in the VM's 9p root fail from now
  // on, as if unlinked: engine.spec.mjs kills the VM's init with it.
  debugBreakFile(path: string): Promise<void> {
    return this.call("break_file", [path]);
  }

  // fileExists: the file is in the VM's root file system (9p) now.
  fileExists(path: string): Promise<boolean> {
    return this.call<boolean>("exists", [path]);
  }

  // listFiles lists the regular files of a directory in the VM's 9p root.
  listFiles(dir: string): Promise<{ name: string; size: number }[]> {
    return this.call("list_files", [dir]);
  }

  private onWorkerMessage(m: FromWorker): void {
    switch (m.t) {
      case "console":
        this.onConsoleBytes(m.bytes);
        break;
      case "virtio":
        this.lastIO = Date.now();
        if (m.port === AGENT_PORT) this.agent.feed(m.bytes);
        else if (m.port === SOCKET_PORT) this.sockets.feed(m.bytes);
        break;
      case "frame":
        // Frames from the guest's NIC go to the relay when the network is on.
        this.lastIO = Date.now();
        this.sendFrame(m.frame as Uint8Array<ArrayBuffer>);
        break;
      case "halt":
        this.markDead("its CPU halted");
        break;
      case "beat":
        this.lastBusy = m.lastBusy;
        this.loadsInFlight = m.loads;
        this.lastIO = Math.max(this.lastIO, m.lastLoad);
        break;
      case "reply": {
        const c = this.calls.get(m.id);
        this.calls.delete(m.id);
        if (m.ok) c?.resolve(m.value);
        else c?.reject(new Error(m.error));
        break;
      }
    }
  }

  // stopWorker ends the emulator's worker; its unanswered calls fail.
  private stopWorker(why: string): void {
    this.worker?.terminate();
    this.worker = null;
    for (const c of this.calls.values()) c.reject(new Error(why));
    this.calls.clear();
  }

  // ---- connections into PostgreSQL (the socket channel) ----

  // connect opens a new PostgreSQL connection (a backend of its own) and
  // returns its bytes as a WHATWG stream pair; speak the wire protocol on
  // it, or hand nodeSocket() to a driver. Trusted: user postgres (or any
  // role) needs no password, and no TLS (the bytes never leave the tab).
  // A restore or restart of the VM fails every open connection.
  async connect(): Promise<PgSocket> {
    return streamsOf(await this.sockets.open());
  }

  // nodeSocket returns a net.Socket-shaped object for drivers that take a
  // custom stream (node-postgres: `new Client({ stream: () => pg.nodeSocket() })`);
  // the driver's connect(port, host) opens it, port and host are ignored.
  nodeSocket(): NodeSocket {
    return new NodeSocket(() => this.sockets.open());
  }

  // ---- COPY (over a connection of its own, web/src/copy.ts) ----

  // copyFrom loads data into a table with COPY ... FROM STDIN: CSV (the
  // default) or PostgreSQL's text format, from a string, bytes, a Blob
  // (a File) or a stream, sent in pieces as PostgreSQL takes them. One
  // statement: on a bad row or a failing source no row is added, and the
  // error carries the SQLSTATE. The table is a name as it is (case kept);
  // [schema, table] for another schema.
  copyFrom(table: TableName, data: CopySource, opts: CopyOptions = {}): Promise<{ rows: number }> {
    return copyFrom(() => this.connect(), table, data, opts);
  }

  // copyTo returns COPY ... TO STDOUT of a table or a query (a string
  // starting with SELECT, WITH, VALUES or TABLE), CSV by default.
  copyTo(queryOrTable: TableName, opts: CopyOptions = {}): Promise<Uint8Array> {
    return copyTo(() => this.connect(), queryOrTable, opts);
  }

  // copyToStream is copyTo in chunks of about 64 KiB, for exports too big
  // for one buffer; a slow reader holds PostgreSQL back.
  copyToStream(queryOrTable: TableName, opts: CopyOptions = {}): ReadableStream<Uint8Array> {
    return copyToStream(() => this.connect(), queryOrTable, opts);
  }

  // restartSockets fails the connections of the VM that was and starts a
  // new socket session with the agent now running.
  private restartSockets(reason: string): void {
    this.sockets.reset(reason);
    this.sockets.start();
  }

  // ---- liveness ----

  // dead is the reason the VM stopped for good, or "".
  get dead(): string {
    return this.deadReason;
  }

  private lastProgress(): number {
    return this.loadsInFlight > 0 ? Date.now() : Math.max(this.lastBusy, this.lastIO, this.agent.lastAnswer);
  }

  // judgeWait is the agent's judge: wait on while the VM makes progress.
  private judgeWait(_op: string, waited: number, limit: number): "wait" | string {
    if (this.deadReason) return this.deadReason;
    const stall = Date.now() - this.lastProgress();
    if (stall > STALL_MS) return `the VM made no progress for ${Math.round(stall / 1000)} s (CPU idle, no console, file or network activity)`;
    if (waited > limit * HARD_CAP) return `no answer in ${Math.round(waited / 1000)} s although the VM is running`;
    return "wait";
  }

  // markDead records that the VM stopped for good and says so.
  private markDead(reason: string): void {
    if (this.deadReason) return;
    this.deadReason = reason;
    this.agent.failAll(`the VM is dead: ${reason}`);
    this.sockets.reset(`the VM is dead: ${reason}`);
    this.status("dead", `The VM stopped: ${reason}. Restart it (your unsaved changes are lost).`);
    this.dispatchEvent(new CustomEvent("dead", { detail: { reason } }));
  }

  // quiesce stops the CPU and waits until no 9p request is in flight
  // (vm-worker.ts quiesce says why).
  private quiesce(): Promise<void> {
    return this.call("quiesce");
  }

  private mark(name: string): void {
    if (!(name in this.timings)) this.timings[name] = Math.round(performance.now() - this.t0);
  }

  progress(p: Progress): void {
    this.opts.onProgress?.(p);
    this.dispatchEvent(new CustomEvent("progress", { detail: p }));
  }

  // lastStatus is the last status event's detail.
  lastStatus: Status | null = null;

  status(status: Status["status"], message: string): void {
    const s = { status, message };
    this.lastStatus = s;
    this.opts.onStatus?.(s);
    this.dispatchEvent(new CustomEvent("status", { detail: s }));
  }

  // consoleOutput is ttyS0's recent output (also in headless mode).
  consoleOutput(): string {
    return this.consoleText;
  }

  async start(): Promise<void> {
    try {
      await this.startInner();
    } catch (err) {
      this.status("error", String((err as Error)?.message || err));
      throw err;
    }
  }

  private async startInner(): Promise<void> {
    const opts = this.opts;
    this.status("starting", "loading the image manifest");
    const mresp = await fetch(new URL("manifest.json", this.imageBase), { cache: "no-cache" });
    if (!mresp.ok) throw new Error(`cannot load the VM image manifest (HTTP ${mresp.status})`);
    this.manifest = await mresp.json();
    checkAgentChannel(this.manifest);

    let meta: StateMeta | undefined;
    if (!opts.fullBoot) {
      meta = (await probeStates(this.imageBase, this.manifest)).get(this.memoryMB);
      if (!meta) this.status("starting", `no quick-start state for ${this.memoryMB} MB: booting from scratch`);
    }
    this.fullBoot = !meta;

    let stateBuf: ArrayBuffer | null = null;
    if (meta) {
      this.status("starting", "downloading the VM state");
      stateBuf = await fetchWithProgress(new URL(meta.file, this.imageBase).href, meta.size, (loaded, total) =>
        this.progress({ phase: "download", loaded, total, message: `Downloading VM state: ${fmtMB(loaded)} of ${fmtMB(total)}` }),
      );
      this.mark("state_downloaded");
    }

    if (opts.element && !opts.headless) {
      // UTF-8, chunked: a large paste no longer stalls v86's UART, and
      // non-ASCII text reaches psql intact.
      const toConsole = this.channelWriter("serial0");
      const utf8 = new TextEncoder();
      this.consoleWriter = toConsole;
      this.toConsole = d => toConsole(utf8.encode(d));
      this.terminal = new PsqlTerminal(opts.element, d => this.sendConsole(d), opts.fontSize);
      this.terminal.onResize = (rows, cols) => void this.syncTerminalSize(rows, cols).catch(() => undefined);
    }

    await this.createEmulator(meta?.vga_memory_mb || VGA_MEMORY_MB, !meta);
    if (stateBuf) {
      this.progress({ phase: "restore", message: "Restoring the VM state" });
      try {
        await this.call("restore_state", [stateBuf], [stateBuf]);
      } catch (err) {
        throw new Error(`cannot restore the VM state: ${(err as Error)?.message || err}`);
      }
      this.mark("state_restored");
    }
    await this.runAndWaitStarted();

    const bootStart = performance.now();
    let step = meta ? "Resuming the VM" : "Booting Linux";
    const tick = window.setInterval(() => {
      const s = Math.round((performance.now() - bootStart) / 1000);
      const line = this.lastConsoleLine();
      this.progress({ phase: "boot", message: `${step}… ${s} s${line ? ` · ${line}` : ""}` });
    }, 500);
    try {
      await this.agent.waitReady(meta ? 60000 : 120000, !!meta);
      this.mark("agent_ready");
      this.restartSockets("the VM was restarted");
      step = "Setting the clock and randomness";
      await this.afterResume(!!meta);
      step = "Waiting for PostgreSQL";
      this.progress({ phase: "postgres", message: "Waiting for PostgreSQL" });
      await this.waitPostgres(meta ? 60000 : 120000);
      this.mark("postgres_ready");
      step = "Opening the psql console";
      await this.openConsole(!!meta);
    } finally {
      clearInterval(tick);
    }
    this.mark("ready");
    this.status("ready", `PostgreSQL ${this.serverVersion} is ready`);
    if (this.terminal) void this.warmCancel();
  }

  // lastConsoleLine is the console's last non-empty line (boot progress).
  private lastConsoleLine(): string {
    const lines = this.consoleText.split(/\r?\n/).map(l => l.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "").trim()).filter(Boolean);
    return (lines.pop() || "").slice(0, 80);
  }

  // createEmulator starts the emulator's worker, which makes the v86
  // instance (a full boot's files when boot), and resolves once it is
  // loaded. A page where the worker cannot start (a CSP without
  // `worker-src 'self'`, the module served from another origin) fails here.
  private async createEmulator(vgaMB: number, boot: boolean): Promise<void> {
    const files: Record<string, { loaded: number; total: number }> = {};
    const img = (name: string) => new URL(name, this.imageBase).href;
    const options: any = {
      wasm_path: wasmURL().href,
      bios: { url: img("bios.bin") },
      vga_bios: { url: img("vgabios.bin") },
      memory_size: this.memoryMB * 1024 * 1024,
      vga_memory_size: vgaMB * 1024 * 1024,
      autostart: false,
      disable_keyboard: true,
      disable_mouse: true,
      disable_speaker: true,
      // The agent also answers on ttyS1, which the page leaves alone; the
      // UART stays because a state restores only into a machine with the
      // devices it was saved with.
      uart1: true,
      virtio_console: true,
      net_device: { type: this.manifest.net_device || "ne2k", ...(this.manifest.net_mtu ? { mtu: this.manifest.net_mtu } : {}) },
      acpi: !!this.manifest.acpi,
      preserve_mac_from_state_image: true,
      filesystem: boot ? { basefs: img("9p/fs.json"), baseurl: img("9p/blobs/") } : { baseurl: img("9p/blobs/") },
    };
    if (boot) {
      options.bzimage = { url: img("bzImage") };
      options.initrd = { url: img("initrd.img") };
      options.cmdline = this.manifest.cmdline;
    }
    let worker: Worker;
    try {
      // A worker's script must come from the page's origin: a module
      // embedded from another one (docs/web.md, "Embedding API") starts a
      // blob: worker that imports it (that server sends CORS headers).
      const url = workerURL();
      const src = url.origin === location.origin ? url : URL.createObjectURL(new Blob([`import ${JSON.stringify(url.href)};\n`], { type: "text/javascript" }));
      worker = new Worker(src, { type: "module", name: "pgwasm-vm" });
    } catch (err) {
      throw new Error(`cannot start the emulator's worker (vm-worker.js next to this module): ${(err as Error)?.message || err}`);
    }
    this.worker = worker;
    this.deadReason = "";
    this.agent.revive();
    await new Promise<void>((resolve, reject) => {
      let loaded = false;
      worker.onmessage = (e: MessageEvent<FromWorker>) => {
        if (this.worker !== worker) return;
        const m = e.data;
        if (m.t === "loaded") {
          loaded = true;
          resolve();
        } else if (m.t === "failed") {
          reject(new Error(`cannot start the emulator: ${m.error}`));
        } else if (m.t === "progress") {
          files[m.file] = { loaded: m.loaded, total: m.total };
          let loaded = 0, total = 0;
          for (const f of Object.values(files)) {
            loaded += f.loaded;
            total += f.total;
          }
          this.progress({ phase: "download", loaded, total, message: `Downloading VM files: ${fmtMB(loaded)} of ${fmtMB(total)}` });
        } else {
          this.onWorkerMessage(m);
        }
      };
      // A worker that cannot load (404, CSP) or throws: before "loaded" the
      // start fails; after it the VM is dead (its emulator is gone or
      // broken).
      worker.onerror = (e: ErrorEvent) => {
        if (this.worker !== worker) return;
        const why = e.message || "vm-worker.js could not be loaded";
        if (!loaded) {
          this.stopWorker(why);
          reject(new Error(`the emulator's worker failed: ${why}`));
        } else {
          this.markDead(`the emulator failed: ${why}`);
        }
      };
      this.send({ t: "create", options });
    });
    this.mark("emulator_loaded");
  }

  // openConsole makes the psql console usable: the tty gets the terminal's
  // size, psql redraws its prompt (after a restore) and, once psql reads
  // input at that prompt, what the user typed meanwhile is sent. Public for
  // a page that takes over a VM whose start() gave up waiting.
  async openConsole(redraw: boolean): Promise<void> {
    if (!this.terminal) return;
    this.consoleReady = false;
    this.consoleBusy = false;
    const { rows, cols } = this.terminal.size();
    await this.syncTerminalSize(rows, cols).catch(() => undefined);
    const mark = this.consoleBytes;
    if (redraw) await this.call("serial0_send", ["\r"]); // psql redraws its prompt
    await this.waitPrompt(redraw ? mark : -1, 30000);
    this.consoleReady = true;
    // The redraw leaves the snapshot's prompt above the new one: if the
    // screen holds nothing else, Ctrl-L has readline clear it and draw one
    // prompt. It goes before what the user typed meanwhile: sent after,
    // it would wait in the tty while that statement runs and clear its
    // result at the next prompt.
    const prompts = this.terminal.text().split("\n").filter(l => l.startsWith("postgres="));
    if (redraw && prompts.length > 1 && prompts.every(l => /^postgres=#\s*$/.test(l))) this.toConsole?.("\x0c");
    for (const d of this.inputQueue.splice(0)) this.toConsole?.(d);
    this.terminal.focus();
  }

  private async runAndWaitStarted(): Promise<void> {
    // Serial input sent before the CPU runs is lost: "run" resolves once
    // it runs.
    await this.call("run");
    this.mark("emulator_started");
  }

  // afterResume brings the guest up to date after a start: after a
  // restore its clock stopped at the save (a full boot's kernel read the
  // clock from the emulated RTC, as `pgwasm vm run` relies on too); its
  // kernel random generator is the same in every tab restored from that
  // state and a full boot in v86 has little entropy (ours is mixed in
  // before anything draws a key); its network needs DHCP again on our
  // relay. After a full boot this runs while PostgreSQL starts and loads
  // its files: on a throttled CPU the agent has been seen to need over
  // 100 s for one request then (CI, 4x), so the first limit is the boot's.
  private async afterResume(restored: boolean): Promise<void> {
    const limitMs = restored ? 10000 : 120000;
    if (restored) {
      await this.agent.call({ op: "set_time", unix_ms: Date.now() }, limitMs).catch(err => {
        throw new Error(`cannot set the VM's clock after the restore (it would stay at the moment the state was saved): ${(err as Error)?.message || err}`);
      });
    }
    const entropy = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
    await this.agent.call({ op: "add_entropy", entropy }, limitMs);
    if (this.network) {
      const net = this.network;
      await this.networkUp(net.password).then(r => Object.assign(net, r)).catch(err => this.status("error", `network: ${err.message}`));
    }
  }

  // waitPostgres polls the agent's status until PostgreSQL is ready. Past
  // timeoutMs it waits on while the VM makes progress (judgeWait); while
  // PostgreSQL runs crash recovery the status says "recovering".
  private async waitPostgres(timeoutMs: number): Promise<void> {
    const start = Date.now();
    let recovering = false;
    for (;;) {
      const st = await this.agent.call({ op: "status" }, 10000);
      if (st.postgres === "ready") {
        this.serverVersion = st.server_version || "";
        return;
      }
      if (st.postgres === "recovering" && !recovering) {
        recovering = true;
        this.status("recovering", "PostgreSQL is recovering after a crash (replaying its write-ahead log); waiting");
      }
      const waited = Date.now() - start;
      if (waited > timeoutMs) {
        const v = this.judgeWait("status", waited, timeoutMs);
        if (v !== "wait") throw new Error(`PostgreSQL did not start (${st.postgres_error || st.postgres}): ${v}`);
      }
      await new Promise(r => setTimeout(r, 300));
    }
  }

  // waitPrompt waits for a psql prompt in the console output after byte
  // mark (-1: the prompt may be one already shown). Past limitMs it waits
  // on while the VM makes progress.
  private waitPrompt(mark: number, limitMs: number): Promise<void> {
    const start = Date.now();
    return new Promise((resolve, reject) => {
      const check = () => {
        const fresh = this.consoleBytes > mark;
        // Quiet for a moment at the prompt: psql (readline) reads input now.
        if (fresh && PROMPT.test(this.consoleText) && Date.now() - this.lastConsoleAt > 200) return resolve();
        if (this.deadReason) return reject(new Error(this.deadReason));
        const waited = Date.now() - start;
        if (waited > limitMs) {
          const v = this.judgeWait("prompt", waited, limitMs);
          // No prompt: open the console anyway rather than never.
          if (v !== "wait") return resolve();
        }
        setTimeout(check, 100);
      };
      check();
    });
  }

  // sendConsole types into the psql console. Until psql reads input at a
  // fresh prompt (after a start or a restore) the text is kept and sent
  // then: a prompt on the screen is no promise that the console takes
  // input (issue #16 item 0). A Ctrl-C while a statement runs goes to
  // cancelConsole instead.
  sendConsole(data: string): void {
    if (!this.consoleReady || !this.toConsole) {
      this.inputQueue.push(data);
      return;
    }
    if (data === "\x03" && this.consoleBusy && (!this.agent.busy || this.warming)) {
      void this.cancelConsole();
      return;
    }
    if (data.includes("\r")) this.consoleBusy = true;
    this.toConsole(data);
  }

  // cancelConsole cancels the console's running statement (Enter was sent,
  // no prompt since) through the agent's open session instead of the tty:
  // psql's own cancel request, sent from its SIGINT handler, needs a new
  // connection to the postmaster, whose forked child faults its pages in
  // over 9p the first time after a restore, and psql shows nothing until
  // that is done (17 s in issue #16 item 4). psql then just sees its
  // statement fail with "canceling statement due to user request".
  //
  // The request queues behind the page's own warm-up (warmCancel) and
  // waits as long as the VM makes progress: skipping a busy agent, or
  // giving up after a fixed 5 s, sent the Ctrl-C to the tty exactly when
  // the VM was slow (4x throttled: 22 s). The Ctrl-C goes to the tty only
  // when the agent finds no running statement of the console (psql runs a
  // \! command, say) or fails, and at once when the agent is busy with an
  // API request, which may run for minutes. A Ctrl-C while one is being
  // handled adds nothing.
  private async cancelConsole(): Promise<void> {
    if (this.cancelling) return;
    this.cancelling = true;
    try {
      if (!(await this.cancelConsoleQuery())) this.toConsole?.("\x03");
    } finally {
      this.cancelling = false;
    }
  }

  // warmCancel runs, once the VM is ready, the query a Ctrl-C will send
  // (matching nothing now): the first statement of the agent's session
  // after a restore costs seconds (under a 4x throttled CPU), and a Ctrl-C
  // should not pay them. The rest of the cancel path (pg_cancel_backend's
  // role checks, the backend's abort, psql printing the error) is resident
  // in the image's snapshot (the agent's warm-up cancels a console
  // statement the same way); a second warm-up statement here that cancelled
  // itself held the agent 4 s more.
  private async warmCancel(): Promise<void> {
    this.warming = true;
    try {
      await this.cancelConsoleQuery("warm-up: matches nothing");
    } finally {
      this.warming = false;
    }
  }

  // cancelConsoleQuery cancels the oldest psql backend on the Unix socket in
  // the given state. It reads pg_stat_get_activity(), not the view
  // pg_stat_activity, whose joins the emulator plans and runs on every
  // call (the view's query took 1.4-2.8 s with the CPU throttled 4x).
  private async cancelConsoleQuery(state = "active"): Promise<boolean> {
    const sql =
      "select pg_cancel_backend(pid) from pg_stat_get_activity(null) where pid <> pg_backend_pid() " +
      "and backend_type = 'client backend' and application_name = 'psql' and client_addr is null " +
      "and state = $1 order by backend_start limit 1";
    const r = await this.agent.request({ op: "query", sql, params: [state] }, CANCEL_LIMIT_MS).catch(() => null);
    return r?.rows?.[0]?.[0] === "t";
  }

  // onConsoleBytes takes psql's output as the worker gathers it (one
  // message per emulator slice). A prompt is at most 3 characters and ends
  // in a space: the prompt pattern runs over the 8 characters before each
  // space, not over all the kept text; a panic line is looked for only in
  // output with a newline.
  private onConsoleBytes(bytes: Uint8Array): void {
    this.lastIO = this.lastConsoleAt = Date.now();
    this.consoleBytes += bytes.length;
    const text = this.consoleDecoder.decode(bytes, { stream: true });
    if (!text) return;
    const base = this.consoleText.length;
    this.consoleText += text;
    this.terminal?.output(text);
    for (let i = this.consoleBusy ? text.indexOf(" ") : -1; i >= 0; i = text.indexOf(" ", i + 1)) {
      const end = base + i + 1;
      if (PROMPT.test(this.consoleText.slice(Math.max(0, end - 8), end))) {
        this.consoleBusy = false;
        break;
      }
    }
    if (text.includes("\n")) {
      const m = PANIC.exec(this.consoleText.slice(-(400 + text.length)));
      if (m) this.markDead(m[0].trim());
    }
    if (this.consoleText.length > 2 * CONSOLE_KEEP) this.consoleText = this.consoleText.slice(-CONSOLE_KEEP);
  }

  // syncTerminalSize tells the guest's console tty the terminal's size
  // (the agent's set_winsize: an ioctl, nothing typed, no process started),
  // so psql wraps lines and formats wide results for it.
  async syncTerminalSize(rows: number, cols: number): Promise<void> {
    if (!this.terminal || !this.worker || !this.agent.ready) return;
    await this.agent.call({ op: "set_winsize", rows, cols }, 15000);
    const now = this.terminal.size();
    if (now.rows === rows && now.cols === cols) this.terminal.pendingResize = false;
  }

  // ---- SQL through the agent ----

  async query(sql: string, params?: (string | number | boolean | null)[]): Promise<QueryResult> {
    const p = params?.map(v => (v === null || v === undefined ? null : String(v)));
    const r = await this.agent.call({ op: "query", sql, ...(p ? { params: p } : {}) }, 600000);
    return { columns: r.columns || [], rows: r.rows || [], command: r.command, rows_affected: r.rows_affected };
  }

  async exec(sql: string): Promise<QueryResult[]> {
    const r = await this.agent.call({ op: "exec", sql }, 600000);
    return r.results || [];
  }

  // ---- states ----

  // saveState returns the VM state as a file (header + gzip'd v86 state).
  async saveState(): Promise<Blob> {
    this.progress({ phase: "save", message: "Preparing the guest (checkpoint, drop caches)" });
    await this.agent.call({ op: "prepare_snapshot" }, 120000).catch(() => undefined);
    this.progress({ phase: "save", message: "Saving the VM state" });
    let raw: ArrayBuffer;
    await this.quiesce();
    try {
      raw = await this.call<ArrayBuffer>("save_state");
    } finally {
      await this.call("run");
    }
    this.progress({ phase: "save", message: `Compressing ${fmtMB(raw.byteLength)}` });
    return wrapState(raw, {
      image_key: this.manifest.key,
      memory_mb: this.memoryMB,
      postgres_version: this.serverVersion,
      ...(this.network ? { network_ref: this.rememberNetwork() } : {}),
    });
  }

  // restoreState checks the state first (image, memory size, integrity):
  // a bad one throws StateError and the running VM goes on untouched. A
  // state of another memory size (one the page offers) restarts the VM
  // with that size first.
  async restoreState(blob: Blob): Promise<void> {
    this.progress({ phase: "restore", message: "Checking the state" });
    const { header } = await readHeader(blob);
    const memoryMB = header.image_key === this.manifest.key && MEMORY_SIZES.includes(header.memory_mb) ? header.memory_mb : this.memoryMB;
    const { raw } = await openState(blob, { imageKey: this.manifest.key, memoryMB });
    this.progress({ phase: "restore", message: "Restoring the VM state" });
    this.status("busy", "restoring");
    this.consoleReady = false;
    this.inputQueue = [];
    if (memoryMB !== this.memoryMB) {
      await this.switchMemory(memoryMB);
    } else {
      await this.quiesce();
    }
    const wasDead = this.deadReason;
    this.deadReason = "";
    this.agent.revive();
    try {
      await this.call("restore_state", [raw], [raw]);
    } catch (err) {
      this.deadReason = wasDead;
      await this.runAndWaitStarted();
      throw new StateError(`the emulator refused the state: ${(err as Error)?.message || err}`);
    }
    this.agent.reset("the VM was restored");
    this.sockets.reset("the VM was restored from a state: its connections are gone (the restored VM has none of them); connect again");
    this.consoleWriter?.reset();
    this.terminal?.reset();
    this.consoleText = "";
    await this.runAndWaitStarted();
    await this.agent.waitReady(60000, true);
    this.restartSockets("the VM was restored from a state: its connections are gone (the restored VM has none of them); connect again");
    await this.afterResume(true);
    await this.waitPostgres(60000);
    if (this.terminal) {
      await this.openConsole(true);
    } else {
      await this.call("serial0_send", ["\r"]);
    }
    if (this.deadReason) throw new Error(`the VM died after the restore: ${this.deadReason}`);
    let note = "";
    if (!this.network && header.network_ref) note = await this.resumeNetwork(header.network_ref);
    this.status("ready", `PostgreSQL ${this.serverVersion} is ready (state restored${note ? `; ${note}` : ""})`);
    if (this.terminal) void this.warmCancel();
  }

  // rememberNetwork keeps the current session (token, password) in this
  // browser for a state saved now and returns its reference.
  private rememberNetwork(): string {
    const ref = Array.from(crypto.getRandomValues(new Uint8Array(12)), b => b.toString(16).padStart(2, "0")).join("");
    try {
      localStorage.setItem(NET_KEY + ref, JSON.stringify({ info: this.network, token: this.sessionToken, relayURL: this.relayURL, saved: Date.now() }));
    } catch {
      // no storage: the network must be started again after a reload
    }
    return ref;
  }

  // resumeNetwork brings back the network session a restored state had,
  // with the same password (so its connection strings work again), if the
  // server still takes its token. It returns a note for the status line.
  private async resumeNetwork(ref: string): Promise<string> {
    let saved: { info: NetworkInfo; token: string; relayURL: string } | null = null;
    try {
      saved = JSON.parse(localStorage.getItem(NET_KEY + ref) || "null");
    } catch {
      saved = null;
    }
    const lost = "its network session is gone: press Start network again (new connection strings)";
    if (!saved?.token || !saved.relayURL) return lost;
    this.sessionToken = saved.token;
    this.sessionID = saved.info.session;
    this.relayURL = saved.relayURL;
    this.connectRelay();
    try {
      // The server re-creates a session from a valid token when its
      // websocket comes; then the API knows it.
      let ok = false;
      for (let i = 0; i < 20 && !ok; i++) {
        await new Promise(r => setTimeout(r, 250));
        const r = await fetch(new URL(`api/sessions/${saved.info.session}`, this.apiBase), { headers: { Authorization: `Bearer ${saved.token}` } });
        ok = r.ok;
        if (r.status === 401 || r.status === 403) break;
      }
      if (!ok) throw new Error("session refused");
      Object.assign(saved.info, await this.networkUp(saved.info.password));
    } catch {
      this.relayURL = "";
      this.ws?.close();
      this.ws = null;
      this.sessionToken = this.sessionID = "";
      return lost;
    }
    this.network = saved.info;
    this.dispatchEvent(new CustomEvent("network", { detail: saved.info }));
    return "network session resumed, same connection strings";
  }

  // switchMemory replaces the emulator by one with another memory size
  // (stopped, not booted: a state is restored into it next).
  private async switchMemory(memoryMB: number): Promise<void> {
    this.progress({ phase: "restore", message: `Switching the VM to ${memoryMB} MB of memory` });
    await this.quiesce();
    await this.call("destroy").catch(() => undefined);
    this.stopWorker("the VM was replaced by one with another memory size");
    this.memoryMB = memoryMB;
    await this.createEmulator(VGA_MEMORY_MB, false);
    this.dispatchEvent(new CustomEvent("memory", { detail: { memoryMB } }));
  }

  // ---- files (through v86's 9p: the guest's root file system) ----

  // upload writes a file into the VM; its parent directory must exist,
  // except under /uploads, which is created. Returns the path written
  // (a name taken already gets a -N suffix: the guest may cache the old one).
  async upload(path: string, bytes: Uint8Array | ArrayBuffer | Blob): Promise<string> {
    // A copy, given to the worker: the caller keeps its bytes.
    const data = bytes instanceof Blob ? new Uint8Array(await bytes.arrayBuffer()) : new Uint8Array(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
    return this.call<string>("upload", [path, data], [data.buffer]);
  }

  // download reads a file out of the VM. Files on the guest's tmpfs mounts
  // (/tmp, /run, /dev/shm) are not on the 9p root and cannot be read.
  async download(path: string): Promise<Uint8Array<ArrayBuffer>> {
    // Flush what the guest still holds in its page cache.
    await this.agent.call({ op: "exec", sql: "COPY (SELECT 1) TO PROGRAM 'sync'" }, 30000).catch(() => undefined);
    try {
      return await this.call<Uint8Array<ArrayBuffer>>("read_file", [path]);
    } catch {
      throw new Error(`no file ${path} in the VM (tmpfs paths like /tmp are not reachable)`);
    }
  }

  // runProgram runs a shell command in the guest as the postgres user
  // (through COPY TO PROGRAM) and returns its output.
  async runProgram(cmd: string): Promise<{ ok: boolean; output: string }> {
    const out = `/var/lib/postgresql/.pgwasm-run-${Date.now()}.log`;
    const q = (s: string) => "'" + s.replace(/'/g, "''") + "'";
    let ok = true;
    try {
      await this.agent.call({ op: "exec", sql: `COPY (SELECT 1) TO PROGRAM ${q(`(${cmd}) > ${out} 2>&1`)}` }, 1800000);
    } catch {
      ok = false;
    }
    let output = "";
    try {
      const r = await this.query(`SELECT pg_read_file(${q(out)})`);
      output = r.rows[0]?.[0] ?? "";
      await this.exec(`COPY (SELECT 1) TO PROGRAM ${q(`rm -f ${out}`)}`);
    } catch {
      // no output file
    }
    return { ok, output };
  }

  // ---- network ----

  private sendFrame(frame: Uint8Array<ArrayBuffer>): void {
    if (!this.relayURL) return;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(frame);
    } else if (this.wsQueue.length < 128) {
      this.wsQueue.push(frame.slice());
    }
  }

  private connectRelay(): void {
    if (!this.relayURL) return;
    const ws = new WebSocket(this.relayURL);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      for (const f of this.wsQueue.splice(0)) ws.send(f);
    };
    ws.onmessage = e => {
      if (e.data instanceof ArrayBuffer) this.send({ t: "net", frame: new Uint8Array(e.data) }, [e.data]);
    };
    ws.onclose = e => {
      if (this.ws !== ws || !this.relayURL) return;
      this.ws = null;
      // 4503 "draining": the server's replica shuts down; another one takes
      // the session at once (jitter spreads the reconnects).
      const delay = e.code === RELAY_DRAINING ? Math.random() * 250 : 3000;
      this.reconnectTimer = window.setTimeout(() => this.connectRelay(), delay);
    };
  }

  // startNetwork creates a relay session, connects the NIC to it, runs DHCP
  // in the guest and sets a fresh random password for postgres.
  async startNetwork(): Promise<NetworkInfo> {
    if (this.network) return this.network;
    const resp = await fetch(new URL("api/sessions", this.apiBase), { method: "POST" });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(`cannot start the network: ${body.error || "HTTP " + resp.status}`);
    this.sessionToken = body.token;
    this.sessionID = body.id;
    this.relayURL = body.relay_url;
    this.connectRelay();
    const password = randomPassword();
    const info: NetworkInfo = { session: body.id, password, portError: body.tunnel?.port_error };
    const fill = (t: any) => (t ? { host: t.host, port: t.port, url: String(t.url).replace("PASSWORD", password) } : undefined);
    info.port = fill(body.tunnel?.port);
    info.sni = fill(body.tunnel?.sni);
    try {
      Object.assign(info, await this.networkUp(password));
    } catch (err) {
      await this.stopNetwork();
      throw err;
    }
    this.network = info;
    this.dispatchEvent(new CustomEvent("network", { detail: info }));
    return info;
  }

  // networkUp runs DHCP in the guest, which also gives PostgreSQL a new TLS
  // key, then sets the password. Both are safe to repeat, and are, on
  // failure (the session and its tunnel port stay the same).
  private async networkUp(password: string): Promise<{ address: string; tlsSHA256: string }> {
    const step = (message: string) => this.progress({ phase: "network", message });
    const r = await this.retry(3, n => {
      step(`Network: DHCP and a new TLS key in the VM${n > 1 ? ` (try ${n} of 3)` : ""}`);
      return this.agent.call({ op: "net_up" }, 60000);
    });
    await this.retry(3, n => {
      step(`Network: setting the postgres password${n > 1 ? ` (try ${n} of 3)` : ""}`);
      return this.agent.call({ op: "set_password", user: "postgres", password }, 30000);
    });
    return { address: r.network?.address || "", tlsSHA256: r.network?.tls_cert_sha256 || "" };
  }

  // retry runs an idempotent agent request up to tries times; a dead VM is
  // not retried.
  private async retry<T>(tries: number, fn: (n: number) => Promise<T>): Promise<T> {
    for (let n = 1; ; n++) {
      try {
        return await fn(n);
      } catch (err) {
        if (this.deadReason || n >= tries) throw err;
      }
    }
  }

  async stopNetwork(): Promise<void> {
    // sessionID, not network.session: a start that failed half-way has a
    // session but no network info yet, and its session must go too.
    const token = this.sessionToken, id = this.sessionID;
    this.sessionID = "";
    this.relayURL = "";
    this.network = null;
    clearTimeout(this.reconnectTimer);
    this.ws?.close();
    this.ws = null;
    this.wsQueue = [];
    await this.agent.call({ op: "net_down" }, 20000).catch(() => undefined);
    if (id && token) {
      await fetch(new URL(`api/sessions/${id}`, this.apiBase), { method: "DELETE", headers: { Authorization: `Bearer ${token}` } }).catch(() => undefined);
    }
    this.sessionToken = "";
    this.dispatchEvent(new CustomEvent("network", { detail: null }));
  }

  async destroy(): Promise<void> {
    this.sockets.reset("the VM was stopped");
    if (this.network || this.sessionID) await this.stopNetwork();
    if (this.worker) await this.call("destroy").catch(() => undefined);
    this.stopWorker("the VM was stopped");
    this.terminal?.dispose();
    this.terminal = null;
    this.status("stopped", "stopped");
  }
}

// checkAgentChannel refuses an image whose agent does not answer on the
// page's channel (an image built before it had one): such an image's states
// would not even restore, as they lack the device.
function checkAgentChannel(m: Manifest): void {
  const channels = m.agent_channels || ["serial"];
  if (!channels.includes(AGENT_CHANNEL)) {
    throw new Error(`this VM image's agent answers only on ${channels.join(", ")}, but this page talks to it on ${AGENT_CHANNEL}: the image is older than the page; rebuild it (make image snapshot)`);
  }
}

function randomPassword(): string {
  const abc = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
  const b = crypto.getRandomValues(new Uint8Array(20));
  return Array.from(b, x => abc[x % abc.length]).join("");
}

// boot starts a VM and resolves when PostgreSQL answers. With element, a
// psql terminal fills it; without (or headless), only the API is there.
export async function boot(opts: BootOptions = {}): Promise<PgWasm> {
  if (opts.element && !opts.headless) ensureTerminalCSS();
  const pg = new PgWasm(opts);
  await pg.start();
  return pg;
}

function ensureTerminalCSS(): void {
  if (document.querySelector("link[data-pgwasm-xterm]")) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = terminalCSSURL().href;
  link.dataset.pgwasmXterm = "";
  document.head.appendChild(link);
}
