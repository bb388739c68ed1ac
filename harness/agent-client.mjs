// AgentClient is the host side of the guest agent's protocol
// (docs/agent-protocol.md), written once for the Node harness (vm.mjs) and
// the page (web/src/agent.ts): request ids, matching answers to requests
// (an "id":0 refusal goes to the oldest request not answered yet), time
// limits, the reset after a state restore, streamed results (parts
// assembled into one response, and handed to onRows as they come) and
// requests sent in pieces. One client drives one channel; it only sees
// bytes, through the writer it is given and feed().
import { lineCollector } from "./lines.mjs";

// The newest protocol this client speaks; it speaks every older one too.
// An agent's ready event carries its own ("protocol"; agents before 2 sent
// none, only a version string starting with "1").
export const CLIENT_PROTOCOL = 2;

// The agent refuses a request line over 1 MiB (maxLine in
// guest/agent/server.go). A request whose sql is longer than PIECE_CHARS
// UTF-16 units goes in pieces: JSON makes a character at most 6 bytes
// ("\u001f"), so a piece's line stays under 1 MiB whatever the text.
export const MAX_LINE = 1 << 20;
export const PIECE_CHARS = 128 * 1024;

const encoder = new TextEncoder();

// protocolOf reads the protocol version from a ready event.
export function protocolOf(ev) {
    if (Number.isInteger(ev.protocol) && ev.protocol > 0) return ev.protocol;
    const major = parseInt(String(ev.version || ""), 10);
    return Number.isInteger(major) && major > 0 ? major : 1;
}

// splitSQL cuts sql into pieces of at most n UTF-16 units, never inside a
// surrogate pair.
export function splitSQL(sql, n = PIECE_CHARS) {
    const pieces = [];
    for (let off = 0; off < sql.length;) {
        let end = Math.min(off + n, sql.length);
        const c = sql.charCodeAt(end - 1);
        if (end < sql.length && c >= 0xd800 && c <= 0xdbff) end--;
        pieces.push(sql.slice(off, end));
        off = end;
    }
    return pieces;
}

export class AgentClient {
    // write puts bytes on the channel (harness/virtio-console.mjs or
    // serial.mjs); options.onReady(event) is called for every ready event.
    constructor(write, options = {}) {
        this.write = write;
        this.onReady = options.onReady || null;
        this.lines = lineCollector(line => this.onLine(line));
        this.nextID = 1;
        this.pending = new Map();
        // The ids sent and not answered yet, oldest first, including those
        // that gave up waiting: the agent answers in order, so an answer
        // with id 0 belongs to the first of them.
        this.unanswered = [];
        this.readyWaiters = [];
        this.chain = Promise.resolve();
        this.version = "";
        this.protocol = 0; // 0: no ready event seen yet
        this.ready = false;
        this.noise = [];
        // judge, when set, decides what a request past its limit does:
        // "wait" (the VM makes progress) or a reason to give up.
        this.judge = null;
        this.lastAnswer = 0;
        this.dead = "";
    }

    // feed takes what the guest wrote on the channel.
    feed(bytes) {
        this.lines(bytes);
    }

