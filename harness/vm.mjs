#!/usr/bin/env node
// vm.mjs runs the pgwasm VM headless in Node with v86, driven by the Go side
// (internal/vm) over stdio: one JSON command per stdin line, one JSON response
// or event per stdout line. Logs and the guest console go to stderr.
//
// Commands ({"id":N,"cmd":...}); every response is {"id":N,"ok":bool,...}:
//   start      boot the image, or restore a state file; answers once the CPU runs
//              (virtio_console: give v86 that device; agent_channel: "serial"
//              or "virtio-console", where agent requests go by default;
//              net_mtu: virtio-net's MTU; acpi: v86's local APIC)
//   wait_agent wait until the guest agent answers on the default channel
//   agent      pass one request object to the guest agent, return its response
//              (channel: another channel than the default; stream: {chunk_bytes,
//              max_bytes} streams a query's or exec's rows as "agent_part"
//              events before the answer, which then holds only the rest;
//              profile: true adds where the time went, see feedClock)
//   console    write to ttyS0 and/or read its output until a pattern appears
//   save_state write the raw (uncompressed) v86 state to a path
//   set_relay  move the NIC to another relay URL and open its websocket
//   write_file one chunk of a file to create on the 9p root (base64)
//   read_file  one chunk of a file on the 9p root (base64)
//   export_tree copy a directory of the 9p root to a host directory; list owners and modes
//   stats      9p blob bytes fetched, phase timings, the console tail, relay state
//   irq_debug  the emulated interrupt controllers' registers (diagnostics)
//   stop       destroy the emulator and exit
// Events ({"event":...}): "agent_ready" when the agent announces itself;
// "agent_part" ({cmd_id, statement, columns?, rows}) for a streamed result.

import fs from "node:fs";
import readline from "node:readline";
import { V86 } from "v86";
import { AgentClient } from "./agent-client.mjs";
import { serialWriter } from "./serial.mjs";
import { keepTSCOnRestore } from "./tsc.mjs";
import { wholeMillisecondWaits } from "./yield.mjs";
import { virtioConsoleWriter } from "./virtio-console.mjs";

// Anything v86 prints must not corrupt the protocol on stdout.
console.log = (...args) => console.error(...args);
console.info = console.log;

const t0 = performance.now();
const since = () => Math.round(performance.now() - t0);
const CONSOLE_TAIL = 16 * 1024;

function log(msg, fields = {}) {
    process.stderr.write(JSON.stringify({ t_ms: since(), msg, ...fields }) + "\n");
}

