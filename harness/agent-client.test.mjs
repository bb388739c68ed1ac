// Tests of agent-client.mjs against a scripted agent (no VM): matching,
// refusals, streamed parts, requests in pieces, version errors, reset.
// Run: node --test harness/agent-client.test.mjs (internal/vm's
// TestAgentClientJS runs it in make test-go).
import assert from "node:assert/strict";
import test from "node:test";
import { AgentClient, PIECE_CHARS, splitSQL } from "./agent-client.mjs";

const enc = new TextEncoder();
const dec = new TextDecoder();

// fake returns a client whose writes are parsed into sent (one object per
// line) and a reply(obj) that feeds one agent line back.
function fake(protocol) {
    const sent = [];
    const write = bytes => {
        for (const line of dec.decode(bytes).split("\n")) if (line) sent.push(JSON.parse(line));
    };
    write.reset = () => {};
    const client = new AgentClient(write);
    const reply = obj => client.feed(enc.encode(JSON.stringify(obj) + "\n"));
    if (protocol) reply({ event: "ready", version: protocol === 1 ? "1+abc" : `${protocol}+abc`, ...(protocol >= 2 ? { protocol } : {}) });
    return { client, sent, reply };
}

test("ready event: protocol from the field, else the version's major", () => {
    assert.equal(fake(1).client.protocol, 1);
    assert.equal(fake(2).client.protocol, 2);
});

test("answers matched by id; an id 0 refusal fails the oldest", async () => {
    const { client, sent, reply } = fake(2);
    const a = client.request({ op: "ping" });
    const b = client.request({ op: "status" });
    reply({ id: 0, ok: false, error: "request line longer than 1048576 bytes" });
    reply({ id: sent[1].id, ok: true, postgres: "ready" });
    const ra = await a;
    assert.equal(ra.refused, true);
    assert.match(ra.error, /longer than/);
    assert.equal((await b).postgres, "ready");
    assert.equal(client.busy, false);
});

test("streamed parts are assembled and seen as they come", async () => {
    const { client, sent, reply } = fake(2);
    const seen = [];
    const p = client.request({ op: "exec", sql: "select 1; select 2" }, { stream: { chunkBytes: 4096 }, onRows: (k, cols, rows) => seen.push([k, cols && cols.length, rows.length]) });
    const id = sent[0].id;
    assert.equal(sent[0].stream, true);
    assert.equal(sent[0].chunk_bytes, 4096);
    reply({ id, more: true, statement: 0, columns: [{ name: "a" }], rows: [["1"], ["2"]] });
    reply({ id, more: true, statement: 0, rows: [["3"]] });
    reply({ id, more: true, statement: 1, columns: [{ name: "b" }], rows: [["x"]] });
    reply({ id, ok: true, results: [{ columns: [{ name: "a" }], rows: [["4"]], command: "SELECT 4" }, { columns: [{ name: "b" }], rows: [], command: "SELECT 1" }] });
    const r = await p;
    assert.deepEqual(r.results[0].rows, [["1"], ["2"], ["3"], ["4"]]);
    assert.deepEqual(r.results[1].rows, [["x"]]);
    assert.deepEqual(seen, [[0, 1, 2], [0, null, 1], [1, 1, 1]]);
});

test("rows() yields batches without keeping them", async () => {
    const { client, sent, reply } = fake(2);
    const it = client.rows({ op: "query", sql: "select" });
    const got = [];
    const done = (async () => {
        for await (const b of it) got.push(b.rows.length);
    })();
    await new Promise(r => setTimeout(r, 0));
    const id = sent[0].id;
    reply({ id, more: true, statement: 0, columns: [], rows: [["1"], ["2"]] });
    reply({ id, ok: true, columns: [], rows: [["3"]], command: "SELECT 3" });
    await done;
    assert.deepEqual(got, [2, 1]);
});

test("a long sql goes in pieces that put it back together", async () => {
    const { client, sent, reply } = fake(2);
    // Characters JSON makes long, a surrogate pair at every cut.
    const sql = ("\u0001😀" + "a".repeat(PIECE_CHARS - 3)).repeat(5) + "end";
    const p = client.request({ op: "exec", sql });
    assert.ok(sent.length > 4);
    assert.equal(sent[0].op, "exec");
    assert.ok(sent.slice(1).every(m => !m.op && m.id === sent[0].id));
    assert.ok(sent.slice(0, -1).every(m => m.more === true) && !sent.at(-1).more);
    assert.equal(sent.map(m => m.sql).join(""), sql);
    reply({ id: sent[0].id, ok: true, results: [] });
    await p;
    for (const s of splitSQL("😀".repeat(10), 3)) assert.ok(!/[\ud800-\udbff]$/.test(s));
});

test("protocol 1 agent: long sql and rows as they come fail, naming both versions", async () => {
    const { client, sent, reply } = fake(1);
    await assert.rejects(client.request({ op: "exec", sql: "x".repeat(1100000) }), /agent speaks protocol 1 .*pieces needs protocol 2 \(this client speaks 1 to 2\)/);
    await assert.rejects(client.request({ op: "query", sql: "select 1" }, { onRows: () => {} }), /need protocol 2; the VM's agent speaks protocol 1/);
    // stream without onRows falls back to one message.
    const p = client.request({ op: "query", sql: "select 1" }, { stream: true });
    assert.equal(sent.at(-1).stream, undefined);
    reply({ id: sent.at(-1).id, ok: true, rows: [["1"]] });
    assert.deepEqual((await p).rows, [["1"]]);
});

test("time limit and reset fail the request; the next one works", async () => {
    const { client, sent, reply } = fake(2);
    await assert.rejects(client.request({ op: "ping" }, { timeoutMs: 20 }), /did not answer ping/);
    const p = client.request({ op: "status" });
    client.reset("the VM was restored");
    await assert.rejects(p, /restored/);
    const q = client.request({ op: "ping" });
    reply({ id: sent.at(-1).id, ok: true });
    assert.equal((await q).ok, true);
});
