// Byte streams from page code into the guest's PostgreSQL: the host side of
// the socket channel (virtio-console port 2; docs/socket-protocol.md). Each
// connection is a new PostgreSQL backend behind the guest agent, which
// splices bytes between the channel and the server's trusted Unix socket;
// the bytes never leave the tab, so there is no TLS and no password.

// ChannelWriter is harness/virtio-console.mjs's writer for one port (kept
// local so the npm package's declarations name no file outside it).
interface ChannelWriter {
  (bytes: Uint8Array): void;
  reset(): void;
}

const HELLO = 1, OPEN = 2, OPENED = 3, DATA = 4, WINDOW = 5, SHUT = 6, CLOSE = 7;
const HEADER = 7;
const SYNC_ZEROS = 16;
const SYNC_RUN = 8192;
export const SOCKET_PROTOCOL_VERSION = 1;
// Bytes the agent may send per connection before the page has read them.
const READ_WINDOW = 256 << 10;
const HELLO_RETRY_MS = 2000;

// SocketError is how a connection fails: closed by PostgreSQL or the agent
// with a reason, or lost because the VM was restored or restarted.
export class SocketError extends Error {
  override name = "SocketError";
}

interface Session {
  nonce: number;
  ready: Promise<void>;
  resolve: () => void;
  reject: (e: Error) => void;
}

// SocketMux multiplexes connections over one virtio-console port.
export class SocketMux {
  private conns = new Map<number, MuxConn>();
  private nextID = 1;
  private pending = new Uint8Array(0);
  private hunting = true;
  private zeros = 0;
  private session: Session | null = null;
  window = 0; // bytes the page may send per connection before a grant
  maxPayload = 4089;
  maxConns = 0;

  constructor(private write: ChannelWriter) {}

  // start begins a new session (after a boot, restore or restart): the
  // sync run gets the agent's parser past anything stale, and its hello
  // answer tells the page the window and limits.
  //
  // The hello is sent again, with a new nonce, every HELLO_RETRY_MS until
  // answered: the agent may not have its port open yet (a fresh boot), and
  // opening it flushes what was waiting. Only the newest nonce's answer
  // counts, and no connection opens before it, so a late hello cannot close
  // a connection of this session.
  start(): void {
    let resolve!: () => void, reject!: (e: Error) => void;
    const ready = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
    ready.catch(() => {});
    const s: Session = { nonce: 0, ready, resolve, reject };
    this.session = s;
    const hello = () => {
      if (this.session !== s || this.window > 0) return;
      s.nonce = (Math.random() * 0xffffffff) >>> 0;
      this.write(new Uint8Array(SYNC_RUN));
      const p = new Uint8Array(5);
      p[0] = SOCKET_PROTOCOL_VERSION;
      new DataView(p.buffer).setUint32(1, s.nonce);
      this.send(HELLO, 0, p);
      setTimeout(hello, HELLO_RETRY_MS);
    };
    this.window = 0;
    this.pending = new Uint8Array(0);
    this.hunting = true;
    this.zeros = 0;
    hello();
  }

  // reset fails every connection (the VM they lived in is gone) and drops
  // what is queued for the old VM; start() follows.
  reset(reason: string): void {
    this.write.reset();
    const err = new SocketError(reason);
    for (const c of [...this.conns.values()]) c.fail(err);
    this.conns.clear();
    this.session?.reject(err);
    this.session = null;
    this.window = 0;
  }

  async open(timeoutMs = 30000): Promise<MuxConn> {
    const s = this.session;
    if (!s) throw new SocketError("the VM is not running");
    let timer = 0;
    const timeout = new Promise<never>((_, rej) => {
      timer = setTimeout(() => rej(new SocketError(
        `the VM's agent did not answer on the socket channel (virtio-console port 2) in ${timeoutMs / 1000} s: ` +
        "an image built before pg.connect() existed has no socket channel; rebuild the image")), timeoutMs) as unknown as number;
    });
    try {
      await Promise.race([s.ready, timeout]);
      const id = this.nextID++;
      const c = new MuxConn(this, id);
      this.conns.set(id, c);
      const p = new Uint8Array(4);
      new DataView(p.buffer).setUint32(0, READ_WINDOW);
      this.send(OPEN, id, p);
      await Promise.race([c.opened, timeout]);
      return c;
    } finally {
      clearTimeout(timer);
    }
  }

