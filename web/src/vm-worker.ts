// The emulator's thread: v86 runs in this dedicated worker, so a long
// query in the VM never holds the page's thread (issue #11; docs/web.md,
// "The main thread during a long query"). PgWasm (pgwasm.ts) starts one
// worker per emulator and talks to it with the messages of vm-protocol.ts.
// Everything that reaches into v86's internals runs here: the channel
// writers, the TSC and yield fixes, the 9p file tracking, the counters.
import { V86 } from "v86";
import { serialWriter } from "../../harness/serial.mjs";
import { keepTSCOnRestore } from "../../harness/tsc.mjs";
import { wholeMillisecondWaits } from "../../harness/yield.mjs";
import { virtioConsoleWriter, type ChannelWriter } from "../../harness/virtio-console.mjs";
import { UPLOAD_DIR, type Channel, type EmulatorStats, type FromWorker, type ToWorker } from "./vm-protocol";

// Closed 9p files whose contents stay in memory (see trackFileLoads).
const KEEP_FILE_BYTES = 48 << 20;
const SAMPLE_MS = 500;

// The worker's global scope (the DOM typings this project compiles with
// have no WebWorker lib).
const scope = self as unknown as {
  postMessage(m: FromWorker, transfer: Transferable[]): void;
  onmessage: ((e: MessageEvent<ToWorker>) => void) | null;
};
let emulator: any = null;
let loadsInFlight = 0;
let lastLoad = 0;
let lastBusy = 0;
let lastIC = 0;
let throttle = 1; // see the "throttle" message (vm-protocol.ts)

const stats: EmulatorStats = {
  instructions: 0, inHlt: false, mainLoopCalls: 0, mainLoopMs: 0, mainLoopInstructions: 0, endedInHlt: 0,
  askedZero: 0, askedUnder1ms: 0, slicesOver50: 0, slicesOver100: 0, longestSliceMs: 0, jitModules: 0,
  jitBytes: 0, serial1Bytes: 0, virtio1Bytes: 0, tscAtSaveMs: 0, tscAfterRestoreMs: 0,
};

const writers: Record<Channel, ChannelWriter> = {
  serial0: serialWriter(() => emulator, 0),
  virtio1: virtioConsoleWriter(() => emulator, 1),
  virtio2: virtioConsoleWriter(() => emulator, 2),
};

function post(m: FromWorker, transfer: Transferable[] = []): void {
  scope.postMessage(m, transfer);
}

// copy detaches bytes from v86's buffers (a view into its memory, or one it
// reuses) so they can be transferred.
function copy(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(bytes);
}

// psql's output comes a byte per event: gathered, it crosses to the page
// once per emulator slice (a microtask runs when the slice returns).
let consoleOut: number[] = [];
function onConsoleByte(b: number): void {
  if (consoleOut.length === 0) queueMicrotask(flushConsole);
  consoleOut.push(b);
}
function flushConsole(): void {
  const bytes = Uint8Array.from(consoleOut);
  consoleOut = [];
  post({ t: "console", bytes }, [bytes.buffer]);
}

function create(options: Record<string, unknown>): void {
  emulator = new V86(options);
  emulator.add_listener("download-progress", (e: any) => post({ t: "progress", file: e.file_name, loaded: e.loaded, total: e.total || e.loaded }));
  emulator.add_listener("serial0-output-byte", onConsoleByte);
  emulator.add_listener("serial1-output-byte", () => stats.serial1Bytes++);
  for (const port of [1, 2]) {
    emulator.add_listener(`virtio-console${port}-output-bytes`, (b: Uint8Array) => {
      if (port === 1) stats.virtio1Bytes += b.length;
      const bytes = copy(b);
      post({ t: "virtio", port, bytes }, [bytes.buffer]);
    });
  }
  emulator.add_listener("net0-send", (f: Uint8Array) => {
    const frame = copy(f);
    post({ t: "frame", frame }, [frame.buffer]);
  });
  // HLT with interrupts off: nothing will ever wake the CPU.
  emulator.add_listener("cpu-event-halt", () => post({ t: "halt" }));
  emulator.add_listener("emulator-loaded", () => {
    // Before any restore: v86 would put a restored guest's clock back by
    // the previous state's uptime (issue #16 item 2; harness/tsc.mjs).
    keepTSCOnRestore(emulator);
    // No busy loop before each guest timer tick (harness/yield.mjs).
    wholeMillisecondWaits(emulator);
    trackFileLoads();
    count();
    setInterval(beat, SAMPLE_MS);
    post({ t: "loaded" });
  });
}

