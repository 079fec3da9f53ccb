//! Cgroup lifecycle: `cgroup:cgroup_mkdir` / `cgroup:cgroup_rmdir` classic tracepoints, filtered
//! to the unified hierarchy, sent to userspace on the `EVENTS` ring buffer; and
//! `cgroup:cgroup_attach_task`: a task moved into another cgroup (the syscall slot cache is
//! updated, and the move is sent as an event).
//!
//! Field offsets come from tracefs `format` files at load time (globals below); the defaults are
//! the layout seen on 6.x kernels.
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::{
    EbpfContext, Global,
    helpers::bpf_probe_read_kernel_str_bytes,
    macros::{map, tracepoint},
    maps::RingBuf,
    programs::TracePointContext,
};
use palisade_common::{
    CGROUP_PATH_MAX, CgroupEvent, MoveEvent,
    event_kind::{CGROUP_MKDIR, CGROUP_MOVE, CGROUP_RMDIR},
    loss::RINGBUF_FULL,
};

use crate::{loss, syscalls::UNIFIED_HIERARCHY};

/// `cgroup:cgroup_attach_task` record offsets, read from tracefs at load time.
#[unsafe(no_mangle)]
static ATTACH_OFF_ROOT: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static ATTACH_OFF_ID: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static ATTACH_OFF_PID: Global<u32> = Global::new(24);
#[unsafe(no_mangle)]
static ATTACH_OFF_COMM: Global<u32> = Global::new(32);

#[unsafe(no_mangle)]
static CG_OFF_ROOT: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static CG_OFF_LEVEL: Global<u32> = Global::new(12);
#[unsafe(no_mangle)]
static CG_OFF_ID: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static CG_OFF_PATH: Global<u32> = Global::new(24);

/// Rare events for userspace. 256 KiB holds ~480 cgroup events between two polls.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    match try_cgroup_event(&ctx, CGROUP_MKDIR) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint(category = "cgroup", name = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: TracePointContext) -> u32 {
    match try_cgroup_event(&ctx, CGROUP_RMDIR) {
        Ok(v) | Err(v) => v,
    }
}

fn try_cgroup_event(ctx: &TracePointContext, kind: u32) -> Result<u32, u32> {
    // SAFETY: offsets come from the tracepoint's format file; read_at uses bpf_probe_read_kernel.
    let root: i32 = unsafe { ctx.read_at(CG_OFF_ROOT.load() as usize) }.map_err(|_| 0u32)?;
    if root as u32 != UNIFIED_HIERARCHY.load() {
        return Ok(0);
    }
    let Some(mut entry) = EVENTS.reserve::<CgroupEvent>(0) else {
        loss::count(RINGBUF_FULL);
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer record of the right size;
    // every field is written before submit.
    unsafe {
        (*ev).kind = kind;
        (*ev).level = ctx
            .read_at::<i32>(CG_OFF_LEVEL.load() as usize)
            .unwrap_or(-1) as u32;
        (*ev).cgroup_id = ctx.read_at::<u64>(CG_OFF_ID.load() as usize).unwrap_or(0);
        (*ev).truncated = 0;
        (*ev).path_len = 0;
        // __data_loc: low 16 bits offset of the string from the record start, high 16 bits length
        // (including the NUL).
        let loc: u32 = ctx.read_at(CG_OFF_PATH.load() as usize).unwrap_or(0);
        let off = (loc & 0xffff) as usize;
        let len = (loc >> 16) as usize;
        let src = (ctx.as_ptr() as *const u8).add(off);
        if let Ok(s) = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).path) {
            (*ev).path_len = s.len() as u32;
        }
        if len > CGROUP_PATH_MAX {
            (*ev).truncated = 1;
        }
    }
    entry.submit(0);
    Ok(0)
}

/// A task moved into a cgroup: the syscall slot cache follows it, and userspace hears of it.
#[tracepoint(category = "cgroup", name = "cgroup_attach_task")]
pub fn slot_attach(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the format file; read_at uses bpf_probe_read_kernel.
    let (Ok(root), Ok(id), Ok(pid)) = (unsafe {
        (
            ctx.read_at::<i32>(ATTACH_OFF_ROOT.load() as usize),
            ctx.read_at::<u64>(ATTACH_OFF_ID.load() as usize),
            ctx.read_at::<i32>(ATTACH_OFF_PID.load() as usize),
        )
    }) else {
        return 0;
    };
    if root as u32 != UNIFIED_HIERARCHY.load() {
        return 0;
    }
    let pid = pid as u32;
    crate::syscalls::moved(pid, id);
    let Some(mut entry) = EVENTS.reserve::<MoveEvent>(0) else {
        loss::count(RINGBUF_FULL);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved record we own until submit; every field is written. The comm is a
    // __data_loc string (offset in the low 16 bits) read with bpf_probe_read_kernel_str.
    unsafe {
        (*ev).kind = CGROUP_MOVE;
        (*ev).pid = pid;
        (*ev).cgroup_id = id;
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).comm = [0; 16];
        let loc: u32 = ctx.read_at(ATTACH_OFF_COMM.load() as usize).unwrap_or(0);
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).comm);
    }
    entry.submit(0);
    0
}
