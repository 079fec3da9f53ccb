//! BPF-LSM programs: where the kernel asks the LSMs, a denied call is refused before it has
//! any effect (hosts with `bpf` among the active LSMs; the agent attaches them only there).
//!
//! - `policy_exec_lsm` on `bprm_check_security`: exec rules with `action: errno` refuse the
//!   exec with EPERM before the new image exists (the process keeps running its old image and
//!   sees `execve` fail). The kernel asks once per binary handler round: first with the file
//!   named (a script's own file), then, for a script, with its interpreter. Each round is
//!   matched like the `sched_process_exec` program matches the file executed (resolved path,
//!   device and inode for the event; the path given on the first round); rules with other
//!   actions, and every rule in audit mode, are left to that program (it sees each exec once,
//!   where this hook sees a script twice).
//! - `policy_lsm_*` on the hooks of the calls in `LSM_CALLS` (`userns_create`, `capable`,
//!   `task_alloc`, `sb_mount`, ...): a call that syscall rules deny with `action: errno` in
//!   enforce mode is refused with the rule's errno from inside the call, before it has any
//!   effect. Every program asks the same question (`refuse_call`): which call is the current
//!   task in (its user registers), and does the cgroup's verdict table deny it with an errno
//!   (argument conditions checked on the registers, as at `sys_enter`)? `sys_enter` leaves
//!   those rules to these programs while they are attached, so each refusal is counted once
//!   (a call refused at several hooks, or at one hook asked several times, counts once:
//!   `first_refusal`).
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_task_btf, bpf_probe_read_kernel, generated,
    },
    macros::lsm,
    programs::LsmContext,
};
use palisade_common::policy::{
    ArgKey, KernelMemory as _, MAX_SYSCALLS, VERDICT_CONDITIONAL, VERDICT_RULE, X86_64_ARG_OFFSETS,
    action, cgroup_flags, exec_flags, lsm_by_capable, mode, taken, unresolved, what,
};

use crate::{
    exec::{
        Kmem, POLICY_EXEC_OFFSETS, POLICY_SCRATCH, exec_policy, identity, put, read_str, resolve,
        violated,
    },
    report::{Detail, Subject, lsm_refuses, policy_current, report, rule},
    syscalls::{
        LSM_CALL_FRESH, LSM_CALL_REFUSED, POLICY_ARGS, POLICY_LSM_CALL, POLICY_SYSCALLS, verdict,
    },
};

pub(crate) const EPERM: i32 = 1;

const ENOSYS: i32 = 38;
/// The largest errno a hook may return.
const MAX_ERRNO: u32 = 4095;
/// `struct pt_regs` (x86_64): `orig_ax` (the call number) and `cs`.
pub(crate) const REGS_ORIG_AX: u64 = 15 * 8;
pub(crate) const REGS_CS: u64 = 17 * 8;
/// `__USER_CS`: a 64-bit call (i386 calls come with `__USER32_CS`; x32 numbers are above
/// `MAX_SYSCALLS`).
pub(crate) const USER_CS: u64 = 0x33;

