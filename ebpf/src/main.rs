//! Palisade's kernel programs: one module per hook family, maps next to the programs that own
//! them, thin entry points that call a fallible `try_*` body.
#![no_std]
#![no_main]

mod cgroups;
mod loss;
mod net;
mod process;
mod syscalls;

/// GPL is required by the helpers we call from tracing programs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
