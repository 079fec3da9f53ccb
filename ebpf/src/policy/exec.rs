//! Exec rules: the `sched:sched_process_exec` tracepoint, attached only while some cgroup has
//! exec rules. It runs in the new image before its first instruction, so `kill` stops a denied
//! program before it does anything (`bpf_send_signal(SIGKILL)`).
//!
//! Patterns are hashed (FNV-1a) by userspace per kind (exact path, directory, tree, file name);
//! one pass over the path computes every key to look up (see `policy::exec_lookups`, the same
//! walk in shared code): at most one lookup per path component plus three.
use aya_ebpf::{
    EbpfContext, Global,
    helpers::{bpf_get_current_cgroup_id, bpf_probe_read_kernel_str_bytes},
    macros::{map, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::TracePointContext,
};
use palisade_common::policy::{
    ExecConf, ExecKey, ExecRule, FNV_OFFSET, POLICY_PATH_MAX, cgroup_flags, exec_kind, fnv_step,
    taken, what,
};

use crate::report::{Detail, Subject, policy_current, report, rule};

/// Offset of `filename` (a `__data_loc`) in the record, from tracefs.
#[unsafe(no_mangle)]
static POLICY_EXEC_OFF_FILENAME: Global<u32> = Global::new(8);

#[map(name = "POLICY_EXEC_CONF")]
static POLICY_EXEC_CONF: Array<ExecConf> = Array::with_max_entries(256, 0);

#[map(name = "POLICY_EXEC")]
static POLICY_EXEC: HashMap<ExecKey, ExecRule> = HashMap::with_max_entries(8192, 0);

/// Per-CPU scratch: the exec path, copied out of the record once, and what the lookups found.
/// The findings live in map memory, not in registers, so the verifier sees the same state
/// after a hit and after a miss and checks the path walk in linear time.
#[repr(C)]
pub struct Scratch {
    path: [u8; POLICY_PATH_MAX],
    /// First deny rule found (0: none).
    deny: u32,
    /// 1 when an allow pattern matched.
    allowed: u32,
}

#[map(name = "POLICY_SCRATCH")]
static POLICY_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const SIGKILL: u32 = 9;

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn policy_exec(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
fn look(slot: u32, kind: u32, hash: u64, f: *mut Scratch) {
    let key = ExecKey { slot, kind, hash };
    // SAFETY: read-only lookup; `f` is this CPU's scratch value.
    unsafe {
        if let Some(r) = POLICY_EXEC.get(key) {
            if r.allow == 1 {
                (*f).allowed = 1;
            } else if (*f).deny == 0 {
                (*f).deny = r.rule;
            }
        }
    }
}

fn try_exec(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(p) = policy_current(cgroup_id) else {
        return Ok(0);
    };
    if p.flags & cgroup_flags::EXEC == 0 {
        return Ok(0);
    }
    let conf = POLICY_EXEC_CONF.get(p.slot).copied().unwrap_or_default();
    let buf = POLICY_SCRATCH.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: the offset comes from the format file; read_at uses bpf_probe_read_kernel.
    let loc: u32 =
        unsafe { ctx.read_at(POLICY_EXEC_OFF_FILENAME.load() as usize) }.map_err(|_| 0u32)?;
    // SAFETY: `__data_loc`: the string starts at the low 16 bits' offset in the record.
    let src = unsafe { (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize) };
    // SAFETY: `buf` is this CPU's scratch value; the helper bounds the copy by its size.
    let len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut (*buf).path) } {
        Ok(s) => s.len(),
        Err(_) => return Ok(0),
    };
    // SAFETY: this CPU's scratch value.
    unsafe {
        (*buf).deny = 0;
        (*buf).allowed = 0;
    }
    let mut h = FNV_OFFSET;
    let mut base = FNV_OFFSET;
    let mut dir = FNV_OFFSET;
    for i in 0..POLICY_PATH_MAX {
        if i >= len {
            break;
        }
        // SAFETY: i < POLICY_PATH_MAX, within this CPU's scratch value.
        let b = unsafe { (*buf).path[i] };
        if b == b'/' {
            look(p.slot, exec_kind::TREE, h, buf);
            dir = h;
            base = FNV_OFFSET;
        } else {
            base = fnv_step(base, b);
        }
        h = fnv_step(h, b);
    }
    look(p.slot, exec_kind::EXACT, h, buf);
    look(p.slot, exec_kind::DIR, dir, buf);
    look(p.slot, exec_kind::BASENAME, base, buf);
    // SAFETY: this CPU's scratch value.
    let (deny, allowed) = unsafe { ((*buf).deny, (*buf).allowed) };
    let id = if deny != 0 {
        deny
    } else if conf.allow_list == 1 && allowed == 0 {
        conf.default_rule
    } else {
        return Ok(0);
    };
    let info = rule(id).ok_or(0u32)?;
    let t = info.taken_runtime();
    report(
        what::EXEC,
        id,
        t,
        cgroup_id,
        Subject::Current,
        &Detail {
            // SAFETY: the path field of this CPU's scratch value.
            path: Some(unsafe { (*buf).path.as_ptr() }),
            ..Detail::NONE
        },
    );
    if t == taken::KILL {
        // SAFETY: signals the current process, which has not run a single instruction of the
        // new image yet.
        unsafe { aya_ebpf::helpers::bpf_send_signal(SIGKILL) };
    }
    Ok(0)
}