  send(type: number, id: number, payload?: Uint8Array): void {
    const n = payload ? payload.length : 0;
    const b = new Uint8Array(HEADER + n);
    const v = new DataView(b.buffer);
    b[0] = type;
    v.setUint32(1, id);
    v.setUint16(5, n);
    if (payload) b.set(payload, HEADER);
    this.write(b);
  }

  forget(id: number): void {
    this.conns.delete(id);
  }

  // feed takes bytes the guest wrote to the port.
  feed(bytes: Uint8Array): void {
    let b: Uint8Array = bytes;
    if (this.pending.length) {
      const all = new Uint8Array(this.pending.length + bytes.length);
      all.set(this.pending);
      all.set(bytes, this.pending.length);
      b = all;
    }
    let i = 0;
    while (i < b.length) {
      if (this.hunting) {
        while (i < b.length && this.zeros < SYNC_ZEROS) {
          this.zeros = b[i++] === 0 ? this.zeros + 1 : 0;
        }
        if (this.zeros < SYNC_ZEROS) break;
        this.hunting = false;
      }
      while (i < b.length && b[i] === 0) i++;
      if (b.length - i < HEADER) break;
      const type = b[i];
      const v = new DataView(b.buffer, b.byteOffset + i);
      const id = v.getUint32(1);
      const n = v.getUint16(5);
      if (type < HELLO || type > CLOSE || n > 4089) {
        this.protocolError(`unknown frame (type ${type}, ${n} bytes)`);
        i++;
        continue;
      }
      if (b.length - i < HEADER + n) break;
      const payload = b.slice(i + HEADER, i + HEADER + n);
      i += HEADER + n;
      this.frame(type, id, payload);
    }
    this.pending = b.slice(i);
  }

  private protocolError(why: string): void {
    this.hunting = true;
    this.zeros = 0;
    const err = new SocketError(`the socket channel is out of step (${why}); every connection was closed`);
    for (const c of [...this.conns.values()]) c.fail(err);
    this.conns.clear();
    this.start();
  }

  private frame(type: number, id: number, p: Uint8Array): void {
    if (type === HELLO) {
      const s = this.session;
      if (!s || p.length < 13) return;
      const v = new DataView(p.buffer, p.byteOffset);
      if (v.getUint32(1) !== s.nonce) return; // an answer to an older hello
      if (p[0] !== SOCKET_PROTOCOL_VERSION) {
        s.reject(new SocketError(`the VM's agent speaks socket protocol ${p[0]}, this page ${SOCKET_PROTOCOL_VERSION}`));
        return;
      }
      this.window = v.getUint32(5);
      this.maxPayload = v.getUint16(9);
      this.maxConns = v.getUint16(11);
      s.resolve();
      return;
    }
    if (id === 0 && type === CLOSE) {
      // The agent lost its place and closed every connection.
      const err = new SocketError(`the VM's agent closed every connection: ${new TextDecoder().decode(p)}`);
      for (const c of [...this.conns.values()]) c.fail(err);
      this.conns.clear();
      this.start();
      return;
    }
    const c = this.conns.get(id);
    if (!c) return;
    c.frame(type, p);
  }
}

// MuxConn is one connection: a byte stream with credit both ways.
export class MuxConn {
  opened: Promise<void>;
  private openedResolve!: () => void;
  private openedReject!: (e: Error) => void;
  private credit: number;
  private creditWaiters: (() => void)[] = [];
  closed = false;
  error: Error | null = null;
  ondata: (b: Uint8Array) => void = () => {};
  // onend: null for a normal end (PostgreSQL closed), else the error.
  onend: (err: Error | null) => void = () => {};

  constructor(private mux: SocketMux, readonly id: number) {
    this.credit = mux.window;
    this.opened = new Promise((res, rej) => { this.openedResolve = res; this.openedReject = rej; });
    this.opened.catch(() => {});
  }

