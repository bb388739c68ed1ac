// Client of the guest agent on the VM's second serial port (ttyS1):
// one JSON object per line both ways (docs/agent-protocol.md).

export interface AgentError extends Error {
  sqlstate?: string;
  detail?: string;
  hint?: string;
  position?: string;
}

export interface Column {
  name: string;
  type: string;
  type_oid?: number;
}

export interface QueryResult {
  columns: Column[];
  rows: (string | null)[][];
  command: string;
  rows_affected: number;
}

type Pending = { resolve: (msg: any) => void; reject: (err: Error) => void; timer: number };

export class Agent {
  private buf: number[] = [];
  private nextID = 1;
  private pending = new Map<number, Pending>();
  private readyWaiters: (() => void)[] = [];
  private chain: Promise<unknown> = Promise.resolve();
  version = "";
  ready = false;
  noise: string[] = [];

  constructor(private send: (bytes: Uint8Array) => void) {}

  // feed takes one byte from serial1.
  feed(byte: number): void {
    if (byte !== 0x0a) {
      if (this.buf.length < (1 << 26)) this.buf.push(byte);
      return;
    }
    const line = new TextDecoder().decode(new Uint8Array(this.buf)).replace(/\r$/, "");
    this.buf = [];
    if (!line.trim()) return;
    let msg: any;
    try {
      msg = JSON.parse(line);
    } catch {
      // Boot noise on the port; kept for error messages.
      this.noise = [...this.noise.slice(-4), line.slice(0, 200)];
      return;
    }
    if (msg.event === "ready") {
      this.ready = true;
      this.version = msg.version || "";
      for (const w of this.readyWaiters.splice(0)) w();
      return;
    }
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    clearTimeout(p.timer);
    p.resolve(msg);
  }

  // reset forgets a half-read line and fails outstanding requests: after a
  // state restore the guest side is another moment in time.
  reset(why: string): void {
    this.buf = [];
    this.ready = false;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new Error(why));
      this.pending.delete(id);
    }
    // A blank line resynchronises the agent's line framing.
    this.send(new TextEncoder().encode("\n"));
  }

  // request sends one request and resolves with the whole response; it
  // rejects on timeout or on "ok": false.
  request(req: Record<string, unknown>, timeoutMs = 60000): Promise<any> {
    const id = this.nextID++;
    return new Promise((resolve, reject) => {
      const timer = window.setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`the VM's agent did not answer ${req.op} within ${Math.round(timeoutMs / 1000)} s`));
      }, timeoutMs);
      this.pending.set(id, {
        timer,
        reject,
        resolve: msg => {
          if (msg.ok) {
            resolve(msg);
            return;
          }
          const err = new Error(msg.error || "agent request failed") as AgentError;
          err.sqlstate = msg.sqlstate;
          err.detail = msg.detail;
          err.hint = msg.hint;
          err.position = msg.position;
          reject(err);
        },
      });
      this.send(new TextEncoder().encode(JSON.stringify({ ...req, id }) + "\n"));
    });
  }

  // call runs requests one after another, as the agent does anyway, so a
  // slow request's timeout does not count time spent waiting behind others.
  call(req: Record<string, unknown>, timeoutMs = 60000): Promise<any> {
    const run = this.chain.then(() => this.request(req, timeoutMs));
    this.chain = run.catch(() => undefined);
    return run;
  }

  // waitReady resolves once the agent answers. A freshly booted agent
  // announces itself; a restored one announced itself before the save, so
  // it is pinged until it answers.
  async waitReady(timeoutMs: number, restored: boolean): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    if (!restored) {
      if (this.ready) return;
      await new Promise<void>((resolve, reject) => {
        const t = window.setTimeout(() => reject(new Error("the VM's agent did not start")), timeoutMs);
        this.readyWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
      return;
    }
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`the VM's agent did not answer after the restore${this.noise.length ? ` (it printed: ${this.noise.join(" | ")})` : ""}`);
      }
      try {
        // A blank line first: it ends any partial line the resume left.
        this.send(new TextEncoder().encode("\n"));
        await this.request({ op: "ping" }, Math.min(3000, left));
        this.ready = true;
        return;
      } catch {
        // lost while the guest resumes: try again
      }
    }
  }
}
