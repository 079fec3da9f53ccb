//! Syscall rules: `sys_enter`/`sys_exit` raw tracepoints, attached only while some cgroup has
//! syscall rules (they run for every syscall on the host).
//!
//! `sys_enter` is also the entry of the agent's syscall telemetry while it is attached: after
//! its check it tail-calls the telemetry's `sys_enter` program, which the agent puts in
//! `POLICY_NEXT` and detaches from the tracepoint. One program run per syscall instead of two
//! (the run itself costs about as much as the check). The link is pinned, so the check goes on
//! through an agent restart; the slot keeps the last agent's telemetry program until the next
//! agent swaps its own in (one map update: no call is counted twice or missed).
//!
//! Per call: one helper (the task; its thread id and cgroup id are loaded from it, see
//! [`current`]) and the thread's last resolution (`POLICY_THREADS`, an array slot; on a miss
//! the `POLICY_RESOLVED` LRU lookup). For a cgroup with a policy, one array lookup (the slot's
//! verdicts) decides.
//! - Run-time path (`sys_enter`): a denied call is reported and, in enforce mode, the process
//!   gets SIGKILL (`bpf_send_signal`). A tracepoint cannot make the call fail: the call itself
//!   still runs, the process dies before it returns to userspace.
//! - Other ABIs: an x32 call carries `__X32_SYSCALL_BIT`, an i386 call (`int 0x80`) runs with
//!   `TS_COMPAT` in the task's `thread_info.status` (offset from BTF). Through an ABI the slot
//!   does not consider, every call violates its ABI rule; else the call is translated to its
//!   x86_64 number (`POLICY_XLAT`; i386 `socketcall`/`ipc` by their first argument) and
//!   checked like one.
//! - Launched workloads (`SECCOMP` flag): their seccomp filter refuses `errno` rules before the
//!   `sys_enter` tracepoint, so `sys_exit` sees a denied syscall number it never saw enter, with
//!   the rule's errno as result: that is a seccomp denial, reported with `errno`.
use core::ptr::read_volatile;

use aya_ebpf::maps::HashMap;
use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
        bpf_probe_read_kernel,
    },
    macros::{map, raw_tracepoint},
    maps::{Array, LruHashMap, ProgramArray},
    programs::RawTracePointContext,
};
use palisade_common::policy::{
    ArgKey, ArgRule, EnterSlot, I386_ARG_OFFSETS, MAX_SYSCALLS, SyscallVerdicts, TS_COMPAT,
    TaskOffsets, VERDICT_CONDITIONAL, VERDICT_RULE, X32_SYSCALL_BIT, X86_64_ARG_OFFSETS, abi_id,
    action, cgroup_flags, ipc_native, mode, socketcall_native, taken, what, xlat, xlat_index,
};

use crate::report::{Detail, Subject, lsm_refuses, policy_current_thread_of, report, rule};

/// Offset of the syscall number (`orig_ax`) in `struct pt_regs`.
#[unsafe(no_mangle)]
static POLICY_NR_OFFSET: Global<u64> = Global::new(120);
/// `POLICY_ENTER` size - 1 (a power of two).
#[unsafe(no_mangle)]
static POLICY_ENTER_MASK: Global<u32> = Global::new(16383);
/// Offset of `thread_info.status` in `task_struct` (0: unknown; i386 calls then look like
/// x86_64 ones).
#[unsafe(no_mangle)]
static POLICY_TASK_OFF_STATUS: Global<u32> = Global::new(0);

/// Where the current thread's id and cgroup id are in its task (see [`current`]); set by the
/// agent from BTF.
#[unsafe(no_mangle)]
static POLICY_TASK_OFFSETS: Global<TaskOffsets> = Global::new(TaskOffsets::ZERO);

#[map(name = "POLICY_SYSCALLS")]
pub(crate) static POLICY_SYSCALLS: Array<SyscallVerdicts> = Array::with_max_entries(256, 0);