    onLine(line) {
        if (!line.trim()) return;
        let msg;
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
            this.protocol = protocolOf(msg);
            if (this.onReady) this.onReady(msg);
            for (const w of this.readyWaiters.splice(0)) w();
            return;
        }
        this.lastAnswer = Date.now();
        if (msg.more === true && msg.id) {
            // A part of a streamed result: the request stays open.
            const p = this.pending.get(msg.id);
            if (p) p.part(msg);
            return;
        }
        const refused = msg.id === 0 && msg.ok === false;
        const id = refused ? this.unanswered[0] : msg.id;
        const at = this.unanswered.indexOf(id);
        if (at >= 0) this.unanswered.splice(0, at + 1);
        const p = this.pending.get(id);
        if (!p) return;
        this.pending.delete(id);
        clearTimeout(p.timer);
        if (refused) msg.refused = true;
        p.done(msg);
    }

    // reset forgets a half-read line and queued bytes and fails outstanding
    // requests: after a state restore the guest is at another moment in time.
    reset(why) {
        this.write.reset();
        this.lines.reset();
        this.unanswered = [];
        this.ready = false;
        this.failPending(why);
        // A blank line resynchronises the agent's line framing.
        this.write(encoder.encode("\n"));
    }

    failPending(why) {
        for (const [id, p] of this.pending) {
            clearTimeout(p.timer);
            p.fail(new Error(why));
            this.pending.delete(id);
        }
    }

    // failAll fails every outstanding request (the VM is dead) and every
    // later one until revive().
    failAll(why) {
        this.dead = why;
        this.failPending(why);
    }

    revive() {
        this.dead = "";
    }

    get busy() {
        return this.pending.size > 0;
    }

    // lines returns the request's lines: one, or, for an sql longer than
    // a piece, its pieces (protocol 2). A request over the line limit to
    // an agent that cannot take pieces fails here, naming both versions.
    requestLines(req, id) {
        const whole = JSON.stringify({ ...req, id }) + "\n";
        if (typeof req.sql !== "string" || req.sql.length <= PIECE_CHARS) return [whole];
        if (this.protocol < 2) {
            const bytes = encoder.encode(whole).length;
            if (bytes <= MAX_LINE) return [whole];
            throw new Error(`the ${req.op} request is ${bytes} bytes of JSON; the VM's agent speaks protocol ${this.protocol || 1} (version "${this.version}"), which takes at most 1 MiB per request, and sending it in pieces needs protocol 2 (this client speaks 1 to ${CLIENT_PROTOCOL}): the VM image is older than this client`);
        }
        const pieces = splitSQL(req.sql);
        return pieces.map((sql, i) => {
            const more = i < pieces.length - 1;
            const msg = i === 0 ? { ...req, id, sql } : { id, sql };
            if (more) msg.more = true;
            return JSON.stringify(msg) + "\n";
        });
    }

    // request sends one request and resolves with the agent's final
    // message, ok or not (a refusal has refused: true). It rejects when the
    // time runs out, the client is reset or dead, or the request cannot be
    // sent. Options:
    //   timeoutMs  the first limit (60 s); past it the judge, if any and
    //              judged, decides whether to wait on
    //   stream     ask for the rows in parts ({chunkBytes, maxBytes}, or
    //              true); ignored by an agent before protocol 2 unless
    //              onRows is set (then the request fails, naming both
    //              versions). The parts are assembled into the response.
    //   onRows(statement, columns, rows)  called with each part's rows;
    //              columns is set on a statement's first part
    //   keepRows   false: the parts' rows go only to onRows, the response
    //              holds only the rows of no part (bounded memory)
    request(req, options = {}) {
        const { timeoutMs = 60000, judged = true, stream = false, onRows = null, keepRows = true } = options;
        const id = this.nextID++;
        const op = String(req.op);
        if (this.dead) return Promise.reject(new Error(this.dead));
        const wire = { ...req };
        if (stream || onRows) {
            if (this.protocol >= 2) {
                const s = typeof stream === "object" && stream ? stream : {};
                wire.stream = true;
                if (s.chunkBytes) wire.chunk_bytes = s.chunkBytes;
                if (s.maxBytes) wire.max_bytes = s.maxBytes;
            } else if (onRows) {
                return Promise.reject(new Error(`rows as they come need protocol 2; the VM's agent speaks protocol ${this.protocol || 1} (version "${this.version}"), this client 1 to ${CLIENT_PROTOCOL}: the VM image is older than this client`));
            }
        }
        let lines;
        try {
            lines = this.requestLines(wire, id);
        } catch (err) {
            return Promise.reject(err);
        }
        return new Promise((resolve, reject) => {
            const sent = Date.now();
            // Rows of the parts, per statement, in order.
            const parts = [];
            const expire = () => {
                const p = this.pending.get(id);
                if (!p) return;
                const waited = Date.now() - sent;
                const verdict = this.judge && judged ? this.judge(op, waited, timeoutMs) : `no answer within ${Math.round(timeoutMs / 1000)} s`;
                if (verdict === "wait") {
                    p.timer = setTimeout(expire, 2000);
                    return;
                }
                this.pending.delete(id);
                reject(new Error(`the VM's agent did not answer ${op} (${Math.round(waited / 1000)} s): ${verdict}`));
            };
            this.pending.set(id, {
                op,
                timer: setTimeout(expire, timeoutMs),
                fail: reject,
                part: msg => {
                    const k = msg.statement || 0;
                    if (keepRows) (parts[k] ||= []).push(msg.rows || []);
                    if (onRows) {
                        try {
                            onRows(k, msg.columns || null, msg.rows || []);
                        } catch (err) {
                            // The caller's error must not break the matching.
                            console.error("agent client: onRows failed:", err);
                        }
                    }
                },
                done: msg => {
                    if (parts.length) assemble(msg, parts);
                    resolve(msg);
                },
            });
            try {
                for (const line of lines) this.write(encoder.encode(line));
            } catch (err) {
                clearTimeout(this.pending.get(id)?.timer);
                this.pending.delete(id);
                reject(err);
                return;
            }
            this.unanswered.push(id);
        });
    }

    // rows runs a streamed query or exec and yields its rows as they come,
    // as {statement, columns, rows} batches (columns on a statement's first
    // batch), without keeping them; it returns the final message (rows the
    // parts did not carry are yielded first) and throws if it is not ok.
    async *rows(req, options = {}) {
        const queue = [];
        let wake = null;
        let end = null;
        const push = item => {
            queue.push(item);
            if (wake) wake();
        };
        this.call(req, {
            ...options,
            stream: options.stream || true,
            keepRows: false,
            onRows: (statement, columns, rows) => push({ statement, columns, rows }),
        }).then(msg => {
            end = { msg };
            if (wake) wake();
        }, err => {
            end = { err };
            if (wake) wake();
        });
        for (;;) {
            while (queue.length) yield queue.shift();
            if (end) break;
            await new Promise(r => (wake = r));
            wake = null;
        }
        if (end.err) throw end.err;
        const msg = end.msg;
        if (!msg.ok) throw Object.assign(new Error(msg.error || "agent request failed"), { sqlstate: msg.sqlstate, detail: msg.detail, hint: msg.hint, position: msg.position });
        const rest = Array.isArray(msg.results) ? msg.results : [msg];
        for (let k = 0; k < rest.length; k++) {
            if (rest[k].rows && rest[k].rows.length) yield { statement: k, columns: rest[k].columns, rows: rest[k].rows };
        }
        return msg;
    }

    // call runs requests one after another, as the agent does anyway, so a
    // slow request's time limit does not count time spent behind others.
    call(req, options) {
        const run = this.chain.then(() => this.request(req, options));
        this.chain = run.catch(() => undefined);
        return run;
    }

    // waitReady resolves once the agent answers. A freshly booted agent
    // announces itself; a restored one announced itself before the save, so
    // it is pinged (the answer to a ping comes with a ready event) until it
    // answers. Past timeoutMs the judge (if any) decides whether to wait on.
    async waitReady(timeoutMs, restored) {
        const start = Date.now();
        const giveUp = () => {
            const waited = Date.now() - start;
            if (this.dead) return this.dead;
            if (waited < timeoutMs) return "";
            const v = this.judge ? this.judge("ready", waited, timeoutMs) : `no answer within ${Math.round(timeoutMs / 1000)} s`;
            return v === "wait" ? "" : v;
        };
        const noise = () => (this.noise.length ? ` (it printed: ${this.noise.join(" | ")})` : "");
        if (!restored) {
            if (this.ready) return;
            await new Promise((resolve, reject) => {
                let timer;
                const check = () => {
                    if (this.ready) return resolve();
                    const why = giveUp();
                    if (why) return reject(new Error(`the VM's agent did not start: ${why}${noise()}`));
                    timer = setTimeout(check, 1000);
                };
                this.readyWaiters.push(() => {
                    clearTimeout(timer);
                    resolve();
                });
                timer = setTimeout(check, 1000);
            });
            return;
        }
        for (;;) {
            const why = giveUp();
            if (why) throw new Error(`the VM's agent did not answer after the restore: ${why}${noise()}`);
            try {
                // A blank line first: it ends any partial line the resume left.
                this.write(encoder.encode("\n"));
                // A lost ping is simply sent again: no judge.
                const r = await this.request({ op: "ping" }, { timeoutMs: Math.min(3000, Math.max(timeoutMs - (Date.now() - start), 500)), judged: false });
                if (r.ok) {
                    this.ready = true;
                    return;
                }
            } catch (err) {
                if (this.dead) throw err;
                // lost while the guest resumes: try again
            }
        }
    }
}

// assemble puts the parts' rows in front of the final message's: a query's
// rows, or each exec statement's.
function assemble(msg, parts) {
    const join = (k, rest) => [].concat(...(parts[k] || []), rest || []);
    if (Array.isArray(msg.results)) {
        msg.results.forEach((r, k) => {
            r.rows = join(k, r.rows);
        });
    } else if (msg.ok) {
        msg.rows = join(0, msg.rows);
    }
}
