// Client of the guest agent for the page: the typed face of the client the
// Node harness uses too (harness/agent-client.mjs: ids, refusals, time
// limits, the reset after a restore, streamed results and requests in
// pieces). The page talks to the agent on virtio-console port 1 (/dev/hvc1
// in the guest); this class only sees bytes.
import { AgentClient } from "../../harness/agent-client.mjs";

// The types below are spelled out here, not taken from the harness's
// declarations, so that the npm package's declarations (emitted from this
// file) need nothing outside web/src.

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

// RowBatch is a part of a streamed result: rows of statement `statement`
// (0 for a query), with the columns on a statement's first batch.
export interface RowBatch {
  statement: number;
  columns: Column[] | null;
  rows: (string | null)[][];
}

export type RowsCallback = (statement: number, columns: Column[] | null, rows: (string | null)[][]) => void;

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

// Ops whose rows come back in parts when the agent can (protocol 2): the
// agent then never builds one message of the whole result, and its
// -max-result-bytes cap gives way to the caller's (none by default).
const STREAMED = new Set(["query", "exec"]);

export class Agent {
  private client: AgentClient;

  constructor(send: Writer) {
    this.client = new AgentClient(send);
  }

  get version(): string {
    return this.client.version;
  }
  // protocol is the agent's protocol version (0 before it announced itself).
  get protocol(): number {
    return this.client.protocol;
  }
  get ready(): boolean {
    return this.client.ready;
  }
  set ready(v: boolean) {
    this.client.ready = v;
  }
  get noise(): string[] {
    return this.client.noise;
  }
  // judge, when set, is asked before a request gives up (see Judge).
  get judge(): Judge | null {
    return this.client.judge;
  }
  set judge(j: Judge | null) {
    this.client.judge = j;
  }
  // Date.now() of the last line the agent sent.
  get lastAnswer(): number {
    return this.client.lastAnswer;
  }
  // dead, when set, fails every request at once with this reason.
  get dead(): string {
    return this.client.dead;
  }

  // feed takes what the guest wrote on the agent's channel.
  feed(bytes: Uint8Array): void {
    this.client.feed(bytes);
  }

  // reset forgets a half-read line and fails outstanding requests: after a
  // state restore the guest side is another moment in time.
  reset(why: string): void {
    this.client.reset(why);
  }

  // failAll fails every outstanding request (the VM is dead) and every
  // later one until revive().
  failAll(why: string): void {
    this.client.failAll(why);
  }

  // busy: a request is outstanding (the agent answers one at a time).
  get busy(): boolean {
    return this.client.busy;
  }

  revive(): void {
    this.client.revive();
  }

  // request sends one request and resolves with the whole response; it
  // rejects on timeout or on "ok": false. With a judge, timeoutMs is the
  // first limit: past it the judge decides whether to wait on. onRows, if
  // given, sees a query's or exec's rows as they come (protocol 2).
  async request(req: Record<string, unknown>, timeoutMs = 60000, judged = true, onRows?: RowsCallback): Promise<any> {
    const stream = STREAMED.has(String(req.op));
    const msg = await this.client.request(req, { timeoutMs, judged, stream, onRows });
    return settle(String(req.op), msg);
  }

  // call runs requests one after another, as the agent does anyway, so a
  // slow request's timeout does not count time spent waiting behind others.
  async call(req: Record<string, unknown>, timeoutMs = 60000, onRows?: RowsCallback): Promise<any> {
    const stream = STREAMED.has(String(req.op));
    const msg = await this.client.call(req, { timeoutMs, stream, onRows });
    return settle(String(req.op), msg);
  }

  // rows runs a query or exec and yields its rows in batches as they come,
  // without holding the whole result (protocol 2; an older image's agent
  // fails it with an error naming both versions).
  rows(req: Record<string, unknown>, timeoutMs = 600000): AsyncGenerator<RowBatch, any, void> {
    return this.client.rows(req, { timeoutMs });
  }

  // waitReady resolves once the agent answers. A freshly booted agent
  // announces itself; a restored one announced itself before the save, so
  // it is pinged until it answers. timeoutMs is the first limit; past it the
  // judge (if any) decides whether to wait on.
  waitReady(timeoutMs: number, restored: boolean): Promise<void> {
    return this.client.waitReady(timeoutMs, restored);
  }
}

// settle turns the agent's final message into the result or an error.
function settle(op: string, msg: any): any {
  if (msg.refused) {
    // The agent could not read the request; the only such line this
    // client sends is one over the agent's limit (docs/agent-protocol.md).
    throw new Error(`the VM's agent refused the ${op} request: ${msg.error || "unreadable"} (its limit is 1 MiB of JSON per request; put large data in a file with upload())`);
  }
  if (msg.ok) return msg;
  const err = new Error(msg.error || "agent request failed") as AgentError;
  err.sqlstate = msg.sqlstate;
  err.detail = msg.detail;
  err.hint = msg.hint;
  err.position = msg.position;
  throw err;
}