/// Argument checks of conditional verdicts, by (slot, syscall).
#[map(name = "POLICY_ARGS")]
pub(crate) static POLICY_ARGS: HashMap<ArgKey, ArgRule> = HashMap::with_max_entries(4096, 0);

/// Thread id → [`LSM_CALL_FRESH`] while the thread is in a call `sys_enter` left to the
/// BPF-LSM hooks, [`LSM_CALL_REFUSED`] once a hook refused it (`lsm::first_refusal`). Not
/// pinned: it lives as long as the programs that share it.
#[map(name = "POLICY_LSM_CALL")]
pub(crate) static POLICY_LSM_CALL: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16384, 0);
pub(crate) const LSM_CALL_FRESH: u32 = 1;
pub(crate) const LSM_CALL_REFUSED: u32 = 2;

#[map(name = "POLICY_ENTER")]
static POLICY_ENTER: Array<EnterSlot> = Array::with_max_entries(16384, 0);

/// Compat call → x86_64 call (`palisade_common::policy::xlat_index`), written by the agent.
#[map(name = "POLICY_XLAT")]
static POLICY_XLAT: Array<u32> = Array::with_max_entries(2048, 0);

/// Slot 0: the program `sys_enter` tail-calls after its check (the agent's syscall telemetry,
/// when it runs on raw tracepoints); empty otherwise. Pinned.
#[map(name = "POLICY_NEXT")]
static POLICY_NEXT: ProgramArray = ProgramArray::with_max_entries(1, 0);

const SIGKILL: u32 = 9;

/// One syscall as the rules see it.
struct Call {
    /// `abi_id` and the number as called (x32 without its bit).
    abi: u32,
    nr: u32,
    /// The x86_64 call it makes (`u32::MAX`: none, or not translated).
    native: u32,
    /// The verdict (rule id, with `VERDICT_CONDITIONAL`), 0 for none.
    verdict: u16,
    /// The arguments are in memory (i386 `socketcall`/`ipc`): conditions cannot be checked.
    indirect: bool,
}

/// The current thread as the syscall hooks need it.
struct Current {
    /// The BTF-typed task (valid for the whole program run).
    task: *const u8,
    cgroup_id: u64,
    tid: u32,
}

/// The current thread: its task from the one helper every call makes, and its id and cgroup
/// id read from it by direct loads through the BTF-typed pointer (the verifier checks each
/// field at its offset, a constant from read-only data), where the agent found the offsets;
/// else from the helpers.
#[inline(always)]
fn current() -> Current {
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    let o = POLICY_TASK_OFFSETS.load();
    if o.cgroups == 0 {
        return Current {
            task,
            // SAFETY: helpers without preconditions.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            tid: bpf_get_current_pid_tgid() as u32,
        };
    }
    // SAFETY: the offsets are those of the members named in `TaskOffsets`, from BTF: each load
    // reads that member of the structure the previous one pointed at, the verifier types each
    // pointer loaded and checks the next load against it (a fault reads as 0).
    unsafe {
        let cgroups = read_volatile(task.add(o.cgroups as usize).cast::<*const u8>());
        let cgrp = read_volatile(cgroups.add(o.dfl_cgrp as usize).cast::<*const u8>());
        let kn = read_volatile(cgrp.add(o.kn as usize).cast::<*const u8>());
        Current {
            task,
            cgroup_id: read_volatile(kn.add(o.kn_id as usize).cast::<u64>()),
            tid: read_volatile(task.add(o.pid as usize).cast::<i32>()) as u32,
        }
    }
}

/// Whether `task` (the current one) is in an i386 syscall: a direct load of
/// `thread_info.status`, as in [`current`].
#[inline(always)]
fn in_i386_call(task: *const u8) -> bool {
    let off = POLICY_TASK_OFF_STATUS.load();
    if off == 0 {
        return false;
    }
    // SAFETY: `off` is the offset of `thread_info.status` (u32) in `task_struct`, from BTF;
    // the verifier checks the load against the kernel's BTF.
    let status = unsafe { read_volatile(task.add(off as usize).cast::<u32>()) };
    status & TS_COMPAT != 0
}