// beat sends what the page's liveness checks need: when the CPU last ran
// (the instruction counter moved and the CPU is not halted), and the 9p
// loads in flight.
function beat(): void {
  const cpu = emulator?.v86?.cpu;
  if (!cpu) return;
  const ic = emulator.get_instruction_counter();
  if (ic !== lastIC && cpu.in_hlt && !cpu.in_hlt[0]) lastBusy = Date.now();
  lastIC = ic;
  post({ t: "beat", lastBusy, loads: loadsInFlight, lastLoad });
}

// count keeps the EmulatorStats of v86's slices and JIT (a clock read per
// main_loop call: each runs about a millisecond of guest time).
function count(): void {
  const cpu = emulator.v86.cpu;
  const loop = cpu.main_loop;
  cpu.main_loop = () => {
    const t = performance.now(), ic = cpu.instruction_counter[0];
    const r = loop.call(cpu);
    const d = performance.now() - t;
    stats.mainLoopCalls++;
    stats.mainLoopMs += d;
    stats.mainLoopInstructions += (cpu.instruction_counter[0] - ic) >>> 0;
    if (cpu.in_hlt[0]) stats.endedInHlt++;
    if (r <= 0) stats.askedZero++;
    else if (r < 1) stats.askedUnder1ms++;
    if (d > 50) stats.slicesOver50++;
    if (d > 100) stats.slicesOver100++;
    if (d > stats.longestSliceMs) stats.longestSliceMs = d;
    return throttle > 1 ? Math.max(r, (throttle - 1) * d) : r;
  };
  // v86's JIT hands each compiled guest code block to V8 as a new
  // WebAssembly module here.
  const fin = cpu.codegen_finalize;
  cpu.codegen_finalize = (...a: any[]) => {
    stats.jitModules++;
    stats.jitBytes += a[4] || 0;
    return fin.apply(cpu, a);
  };
}

function tscMs(): number {
  const cpu = emulator.v86.cpu;
  cpu.store_current_tsc();
  return ((cpu.current_tsc[1] >>> 0) * 2 ** 32 + (cpu.current_tsc[0] >>> 0)) / 1e6;
}

// trackFileLoads counts v86's 9p file loads in flight (the only 9p work
// that outlives a task): a state must be saved or replaced only when none
// is, or its reply lands in the wrong VM or never (see quiesce).
//
// It also keeps loaded files for a while after the guest closes them
// (v86 drops a file's contents on its last close, so every process start
// or page fault after that fetched and decompressed the whole blob again:
// PostgreSQL's autovacuum workers, forked every 20 s, cost an idle tab
// seconds of CPU a minute). Up to KEEP_FILE_BYTES stay, least recently
// closed first out.
function trackFileLoads(): void {
  const storage = emulator.fs9p?.storage;
  if (!storage || typeof storage.read !== "function") return;
  const mem = storage.storage;
  if (mem?.filedata instanceof Map && typeof storage.uncache === "function") {
    const kept = new Map<string, number>();
    let bytes = 0;
    storage.uncache = (sha: string) => {
      const data = mem.filedata.get(sha);
      if (!data) return;
      bytes -= kept.get(sha) || 0;
      kept.delete(sha);
      kept.set(sha, data.length);
      bytes += data.length;
      for (const [k, n] of kept) {
        if (bytes <= KEEP_FILE_BYTES) break;
        kept.delete(k);
        bytes -= n;
        mem.filedata.delete(k);
      }
    };
  }
  const read = storage.read.bind(storage);
  storage.read = async (...args: unknown[]) => {
    loadsInFlight++;
    lastLoad = Date.now();
    try {
      return await read(...args);
    } finally {
      loadsInFlight--;
      lastLoad = Date.now();
    }
  };
}

// quiesce stops the CPU and waits until no 9p request is in flight. A
// state saved with a request in flight has it pending forever when
// restored in another page (the process waiting on it hangs); a restore
// over a VM with a request in flight gets that request's late reply
// written into the restored guest's memory and virtqueue (corrupt pages,
// SIGBUS; issue #16 item 2).
async function quiesce(): Promise<void> {
  await emulator.stop();
  const deadline = Date.now() + 120000;
  while (loadsInFlight > 0 && Date.now() < deadline) await new Promise(r => setTimeout(r, 20));
  if (loadsInFlight > 0) throw new Error("the VM's file loads did not finish in 120 s");
}

