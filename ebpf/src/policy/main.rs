//! Palisade's enforcement programs (`palisade-policy`): one object of its own, so the telemetry
//! hot path stays untouched and every map here can be pinned (enforcement outlives the agent).
//! One module per hook family, maps next to the programs that own them; `report` holds what all
//! of them share (the cgroup → policy table, rule descriptions, counts, the event ring buffer).
#![no_std]
#![no_main]

mod exec;
mod files;
mod files_lsm;
mod learn;
mod lsm;
mod net;
mod report;
mod sockets;
mod syscalls;

/// GPL: bpf_send_signal and bpf_probe_read_* are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
