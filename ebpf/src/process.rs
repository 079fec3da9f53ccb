//! Process lifecycle: `sched:sched_process_fork/exec/exit` and `oom:mark_victim` classic
//! tracepoints. Counters per cgroup stay in the kernel (`PROCESS_COUNTS`, exact even when the
//! ring buffer overflows, and counting per cgroup the exec and exit events it had no room
//! for); exec, exit and OOM events go to userspace on the ring buffer.
//!
//! The few `task_struct`/`mm_struct` fields read here (parent, exit code, start time, argument
//! block) are located by userspace in the kernel's BTF and passed in as globals; without BTF
//! (`HAVE_TASK_OFFSETS` = 0) those reads are skipped and flagged in the events.
use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, generated::bpf_probe_read_user,
    },
    macros::{map, tracepoint},
    maps::PerCpuHashMap,
    programs::TracePointContext,
};
use palisade_common::{
    EXEC_ARGS_MAX, EXEC_FILENAME_MAX, ExecEvent, ExitEvent, OomEvent, ProcessCounts, event_kind,
    exec_flags, loss::RINGBUF_FULL,
};

use palisade_ebpf::per_cpu_entry;

use crate::{cgroups::EVENTS, loss, syscalls::forget_slot};

#[unsafe(no_mangle)]
static HAVE_TASK_OFFSETS: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_OFF_MM: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_OFF_REAL_PARENT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_OFF_TGID: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_OFF_EXIT_CODE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static TASK_OFF_START_TIME: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static MM_OFF_ARG_START: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static MM_OFF_ARG_END: Global<u32> = Global::new(0);

#[unsafe(no_mangle)]
static FORK_OFF_CHILD_PID: Global<u32> = Global::new(20);
#[unsafe(no_mangle)]
static EXEC_OFF_FILENAME: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static EXEC_OFF_OLD_PID: Global<u32> = Global::new(16);
#[unsafe(no_mangle)]
static EXIT_OFF_GROUP_DEAD: Global<u32> = Global::new(32);
#[unsafe(no_mangle)]
static OOM_OFF_PID: Global<u32> = Global::new(8);
#[unsafe(no_mangle)]
static OOM_OFF_UID: Global<u32> = Global::new(48);
#[unsafe(no_mangle)]
static OOM_OFF_COMM: Global<u32> = Global::new(12);

#[map(name = "PROCESS_COUNTS")]
static PROCESS_COUNTS: PerCpuHashMap<u64, ProcessCounts> = PerCpuHashMap::with_max_entries(4096, 0);

