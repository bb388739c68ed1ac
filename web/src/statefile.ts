// Saved VM states: a small header (what image and memory size the state
// belongs to) in front of the gzip-compressed v86 state, so a state that
// cannot run here is refused before the running VM is touched.
//
// Layout: "PGWASMST" (8 bytes), u32 LE header length, header JSON, payload.

const MAGIC = "PGWASMST";
const V86_MAGIC = 0x86768676;
const V86_STATE_VERSION = 6;

export interface StateHeader {
  format: 1;
  image_key: string;
  memory_mb: number;
  postgres_version?: string;
  compression: "gzip";
  raw_size: number;
  created: string; // ISO time
  // network_ref names the network session the VM had at the save, kept in
  // this browser's localStorage (never in the file: its token controls the
  // session), so a restore after a reload can bring the network back.
  network_ref?: string;
}

export class StateError extends Error {}

export async function gzip(data: ArrayBuffer): Promise<ArrayBuffer> {
  const stream = new Blob([data]).stream().pipeThrough(new CompressionStream("gzip"));
  return new Response(stream).arrayBuffer();
}

export async function gunzip(data: Blob): Promise<ArrayBuffer> {
  const stream = data.stream().pipeThrough(new DecompressionStream("gzip"));
  return new Response(stream).arrayBuffer();
}

// wrap compresses a raw v86 state and puts the header in front.
export async function wrapState(raw: ArrayBuffer, h: Omit<StateHeader, "format" | "compression" | "raw_size" | "created">): Promise<Blob> {
  const header: StateHeader = {
    format: 1,
    compression: "gzip",
    raw_size: raw.byteLength,
    created: new Date().toISOString(),
    ...h,
  };
  const json = new TextEncoder().encode(JSON.stringify(header));
  const len = new Uint8Array(4);
  new DataView(len.buffer).setUint32(0, json.length, true);
  const payload = await gzip(raw);
  return new Blob([new TextEncoder().encode(MAGIC), len, json, payload], { type: "application/octet-stream" });
}

// readHeader reads only the header (cheap: for listing and first checks).
export async function readHeader(blob: Blob): Promise<{ header: StateHeader; offset: number }> {
  const head = new Uint8Array(await blob.slice(0, 12).arrayBuffer());
  if (head.length < 12 || new TextDecoder().decode(head.slice(0, 8)) !== MAGIC) {
    throw new StateError("this is not a pgwasm state file (it has no pgwasm state header)");
  }
  const n = new DataView(head.buffer).getUint32(8, true);
  if (n > 65536 || 12 + n > blob.size) throw new StateError("the state file is truncated (its header is incomplete)");
  let header: StateHeader;
  try {
    header = JSON.parse(new TextDecoder().decode(await blob.slice(12, 12 + n).arrayBuffer()));
  } catch {
    throw new StateError("the state file's header is damaged");
  }
  if (header.format !== 1 || header.compression !== "gzip") {
    throw new StateError(`unsupported state format ${header.format}/${header.compression}`);
  }
  return { header, offset: 12 + n };
}

export interface Expect {
  imageKey: string;
  memoryMB: number;
}

// openState checks a saved state against the running image and memory
// size, decompresses it completely and checks the v86 header and length,
// and returns the raw state. Any problem is a StateError with a message
// for people; nothing here touches the VM.
export async function openState(blob: Blob, want: Expect): Promise<{ raw: ArrayBuffer; header: StateHeader }> {
  const { header, offset } = await readHeader(blob);
  if (header.image_key !== want.imageKey) {
    throw new StateError(
      `this state was saved on another VM image (${header.image_key.slice(0, 12)}; this page runs ${want.imageKey.slice(0, 12)}), ` +
        "so it cannot be restored here",
    );
  }
  if (header.memory_mb !== want.memoryMB) {
    throw new StateError(
      `this state was saved with ${header.memory_mb} MB of memory, the VM has ${want.memoryMB} MB: ` +
        `choose ${header.memory_mb} MB in the settings, start, then restore again`,
    );
  }
  let raw: ArrayBuffer;
  try {
    raw = await gunzip(blob.slice(offset));
  } catch {
    throw new StateError("the state file is truncated or damaged (it does not decompress)");
  }
  checkV86State(raw, want.memoryMB);
  return { raw, header };
}

// checkV86State checks v86's own header: magic, version, total length and
// the memory size recorded in the CPU state.
export function checkV86State(raw: ArrayBuffer, memoryMB: number): void {
  if (raw.byteLength < 16) throw new StateError("the state file is truncated");
  const dv = new DataView(raw);
  const magic = dv.getUint32(0, true), version = dv.getUint32(4, true);
  const total = dv.getUint32(8, true), infoLen = dv.getUint32(12, true);
  if (magic !== V86_MAGIC) throw new StateError("the state file is damaged (no v86 state inside)");
  if (version !== V86_STATE_VERSION) throw new StateError(`the state was saved by another v86 version (format ${version})`);
  if (total !== raw.byteLength || 16 + infoLen > total) {
    throw new StateError(`the state file is truncated or damaged (${raw.byteLength} of ${total} bytes)`);
  }
  try {
    const info = JSON.parse(new TextDecoder().decode(new Uint8Array(raw, 16, infoLen)));
    const mem = info.state[0];
    if (mem !== memoryMB * 1024 * 1024) {
      throw new StateError(`the state holds ${mem / 1048576} MB of memory, the VM has ${memoryMB} MB`);
    }
  } catch (err) {
    if (err instanceof StateError) throw err;
    throw new StateError("the state file is damaged (its info block does not parse)");
  }
}
