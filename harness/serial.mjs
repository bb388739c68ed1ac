// serialWriter feeds bytes to one of v86's serial ports (UARTs) in small
// chunks. Shared by the Node harness and the browser app.
//
// v86's UART keeps pending input in a plain array it reads with shift(), so
// pushing a large write at once costs O(n^2): a 256 KB agent request took
// minutes, a 400 KB script never finished. Each chunk goes in once the
// guest has read most of the previous one. When v86's internals are not
// visible the writer falls back to one push.
//
// emulator is a function returning the current V86 instance (it changes
// when a page restores another state). The returned function queues bytes;
// its reset() drops what is still queued (for a restore: see
// virtio-console.mjs).
export function serialWriter(emulator, port, chunk = 2048) {
    const queue = [];
    let offset = 0;
    let pumping = false;

    function pump() {
        const emu = emulator();
        if (!emu) {
            queue.length = 0;
            offset = 0;
            pumping = false;
            return;
        }
        const cpu = emu.v86 && emu.v86.cpu;
        const uart = cpu && cpu.devices && cpu.devices["uart" + port];
        const pending = uart && Array.isArray(uart.input) ? uart.input.length : -1;
        if (pending < 0) {
            for (const b of queue.splice(0)) emu.serial_send_bytes(port, b);
            offset = 0;
        } else if (pending < chunk / 4) {
            const head = queue[0];
            const end = Math.min(head.length, offset + chunk);
            emu.serial_send_bytes(port, head.subarray(offset, end));
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
