// Saved VM states in IndexedDB: one record per state, the blob already
// compressed (statefile.ts).

export interface SavedState {
  id?: number;
  name: string;
  created: string;
  size: number;
  memory_mb: number;
  image_key: string;
  blob: Blob;
}

const DB = "pgwasm";
const STORE = "states";

function open(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE, { keyPath: "id", autoIncrement: true });
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function tx<T>(mode: IDBTransactionMode, fn: (s: IDBObjectStore) => IDBRequest<T>): Promise<T> {
  const db = await open();
  try {
    return await new Promise<T>((resolve, reject) => {
      const t = db.transaction(STORE, mode);
      const req = fn(t.objectStore(STORE));
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

export async function list(): Promise<Omit<SavedState, "blob">[]> {
  const all = await tx<SavedState[]>("readonly", s => s.getAll() as IDBRequest<SavedState[]>);
  return all.map(({ blob: _b, ...rest }) => rest).sort((a, b) => b.created.localeCompare(a.created));
}

export function get(id: number): Promise<SavedState | undefined> {
  return tx("readonly", s => s.get(id) as IDBRequest<SavedState | undefined>);
}

export function put(rec: SavedState): Promise<IDBValidKey> {
  return tx("readwrite", s => s.add(rec));
}

export function remove(id: number): Promise<undefined> {
  return tx("readwrite", s => s.delete(id) as IDBRequest<undefined>);
}
