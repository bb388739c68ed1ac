// virtioConsoleWriter feeds bytes to one port of v86's virtio-console device.
// Shared by the Node harness and the browser app.
//
// v86 copies one write into one receive buffer the guest driver has posted
// (Linux posts a page each, 16 per port) and silently drops a write when no
// buffer is posted, or cuts what does not fit. So each chunk is sized to the
// buffer it goes into and goes in only while one is free; the rest waits
// until the guest has read some.
//
// emulator is a function returning the current V86 instance. The returned
// function queues bytes; its reset() drops what is still queued (after a
// state restore, bytes meant for the VM before it must not reach the
// restored one: they would end up in the middle of its next line).
export function virtioConsoleWriter(emulator, port) {
    // v86's queues: port 0 receives on queue 0, port N on queue 2N+2.
    const queueID = port === 0 ? 0 : 2 * port + 2;
    const queue = [];
    let offset = 0;
    let pumping = false;

    function device() {
        const emu = emulator();
        const dev = emu && emu.v86 && emu.v86.cpu && emu.v86.cpu.devices && emu.v86.cpu.devices.virtio_console;
        return { emu, dev };
    }

    function pump() {
        const { emu, dev } = device();
        if (!emu || !dev) {
            queue.length = 0;
            offset = 0;
            pumping = false;
            return;
        }
        const q = dev.virtio.queues[queueID];
        while (queue.length > 0 && q.is_configured() && q.has_request()) {
            const chain = q.pop_request();
            const head = queue[0];
            const end = Math.min(head.length, offset + chain.length_writable);
            dev.Send(queueID, chain, head.subarray(offset, end));
            offset = end;
            if (end === head.length) {
                queue.shift();
                offset = 0;
            }
        }
        if (queue.length === 0) {
            pumping = false;
            return;
        }
        setTimeout(pump, 1);
    }

    const write = bytes => {
        const { emu, dev } = device();
        if (emu && !dev) throw new Error("v86 has no virtio-console device (started without virtio_console, or its internals changed)");
        if (bytes.length === 0) return;
        queue.push(bytes);
        if (!pumping) {
            pumping = true;
            pump();
        }
    };
    write.reset = () => {
        queue.length = 0;
        offset = 0;
    };
    return write;
}
