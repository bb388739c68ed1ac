// pgwasm embedding API: PostgreSQL 17 in a v86 VM in this browser tab.
//
//   import { boot } from "/pgwasm.js";
//   const pg = await boot({ element: document.querySelector("#term") });
//   const r = await pg.query("select $1::int + 1 as n", ["41"]);
//   // r.columns = [{name: "n", type: "int4"}], r.rows = [["42"]]
//
// Events (pg.addEventListener): "progress" (detail: {phase, loaded, total,
// message}), "status" (detail: {status, message}), "network" (detail:
// NetworkInfo or null).
import { V86 } from "v86";
import { serialWriter } from "../../harness/serial.mjs";
import { Agent, type QueryResult } from "./agent";
import { PsqlTerminal } from "./terminal";
import { openState, wrapState, StateError } from "./statefile";

export { StateError } from "./statefile";
export type { QueryResult, Column } from "./agent";

export const MEMORY_SIZES = [128, 256, 512, 1024];
// The VGA memory every snapshot is taken with (internal/vm.VGAMemoryMB): a
// state restores only with identical device settings.
const VGA_MEMORY_MB = 2;
export const UPLOAD_DIR = "/uploads";

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
  phase: "download" | "restore" | "boot" | "postgres" | "save";
  loaded?: number;
  total?: number;
  message: string;
}

export interface Status {
  status: "starting" | "ready" | "busy" | "error" | "stopped";
  message: string;
}

export interface Manifest {
  key: string;
  cmdline: string;
  net_device: string;
  postgres_version?: string;
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

const here = (): string => new URL(".", import.meta.url).href;

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

export class PgWasm extends EventTarget {
  emulator: any = null;
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
  private opts: BootOptions;

  constructor(opts: BootOptions = {}) {
    super();
    this.opts = opts;
    this.memoryMB = opts.memory || 128;
    this.imageBase = new URL(opts.imageBase || "image/", here()).href.replace(/\/?$/, "/");
    this.apiBase = new URL(opts.apiBase || "./", here()).href;
    this.agent = new Agent(serialWriter(() => this.emulator, 1));
  }

  private mark(name: string): void {
    if (!(name in this.timings)) this.timings[name] = Math.round(performance.now() - this.t0);
  }

  progress(p: Progress): void {
    this.opts.onProgress?.(p);
    this.dispatchEvent(new CustomEvent("progress", { detail: p }));
  }

  status(status: Status["status"], message: string): void {
    const s = { status, message };
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
      const toConsole = serialWriter(() => this.emulator, 0);
      const utf8 = new TextEncoder();
      this.terminal = new PsqlTerminal(opts.element, d => toConsole(utf8.encode(d)), opts.fontSize);
      this.terminal.onResize = (rows, cols) => void this.syncTerminalSize(rows, cols).catch(() => undefined);
    }

    const files: Record<string, { loaded: number; total: number }> = {};
    const img = (name: string) => new URL(name, this.imageBase).href;
    const options: any = {
      wasm_path: new URL("v86.wasm", here()).href,
      bios: { url: img("bios.bin") },
      vga_bios: { url: img("vgabios.bin") },
      memory_size: this.memoryMB * 1024 * 1024,
      vga_memory_size: (meta?.vga_memory_mb || VGA_MEMORY_MB) * 1024 * 1024,
      autostart: false,
      disable_keyboard: true,
      disable_mouse: true,
      disable_speaker: true,
      uart1: true,
      net_device: { type: this.manifest.net_device || "ne2k" },
      preserve_mac_from_state_image: true,
      filesystem: meta ? { baseurl: img("9p/blobs/") } : { basefs: img("9p/fs.json"), baseurl: img("9p/blobs/") },
    };
    if (!meta) {
      options.bzimage = { url: img("bzImage") };
      options.initrd = { url: img("initrd.img") };
      options.cmdline = this.manifest.cmdline;
    }
    const emulator = new V86(options);
    this.emulator = emulator;
    emulator.add_listener("download-progress", (e: any) => {
      files[e.file_name] = { loaded: e.loaded, total: e.total || e.loaded };
      let loaded = 0, total = 0;
      for (const f of Object.values(files)) {
        loaded += f.loaded;
        total += f.total;
      }
      this.progress({ phase: "download", loaded, total, message: `Downloading VM files: ${fmtMB(loaded)} of ${fmtMB(total)}` });
    });
    emulator.add_listener("serial0-output-byte", (b: number) => this.onConsoleByte(b));
    emulator.add_listener("serial1-output-byte", (b: number) => this.agent.feed(b));
    // Frames from the guest's NIC go to the relay when the network is on.
    emulator.add_listener("net0-send", (frame: Uint8Array) => this.sendFrame(frame as Uint8Array<ArrayBuffer>));