/// The errno to refuse the current call with (0: let it through), reported once. `capable`:
/// the hook is the CAP_SYS_ADMIN check of `unshare`/`setns`, whose callers see EPERM.
#[inline(always)]
fn refuse_call(capable: bool) -> i32 {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(p) = policy_current(cgroup_id) else {
        return 0;
    };
    // a launched workload's seccomp filter refuses its `errno` rules; before the filter is in
    // place the launcher itself sets the container up (mount, pivot_root, unshare)
    if p.flags & cgroup_flags::SYSCALLS == 0 || p.flags & cgroup_flags::SECCOMP != 0 {
        return 0;
    }
    // SAFETY: the current task (a BTF pointer), as bpf_task_pt_regs requires.
    let regs = unsafe { generated::bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let read = |off: u64| {
        // SAFETY: bpf_probe_read_kernel checks the address; a fault reads as 0.
        unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0)
    };
    if read(REGS_CS) != USER_CS {
        return 0;
    }
    let nr = read(REGS_ORIG_AX);
    // `capable` is asked in many calls: it refuses only the calls whose hook it is
    if nr >= MAX_SYSCALLS as u64 || !lsm_refuses(nr) || (capable && !lsm_by_capable(nr)) {
        return 0;
    }
    let Some(vs) = POLICY_SYSCALLS.get(p.slot) else {
        return 0;
    };
    let v = verdict(vs, nr);
    if v == 0 {
        return 0;
    }
    let mut id = u32::from(v & VERDICT_RULE);
    if v & VERDICT_CONDITIONAL != 0 {
        // SAFETY: read-only lookup; the value is read in place.
        let Some(r) = (unsafe {
            POLICY_ARGS.get(ArgKey {
                slot: p.slot,
                nr: nr as u32,
            })
        }) else {
            return 0;
        };
        let mut args = [0u64; 6];
        for (a, off) in args.iter_mut().zip(X86_64_ARG_OFFSETS) {
            *a = read(off);
        }
        match r.violated(&args, id) {
            Some(r) => id = r,
            None => return 0,
        }
    }
    let Some(info) = rule(id) else {
        return 0;
    };
    if info.action != action::ERRNO || info.mode != mode::ENFORCE {
        return 0;
    }
    let errno = if capable { EPERM as u32 } else { info.errno };
    if !first_refusal() {
        // the call asked again after a refusal (request_key searches each of the caller's
        // keyrings): refused again, counted once
        return neg_errno(errno);
    }
    report(
        what::SYSCALL_LSM,
        id,
        taken::ERRNO,
        cgroup_id,
        Subject::Current,
        &Detail {
            nr: nr as u32,
            native: nr as u32,
            errno,
            ..Detail::NONE
        },
    );
    neg_errno(errno)
}

/// Whether this is the first refusal of the current call: `sys_enter` marks each call it
/// leaves to these hooks ([`LSM_CALL_FRESH`]), the first refusal clears the mark. Without a
/// mark (an earlier agent's `sys_enter`, a thread evicted from the LRU) every refusal counts.
#[inline(always)]
fn first_refusal() -> bool {
    // SAFETY: helper without preconditions.
    let tid = bpf_get_current_pid_tgid() as u32;
    match POLICY_LSM_CALL.get_ptr_mut(tid) {
        // SAFETY: this thread's value; only this thread writes it.
        Some(v) => unsafe {
            let fresh = *v == LSM_CALL_FRESH;
            *v = LSM_CALL_REFUSED;
            fresh
        },
        None => true,
    }
}

/// `-errno`, in a form the verifier can bound: kernels from 6.12 check that an LSM program
/// returns 0 or -1..-4095 (MAX_ERRNO), and verifiers before 6.15 know nothing of a negated
/// register. So: masked to 0..4095, subtracted from 4096 (tracked), through a stack slot the
/// compiler cannot see through (so it cannot fold the two steps back into a negation; the
/// verifier keeps a spilled scalar's bounds), less 4096. 0 (not an errno) becomes EPERM.
#[inline(always)]
pub(crate) fn neg_errno(errno: u32) -> i32 {
    let e = (errno & MAX_ERRNO) as i32;
    if e == 0 {
        return -EPERM;
    }
    let t: i32 = 4096 - e;
    // SAFETY: a read of a local just written.
    let t = unsafe { core::ptr::read_volatile(&t) };
    t - 4096
}

macro_rules! syscall_hook {
    ($name:ident, $hook:literal) => {
        #[lsm(hook = $hook)]
        pub fn $name(_ctx: LsmContext) -> i32 {
            refuse_call(false)
        }
    };
}

syscall_hook!(policy_lsm_userns_create, "userns_create");
syscall_hook!(policy_lsm_task_alloc, "task_alloc");
syscall_hook!(policy_lsm_sb_mount, "sb_mount");
syscall_hook!(policy_lsm_move_mount, "move_mount");
syscall_hook!(policy_lsm_sb_pivotroot, "sb_pivotroot");
syscall_hook!(policy_lsm_ptrace_access_check, "ptrace_access_check");
syscall_hook!(policy_lsm_ptrace_traceme, "ptrace_traceme");
syscall_hook!(policy_lsm_bpf, "bpf");
syscall_hook!(policy_lsm_perf_event_open, "perf_event_open");
syscall_hook!(policy_lsm_socket_create, "socket_create");
syscall_hook!(policy_lsm_kernel_load_data, "kernel_load_data");
syscall_hook!(policy_lsm_kernel_read_file, "kernel_read_file");
syscall_hook!(policy_lsm_task_fix_setuid, "task_fix_setuid");
syscall_hook!(policy_lsm_key_permission, "key_permission");
syscall_hook!(policy_lsm_key_alloc, "key_alloc");

