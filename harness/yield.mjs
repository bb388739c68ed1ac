// wholeMillisecondWaits stops v86 from spinning while the guest halts.
// Shared by the Node harness and the browser app.
//
// v86's main loop (src/main.js, v86.prototype.yield) runs its next
// main_loop at once (setImmediate in Node, an immediate postMessage from
// its worker in a browser) whenever main_loop asks to wait less than 1 ms,
// i.e. whenever the halted guest's next timer event is 0-1 ms away. Every
// timer tick then ends in thousands of main_loop calls (Node: 10,000-25,000
// a second with Debian's 250 Hz tick). Waiting the rounded-up millisecond
// instead delivers that timer interrupt at most 1 ms late; 0 (the guest is
// running) stays immediate, and device interrupts wake v86 at once anyway.
// Call after "emulator-loaded" (emulator.v86 exists only then). Returns
// false when v86's internals changed.
export function wholeMillisecondWaits(emulator) {
    const v = emulator && emulator.v86;
    if (!v || typeof v.yield !== "function") return false;
    const y = v.yield.bind(v);
    v.yield = (t, tick) => y(t > 0 ? Math.ceil(t) : t, tick);
    return true;
}
