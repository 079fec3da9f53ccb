//! BPF-LSM programs: where the kernel asks the LSMs, a denied call is refused before it has
//! any effect (hosts with `bpf` among the active LSMs; the agent attaches them only there).
//!
//! - `policy_exec_lsm` on `bprm_check_security`: exec rules with `action: errno` refuse the
//!   exec with EPERM before the new image exists (the process keeps running its old image and
//!   sees `execve` fail). The kernel asks once per binary handler round: first with the file
//!   named (a script's own file), then, for a script, with its interpreter. Each round is
//!   matched like the `sched_process_exec` program matches the file executed (resolved path,
//!   device and inode for the event; the path given on the first round); rules with other
//!   actions are left to that program.
use aya_ebpf::{
    helpers::bpf_get_current_task, macros::lsm, programs::LsmContext,
};
use palisade_common::policy::{
    KernelMemory as _, exec_flags, taken, unresolved, what,
};

use crate::{
    exec::{
        Kmem, POLICY_EXEC_OFFSETS, POLICY_SCRATCH, exec_policy, identity, put, read_str, resolve,
        violated,
    },
    report::{Detail, Subject, report, rule},
};

const EPERM: i32 = 1;

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
        return Err(prev);
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
            net: None,
            path: Some(x as *const _),
        },
    );
    if t == taken::ERRNO {
        return Err(-EPERM);
    }
    Ok(0)
}