    await new Promise<void>(resolve => emulator.add_listener("emulator-loaded", () => resolve()));
    this.mark("emulator_loaded");
    if (stateBuf) {
      this.progress({ phase: "restore", message: "Restoring the VM state" });
      try {
        await emulator.restore_state(stateBuf);
      } catch (err) {
        throw new Error(`cannot restore the VM state: ${(err as Error)?.message || err}`);
      }
      this.mark("state_restored");
    }
    await this.runAndWaitStarted();

    const bootStart = performance.now();
    const tick = window.setInterval(() => {
      const s = Math.round((performance.now() - bootStart) / 1000);
      this.progress({ phase: "boot", message: meta ? `Resuming the VM… ${s} s` : `Booting Linux and PostgreSQL… ${s} s (a full boot takes about 30 s)` });
    }, 500);
    try {
      await this.agent.waitReady(meta ? 60000 : 300000, !!meta);
      this.mark("agent_ready");
      await this.afterResume();
      this.progress({ phase: "postgres", message: "Waiting for PostgreSQL" });
      await this.waitPostgres(meta ? 60000 : 180000);
      this.mark("postgres_ready");
    } finally {
      clearInterval(tick);
    }
    if (this.terminal) {
      const { rows, cols } = this.terminal.size();
      await this.syncTerminalSize(rows, cols);
      if (meta) this.emulator.serial0_send("\r"); // psql redraws its prompt
      await this.waitPrompt(30000);
      this.terminal.focus();
    }
    this.mark("ready");
    this.status("ready", `PostgreSQL ${this.serverVersion} is ready`);
  }

  private async runAndWaitStarted(): Promise<void> {
    // Serial input sent before the CPU runs is lost: wait for it.
    const started = new Promise<void>(resolve => {
      const l = () => {
        this.emulator.remove_listener("emulator-started", l);
        resolve();
      };
      this.emulator.add_listener("emulator-started", l);
    });
    await this.emulator.run();
    await started;
    this.mark("emulator_started");
  }

