//! `palisade policy learn`, files: a `sys_enter` raw tracepoint attached only while a
//! learning window is open. For the calls that write, unlink or chmod a path
//! (`palisade_common::policy::audit_call`), in a cgroup being learned or a child of one
//! (`POLICY_LEARN`), one [`LearnFile`] record with the path as given goes to the
//! `POLICY_LEARN_FILES` ring buffer; a record that does not fit is counted in
//! `POLICY_LEARN_LOST` (the learned policy says how many).
//!
//! Per call on the host while attached: one table of calls decides; only then the cgroup
//! ancestry is looked up (one lookup per level).
use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
        bpf_probe_read_user, generated,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::RawTracePointContext,
};
use palisade_common::policy::{
    AT_FDCWD, AuditAccess, LEARN_ACCESS, LearnFile, MAX_CGROUP_DEPTH, POLICY_PATH_MAX, audit_call,
    open_access,
};

use crate::files::arg;

/// Cgroup ids being learned (written by the agent; not pinned: learning ends with the agent).
#[map(name = "POLICY_LEARN")]
static POLICY_LEARN: HashMap<u64, u32> = HashMap::with_max_entries(1024, 0);

/// 256 KiB: about 900 records between two reads (the agent reads every 200 ms).
#[map(name = "POLICY_LEARN_FILES")]
static POLICY_LEARN_FILES: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Index 0: records lost to a full ring buffer.
#[map(name = "POLICY_LEARN_LOST")]
static POLICY_LEARN_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn policy_learn_files(ctx: RawTracePointContext) -> i32 {
    match try_learn(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// Whether the current task's cgroup, or one of its ancestors, is being learned.
#[inline(always)]
fn learning(cgroup_id: u64) -> bool {
    // SAFETY: read-only lookup.
    if unsafe { POLICY_LEARN.get(cgroup_id) }.is_some() {
        return true;
    }
    for level in 0..MAX_CGROUP_DEPTH {
        // SAFETY: helper without preconditions.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 || id == cgroup_id {
            return false;
        }
        // SAFETY: read-only lookup.
        if unsafe { POLICY_LEARN.get(id) }.is_some() {
            return true;
        }
    }
    false
}

fn try_learn(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // sys_enter(struct pt_regs *regs, long id)
    let nr: i64 = ctx.arg(1);
    if nr < 0 {
        return Ok(0);
    }
    let Some(call) = audit_call(nr as u64) else {
        return Ok(0);
    };
    let regs: u64 = ctx.arg(0);
    let want = match call.access {
        AuditAccess::Fixed(a) => a,
        AuditAccess::Flags(i) => open_access(arg(regs, i)),
        AuditAccess::OpenHow(i) => {
            // SAFETY: bpf_probe_read_user checks the address; a fault reads as no flags.
            let flags = unsafe { bpf_probe_read_user(arg(regs, i) as *const u64) }.unwrap_or(0);
            open_access(flags)
        }
    } & LEARN_ACCESS;
    if want == 0 {
        return Ok(0);
    }
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !learning(cgroup_id) {
        return Ok(0);
    }
    let Some(mut entry) = POLICY_LEARN_FILES.reserve::<LearnFile>(0) else {
        if let Some(n) = POLICY_LEARN_LOST.get_ptr_mut(0) {
            // SAFETY: this CPU's counter (a per-CPU value: no other writer).
            unsafe { *n += 1 };
        }
        return Ok(0);
    };
    let r = entry.as_mut_ptr();
    let path = arg(regs, call.path_arg);
    // SAFETY: `r` is the reserved record; the helper checks the user address and bounds the
    // copy by the buffer's size.
    unsafe {
        (*r).cgroup_id = cgroup_id;
        (*r).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*r).access = want;
        (*r).dirfd = if call.path_arg == 1 {
            arg(regs, 0) as i32
        } else {
            AT_FDCWD
        };
        let n = generated::bpf_probe_read_user_str(
            (&raw mut (*r).path).cast(),
            POLICY_PATH_MAX as u32,
            path as *const _,
        );
        // the length without the NUL (0: unreadable)
        (*r).len = if n > 0 { (n - 1) as u32 } else { 0 };
    }
    entry.submit(0);
    Ok(0)
}
