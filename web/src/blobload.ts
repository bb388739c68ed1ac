// decompressOffThread moves the decompression of the VM's 9p files off the
// page's thread.
//
// v86 fetches a file the guest reads from the image's 9p/blobs/ in one piece
// and, for a .zst blob, decompresses it on the calling thread with its
// WebAssembly zstd (ServerFileStorageWrapper.load_from_server). That thread
// is the page's: PostgreSQL's 8 MB binary, read again by a query after a
// restore, froze the page for 0.35-1.6 s (a Chromium trace of issue #11's
// long query on a loaded 2-core machine). v86 has a zstd worker of its own
// (zstd_decompress_worker, used for its disk images); the blobs go through
// it here. Where it cannot start (no Worker, a CSP without `worker-src
// blob:`), the blob is decompressed on this thread as before.
//
// Returns false when v86's internals are not as expected (nothing changed).
export function decompressOffThread(emulator: any): boolean {
  const storage = emulator?.fs9p?.storage;
  if (!storage || typeof storage.load_from_server !== "function" || typeof storage.cache !== "function" || typeof storage.baseurl !== "string") return false;
  if (typeof emulator.zstd_decompress_worker !== "function" || typeof emulator.zstd_decompress !== "function") return false;
  let workerFailed = false;
  const decompress = async (size: number, data: Uint8Array): Promise<Uint8Array> => {
    if (!workerFailed) {
      try {
        // A copy: the worker takes (transfers) the buffer it is given, and
        // data stays for the fallback.
        return new Uint8Array(await viaWorker(emulator, size, data.slice()));
      } catch (err) {
        workerFailed = true;
        console.warn("pgwasm: v86's zstd worker failed; decompressing the VM's files on the page's thread:", err);
      }
    }
    return new Uint8Array(emulator.zstd_decompress(size, data));
  };
  storage.load_from_server = async (name: string, size: number): Promise<Uint8Array> => {
    let data = await fetchBlob(storage.baseurl + name);
    if (name.endsWith(".zst")) data = await decompress(size, data);
    await storage.cache(name, data);
    return data;
  };
  return true;
}

// viaWorker runs v86's worker decompression, failing (instead of never
// answering, as v86's promise would) when the worker reports an error,
// e.g. a Content-Security-Policy that refuses blob: workers.
function viaWorker(emulator: any, size: number, data: Uint8Array): Promise<ArrayBuffer> {
  return new Promise((resolve, reject) => {
    const answer: Promise<ArrayBuffer> = emulator.zstd_decompress_worker(size, data);
    const worker: Worker | undefined = emulator.zstd_worker;
    const failed = (e: Event) => reject(new Error((e as ErrorEvent).message || "the zstd worker failed to start"));
    worker?.addEventListener("error", failed);
    answer.then(resolve, reject).finally(() => worker?.removeEventListener("error", failed));
  });
}

// fetchBlob fetches one blob, trying again on a network error or a server
// error (5xx) as v86's own loader does; the guest's read waits meanwhile.
async function fetchBlob(url: string): Promise<Uint8Array> {
  for (let attempt = 1; ; attempt++) {
    let status = 0;
    let why: string;
    try {
      const r = await fetch(url);
      if (r.ok) return new Uint8Array(await r.arrayBuffer());
      status = r.status;
      why = `HTTP ${status}`;
    } catch (err) {
      why = (err as Error)?.message || String(err);
    }
    if (status > 0 && status < 500) throw new Error(`cannot load the VM's file ${url}: ${why}`);
    if (attempt >= 5) throw new Error(`cannot load the VM's file ${url} after ${attempt} tries: ${why}`);
    await new Promise(r => setTimeout(r, 500 * attempt));
  }
}
