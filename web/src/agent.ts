// Client of the guest agent: one JSON object per line both ways
// (docs/agent-protocol.md). The page talks to it on virtio-console port 1
// (/dev/hvc1 in the guest); this class only sees bytes.
import { lineCollector } from "../../harness/lines.mjs";

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

type Pending = { op: string; resolve: (msg: any) => void; reject: (err: Error) => void; timer: number };

// Writer puts bytes on the agent's channel; reset drops what it still
// queues (harness/virtio-console.mjs).
export interface Writer {
  (bytes: Uint8Array): void;
  reset(): void;
}

// Judge decides what a request that ran past its time limit does next:
// "wait" (the VM is still making progress: give it more time) or a reason
// to give up. waitedMs counts from the request's send.
export type Judge = (op: string, waitedMs: number, limitMs: number) => "wait" | string;

// How often a request past its limit asks the judge again.
const JUDGE_EVERY_MS = 2000;

export class Agent {
  private lines = lineCollector(line => this.onLine(line));
  private nextID = 1;
  private pending = new Map<number, Pending>();
  // The ids of the requests sent and not answered yet, oldest first,
  // including those that gave up waiting: the agent answers in order, so an
  // answer with id 0 belongs to the first of them.
  private unanswered: number[] = [];
  private readyWaiters: (() => void)[] = [];
  private chain: Promise<unknown> = Promise.resolve();
  version = "";
  ready = false;
  noise: string[] = [];
  // judge, when set, is asked before a request gives up (see Judge).
  judge: Judge | null = null;
  lastAnswer = 0; // Date.now() of the last line the agent sent
  // dead, when set, fails every request at once with this reason.
  dead = "";

  constructor(private send: Writer) {}

  // feed takes what the guest wrote on the agent's channel.
  feed(bytes: Uint8Array): void {
    this.lines(bytes);
  }

  private onLine(line: string): void {
    if (!line.trim()) return;
    let msg: any;
    try {
      msg = JSON.parse(line);
    } catch {
      // Not a protocol line; kept for error messages.
      this.noise = [...this.noise.slice(-4), line.slice(0, 200)];
      return;
    }
    if (msg.event === "ready") {
      this.ready = true;
      this.version = msg.version || "";
      for (const w of this.readyWaiters.splice(0)) w();
      return;
    }
    this.lastAnswer = Date.now();
    const refused = msg.id === 0 && msg.ok === false;
    const id = refused ? this.unanswered[0] : msg.id;
    const at = this.unanswered.indexOf(id);
    if (at >= 0) this.unanswered.splice(0, at + 1);
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    clearTimeout(p.timer);
    if (refused) {
      // The agent could not read the request; the only such line this
      // client sends is one over the agent's limit (docs/agent-protocol.md).
      p.reject(new Error(`the VM's agent refused the ${p.op} request: ${msg.error || "unreadable"} (its limit is 1 MiB of JSON per request; put large data in a file with upload())`));
      return;
    }
    p.resolve(msg);
  }

  // reset forgets a half-read line and fails outstanding requests: after a
  // state restore the guest side is another moment in time.
  reset(why: string): void {
    this.send.reset();
    this.lines.reset();
    this.unanswered = [];
    this.ready = false;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new Error(why));
      this.pending.delete(id);
    }
    // A blank line resynchronises the agent's line framing.
    this.send(new TextEncoder().encode("\n"));
  }

  // failAll fails every outstanding request (the VM is dead) and every
  // later one until revive().
  failAll(why: string): void {
    this.dead = why;
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new Error(why));
      this.pending.delete(id);
    }
  }

  // busy: a request is outstanding (the agent answers one at a time).
  get busy(): boolean {
    return this.pending.size > 0;
  }

  revive(): void {
    this.dead = "";
  }

  // request sends one request and resolves with the whole response; it
  // rejects on timeout or on "ok": false.
  // With a judge, timeoutMs is the first limit: past it the judge decides
  // whether to wait on.
  request(req: Record<string, unknown>, timeoutMs = 60000, judged = true): Promise<any> {
    const id = this.nextID++;
    const op = String(req.op);
    if (this.dead) return Promise.reject(new Error(this.dead));
    return new Promise((resolve, reject) => {
      const sent = Date.now();
      const expire = () => {
        const p = this.pending.get(id);
        if (!p) return;
        const waited = Date.now() - sent;
        const verdict = this.judge && judged ? this.judge(op, waited, timeoutMs) : `did not answer within ${Math.round(timeoutMs / 1000)} s`;
        if (verdict === "wait") {
          p.timer = window.setTimeout(expire, JUDGE_EVERY_MS);
          return;
        }
        this.pending.delete(id);
        reject(new Error(`the VM's agent did not answer ${op} (${Math.round(waited / 1000)} s): ${verdict}`));
      };
      this.pending.set(id, {
        op,
        timer: window.setTimeout(expire, timeoutMs),
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
      try {
        this.send(new TextEncoder().encode(JSON.stringify({ ...req, id }) + "\n"));
      } catch (err) {
        clearTimeout(this.pending.get(id)?.timer);
        this.pending.delete(id);
        reject(err);
        return;
      }
      this.unanswered.push(id);
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
  // it is pinged until it answers. timeoutMs is the first limit; past it the
  // judge (if any) decides whether to wait on.
  async waitReady(timeoutMs: number, restored: boolean): Promise<void> {
    const start = Date.now();
    const giveUp = (): string => {
      const waited = Date.now() - start;
      if (this.dead) return this.dead;
      if (waited < timeoutMs) return "";
      const v = this.judge ? this.judge("ready", waited, timeoutMs) : "no answer";
      return v === "wait" ? "" : v;
    };
    const noise = () => (this.noise.length ? ` (it printed: ${this.noise.join(" | ")})` : "");
    if (!restored) {
      if (this.ready) return;
      await new Promise<void>((resolve, reject) => {
        const check = () => {
          if (this.ready) return resolve();
          const why = giveUp();
          if (why) return reject(new Error(`the VM's agent did not start: ${why}${noise()}`));
          window.setTimeout(check, 1000);
        };
        this.readyWaiters.push(() => resolve());
        window.setTimeout(check, 1000);
      });
      return;
    }
    for (;;) {
      const why = giveUp();
      if (why) throw new Error(`the VM's agent did not answer after the restore: ${why}${noise()}`);
      try {
        // A blank line first: it ends any partial line the resume left.
        this.send(new TextEncoder().encode("\n"));
        // A lost ping is simply sent again: no judge.
        await this.request({ op: "ping" }, 3000, false);
        this.ready = true;
        return;
      } catch (err) {
        if (this.dead) throw err;
        // lost while the guest resumes: try again
      }
    }
  }
}