  frame(type: number, p: Uint8Array): void {
    switch (type) {
      case OPENED:
        this.openedResolve();
        break;
      case DATA:
        this.ondata(p);
        break;
      case WINDOW:
        if (p.length === 4) {
          this.credit += new DataView(p.buffer, p.byteOffset).getUint32(0);
          this.wake();
        }
        break;
      case CLOSE: {
        const reason = new TextDecoder().decode(p);
        this.mux.forget(this.id);
        this.finish(reason ? new SocketError(reason) : null);
        break;
      }
    }
  }

  private wake(): void {
    const w = this.creditWaiters;
    this.creditWaiters = [];
    for (const f of w) f();
  }

  private finish(err: Error | null): void {
    if (this.closed) return;
    this.closed = true;
    this.error = err;
    this.openedReject(err || new SocketError("the connection was closed before it opened"));
    this.wake();
    this.onend(err);
  }

  fail(err: Error): void {
    this.finish(err);
  }

  private tail: Promise<void> = Promise.resolve();

  // write sends bytes within the agent's window, waiting for grants; writes
  // go out in the order they were made.
  write(bytes: Uint8Array): Promise<void> {
    const p = this.tail.then(() => this.send(bytes));
    this.tail = p.catch(() => {});
    return p;
  }

  private async send(bytes: Uint8Array): Promise<void> {
    let off = 0;
    while (off < bytes.length) {
      if (this.closed) throw this.error || new SocketError("the connection is closed");
      if (this.credit <= 0) {
        await new Promise<void>(r => this.creditWaiters.push(r));
        continue;
      }
      const n = Math.min(bytes.length - off, this.credit, this.mux.maxPayload);
      this.mux.send(DATA, this.id, bytes.subarray(off, off + n));
      this.credit -= n;
      off += n;
    }
  }

  // consumed grants the agent room for n more bytes.
  consumed(n: number): void {
    if (this.closed || n <= 0) return;
    const p = new Uint8Array(4);
    new DataView(p.buffer).setUint32(0, n);
    this.mux.send(WINDOW, this.id, p);
  }

  // shut says the page sends nothing more (PostgreSQL sees end of file).
  shut(): void {
    if (!this.closed) this.mux.send(SHUT, this.id);
  }

  close(err: Error | null = null): void {
    if (this.closed) return;
    this.mux.send(CLOSE, this.id);
    this.mux.forget(this.id);
    this.finish(err);
  }
}

// PgSocket is what PgWasm.connect() returns: a WHATWG byte stream pair.
// A page reading slowly holds PostgreSQL back (the agent sends only what
// the page has room for); a closed or failed connection errors both.
export interface PgSocket {
  readable: ReadableStream<Uint8Array>;
  writable: WritableStream<Uint8Array>;
  close(): void;
}

export function streamsOf(c: MuxConn): PgSocket {
  const queue: Uint8Array[] = [];
  let notify: (() => void) | null = null;
  let ended = false;
  c.ondata = b => { queue.push(b); notify?.(); };
  c.onend = () => { ended = true; notify?.(); };
  const readable = new ReadableStream<Uint8Array>({
    async pull(ctl) {
      while (queue.length === 0 && !ended) await new Promise<void>(r => { notify = r; });
      notify = null;
      const b = queue.shift();
      if (b) {
        ctl.enqueue(b);
        c.consumed(b.length);
      } else if (c.error) {
        ctl.error(c.error);
      } else {
        ctl.close();
      }
    },
    cancel() { c.close(); },
  }, { highWaterMark: 0 });
  const writable = new WritableStream<Uint8Array>({
    write(chunk) { return c.write(chunk); },
    close() { c.shut(); },
    abort() { c.close(); },
  });
  return { readable, writable, close: () => c.close() };
}

type Listener = (...args: any[]) => void;

// asBuffer hands out a Buffer when the page has a global one (drivers
// written for Node parse Buffers), else the bytes as they are.
function asBuffer(b: Uint8Array): Uint8Array {
  const B = (globalThis as any).Buffer;
  return B ? B.from(b.buffer, b.byteOffset, b.length) : b;
}