/// Adds to this CPU's counters of `cgroup_id`. A full map drops the update silently: the
/// counters are also derivable from events, and the syscall map-full counter shows the pressure.
#[inline(always)]
fn counts(cgroup_id: u64, f: impl FnOnce(&mut ProcessCounts)) {
    let Some(p) = per_cpu_entry(&PROCESS_COUNTS, &cgroup_id, ProcessCounts::default()) else {
        return;
    };
    // SAFETY: this CPU's copy of a per-CPU hash value; nothing else writes it while we run.
    f(unsafe { &mut *p });
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
fn kread<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address; a fault returns an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.ok()
}

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn process_fork(ctx: TracePointContext) -> u32 {
    // SAFETY: offset from the format file; read_at uses bpf_probe_read_kernel.
    if let Ok(child) = unsafe { ctx.read_at::<i32>(FORK_OFF_CHILD_PID.load() as usize) } {
        forget_slot(child as u32);
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    counts(cgroup_id, |c| c.forks += 1);
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn process_exec(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_exec(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    counts(cgroup_id, |c| c.execs += 1);
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        loss::count(RINGBUF_FULL);
        counts(cgroup_id, |c| c.exec_events_lost += 1);
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `ev` is a reserved ring-buffer record we own until submit; every field is written.
    unsafe {
        (*ev).kind = event_kind::EXEC;
        (*ev).pid = (pid_tgid >> 32) as u32;
        (*ev).old_pid = ctx
            .read_at::<i32>(EXEC_OFF_OLD_PID.load() as usize)
            .unwrap_or(0) as u32;
        (*ev).uid = uid_gid as u32;
        (*ev).gid = (uid_gid >> 32) as u32;
        (*ev).cgroup_id = cgroup_id;
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).flags = 0;
        (*ev)._pad = 0;
        (*ev).ppid = 0;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);

        // filename: __data_loc (offset in the low 16 bits, length incl. NUL in the high 16)
        let loc: u32 = ctx.read_at(EXEC_OFF_FILENAME.load() as usize).unwrap_or(0);
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        (*ev).filename_len = match bpf_probe_read_kernel_str_bytes(src, &mut (*ev).filename) {
            Ok(s) => s.len() as u32,
            Err(_) => 0,
        };
        if (loc >> 16) as usize > EXEC_FILENAME_MAX {
            (*ev).flags |= exec_flags::FILENAME_TRUNCATED;
        }

        (*ev).args_len = 0;
        if HAVE_TASK_OFFSETS.load() == 1 {
            let task = bpf_get_current_task();
            match kread::<u64>(task, TASK_OFF_REAL_PARENT.load())
                .and_then(|parent| kread::<i32>(parent, TASK_OFF_TGID.load()))
            {
                Some(ppid) => (*ev).ppid = ppid as u32,
                None => (*ev).flags |= exec_flags::PPID_MISSING,
            }
            let mm = kread::<u64>(task, TASK_OFF_MM.load()).unwrap_or(0);
            let start = kread::<u64>(mm, MM_OFF_ARG_START.load()).unwrap_or(0);
            let end = kread::<u64>(mm, MM_OFF_ARG_END.load()).unwrap_or(0);
            if mm == 0 || start == 0 || end <= start {
                (*ev).flags |= exec_flags::ARGS_MISSING;
            } else {
                let mut len = end - start;
                if len > EXEC_ARGS_MAX as u64 {
                    len = EXEC_ARGS_MAX as u64;
                    (*ev).flags |= exec_flags::ARGS_TRUNCATED;
                }
                let r = bpf_probe_read_user(
                    (*ev).args.as_mut_ptr().cast(),
                    len as u32,
                    start as *const core::ffi::c_void,
                );
                if r == 0 {
                    (*ev).args_len = len as u32;
                } else {
                    (*ev).flags |= exec_flags::ARGS_MISSING;
                }
            }
        } else {
            (*ev).flags |= exec_flags::ARGS_MISSING | exec_flags::PPID_MISSING;
        }
    }
    entry.submit(0);
    Ok(0)
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn process_exit(ctx: TracePointContext) -> u32 {
    match try_exit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (pid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    let off = EXIT_OFF_GROUP_DEAD.load();
    let group_dead = if off == u32::MAX {
        pid == tid
    } else {
        // SAFETY: offset from the format file; read_at uses bpf_probe_read_kernel.
        unsafe { ctx.read_at::<u8>(off as usize) }.unwrap_or(0) != 0
    };
    if !group_dead {
        return Ok(0);
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let mut code = 0u32;
    let mut start = 0u64;
    let mut known = false;
    if HAVE_TASK_OFFSETS.load() == 1 {
        // SAFETY: helper without preconditions.
        let task = unsafe { bpf_get_current_task() };
        if let Some(c) = kread::<i32>(task, TASK_OFF_EXIT_CODE.load()) {
            code = c as u32;
            known = true;
        }
        start = kread::<u64>(task, TASK_OFF_START_TIME.load()).unwrap_or(0);
    }
    counts(cgroup_id, |c| {
        if !known {
            c.exits_unknown += 1;
        } else if code & 0x7f != 0 {
            c.exits_signal += 1;
        } else if code >> 8 & 0xff != 0 {
            c.exits_error += 1;
        } else {
            c.exits_ok += 1;
        }
    });
    let Some(mut entry) = EVENTS.reserve::<ExitEvent>(0) else {
        loss::count(RINGBUF_FULL);
        counts(cgroup_id, |c| c.exit_events_lost += 1);
        return Ok(0);
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved record we own until submit; every field is written.
    unsafe {
        (*ev).kind = event_kind::EXIT;
        (*ev).pid = pid;
        (*ev).tid = tid;
        (*ev).exit_code = code;
        (*ev).cgroup_id = cgroup_id;
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).start_ns = start;
        (*ev).flags = u32::from(!known);
        (*ev)._pad = 0;
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
    entry.submit(0);
    Ok(0)
}

#[tracepoint(category = "oom", name = "mark_victim")]
pub fn oom_victim(ctx: TracePointContext) -> u32 {
    let Some(mut entry) = EVENTS.reserve::<OomEvent>(0) else {
        loss::count(RINGBUF_FULL);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: reserved record we own until submit; every field is written. Offsets come from
    // the format file and reads go through bpf_probe_read_kernel.
    unsafe {
        (*ev).kind = event_kind::OOM;
        (*ev).pid = ctx.read_at::<i32>(OOM_OFF_PID.load() as usize).unwrap_or(0) as u32;
        (*ev).uid = ctx.read_at::<u32>(OOM_OFF_UID.load() as usize).unwrap_or(0);
        (*ev)._pad = 0;
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).comm = [0; 16];
        let loc: u32 = ctx.read_at(OOM_OFF_COMM.load() as usize).unwrap_or(0);
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        let _ = bpf_probe_read_kernel_str_bytes(src, &mut (*ev).comm);
    }
    entry.submit(0);
    0
}