  // afterResume brings the guest up to date after a restore: its clock
  // stopped at the save; its kernel random generator is the same in every
  // tab restored from that state (ours is mixed in before anything draws a
  // key); its network needs DHCP again on our relay.
  private async afterResume(): Promise<void> {
    await this.agent.call({ op: "set_time", unix_ms: Date.now() }, 10000).catch(() => undefined);
    const entropy = btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(32))));
    await this.agent.call({ op: "add_entropy", entropy }, 10000);
    if (this.network) {
      const net = this.network;
      await this.networkUp(net.password).then(r => Object.assign(net, r)).catch(err => this.status("error", `network: ${err.message}`));
    }
  }

  private async waitPostgres(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const st = await this.agent.call({ op: "status" }, 10000);
      if (st.postgres === "ready") {
        this.serverVersion = st.server_version || "";
        return;
      }
      if (Date.now() > deadline) throw new Error(`PostgreSQL did not start: ${st.postgres_error || st.postgres}`);
      await new Promise(r => setTimeout(r, 300));
    }
  }

  private waitPrompt(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    return new Promise(resolve => {
      const check = () => {
        if (this.terminal?.atPrompt() || Date.now() > deadline) resolve();
        else setTimeout(check, 100);
      };
      check();
    });
  }

  private onConsoleByte(byte: number): void {
    const text = this.consoleDecoder.decode(new Uint8Array([byte]), { stream: true });
    if (!text) return;
    this.consoleText = (this.consoleText + text).slice(-16384);
    this.terminal?.output(text);
  }

  // syncTerminalSize tells the guest's console tty the terminal's size
  // (the agent's set_winsize: an ioctl, nothing typed, no process started),
  // so psql wraps lines and formats wide results for it.
  async syncTerminalSize(rows: number, cols: number): Promise<void> {
    if (!this.terminal || !this.emulator || !this.agent.ready) return;
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
    const raw: ArrayBuffer = await this.emulator.save_state();
    this.progress({ phase: "save", message: `Compressing ${fmtMB(raw.byteLength)}` });
    return wrapState(raw, { image_key: this.manifest.key, memory_mb: this.memoryMB, postgres_version: this.serverVersion });
  }

  // restoreState checks the state first (image, memory size, integrity):
  // a bad one throws StateError and the running VM goes on untouched.
  async restoreState(blob: Blob): Promise<void> {
    this.progress({ phase: "restore", message: "Checking the state" });
    const { raw } = await openState(blob, { imageKey: this.manifest.key, memoryMB: this.memoryMB });
    this.progress({ phase: "restore", message: "Restoring the VM state" });
    this.status("busy", "restoring");
    await this.emulator.stop();
    try {
      await this.emulator.restore_state(raw);
    } catch (err) {
      await this.runAndWaitStarted();
      throw new StateError(`the emulator refused the state: ${(err as Error)?.message || err}`);
    }
    this.agent.reset("the VM was restored");
    this.terminal?.reset();
    await this.runAndWaitStarted();
    await this.agent.waitReady(120000, true);
    await this.afterResume();
    await this.waitPostgres(60000);
    if (this.terminal) {
      const { rows, cols } = this.terminal.size();
      await this.syncTerminalSize(rows, cols);
    }
    this.emulator.serial0_send("\r");
    if (this.terminal) await this.waitPrompt(15000);
    this.status("ready", `PostgreSQL ${this.serverVersion} is ready (state restored)`);
  }

  // ---- files (through v86's 9p: the guest's root file system) ----

  // upload writes a file into the VM; its parent directory must exist,
  // except under /uploads, which is created. Returns the path written
  // (a name taken already gets a -N suffix: the guest may cache the old one).
  async upload(path: string, bytes: Uint8Array | ArrayBuffer | Blob): Promise<string> {
    const data = bytes instanceof Blob ? new Uint8Array(await bytes.arrayBuffer()) : bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
    const fs9p = this.emulator.fs9p;
    if (path.startsWith(UPLOAD_DIR + "/") && fs9p.SearchPath(UPLOAD_DIR).id === -1) {
      fs9p.CreateDirectory(UPLOAD_DIR.slice(1), 0);
    }
    let target = path;
    for (let n = 1; fs9p.SearchPath(target).id !== -1; n++) {
      const dot = path.lastIndexOf(".");
      const slash = path.lastIndexOf("/");
      target = dot > slash + 1 ? `${path.slice(0, dot)}-${n}${path.slice(dot)}` : `${path}-${n}`;
    }
    try {
      await this.emulator.create_file(target, data);
    } catch {
      throw new Error(`cannot create ${target} in the VM (does its directory exist?)`);
    }
    return target;
  }

  // download reads a file out of the VM. Files on the guest's tmpfs mounts
  // (/tmp, /run, /dev/shm) are not on the 9p root and cannot be read.
  async download(path: string): Promise<Uint8Array<ArrayBuffer>> {
    // Flush what the guest still holds in its page cache.
    await this.agent.call({ op: "exec", sql: "COPY (SELECT 1) TO PROGRAM 'sync'" }, 30000).catch(() => undefined);
    try {
      return await this.emulator.read_file(path);
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
      if (e.data instanceof ArrayBuffer) this.emulator?.bus.send("net0-receive", new Uint8Array(e.data));
    };
    ws.onclose = () => {
      if (this.ws !== ws || !this.relayURL) return;
      this.ws = null;
      this.reconnectTimer = window.setTimeout(() => this.connectRelay(), 3000);
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
  // key, then sets the password.
  private async networkUp(password: string): Promise<{ address: string; tlsSHA256: string }> {
    const r = await this.agent.call({ op: "net_up" }, 60000);
    await this.agent.call({ op: "set_password", user: "postgres", password }, 30000);
    return { address: r.network?.address || "", tlsSHA256: r.network?.tls_cert_sha256 || "" };
  }

  async stopNetwork(): Promise<void> {
    const token = this.sessionToken, id = this.network?.session;
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
    if (this.network) await this.stopNetwork();
    await this.emulator?.destroy();
    this.emulator = null;
    this.terminal?.dispose();
    this.terminal = null;
    this.status("stopped", "stopped");
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
  link.href = new URL("xterm.css", here()).href;
  link.dataset.pgwasmXterm = "";
  document.head.appendChild(link);
}