// NodeSocket is shaped like Node's net.Socket as far as PostgreSQL drivers
// use it (node-postgres: connect, setNoDelay, setKeepAlive, write, end,
// destroy, 'connect', 'data', 'end', 'close', 'error'; pg-copy-streams'
// COPY TO: pause, read, 'readable', listeners, resume). Data arrives as
// Buffer when the page has a global Buffer (drivers need it), else as
// Uint8Array. Hand one to a driver that takes a custom stream, e.g.
// `new pg.Client({ stream: () => pgwasm.nodeSocket() })`.
// net.Socket's default highWaterMark.
const HIGH_WATER = 64 << 10;

export class NodeSocket {
  private handlers = new Map<string, Listener[]>();
  private conn: MuxConn | null = null;
  private pendingWrites: Uint8Array[] = [];
  private paused = false;
  private unread: Uint8Array[] = [];
  private unreadBytes = 0;
  private readableSignalled = false;
  // The channel's end, held back while paused data is unread: as on a
  // net.Socket, 'end' follows the last byte read.
  private heldEnd = false;
  connecting = false;
  destroyed = false;
  readyState: "opening" | "open" | "readOnly" | "writeOnly" | "closed" = "closed";
  writable = false;
  readable = false;
  remoteAddress = "pgwasm";
  remotePort = 5432;

  constructor(private opener: () => Promise<MuxConn>) {}

  on(ev: string, f: Listener): this {
    const l = this.handlers.get(ev) || [];
    l.push(f);
    this.handlers.set(ev, l);
    if (ev === "readable" && this.unreadBytes > 0) this.signalReadable();
    return this;
  }
  addListener(ev: string, f: Listener): this { return this.on(ev, f); }
  once(ev: string, f: Listener): this {
    const w: Listener = (...a) => { this.off(ev, w); f(...a); };
    (w as any).listener = f;
    return this.on(ev, w);
  }
  off(ev: string, f: Listener): this {
    const l = this.handlers.get(ev);
    if (l) this.handlers.set(ev, l.filter(x => x !== f && (x as any).listener !== f));
    return this;
  }
  removeListener(ev: string, f: Listener): this { return this.off(ev, f); }
  removeAllListeners(ev?: string): this {
    if (ev) this.handlers.delete(ev); else this.handlers.clear();
    return this;
  }
  listenerCount(ev: string): number { return this.handlers.get(ev)?.length || 0; }
  listeners(ev: string): Listener[] { return (this.handlers.get(ev) || []).map(f => (f as any).listener || f); }
  emit(ev: string, ...args: any[]): boolean {
    const l = this.handlers.get(ev);
    if (!l || l.length === 0) {
      if (ev === "error") console.error("pgwasm socket error with no listener:", args[0]);
      return false;
    }
    for (const f of [...l]) f(...args);
    return true;
  }

  connect(..._args: any[]): this {
    const cb = _args.find(a => typeof a === "function");
    if (cb) this.once("connect", cb);
    this.connecting = true;
    this.readyState = "opening";
    this.opener().then(c => {
      if (this.destroyed) { c.close(); return; }
      this.conn = c;
      this.connecting = false;
      this.readyState = "open";
      this.writable = this.readable = true;
      c.ondata = b => this.deliver(b);
      c.onend = err => this.ended(err);
      for (const b of this.pendingWrites) void this.send(b);
      this.pendingWrites = [];
      this.emit("connect");
      this.emit("ready");
    }, err => this.destroy(err));
    return this;
  }

  // Paused data is not granted back to the channel until it is read or
  // resumed, so a reader that stops reading stops the sender.
  private deliver(b: Uint8Array): void {
    if (this.paused) {
      this.unread.push(b);
      this.unreadBytes += b.length;
      if (this.listenerCount("readable") > 0) this.signalReadable();
      return;
    }
    this.emit("data", asBuffer(b));
    this.conn?.consumed(b.length);
  }

  private signalReadable(): void {
    if (this.readableSignalled) return;
    this.readableSignalled = true;
    queueMicrotask(() => {
      this.readableSignalled = false;
      if (this.unreadBytes > 0 || this.heldEnd) this.emit("readable");
    });
  }

