// keepTSCOnRestore makes a restored v86 state resume with the time stamp
// counter it was saved with. Shared by the Node harness and the browser app.
//
// v86 0.5.462's set_tsc (src/rust/cpu/cpu.rs), which restore_state calls
// with the saved value, computes the new offset from read_tsc(), which
// already subtracts the old offset: afterwards the counter reads the saved
// value plus the old offset. A fresh emulator's offset is the page time at
// its creation (a small jump forward, harmless), but once it has restored
// a state the offset holds minus that state's counter. So the next restore
// in the same emulator (the page's quick-start state, then the user's)
// puts the counter back by the first state's uptime, 50-90 s for a
// snapshot booted on a loaded host. The guest's clock source is the TSC,
// and Linux ignores a counter below the last value it read: the guest's
// clock stands still until the counter catches up, no timer fires, and
// whatever sleeps (DHCP, the agent's runtime, PostgreSQL's latches) hangs
// with the CPU idle (issue #16 item 2; docs/vm.md, "The clock after a
// restore").
//
// The fix: first set the counter to its current value, which makes the
// offset zero (up to the microseconds between the two reads), then let
// set_tsc do its work.
export function keepTSCOnRestore(emulator) {
    const cpu = emulator && emulator.v86 && emulator.v86.cpu;
    if (!cpu || typeof cpu.set_tsc !== "function" || typeof cpu.store_current_tsc !== "function" || !cpu.current_tsc) return false;
    const setTSC = cpu.set_tsc;
    cpu.set_tsc = (low, high) => {
        cpu.store_current_tsc();
        setTSC(cpu.current_tsc[0], cpu.current_tsc[1]);
        setTSC(low, high);
    };
    return true;
}