#[lsm(hook = "capable")]
pub fn policy_lsm_capable(_ctx: LsmContext) -> i32 {
    refuse_call(true)
}

/// `security_task_prctl` takes -ENOSYS for "not mine"; 0 would end every prctl unhandled.
#[lsm(hook = "task_prctl")]
pub fn policy_lsm_task_prctl(_ctx: LsmContext) -> i32 {
    match refuse_call(false) {
        0 => -ENOSYS,
        e => e,
    }
}

#[lsm(hook = "bprm_check_security")]
pub fn policy_exec_lsm(ctx: LsmContext) -> i32 {
    match try_exec_lsm(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_exec_lsm(ctx: &LsmContext) -> Result<i32, i32> {
    // bprm_check_security(struct linux_binprm *bprm), then the verdict of the BPF-LSM
    // programs before this one: a refusal stands
    let prev: i32 = ctx.arg(1);
    if prev != 0 {
        // bounded for the verifier (see `refuse_call`)
        return Err(neg_errno(prev.unsigned_abs()));
    }
    let Some((cgroup_id, p)) = exec_policy() else {
        return Ok(0);
    };
    let bprm: u64 = ctx.arg(0);
    let m = Kmem;
    let at = |b: u64, off: u32| b.wrapping_add(u64::from(off));
    // SAFETY: helper without preconditions (process context).
    let task = unsafe { bpf_get_current_task() };
    let sc = POLICY_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's scratch value; nothing else uses it while we run.
    let (x, o) = unsafe {
        (*sc).o = POLICY_EXEC_OFFSETS.load();
        (&mut (*sc).paths, &(*sc).o)
    };
    x.flags = 0;
    x.path_len = 0;
    x.interp_len = 0;
    x.given_len = 0;
    x.path_unresolved = unresolved::NONE;
    x.interp_unresolved = unresolved::NONE;
    let file = m.u64_at(at(bprm, o.bprm_file)).ok_or(0)?;
    let filename = m.u64_at(at(bprm, o.bprm_filename)).unwrap_or(0);
    let interp = m.u64_at(at(bprm, o.bprm_interp)).unwrap_or(0);
    let fs = m.u64_at(at(task, o.task_fs)).ok_or(0)?;
    let root = at(fs, o.fs_root);
    let root_mnt = m.u64_at(at(root, o.path_mnt)).ok_or(0)?;
    let root_dentry = m.u64_at(at(root, o.path_dentry)).ok_or(0)?;
    resolve(sc, file, root_mnt, root_dentry);
    let program = interp == filename;
    if program {
        // the first round: the file named, and the name given
        x.flags = exec_flags::RESOLVED;
        x.given_len = read_str(filename, &mut x.given);
        (x.path_len, x.path_unresolved) = put(sc, &mut x.path);
        identity(o, file, x);
    } else {
        // a later round: `file` is the interpreter of the script named (matched by its own
        // file in the first round; reported here by the name given)
        x.flags = exec_flags::SCRIPT | exec_flags::SCRIPT_BY_NAME;
        (x.interp_len, x.interp_unresolved) = put(sc, &mut x.interp);
        x.path_len = read_str(filename, &mut x.path);
    }
    let id = violated::<true>(p.slot, sc, program);
    if id == 0 {
        return Ok(0);
    }
    let Some(t) = rule(id).and_then(|i| i.taken_exec_lsm()) else {
        return Ok(0);
    };
    report(
        what::EXEC,
        id,
        t,
        cgroup_id,
        Subject::Current,
        &Detail {
            nr: 0,
            errno: if t == taken::ERRNO { EPERM as u32 } else { 0 },
            path: Some(x as *const _),
            ..Detail::NONE
        },
    );
    if t == taken::ERRNO {
        return Err(-EPERM);
    }
    Ok(0)
}
