//! File rules without BPF-LSM: a `sys_enter` raw tracepoint, attached only while some cgroup
//! has file rules on such a host, reading the path given to the open, unlink and chmod calls
//! (`palisade_common::policy::audit_call`). Reported only: a tracepoint cannot make the call
//! fail, and the path is matched as given (a relative path, a symlink or `..` is not resolved:
//! best effort, said by `palisade policy check` and `status`).
//!
//! x86_64 calls only: a call through the i386 or x32 ABI is not read (said with the tier).
//!
//! Per call of a cgroup with file rules: one table of calls decides whether the call is read
//! at all; then the path is copied (at most 255 bytes) and looked up once per ancestor
//! directory and once whole (`palisade_common::policy::file_lookups_in`).
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use palisade_common::policy::{
    AuditAccess, ExecKey, ExecPaths, FileEntry, FileMatch, X86_64_ARG_OFFSETS, abi_id, action,
    audit_call, cgroup_flags, file_lookups_in, mode, open_access, taken, what,
};

use crate::report::{Detail, Subject, policy_current, report, rule};

/// File patterns of every slot: (slot, exact path or tree directory hash) → the rules.
#[map(name = "POLICY_FILES")]
static POLICY_FILES: HashMap<ExecKey, FileEntry> = HashMap::with_max_entries(8192, 0);

/// Per-CPU scratch: the path as given (in `given`), reported as it is.
#[map(name = "POLICY_FILE_SCRATCH")]
static POLICY_FILE_SCRATCH: PerCpuArray<ExecPaths> = PerCpuArray::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn policy_files_audit(ctx: RawTracePointContext) -> i32 {
    match try_audit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// Argument `i` (0 to 2) of the call entering.
#[inline(always)]
fn arg(regs: u64, i: u32) -> u64 {
    let off = match i {
        0 => X86_64_ARG_OFFSETS[0],
        1 => X86_64_ARG_OFFSETS[1],
        _ => X86_64_ARG_OFFSETS[2],
    };
    // SAFETY: bpf_probe_read_kernel checks the address; a fault reads as 0.
    unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0)
}

fn try_audit(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(p) = policy_current(cgroup_id) else {
        return Ok(0);
    };
    if p.flags & cgroup_flags::FILES_AUDIT == 0 {
        return Ok(0);
    }
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
    };
    if want == 0 {
        return Ok(0);
    }
    let path = arg(regs, call.path_arg);
    let sc = POLICY_FILE_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's scratch value, used by this program only, start to end.
    let x = unsafe { &mut *sc };
    // SAFETY: the helper checks the user address and bounds the copy to the buffer.
    let len = match unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut x.given) } {
        Ok(s) => s.len() as u32,
        Err(_) => return Ok(0),
    };
    x.flags = 0;
    x.path_unresolved = 0;
    x.interp_unresolved = 0;
    x.dev = 0;
    x.ino = 0;
    x.path_len = 0;
    x.interp_len = 0;
    x.given_len = len;
    let slot = p.slot;
    let mut m = FileMatch::default();
    file_lookups_in(&x.given, len, |kind, hash| {
        // SAFETY: read-only lookup; the value is read in place.
        if let Some(e) = unsafe { POLICY_FILES.get(ExecKey { slot, kind, hash }) } {
            m.consider(e, want);
        }
    });
    if m.rule == 0 {
        return Ok(0);
    }
    let Some(info) = rule(m.rule) else {
        return Ok(0);
    };
    // reported only: the call runs whatever the action (`log` unless in audit mode)
    let t = if info.action != action::LOG && info.mode == mode::AUDIT {
        taken::WOULD_BLOCK
    } else {
        taken::LOG
    };
    report(
        what::FILE,
        m.rule,
        t,
        cgroup_id,
        Subject::Current,
        &Detail {
            nr: nr as u32,
            abi: abi_id::X86_64,
            native: nr as u32,
            errno: m.access,
            net: None,
            path: Some(sc as *const ExecPaths),
        },
    );
    Ok(0)
}
