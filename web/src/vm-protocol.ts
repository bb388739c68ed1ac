// The messages between PgWasm (the page's thread) and the emulator's worker
// (vm-worker.ts, which owns v86), and what both sides agree on. Both
// import it, so it stays free of v86 and the page.

// UPLOAD_DIR is where uploads go in the VM (created on the first one).
export const UPLOAD_DIR = "/uploads";

// Channels the page writes into the VM: ttyS0 (the psql console) and the
// virtio-console ports (1: the agent, 2: the socket mux).
export type Channel = "serial0" | "virtio1" | "virtio2";

// EmulatorStats are counters the worker keeps about its emulator, for the
// tests and `web/test/bench.mjs` (pg.emulatorStats()). All counts since
// the emulator was created; take differences.
export interface EmulatorStats {
  instructions: number; // v86's instruction counter (u32, wraps)
  inHlt: boolean; // the CPU halted (waits for an interrupt)
  mainLoopCalls: number; // v86 main_loop calls (one emulator slice each)
  mainLoopMs: number; // time spent in them
  mainLoopInstructions: number; // guest instructions they ran
  endedInHlt: number; // calls after which the CPU was halted
  askedZero: number; // calls that asked to run again at once
  askedUnder1ms: number; // calls that asked for a wait under 1 ms
  slicesOver50: number; // calls over 50 ms
  slicesOver100: number; // calls over 100 ms
  longestSliceMs: number; // since creation or the last emulatorStats(true)
  jitModules: number; // wasm modules v86's JIT compiled
  jitBytes: number;
  serial1Bytes: number; // bytes the guest wrote on ttyS1 (the page never uses it)
  virtio1Bytes: number; // bytes the guest wrote on the agent's channel
  // The time stamp counter (ms) right before the last save_state and right
  // after the last restore_state (restore.spec.mjs: the clock must resume
  // where it was saved).
  tscAtSaveMs: number;
  tscAfterRestoreMs: number;
}

// Page → worker.
export type ToWorker =
  | { t: "create"; options: Record<string, unknown> }
  | { t: "write"; channel: Channel; bytes: Uint8Array }
  | { t: "reset"; channel: Channel }
  | { t: "net"; frame: Uint8Array }
  // A test aid (web/test/lib.mjs throttleCPU): CDP's CPU throttling slows
  // only a page's own thread ("Operation is only supported for pages, not
  // workers"), so the worker slows its emulator itself: after each slice of
  // d ms it waits (rate - 1) * d ms, a CPU rate times slower to the guest.
  | { t: "throttle"; rate: number }
  | { t: "call"; id: number; op: string; args: unknown[] };

// Worker → page. "beat" comes every SAMPLE_MS with what the liveness
// checks need (pgwasm.ts judgeWait).
export type FromWorker =
  | { t: "loaded" }
  | { t: "failed"; error: string }
  | { t: "progress"; file: string; loaded: number; total: number }
  | { t: "console"; bytes: Uint8Array }
  | { t: "virtio"; port: number; bytes: Uint8Array }
  | { t: "frame"; frame: Uint8Array }
  | { t: "halt" }
  | { t: "beat"; lastBusy: number; loads: number; lastLoad: number }
  | { t: "reply"; id: number; ok: boolean; value?: unknown; error?: string };
