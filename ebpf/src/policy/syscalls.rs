//! Syscall rules: `sys_enter`/`sys_exit` raw tracepoints, attached only while some cgroup has
//! syscall rules (they run for every syscall on the host).
//!
//! Per call: one helper (the cgroup id) and one hash lookup that misses for every cgroup
//! without a policy. For a cgroup with a policy, one array lookup (the slot's verdicts) decides.
//! - Run-time path (`sys_enter`): a denied call is reported and, for `kill` rules in enforce
//!   mode, the process gets SIGKILL (`bpf_send_signal`). A tracepoint cannot make the call fail:
//!   the call itself still runs, the process dies before it returns to userspace.
//! - Launched workloads (`SECCOMP` flag): their seccomp filter refuses `errno` rules before the
//!   `sys_enter` tracepoint, so `sys_exit` sees a denied syscall number it never saw enter, with
//!   the rule's errno as result: that is a seccomp denial, reported with `errno`.
use aya_ebpf::maps::HashMap;
use aya_ebpf::{
    Global,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint},
    maps::Array,
    programs::RawTracePointContext,
};
use palisade_common::policy::{
    ArgKey, ArgRule, EnterSlot, MAX_SYSCALLS, SyscallVerdicts, VERDICT_CONDITIONAL, VERDICT_RULE,
    action, cgroup_flags, mode, taken, what,
};

use crate::report::{Detail, Subject, lsm_refuses, policy_of, report, rule};

/// Offset of the syscall number (`orig_ax`) in `struct pt_regs`.
#[unsafe(no_mangle)]
static POLICY_NR_OFFSET: Global<u64> = Global::new(120);
/// `POLICY_ENTER` size - 1 (a power of two).
#[unsafe(no_mangle)]
static POLICY_ENTER_MASK: Global<u32> = Global::new(16383);

#[map(name = "POLICY_SYSCALLS")]
static POLICY_SYSCALLS: Array<SyscallVerdicts> = Array::with_max_entries(256, 0);

/// Argument checks of conditional verdicts, by (slot, syscall).
#[map(name = "POLICY_ARGS")]
pub(crate) static POLICY_ARGS: HashMap<ArgKey, ArgRule> = HashMap::with_max_entries(4096, 0);

#[map(name = "POLICY_ENTER")]
static POLICY_ENTER: Array<EnterSlot> = Array::with_max_entries(16384, 0);

const SIGKILL: u32 = 9;

/// The verdict of `slot` for syscall `nr` (0: no rule).
#[inline(always)]
pub(crate) fn verdict(slot: u32, nr: u64) -> u16 {
    if nr >= MAX_SYSCALLS as u64 {
        return 0;
    }
    match POLICY_SYSCALLS.get(slot) {
        Some(v) => v.rule.get(nr as usize).copied().unwrap_or(0),
        None => 0,
    }
}

/// Offsets of the six argument registers in `struct pt_regs` (x86_64: di, si, dx, r10, r8, r9).
pub(crate) const ARG_OFFSETS: [u64; 6] = [14 * 8, 13 * 8, 12 * 8, 7 * 8, 9 * 8, 8 * 8];