/// Argument `i` of the call (x86_64 registers, or the i386 ones zero-extended).
#[inline(always)]
fn arg(regs: u64, abi: u32, i: usize) -> u64 {
    let (offs, mask) = if abi == abi_id::I386 {
        (I386_ARG_OFFSETS, 0xffff_ffff)
    } else {
        (X86_64_ARG_OFFSETS, u64::MAX)
    };
    let Some(off) = offs.get(i) else {
        return 0;
    };
    // SAFETY: bpf_probe_read_kernel checks the address; a fault reads as 0.
    unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0) & mask
}

/// The x86_64 verdict of `slot` for syscall `nr` (0: no rule).
///
/// Not inlined, on purpose: here `nr` arrives in a register and is bounded and used in that
/// same register. Inlined, the compiler spilled the number to the stack before the check and
/// filled it twice, once for the check and once for the index; 6.1's verifier (Debian 12) does
/// not carry a bound from one fill of a stack slot to another, and refused the program ("math
/// between map_value pointer and register with unbounded min value is not allowed"). Masking
/// the index as well did not help there ("R0 max value is outside of the allowed memory
/// range").
#[inline(never)]
pub(crate) fn verdict(v: &SyscallVerdicts, nr: u64) -> u16 {
    if nr >= MAX_SYSCALLS as u64 {
        return 0;
    }
    v.rule.get(nr as usize).copied().unwrap_or(0)
}

/// Classifies the call `raw` (the number the task passed) under `slot`'s verdicts.
#[inline(always)]
fn classify(slot: u32, raw: u64, regs: u64, task: *const u8) -> Option<Call> {
    let v = POLICY_SYSCALLS.get(slot)?;
    let abi = if raw & X32_SYSCALL_BIT != 0 {
        abi_id::X32
    } else if in_i386_call(task) {
        abi_id::I386
    } else {
        return Some(Call {
            abi: abi_id::X86_64,
            nr: raw as u32,
            native: raw as u32,
            verdict: verdict(v, raw),
            indirect: false,
        });
    };
    let nr = raw & !X32_SYSCALL_BIT;
    let mut call = Call {
        abi,
        nr: nr as u32,
        native: u32::MAX,
        verdict: 0,
        indirect: false,
    };
    let refused = v
        .abi_rule
        .get((abi - abi_id::I386) as usize)
        .copied()
        .unwrap_or(0);
    if refused != 0 {
        call.verdict = refused;
        return Some(call);
    }
    let x = xlat_index(abi, nr)
        .and_then(|i| POLICY_XLAT.get(i).copied())
        .unwrap_or(xlat::NONE);
    let native = match x {
        xlat::SOCKETCALL => {
            call.indirect = true;
            socketcall_native(arg(regs, abi, 0))
        }
        xlat::IPC => {
            call.indirect = true;
            ipc_native(arg(regs, abi, 0))
        }
        xlat::NONE => None,
        n => Some(n),
    };
    match native {
        Some(n) => {
            call.native = n;
            call.verdict = verdict(v, u64::from(n));
        }
        None => call.verdict = v.unmapped_rule,
    }
    Some(call)
}

