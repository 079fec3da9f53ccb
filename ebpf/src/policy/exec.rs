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

use crate::report::{Detail, Subject, policy_of, report, rule};

/// Offset of `filename` (a `__data_loc`) in the record, from tracefs.
#[unsafe(no_mangle)]
static POLICY_EXEC_OFF_FILENAME: Global<u32> = Global::new(8);

#[map(name = "POLICY_EXEC_CONF")]
static POLICY_EXEC_CONF: Array<ExecConf> = Array::with_max_entries(256, 0);

#[map(name = "POLICY_EXEC")]
static POLICY_EXEC: HashMap<ExecKey, ExecRule> = HashMap::with_max_entries(8192, 0);

/// The exec path, copied out of the record once.
#[map(name = "POLICY_SCRATCH")]
static POLICY_SCRATCH: PerCpuArray<[u8; POLICY_PATH_MAX]> = PerCpuArray::with_max_entries(1, 0);

const SIGKILL: u32 = 9;

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn policy_exec(ctx: TracePointContext) -> u32 {
    match try_exec(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// What the lookups found.
struct Found {
    deny: u32,
    allowed: bool,
}

#[inline(always)]
fn look(slot: u32, kind: u32, hash: u64, f: &mut Found) {
    let key = ExecKey { slot, kind, hash };
    // SAFETY: read-only lookup, copied out.
    if let Some(r) = unsafe { POLICY_EXEC.get(key) }.copied() {
        if r.allow == 1 {
            f.allowed = true;
        } else if f.deny == 0 {
            f.deny = r.rule;
        }
    }
}

fn try_exec(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(p) = policy_of(cgroup_id) else {
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
    let len = match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut *buf) } {
        Ok(s) => s.len(),
        Err(_) => return Ok(0),
    };
    let mut f = Found {
        deny: 0,
        allowed: false,
    };
    let mut h = FNV_OFFSET;
    let mut base = FNV_OFFSET;
    let mut dir = FNV_OFFSET;
    for i in 0..POLICY_PATH_MAX {
        if i >= len {
            break;
        }
        // SAFETY: i < POLICY_PATH_MAX, within this CPU's scratch value.
        let b = unsafe { (*buf)[i] };
        if b == b'/' {
            look(p.slot, exec_kind::TREE, h, &mut f);
            dir = h;
            base = FNV_OFFSET;
        } else {
            base = fnv_step(base, b);
        }
        h = fnv_step(h, b);
    }
    look(p.slot, exec_kind::EXACT, h, &mut f);
    look(p.slot, exec_kind::DIR, dir, &mut f);
    look(p.slot, exec_kind::BASENAME, base, &mut f);
    let id = if f.deny != 0 {
        f.deny
    } else if conf.allow_list == 1 && !f.allowed {
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
            nr: 0,
            errno: 0,
            net: None,
            path: Some(buf as *const u8),
        },
    );
    if t == taken::KILL {
        // SAFETY: signals the current process, which has not run a single instruction of the
        // new image yet.
        unsafe { aya_ebpf::helpers::bpf_send_signal(SIGKILL) };
    }
    Ok(0)
}