// run starts the CPU and resolves once it runs: serial input sent before
// is lost.
async function run(): Promise<void> {
  const started = new Promise<void>(resolve => {
    const l = () => {
      emulator.remove_listener("emulator-started", l);
      resolve();
    };
    emulator.add_listener("emulator-started", l);
  });
  await emulator.run();
  await started;
}

// upload writes a file through 9p; see PgWasm.upload.
async function upload(path: string, data: Uint8Array): Promise<string> {
  const fs9p = emulator.fs9p;
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
    await emulator.create_file(target, data);
  } catch {
    throw new Error(`cannot create ${target} in the VM (does its directory exist?)`);
  }
  return target;
}

// listFiles lists the regular files in a 9p directory with their sizes.
function listFiles(dir: string): { name: string; size: number }[] {
  const fs9p = emulator.fs9p;
  let names: string[] = [];
  try {
    names = fs9p.read_dir(dir) || [];
  } catch {
    return [];
  }
  const out: { name: string; size: number }[] = [];
  for (const name of names) {
    const node = fs9p.SearchPath(`${dir}/${name}`);
    const inode = node.id > -1 ? fs9p.GetInode(node.id) : null;
    if (inode && (inode.mode & 0o170000) === 0o100000) out.push({ name, size: inode.size });
  }
  return out;
}

// ops are the page's calls (PgWasm.call); a result that is an ArrayBuffer
// (v86 makes a new one for save_state) is transferred, a Uint8Array copied
// first (read_file may hand out a view of v86's cached file) and its copy
// transferred.
const ops: Record<string, (...args: any[]) => unknown> = {
  run,
  stop: () => emulator.stop(),
  quiesce,
  save_state: async () => {
    stats.tscAtSaveMs = tscMs();
    return emulator.save_state();
  },
  restore_state: async (state: ArrayBuffer) => {
    await emulator.restore_state(state);
    stats.tscAfterRestoreMs = tscMs();
    // Bytes queued for the VM before the restore must not reach the
    // restored one (they would end up in the middle of its next line);
    // the page's resets come a message later, too late for a pump.
    for (const w of Object.values(writers)) w.reset();
  },
  destroy: async () => {
    await emulator?.destroy();
    emulator = null;
  },
  serial0_send: (text: string) => emulator.serial0_send(text),
  upload,
  read_file: async (path: string) => emulator.read_file(path),
  exists: (path: string) => emulator.fs9p.SearchPath(path).id > -1,
  list_files: listFiles,
  stats: (resetPeak = false) => {
    const cpu = emulator?.v86?.cpu;
    if (cpu) {
      stats.instructions = emulator.get_instruction_counter() >>> 0;
      stats.inHlt = !!cpu.in_hlt[0];
    }
    const out = { ...stats };
    if (resetPeak) stats.longestSliceMs = 0;
    return out;
  },
  // A debugging aid for the tests (engine.spec.mjs, a killed VM): the
  // file's reads fail with ENOENT from now on, as if it had been unlinked.
  break_file: (path: string) => {
    const fs9p = emulator.fs9p;
    const id = fs9p.SearchPath(path).id;
    if (id < 0) throw new Error(`no ${path} in the VM`);
    fs9p.inodes[id].status = 4;
  },
};

async function call(id: number, op: string, args: unknown[]): Promise<void> {
  try {
    const fn = ops[op];
    if (!fn) throw new Error(`the emulator's worker has no operation ${op}`);
    if (!emulator && op !== "destroy") throw new Error("the emulator is gone");
    let value = await fn(...args);
    if (value instanceof Uint8Array) value = copy(value);
    const transfer = value instanceof ArrayBuffer ? [value] : value instanceof Uint8Array ? [value.buffer as ArrayBuffer] : [];
    post({ t: "reply", id, ok: true, value }, transfer);
  } catch (err) {
    post({ t: "reply", id, ok: false, error: String((err as Error)?.message || err) });
  }
}

scope.onmessage = (e: MessageEvent<ToWorker>) => {
  const m = e.data;
  switch (m.t) {
    case "create":
      try {
        create(m.options);
      } catch (err) {
        post({ t: "failed", error: String((err as Error)?.message || err) });
      }
      break;
    case "write":
      writers[m.channel](m.bytes);
      break;
    case "reset":
      writers[m.channel].reset();
      break;
    case "throttle":
      throttle = m.rate;
      break;
    case "net":
      emulator?.bus.send("net0-receive", m.frame);
      break;
    case "call":
      void call(m.id, m.op, m.args);
      break;
  }
};