/// The rule a call violates by its arguments (`None`: it does not).
#[inline(always)]
fn by_arguments(ctx: &RawTracePointContext, slot: u32, nr: u32, default_rule: u32) -> Option<u32> {
    // SAFETY: read-only lookup; the value is read in place.
    let r = unsafe { POLICY_ARGS.get(ArgKey { slot, nr }) }?;
    let regs: u64 = ctx.arg(0);
    let mut args = [0u64; 6];
    for (a, off) in args.iter_mut().zip(ARG_OFFSETS) {
        // SAFETY: bpf_probe_read_kernel checks the address; a fault reads as 0.
        *a = unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0);
    }
    r.violated(&args, default_rule)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn policy_sys_enter(ctx: RawTracePointContext) -> i32 {
    match try_enter(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_enter(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(p) = policy_of(cgroup_id) else {
        return Ok(0);
    };
    if p.flags & cgroup_flags::SYSCALLS == 0 {
        return Ok(0);
    }
    // sys_enter(struct pt_regs *regs, long id)
    let nr: i64 = ctx.arg(1);
    if nr < 0 {
        return Ok(0);
    }
    let v = verdict(p.slot, nr as u64);
    if v == 0 {
        return Ok(0);
    }
    let mut id = u32::from(v & VERDICT_RULE);
    let info = rule(id).ok_or(0)?;
    if p.flags & cgroup_flags::SECCOMP != 0 {
        if v & VERDICT_CONDITIONAL != 0 {
            // the filter let this call through (its arguments did not match): remember it, so
            // sys_exit does not take an error result for a refusal
            let tid = bpf_get_current_pid_tgid() as u32;
            if let Some(slot) = POLICY_ENTER.get_ptr_mut(tid & POLICY_ENTER_MASK.load()) {
                // SAFETY: array map value; a colliding thread at worst hides one report.
                unsafe {
                    (*slot).tid = tid;
                    (*slot).nr = nr as u32;
                }
            }
            if info.action != action::LOG {
                return Ok(0);
            }
        } else if info.action != action::LOG {
            // errno/kill rules never get here (the filter refused them); log rules do
            return Ok(0);
        }
    }
    if v & VERDICT_CONDITIONAL != 0 {
        match by_arguments(ctx, p.slot, nr as u32, id) {
            Some(r) => id = r,
            None => return Ok(0),
        }
    }
    let Some(info) = rule(id) else {
        return Ok(0);
    };
    if info.action == action::ERRNO && info.mode == mode::ENFORCE && lsm_refuses(nr as u64) {
        // refused (and reported) by its BPF-LSM hook (`lsm::refuse_call`)
        return Ok(0);
    }
    let t = info.taken_runtime();
    report(
        what::SYSCALL,
        id,
        t,
        cgroup_id,
        Subject::Current,
        &Detail {
            nr: nr as u32,
            errno: 0,
            net: None,
            path: None,
        },
    );
    if t == taken::KILL {
        // SAFETY: signals the current process (the helper's only target).
        unsafe { aya_ebpf::helpers::bpf_send_signal(SIGKILL) };
    }
    Ok(0)
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn policy_sys_exit(ctx: RawTracePointContext) -> i32 {
    match try_exit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_exit(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(p) = policy_of(cgroup_id) else {
        return Ok(0);
    };
    if p.flags & cgroup_flags::SECCOMP == 0 {
        return Ok(0);
    }
    // sys_exit(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    if !(-4095..0).contains(&ret) {
        return Ok(0);
    }
    let regs: u64 = ctx.arg(0);
    // SAFETY: bpf_probe_read_kernel checks the address; a fault returns an error.
    let nr: i64 = unsafe { bpf_probe_read_kernel((regs + POLICY_NR_OFFSET.load()) as *const i64) }
        .map_err(|_| 0)?;
    if nr < 0 {
        return Ok(0);
    }
    let v = verdict(p.slot, nr as u64);
    if v == 0 {
        return Ok(0);
    }
    let id = u32::from(v & VERDICT_RULE);
    let info = rule(id).ok_or(0)?;
    if info.action != action::ERRNO || (-ret) as u32 != info.errno {
        return Ok(0);
    }
    if v & VERDICT_CONDITIONAL != 0 {
        let tid = bpf_get_current_pid_tgid() as u32;
        if let Some(slot) = POLICY_ENTER.get_ptr_mut(tid & POLICY_ENTER_MASK.load()) {
            // SAFETY: array map value, see try_enter.
            let entered = unsafe {
                let seen = (*slot).tid == tid && (*slot).nr == nr as u32;
                (*slot).tid = 0;
                seen
            };
            if entered {
                return Ok(0);
            }
        }
    }
    report(
        what::SECCOMP,
        id,
        taken::ERRNO,
        cgroup_id,
        Subject::Current,
        &Detail {
            nr: nr as u32,
            errno: (-ret) as u32,
            net: None,
            path: None,
        },
    );
    Ok(0)
}
