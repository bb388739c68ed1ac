// Saved VM states in IndexedDB: one record per named state, the blob
// already compressed (statefile.ts), and one kept session (the page's
// autosave) under a fixed key in a store of its own, so replacing it is
// one transaction: a full quota aborts it and the previous one stays.

export interface SavedState {
  id?: number;
  name: string;
  created: string;
  size: number;
  memory_mb: number;
  image_key: string;
  blob: Blob;
}

// KeptSession is the page's autosave: the last state of the running VM.
export interface KeptSession {
  created: string; // when it was taken (ISO)
  size: number;
  memory_mb: number;
  image_key: string;
  blob: Blob;
}

const DB = "pgwasm";
const STATES = "states";
const SESSION = "session";
const CURRENT = "current";

function open(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 2);
    req.onupgradeneeded = () => {
      const db = req.result;
      if (!db.objectStoreNames.contains(STATES)) db.createObjectStore(STATES, { keyPath: "id", autoIncrement: true });
      if (!db.objectStoreNames.contains(SESSION)) db.createObjectStore(SESSION);
    };
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
    req.onblocked = () => reject(new Error("browser storage is held by an older copy of this page in another tab: close it and reload"));
  });
}

async function tx<T>(name: string, mode: IDBTransactionMode, fn: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  const db = await open();
  try {
    return await new Promise<T>((resolve, reject) => {
      const t = db.transaction(name, mode);
      const req = fn(t.objectStore(name));
      let result: T;
      req.onsuccess = () => (result = req.result);
      t.oncomplete = () => resolve(result);
      t.onerror = () => reject(t.error || req.error);
      t.onabort = () => reject(t.error || req.error || new Error("storage transaction aborted"));
    });
  } finally {
    db.close();
  }
}

// isQuotaError: the browser refused to store more (the write was not made).
export function isQuotaError(err: unknown): boolean {
  return (err as DOMException | null)?.name === "QuotaExceededError";
}

export async function list(): Promise<Omit<SavedState, "blob">[]> {
  const all = await tx<SavedState[]>(STATES, "readonly", s => s.getAll() as IDBRequest<SavedState[]>);
  return all.map(({ blob: _b, ...rest }) => rest).sort((a, b) => b.created.localeCompare(a.created));
}

export function get(id: number): Promise<SavedState | undefined> {
  return tx(STATES, "readonly", s => s.get(id) as IDBRequest<SavedState | undefined>);
}

export function put(rec: SavedState): Promise<IDBValidKey> {
  return tx(STATES, "readwrite", s => s.add(rec));
}

export function remove(id: number): Promise<undefined> {
  return tx(STATES, "readwrite", s => s.delete(id) as IDBRequest<undefined>);
}

// getSession returns the kept session, if any (its blob is read lazily).
export function getSession(): Promise<KeptSession | undefined> {
  return tx(SESSION, "readonly", s => s.get(CURRENT) as IDBRequest<KeptSession | undefined>);
}

// putSession replaces the kept session in one transaction.
export async function putSession(rec: KeptSession): Promise<void> {
  await tx(SESSION, "readwrite", s => s.put(rec, CURRENT));
}

export async function removeSession(): Promise<void> {
  await tx(SESSION, "readwrite", s => s.delete(CURRENT) as IDBRequest<undefined>);
}

// usage is what this origin stores and may store, as the browser counts it.
export async function usage(): Promise<{ usage: number; quota: number } | null> {
  if (!navigator.storage?.estimate) return null;
  const e = await navigator.storage.estimate();
  return { usage: e.usage ?? 0, quota: e.quota ?? 0 };
}
