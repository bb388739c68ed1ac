// lineCollector gathers what the guest agent writes on a channel in a
// growing buffer (a result can be megabytes) and calls onLine with each
// whole line, decoded as UTF-8, without its "\n" or a "\r" before it.
// Shared by the Node harness and the browser app.
//
// The returned function takes the channel's bytes as they come (a byte
// from a serial port, up to a page from virtio-console); its reset()
// forgets a half-read line (after a state restore the guest is at another
// moment in time).
export function lineCollector(onLine) {
    const decoder = new TextDecoder();
    let buf = new Uint8Array(64 * 1024);
    let len = 0;
    function append(bytes) {
        if (len + bytes.length > buf.length) {
            let size = buf.length * 2;
            while (size < len + bytes.length) size *= 2;
            const bigger = new Uint8Array(size);
            bigger.set(buf.subarray(0, len));
            buf = bigger;
        }
        buf.set(bytes, len);
        len += bytes.length;
    }
    const collect = bytes => {
        let from = 0;
        for (;;) {
            const nl = bytes.indexOf(0x0a, from);
            if (nl < 0) {
                append(bytes.subarray(from));
                return;
            }
            append(bytes.subarray(from, nl));
            const line = decoder.decode(buf.subarray(0, len)).replace(/\r$/, "");
            len = 0;
            from = nl + 1;
            onLine(line);
        }
    };
    collect.reset = () => {
        len = 0;
    };
    return collect;
}