function send(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

const state = {
    emulator: null,
    restored: false,
    timings: {},            // phase name -> ms since this process started
    blob: { files: 0, bytes: 0, raw_bytes: 0 },
    loadsInFlight: 0,       // 9p blob loads not finished yet (see saveState)
    consoleText: "",        // last CONSOLE_TAIL characters of ttyS0
    consoleWaiters: new Set(),
    uploads: new Map(),     // path -> {buf, received}: write_file chunks so far
};

function mark(phase) {
    if (!(phase in state.timings)) state.timings[phase] = since();
}

// ---- ttyS0: the psql console ----

const consoleDecoder = new TextDecoder();
let consoleLine = "";

function onConsoleByte(byte) {
    const text = consoleDecoder.decode(new Uint8Array([byte]), { stream: true });
    if (!text) return;
    state.consoleText = (state.consoleText + text).slice(-CONSOLE_TAIL);
    for (const w of state.consoleWaiters) w.feed(text);
    // Echo whole lines to stderr so a stuck boot can be read in the logs.
    consoleLine += text;
    if (text === "\n") {
        process.stderr.write("console: " + consoleLine.replace(/\r?\n$/, "") + "\n");
        consoleLine = "";
    }
}

function consoleCommand(cmd) {
    const pattern = cmd.until ? new RegExp(cmd.until) : null;
    return new Promise((resolve, reject) => {
        let out = "";
        const w = {
            feed(text) {
                out += text;
                if (pattern && pattern.test(out)) finish();
            },
        };
        const timer = setTimeout(() => {
            state.consoleWaiters.delete(w);
            reject(new Error(`console: ${JSON.stringify(cmd.until)} not seen within ${cmd.timeout_ms} ms; output: ${JSON.stringify(out.slice(-2000))}`));
        }, cmd.timeout_ms || 30000);
        function finish() {
            clearTimeout(timer);
            state.consoleWaiters.delete(w);
            resolve({ output: out });
        }
        state.consoleWaiters.add(w);
        if (cmd.write) consoleWrite(new TextEncoder().encode(cmd.write));
        if (!pattern) finish();
    });
}

// ---- the guest agent (docs/agent-protocol.md, "Channels") ----

// The agent answers on two channels: ttyS1 ("serial", a byte per interrupt)
// and virtio-console port 1 ("virtio-console", /dev/hvc1 in the guest, a
// page per interrupt) when the image offers it and v86 has the device.
// Requests go to agent.channel (start's agent_channel) unless an agent
// command names another.
const VIRTIO_AGENT_PORT = 1;

// One protocol client per channel (harness/agent-client.mjs, shared with
// the page): ids, the matching of "id":0 refusals, streamed results.
const agent = {
    channel: "serial",
    clients: {
        serial: new AgentClient(serialWriter(() => state.emulator, 1), { onReady: ev => onAgentReady("serial", ev) }),
        "virtio-console": new AgentClient(virtioConsoleWriter(() => state.emulator, VIRTIO_AGENT_PORT), { onReady: ev => onAgentReady("virtio-console", ev) }),
    },
    get client() {
        return this.clients[this.channel];
    },
};

// Every channel announces itself when the agent opens it; only the default
// channel's announcement is passed on to the Go side.
function onAgentReady(channel, ev) {
    if (channel !== agent.channel) return;
    mark("agent_ready");
    send({ event: "agent_ready", version: ev.version || "", protocol: agent.client.protocol, channel, t_ms: since() });
}

const oneByte = new Uint8Array(1);

// feedClock measures, for a profiled request (agent command with profile:
// true), when the agent's bytes came and how long the host spent on them
// (line collection, JSON.parse, assembly, forwarding parts): one request
// at a time, which is how the measurement sends them.
const feedClock = { on: false, ms: 0, first: 0, last: 0 };
function feedAgent(channel, bytes) {
    if (!feedClock.on) {
        agent.clients[channel].feed(bytes);
        return;
    }
    const t = performance.now();
    if (!feedClock.first) feedClock.first = t;
    feedClock.last = t;
    agent.clients[channel].feed(bytes);
    feedClock.ms += performance.now() - t;
}

// agentRequest sends one request with the client's own id (so ids from the
// Go side can never clash with the harness's pings) and resolves with the
// agent's final response, given the Go side's id back. With stream set
// (cmd.stream of the agent command), a query's or exec's rows come in
// parts; each part goes to the Go side at once as an "agent_part" event
// naming the command's id, and the response holds only the rows of no part.
async function agentRequest(req, timeoutMs, channel = agent.channel, cmdID = 0, stream = null, profile = false) {
    const client = agent.clients[channel];
    if (!client) throw new Error(`agent: unknown channel ${JSON.stringify(channel)} (serial or virtio-console)`);
    const options = { timeoutMs };
    if (stream) {
        options.stream = { chunkBytes: stream.chunk_bytes, maxBytes: stream.max_bytes };
        options.keepRows = false;
        options.onRows = (statement, columns, rows) => send({ event: "agent_part", cmd_id: cmdID, statement, ...(columns ? { columns } : {}), rows });
    }
    let prof = null;
    if (profile) {
        Object.assign(feedClock, { on: true, ms: 0, first: 0, last: 0 });
        prof = { t: performance.now(), instr: state.emulator.get_instruction_counter() };
    }
    let msg;
    try {
        msg = await client.request(req, options);
    } finally {
        feedClock.on = false;
    }
    if (msg.refused) delete msg.refused;
    msg.id = req.id;
    if (prof) {
        // Guest instructions from the write to the answer's last byte
        // (a 32-bit counter: the difference wraps correctly).
        const end = performance.now();
        return { msg, profile: {
            total_ms: end - prof.t,
            first_byte_ms: feedClock.first ? feedClock.first - prof.t : 0,
            last_byte_ms: feedClock.last ? feedClock.last - prof.t : 0,
            host_feed_ms: feedClock.ms,
            instructions: (state.emulator.get_instruction_counter() - prof.instr) >>> 0,
        } };
    }
    return { msg };
}

// Writer for ttyS0 (console): chunked, see serial.mjs.
const consoleWrite = serialWriter(() => state.emulator, 0);

// waitAgent resolves when the agent has answered on the default channel:
// its announcement after a boot, a ping after a restore.
async function waitAgent(timeoutMs) {
    await agent.client.waitReady(timeoutMs, state.restored);
    mark("agent_ready");
}

// ---- 9p blob accounting ----

// countBlobs wraps v86's loader of 9p file contents (ServerFileStorageWrapper.
// load_from_server, its names survive minification) to count what a browser
// would download: the blob file size on disk, and the decompressed size.
function countBlobs(emulator, blobDir) {
    const storage = emulator.fs9p && emulator.fs9p.storage;
    if (!storage || typeof storage.load_from_server !== "function") {
        log("blob accounting unavailable: v86 internals changed");
        state.blob = null;
        return;
    }
    const orig = storage.load_from_server.bind(storage);
    storage.load_from_server = (name, size) => {
        state.blob.files++;
        state.blob.raw_bytes += size;
        try {
            state.blob.bytes += fs.statSync(blobDir + "/" + name).size;
        } catch (err) {
            log("blob stat failed", { name, err: String(err) });
        }
        state.loadsInFlight++;
        return orig(name, size).finally(() => state.loadsInFlight--);
    };
}

// ---- network relay ----

// relayAdapter is v86's websocket NetworkAdapter (src/browser/network.js),
// present when the emulator was started with a relay URL.
function relayAdapter() {
    const a = state.emulator && state.emulator.network_adapter;
    if (!a || typeof a.connect !== "function" || typeof a.change_proxy !== "function") return null;
    return a;
}

// connectRelay opens the relay websocket now. v86 opens it only when the guest
// sends a frame, so a restored (idle) VM could not be reached through the
// inbound tunnel until it sent something. connect() does nothing within
// reconnect_interval (10 s) of its last attempt: clear that, this one is ours.
function connectRelay(a) {
    watchDrain(a);
    a.last_connect_attempt = 0;
    a.connect();
}

// A relay that drains (graceful shutdown) closes the websocket with 4503
// "draining" (docs/serve.md): reconnect at once, since a load balancer that
// has taken that server out sends us to another, which re-creates the
// session from its token. v86 alone would wait up to reconnect_interval
// (10 s). If the first attempts fail (the balancer has not noticed yet),
// retry every 250 ms for DRAIN_RETRY_MS, then v86's own retries take over.
// An open websocket that drops without a close code (its replica was
// killed, or the network broke) is treated the same way, but from the
// 250 ms retry on: v86's immediate reconnect can still reach the dead
// replica before the balancer notices, and its next try would come 10 s
// later (issue #14: the VM is back within 15 s of a SIGKILL).
const DRAIN_CLOSE_CODE = 4503;
const DRAIN_RETRY_MS = 15000;

function watchDrain(a) {
    if (a.pgwasmDrainWatch) return;
    a.pgwasmDrainWatch = true;
    let retryUntil = 0;
    const v86Close = a.handle_close;
    // v86 binds handle_close to each socket it opens, so this instance
    // method takes effect from the next socket on.
    a.handle_close = function (ev) {
        const now = Date.now();
        if (ev && ev.code === DRAIN_CLOSE_CODE) {
            log("relay: server draining (4503): reconnecting at once");
            retryUntil = now + DRAIN_RETRY_MS;
        } else if (ev && ev.target && ev.target.pgwasmWasOpen && ev.target === this.socket) {
            // Only the current socket: change_proxy closes the old one on purpose.
            log(`relay: websocket dropped (code ${ev.code}): retrying every 250 ms`);
            retryUntil = now + DRAIN_RETRY_MS;
        }
        if (!this.destroyed && now < retryUntil) {
            setTimeout(() => {
                if (this.destroyed || (this.socket && this.socket.readyState <= 1)) return;
                this.last_connect_attempt = 0;
                this.connect();
            }, ev && ev.code === DRAIN_CLOSE_CODE ? 0 : 250);
            return;
        }
        return v86Close.call(this, ev);
    };
    const onOpen = a.handle_open;
    a.handle_open = function (...args) {
        retryUntil = 0;
        if (this.socket) this.socket.pgwasmWasOpen = true;
        return onOpen.apply(this, args);
    };
    if (a.socket) {
        a.socket.onclose = a.handle_close.bind(a);
        a.socket.onopen = a.handle_open.bind(a);
    }
}

const WS_STATES = ["connecting", "open", "closing", "closed"];

function relayState() {
    const a = relayAdapter();
    if (!a) return "none";
    return a.socket ? WS_STATES[a.socket.readyState] || "unknown" : "closed";
}

// relayHost names the relay in messages without its query (the session token).
function relayHost(url) {
    try {
        const u = new URL(url);
        return u.origin + u.pathname;
    } catch {
        return "(bad URL)";
    }
}

// setRelay moves the NIC to another relay (a new session after a relay
// restart) without a restore, and answers once its websocket is open. The
// guest keeps its address; it should run DHCP again (agent net_up) for the
// new session's lease.
async function setRelay(cmd) {
    const a = relayAdapter();
    if (!a) throw new Error("the VM was started without a relay URL: v86 has no relay adapter to switch");
    if (!cmd.url || !/^wss?:\/\//.test(cmd.url)) throw new Error(`relay URL must be ws:// or wss://, got ${JSON.stringify(relayHost(cmd.url || ""))}`);
    a.change_proxy(cmd.url);
    // Frames queued for the old relay mean nothing to the new session.
    a.send_queue = [];
    connectRelay(a);
    const timeoutMs = cmd.timeout_ms || 10000;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
        const st = relayState();
        if (st === "open") return { relay: st };
        if (st === "closed" || st === "closing") {
            throw new Error(`relay websocket to ${relayHost(cmd.url)} was refused or closed (unknown session or bad token?); v86 retries every 10 s`);
        }
        if (Date.now() > deadline) throw new Error(`relay websocket to ${relayHost(cmd.url)} not open within ${timeoutMs} ms (${st})`);
        await new Promise(r => setTimeout(r, 50));
    }
}

// ---- files on the 9p root ----

// The guest mounts its own file systems over these 9p directories: a file
// written there on the 9p side is invisible to it, and one it writes there is
// not on the 9p side.
const GUEST_MOUNTS = ["/proc", "/sys", "/dev", "/run", "/tmp"];

function normPath(path) {
    if (typeof path !== "string" || !path.startsWith("/")) throw new Error(`path must be absolute, got ${JSON.stringify(path)}`);
    const parts = path.split("/").filter(p => p !== "" && p !== ".");
    if (parts.includes("..")) throw new Error(`path must not contain "..": ${path}`);
    const norm = "/" + parts.join("/");
    for (const m of GUEST_MOUNTS) {
        if (norm === m || norm.startsWith(m + "/")) throw new Error(`${norm} is on the guest's own ${m} mount, not the 9p root`);
    }
    return norm;
}

function fs9p() {
    const f = state.emulator.fs9p;
    if (!f || typeof f.SearchPath !== "function") throw new Error("v86 has no 9p filesystem");
    return f;
}

// writeFile receives one chunk of a new file ({path, data_base64, offset,
// size}). Chunks arrive in order and are collected here; the file appears in
// the 9p tree whole, with the last one, so the guest never sees a partial
// file. Existing paths are refused: the guest mounts 9p with cache=loose and
// may keep the old file's pages and size. A name the guest looked up and did
// not find is fine (checked: it sees the new file at once).
async function writeFile(cmd) {
    const path = normPath(cmd.path);
    const size = cmd.size;
    const offset = cmd.offset || 0;
    if (!Number.isSafeInteger(size) || size < 0) throw new Error(`write_file ${path}: bad size ${size}`);
    const chunk = Buffer.from(cmd.data_base64 || "", "base64");
    let up = state.uploads.get(path);
    if (offset === 0) {
        const f = fs9p();
        const found = f.SearchPath(path);
        if (found.id !== -1) throw new Error(`${path} exists: write a new name (the guest may cache the old file)`);
        if (found.parentid === -1) throw new Error(`${path}: its directory does not exist`);
        up = { buf: new Uint8Array(size), received: 0 };
        state.uploads.set(path, up);
    } else if (!up || up.received !== offset || up.buf.length !== size) {
        state.uploads.delete(path);
        throw new Error(`write_file ${path}: chunk at ${offset} does not follow ${up ? up.received : "no upload"}`);
    }
    if (offset + chunk.length > size) {
        state.uploads.delete(path);
        throw new Error(`write_file ${path}: chunk ends at ${offset + chunk.length}, past size ${size}`);
    }
    up.buf.set(chunk, offset);
    up.received = offset + chunk.length;
    if (up.received < size) return { received: up.received, done: false };
    state.uploads.delete(path);
    try {
        await state.emulator.create_file(path, up.buf);
    } catch (err) {
        throw new Error(`cannot create ${path} on the 9p root: ${err && err.message || err}`);
    }
    return { received: size, done: true };
}

// readFile returns {data_base64, size} for length bytes at offset of a
// regular file in the 9p tree. What the guest wrote and has not yet written
// back (its page cache) is not there: sync in the guest first.
async function readFile(cmd) {
    const path = normPath(cmd.path);
    const f = fs9p();
    const found = f.SearchPath(path);
    if (found.id === -1) throw new Error(`no file ${path} on the 9p root`);
    const inode = f.GetInode(found.id);
    if ((inode.mode & 0o170000) !== 0o100000) throw new Error(`${path} is not a regular file (mode ${inode.mode.toString(8)})`);
    const size = inode.size;
    const offset = Math.min(cmd.offset || 0, size);
    const length = Math.min(cmd.length || 1 << 20, size - offset);
    const data = length > 0 ? await f.Read(found.id, offset, length) : null;
    const bytes = data ? Buffer.from(data.buffer, data.byteOffset, data.length) : Buffer.alloc(0);
    if (bytes.length !== length) throw new Error(`read_file ${path}: read ${bytes.length} bytes at ${offset}, want ${length}`);
    return { data_base64: bytes.toString("base64"), size };
}

const S_IFMT = 0o170000, S_IFDIR = 0o040000, S_IFREG = 0o100000, S_IFLNK = 0o120000;

// exportTree copies the directory cmd.path of the 9p root to the host
// directory cmd.out (absolute, must not exist) and lists every path in it
// with the type, permission bits, owner and size the guest gave it: the
// image build runs initdb in the guest and takes the data directory out this
// way, straight from v86's in-memory file system rather than through a
// serial port. Host copies are plain owner-writable files and directories
// (the build runs unprivileged); owners and modes live in the listing.
// stop_cpu pauses the emulated CPU first, so the tree cannot change while
// it is copied. What the guest has not written back (its page cache) is not
// there: it must sync first.
async function exportTree(cmd) {
    const path = normPath(cmd.path);
    if (typeof cmd.out !== "string" || !cmd.out.startsWith("/")) throw new Error(`export_tree: out must be an absolute host path, got ${JSON.stringify(cmd.out)}`);
    if (fs.existsSync(cmd.out)) throw new Error(`export_tree: ${cmd.out} exists`);
    if (cmd.stop_cpu) await state.emulator.stop();
    const f = fs9p();
    const found = f.SearchPath(path);
    if (found.id === -1) throw new Error(`no ${path} on the 9p root`);
    if (f.GetInode(found.id).direntries.size === 0) throw new Error(`export_tree: ${path} is not a directory`);
    const entries = [];
    async function walk(id, rel) {
        const inode = f.GetInode(id);
        let type = inode.mode & S_IFMT;
        // A mode set without its type bits (not what Linux sends, but v86
        // stores whatever setattr says): every directory has "." entries.
        if (type === 0) type = inode.direntries.size > 0 ? S_IFDIR : inode.symlink ? S_IFLNK : S_IFREG;
        const host = rel === "." ? cmd.out : cmd.out + "/" + rel;
        const e = { path: rel, mode: inode.mode & 0o7777, uid: inode.uid, gid: inode.gid };
        entries.push(e);
        if (type === S_IFDIR) {
            e.type = "dir";
            fs.mkdirSync(host, { mode: 0o755 });
            const names = [...inode.direntries.keys()].filter(n => n !== "." && n !== "..").sort();
            for (const n of names) await walk(inode.direntries.get(n), rel === "." ? n : rel + "/" + n);
        } else if (type === S_IFREG) {
            e.type = "file";
            e.size = inode.size;
            const data = inode.size > 0 ? await f.Read(id, 0, inode.size) : new Uint8Array(0);
            if (!data || data.length !== inode.size) throw new Error(`export_tree: ${path}/${rel}: read ${data ? data.length : 0} of ${inode.size} bytes`);
            fs.writeFileSync(host, data, { mode: 0o644 });
        } else if (type === S_IFLNK) {
            e.type = "symlink";
            e.target = inode.symlink;
            fs.symlinkSync(inode.symlink, host);
        } else {
            throw new Error(`export_tree: ${path}/${rel} is not a file, directory or symlink (mode ${inode.mode.toString(8)})`);
        }
    }
    const t = performance.now();
    await walk(found.id, ".");
    return { entries, ms: Math.round(performance.now() - t) };
}

// ---- commands ----

async function start(cmd) {
    if (state.emulator) throw new Error("already started");
    // v86 never reports a missing file under Node (it just waits), so check.
    const files = cmd.state_path ? [cmd.wasm_path, cmd.bios, cmd.vga_bios, cmd.state_path]
        : [cmd.wasm_path, cmd.bios, cmd.vga_bios, cmd.bzimage, cmd.initrd, cmd.fs_json];
    for (const f of [...files, cmd.blob_dir]) {
        if (!f || !fs.existsSync(f)) throw new Error(`missing file: ${f}`);
    }
    if (cmd.relay_url && typeof globalThis.WebSocket === "undefined") {
        // v86's relay backend needs a global WebSocket; Node 20 has none.
        const { WebSocket } = await import("ws");
        globalThis.WebSocket = WebSocket;
    }
    const options = {
        wasm_path: cmd.wasm_path,
        bios: { url: cmd.bios },
        vga_bios: { url: cmd.vga_bios },
        memory_size: cmd.memory_mb * 1024 * 1024,
        vga_memory_size: cmd.vga_memory_mb * 1024 * 1024,
        // We start the CPU ourselves, after restoring and hooking the loader.
        autostart: false,
        disable_keyboard: true,
        disable_mouse: true,
        disable_speaker: true,
        uart1: true,
        // The agent's fast channel; a state restores only into a machine
        // with the same devices, so the image's manifest decides.
        virtio_console: !!cmd.virtio_console,
        // The guest's local APIC (our kernel's clock-event device); part of
        // the machine a state needs, so the image's manifest decides.
        acpi: !!cmd.acpi,
        // mtu: virtio-net's, which the guest takes when it probes the
        // device (a restored guest keeps the one it booted with).
        net_device: { type: cmd.net_device, ...(cmd.net_mtu ? { mtu: cmd.net_mtu } : {}), ...(cmd.relay_url ? { relay_url: cmd.relay_url } : {}) },
        // Keep the NIC's MAC across restores so the guest's network survives.
        preserve_mac_from_state_image: true,
        // A restore replaces the whole 9p tree with the one in the state, so
        // the tree JSON is only parsed for a full boot.
        filesystem: cmd.state_path ? { baseurl: cmd.blob_dir + "/" } : { basefs: cmd.fs_json, baseurl: cmd.blob_dir + "/" },
    };
    if (!cmd.state_path) {
        options.bzimage = { url: cmd.bzimage };
        options.initrd = { url: cmd.initrd };
        options.cmdline = cmd.cmdline;
    }
    const channel = cmd.agent_channel || "serial";
    if (!agent.clients[channel]) throw new Error(`agent_channel must be serial or virtio-console, not ${JSON.stringify(channel)}`);
    if (channel === "virtio-console" && !cmd.virtio_console) throw new Error("agent_channel virtio-console needs virtio_console: true");
    agent.channel = channel;
    const stateBuf = cmd.state_path ? fs.readFileSync(cmd.state_path) : null;

    const emulator = new V86(options);
    state.emulator = emulator;
    emulator.add_listener("serial0-output-byte", onConsoleByte);
    emulator.add_listener("serial1-output-byte", byte => {
        oneByte[0] = byte;
        feedAgent("serial", oneByte);
    });
    if (cmd.virtio_console) emulator.add_listener(`virtio-console${VIRTIO_AGENT_PORT}-output-bytes`, bytes => feedAgent("virtio-console", bytes));
    await new Promise(resolve => emulator.add_listener("emulator-loaded", resolve));
    mark("emulator_loaded");
    countBlobs(emulator, cmd.blob_dir);
    if (!keepTSCOnRestore(emulator)) log("TSC fix unavailable: v86 internals changed; a restored guest's clock may jump");
    if (!wholeMillisecondWaits(emulator)) log("v86's yield not found: an idle guest makes v86 spin before each timer event");

    if (stateBuf) {
        // Restored here rather than through initial_state so that a bad file
        // becomes an error answer instead of an unhandled rejection.
        const ab = stateBuf.buffer.slice(stateBuf.byteOffset, stateBuf.byteOffset + stateBuf.byteLength);
        try {
            await emulator.restore_state(ab);
        } catch (err) {
            throw new Error(`cannot restore state ${cmd.state_path}: ${err && err.message || err}`);
        }
        state.restored = true;
        mark("state_restored");
    }
    // Serial input sent before the CPU runs is lost: answer only once it runs.
    const started = new Promise(resolve => emulator.add_listener("emulator-started", resolve));
    await emulator.run();
    await started;
    mark("emulator_started");
    if (cmd.relay_url) {
        const a = relayAdapter();
        if (a) connectRelay(a);
        else log("relay: v86 has no network adapter with connect(); the websocket opens on the guest's first frame");
    }
    return { timings: state.timings, restored: state.restored };
}

// saveState writes the raw state. The CPU stops first and the save waits
// until no 9p blob load is in flight: v86 answers a read of a file it has
// not loaded yet only once the load is done, so a state saved meanwhile
// holds a request nobody answers after a restore, and the process that made
// it hangs in every VM restored from the state (the page does the same,
// docs/web.md "Saving and restoring with 9p requests in flight").
async function saveState(cmd) {
    const t = performance.now();
    await state.emulator.stop();
    let buf;
    try {
        const deadline = Date.now() + 120000;
        while (state.loadsInFlight > 0) {
            if (Date.now() > deadline) throw new Error(`save_state: ${state.loadsInFlight} 9p file loads still in flight after 120 s`);
            await new Promise(r => setTimeout(r, 10));
        }
        buf = await state.emulator.save_state();
    } finally {
        await state.emulator.run();
    }
    const tmp = cmd.path + ".tmp";
    fs.writeFileSync(tmp, new Uint8Array(buf));
    fs.renameSync(tmp, cmd.path);
    return { bytes: buf.byteLength, ms: Math.round(performance.now() - t) };
}

// nicMAC is the MAC the emulated NIC answers to and sends from: what the
// guest driver read at probe and uses as eth0's address. After a restore it
// must be the saved one (preserve_mac_from_state_image): the ne2k filters out
// frames to any other address once the interface is up.
function nicMAC() {
    const devices = state.emulator && state.emulator.v86 && state.emulator.v86.cpu && state.emulator.v86.cpu.devices;
    if (!devices) return null;
    let mac = null;
    if (devices.virtio_net) {
        // virtio-net keeps it in a field its config space reads from.
        mac = devices.virtio_net.mac;
    } else if (devices.net && devices.net.memory) {
        // The ne2k PROM stores each byte twice (word mode).
        mac = Array.from({ length: 6 }, (_, i) => devices.net.memory[2 * i]);
    }
    if (!mac || mac.length !== 6) return null;
    return Array.from(mac, b => b.toString(16).padStart(2, "0")).join(":");
}

// ---- interrupt controller state (irq_debug) ----

// irqDebug reports the emulated 8259 pair and the PCI devices' interrupt
// state. The guest's initramfs sets bit 2 of the master's ELCR (cascade
// level-triggered) to work around a v86 bug that otherwise leaves IRQ 2 in
// service forever and blocks IRQs 8-15 (guest/initramfs-init).
function irqDebug() {
    const cpu = state.emulator.v86.cpu;
    const pic = (addr) => {
        const b = new Uint8Array(cpu.wasm_memory.buffer, addr, 13);
        return { enabled: b[0], irq_map: b[1], isr: b[2], irr: b[3], elcr: b[10], irq_value: b[11] };
    };
    const net = cpu.devices.net;
    const v9 = cpu.devices.virtio_9p && cpu.devices.virtio_9p.virtio;
    const vn = cpu.devices.virtio_net && cpu.devices.virtio_net.virtio;
    return {
        pic_master: pic(cpu.get_pic_addr_master()),
        pic_slave: pic(cpu.get_pic_addr_slave()),
        pirq: Array.from(cpu.devices.pci.isa_bridge_space8.slice(0x60, 0x64)),
        ne2k: net ? { isr: net.isr, imr: net.imr, cr: net.cr } : null,
        virtio_9p_isr: v9 ? v9.isr_status : null,
        virtio_net_isr: vn ? vn.isr_status : null,
    };
}

const handlers = {
    irq_debug: async () => irqDebug(),
    start,
    wait_agent: async cmd => {
        await waitAgent(cmd.timeout_ms || 60000);
        return { version: agent.client.version, protocol: agent.client.protocol, channel: agent.channel, timings: state.timings };
    },
    agent: async cmd => {
        const { msg, profile } = await agentRequest(cmd.request, cmd.timeout_ms || 60000, cmd.channel || agent.channel, cmd.id, cmd.stream, cmd.profile);
        return profile ? { response: msg, profile } : { response: msg };
    },
    console: consoleCommand,
    save_state: saveState,
    set_relay: setRelay,
    write_file: writeFile,
    read_file: readFile,
    export_tree: exportTree,
    stats: async () => ({
        blob: state.blob,
        timings: state.timings,
        console_tail: state.consoleText.slice(-4000),
        memory_rss: process.memoryUsage().rss,
        nic_mac: nicMAC(),
        relay: state.emulator ? relayState() : "none",
    }),
    stop: async () => {
        if (state.emulator) await state.emulator.destroy();
        setImmediate(() => process.exit(0));
        return {};
    },
};

async function handle(line) {
    let cmd;
    try {
        cmd = JSON.parse(line);
    } catch {
        send({ id: 0, ok: false, error: "command is not JSON" });
        return;
    }
    const h = handlers[cmd.cmd];
    try {
        if (!h) throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
        if (cmd.cmd !== "start" && cmd.cmd !== "stop" && cmd.cmd !== "stats" && !state.emulator) {
            throw new Error("not started");
        }
        send({ id: cmd.id, ok: true, ...(await h(cmd)) });
    } catch (err) {
        send({ id: cmd.id, ok: false, error: String(err && err.message || err) });
    }
}

process.on("unhandledRejection", err => log("unhandled rejection", { err: String(err && err.stack || err) }));

// Commands run concurrently (the Go side may read stats while a query runs);
// the agent itself answers one request at a time, in order.
const rl = readline.createInterface({ input: process.stdin });
rl.on("line", line => { if (line.trim()) handle(line); });
// The Go side closing stdin means it is gone: do not linger.
rl.on("close", () => process.exit(0));
