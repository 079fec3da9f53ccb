//! Palisade's kernel programs: one module per hook family, maps next to the programs that own
//! them, thin entry points that call a fallible `try_*` body.
#![no_std]
#![no_main]
// BPF atomic add (net.rs): core has no AtomicU64 for the bpf target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod cgroups;
mod loss;
mod net;
mod process;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL is required by the helpers we call from tracing programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