  // read is a paused net.Socket's read: all unread bytes, or size of them,
  // or null when fewer are there.
  read(size?: number): Uint8Array | null {
    if (this.unreadBytes === 0 || (size !== undefined && size > this.unreadBytes)) {
      if (this.heldEnd && this.unreadBytes === 0) queueMicrotask(() => this.releaseEnd());
      return null;
    }
    const n = size === undefined || size <= 0 ? this.unreadBytes : size;
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const head = this.unread[0];
      const take = Math.min(head.length, n - at);
      out.set(head.subarray(0, take), at);
      at += take;
      if (take === head.length) this.unread.shift();
      else this.unread[0] = head.subarray(take);
    }
    this.unreadBytes -= n;
    this.conn?.consumed(n);
    if (this.heldEnd && this.unreadBytes === 0) queueMicrotask(() => this.releaseEnd());
    return asBuffer(out);
  }

  private releaseEnd(): void {
    if (!this.heldEnd || this.unreadBytes > 0) return;
    this.heldEnd = false;
    this.ended(null);
  }

  private ended(err: Error | null): void {
    if (!err && this.unreadBytes > 0) {
      this.heldEnd = true;
      return;
    }
    this.readyState = "closed";
    this.writable = this.readable = false;
    if (err) {
      this.destroyed = true;
      this.emit("error", err);
      this.emit("close", true);
    } else {
      this.emit("end");
      this.destroyed = true;
      this.emit("close", false);
    }
  }

  // Bytes given to write() and not sent yet: above HIGH_WATER write()
  // returns false and "drain" follows, as on a net.Socket, so a writer that
  // waits for it (pg-copy-streams' COPY FROM) does not pile a whole load up
  // in the page.
  private queued = 0;

  private async send(b: Uint8Array): Promise<void> {
    this.queued += b.length;
    try {
      await this.conn!.write(b);
    } catch (err) {
      if (!this.destroyed) this.destroy(err as Error);
    } finally {
      const was = this.queued;
      this.queued -= b.length;
      if (was >= HIGH_WATER && this.queued < HIGH_WATER && !this.destroyed) this.emit("drain");
    }
  }

  write(data: Uint8Array | string, enc?: any, cb?: Listener): boolean {
    if (typeof enc === "function") cb = enc;
    const b = typeof data === "string" ? new TextEncoder().encode(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
    if (this.destroyed) {
      queueMicrotask(() => cb?.(new SocketError("write after the socket was closed")));
      return false;
    }
    if (!this.conn) {
      this.pendingWrites.push(b);
      if (cb) queueMicrotask(() => cb!());
      return true;
    }
    void this.send(b).then(() => cb?.());
    return this.queued < HIGH_WATER;
  }

  end(data?: any, enc?: any, cb?: Listener): this {
    if (typeof data === "function") { cb = data; data = undefined; }
    if (typeof enc === "function") cb = enc;
    if (data) this.write(data);
    this.writable = false;
    const c = this.conn;
    if (c) {
      // After what is queued: write() resolves in order.
      void c.write(new Uint8Array(0)).then(() => c.shut(), () => {});
    } else {
      this.destroy();
    }
    if (cb) queueMicrotask(() => cb!());
    return this;
  }

  destroy(err?: Error): this {
    if (this.destroyed) return this;
    this.destroyed = true;
    this.readyState = "closed";
    this.writable = this.readable = false;
    const c = this.conn;
    if (c) {
      c.onend = () => {};
      c.close();
    }
    queueMicrotask(() => {
      if (err) this.emit("error", err);
      this.emit("close", !!err);
    });
    return this;
  }

  pause(): this { this.paused = true; return this; }
  isPaused(): boolean { return this.paused; }
  resume(): this {
    this.paused = false;
    const u = this.unread;
    this.unread = [];
    this.unreadBytes = 0;
    for (const b of u) this.deliver(b);
    if (this.heldEnd) this.releaseEnd();
    return this;
  }
  setNoDelay(_v?: boolean): this { return this; }
  setKeepAlive(_e?: boolean, _d?: number): this { return this; }
  setTimeout(_ms: number, _cb?: Listener): this { return this; }
  ref(): this { return this; }
  unref(): this { return this; }
  cork(): void {}
  uncork(): void {}
  address(): { address: string; family: string; port: number } { return { address: "pgwasm", family: "pgwasm", port: 0 }; }
}
