//! Palisade's enforcement programs (`palisade-policy`): one object of its own, so the telemetry
//! hot path stays untouched and every map here can be pinned (enforcement outlives the agent).
//! One module per hook family, maps next to the programs that own them; `report` holds what all
//! of them share (the cgroup → policy table, rule descriptions, counts, the event ring buffer).
#![no_std]
#![no_main]
// BPF atomic add on violation counts: core has no AtomicU64 for the bpf target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod exec;
mod net;
mod report;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL: bpf_send_signal and bpf_probe_read_* are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