/// The rule a call with a conditional verdict violates by its arguments (`None`: it does not).
/// Arguments in memory cannot be checked: the call counts as matching (fail closed).
#[inline(always)]
fn by_arguments(call: &Call, regs: u64, slot: u32, default_rule: u32) -> Option<u32> {
    // SAFETY: read-only lookup; the value is read in place.
    let r = unsafe {
        POLICY_ARGS.get(ArgKey {
            slot,
            nr: call.native,
        })
    }?;
    if call.indirect {
        return Some(default_rule);
    }
    let mut args = [0u64; 6];
    for (i, a) in args.iter_mut().enumerate() {
        *a = arg(regs, call.abi, i);
    }
    r.violated(&args, default_rule)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn policy_enter(ctx: RawTracePointContext) -> i32 {
    let _ = try_enter(&ctx);
    // SAFETY: the slot holds a raw tracepoint program (the kernel refuses any other type) that
    // takes this same context; an empty slot returns here.
    unsafe { POLICY_NEXT.tail_call(&ctx, 0) };
    0
}

fn try_enter(ctx: &RawTracePointContext) -> Result<i32, i32> {
    let cur = current();
    let cgroup_id = cur.cgroup_id;
    let Some(p) = policy_current_thread_of(cgroup_id, cur.tid) else {
        return Ok(0);
    };
    if p.flags & cgroup_flags::SYSCALLS == 0 {
        return Ok(0);
    }
    // sys_enter(struct pt_regs *regs, long id)
    let raw: i64 = ctx.arg(1);
    if raw < 0 {
        return Ok(0);
    }
    let regs: u64 = ctx.arg(0);
    let call = classify(p.slot, raw as u64, regs, cur.task).ok_or(0)?;
    let v = call.verdict;
    if v == 0 {
        return Ok(0);
    }
    let mut id = u32::from(v & VERDICT_RULE);
    let info = rule(id).ok_or(0)?;
    if p.flags & cgroup_flags::SECCOMP != 0 {
        if v & VERDICT_CONDITIONAL != 0 {
            // the filter let this call through (its arguments did not match): remember it, so
            // sys_exit does not take an error result for a refusal
            let tid = cur.tid;
            if let Some(slot) = POLICY_ENTER.get_ptr_mut(tid & POLICY_ENTER_MASK.load()) {
                // SAFETY: array map value; a colliding thread at worst hides one report.
                unsafe {
                    (*slot).tid = tid;
                    (*slot).nr = raw as u32;
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
        match by_arguments(&call, regs, p.slot, id) {
            Some(r) => id = r,
            None => return Ok(0),
        }
    }
    let Some(info) = rule(id) else {
        return Ok(0);
    };
    if call.abi == abi_id::X86_64
        && info.action == action::ERRNO
        && info.mode == mode::ENFORCE
        && lsm_refuses(u64::from(call.nr))
    {
        // refused (and reported once) by its BPF-LSM hooks (`lsm::refuse_call`)
        let tid = cur.tid;
        let _ = POLICY_LSM_CALL.insert(tid, LSM_CALL_FRESH, 0);
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
            nr: call.nr,
            abi: call.abi,
            native: call.native,
            ..Detail::NONE
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
    let cur = current();
    let cgroup_id = cur.cgroup_id;
    let Some(p) = policy_current_thread_of(cgroup_id, cur.tid) else {
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
    let raw: i64 = unsafe { bpf_probe_read_kernel((regs + POLICY_NR_OFFSET.load()) as *const i64) }
        .map_err(|_| 0)?;
    if raw < 0 {
        return Ok(0);
    }
    let call = classify(p.slot, raw as u64, regs, cur.task).ok_or(0)?;
    let v = call.verdict;
    if v == 0 {
        return Ok(0);
    }
    let id = u32::from(v & VERDICT_RULE);
    let info = rule(id).ok_or(0)?;
    if info.action != action::ERRNO || (-ret) as u32 != info.errno {
        return Ok(0);
    }
    if v & VERDICT_CONDITIONAL != 0 {
        let tid = cur.tid;
        if let Some(slot) = POLICY_ENTER.get_ptr_mut(tid & POLICY_ENTER_MASK.load()) {
            // SAFETY: array map value, see try_enter.
            let entered = unsafe {
                let seen = (*slot).tid == tid && (*slot).nr == raw as u32;
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
            nr: call.nr,
            abi: call.abi,
            native: call.native,
            errno: (-ret) as u32,
            ..Detail::NONE
        },
    );
    Ok(0)
}
