//! File rules with BPF-LSM: the kernel asks these programs before an access has any effect,
//! and a denied one fails with the rule's errno (or EPERM, and the process is killed, for
//! `action: kill`). Attached instead of the `sys_enter` audit program where BPF-LSM is active
//! (the agent's `files_lsm` hook group), so each access is counted once.
//!
//! The path matched is the one the kernel resolved: the file's dentry walked up to the task's
//! root (exec.rs's walk, one step per `bpf_loop` call), so a relative path, a symlink or `..`
//! reaches the same rules as the absolute path. Then the same lookups in `POLICY_FILES` as the
//! audit program (`files::matched`).
//!
//! | hook | access |
//! |---|---|
//! | `file_open` | read, write (by `f_mode`; `O_TRUNC`/`O_CREAT` are writes), exec (an execve's open) |
//! | `path_mknod` | write (a file created, `O_CREAT`, before it exists) |
//! | `path_truncate` | write (`truncate(2)`, and `O_TRUNC` on kernels before 6.2) |
//! | `path_unlink`, `path_rmdir` | unlink |
//! | `path_chmod` | chmod |
//! | `mmap_file` | exec (a mapping with `PROT_EXEC`: the dynamic loader, `mmap`) |
//!
//! Every program first keeps the verdict of the BPF-LSM programs before it (a refusal stands),
//! then costs a cgroup lookup for cgroups without file rules.
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_task, bpf_get_current_task_btf,
        bpf_probe_read_kernel, bpf_send_signal, generated,
    },
    macros::lsm,
    programs::LsmContext,
};
use palisade_common::policy::{
    KernelMemory as _, abi_id, access, action, cgroup_flags, exec_flags, mode, open_access, taken,
    unresolved, what,
};

use crate::{
    exec::{Kmem, POLICY_EXEC_OFFSETS, POLICY_SCRATCH, put, resolve_path},
    files::{POLICY_FILE_SCRATCH, matched},
    lsm::{EPERM, REGS_CS, REGS_ORIG_AX, USER_CS, neg_errno},
    report::{Detail, Subject, policy_current, report, rule},
};

const SIGKILL: u32 = 9;
/// `fmode_t` bits.
const FMODE_READ: u32 = 1;
const FMODE_WRITE: u32 = 2;
const FMODE_EXEC: u32 = 0x20;
/// A file the kernel opens for itself on a process's behalf: overlayfs's file of the layer
/// below (with the overlay's path, asked again after the overlay's own open was allowed).
const FMODE_NOACCOUNT: u32 = 0x2000_0000;
/// `__FMODE_EXEC` in `f_flags`: an execve's open (6.1 leaves it out of `f_mode`).
const O_FMODE_EXEC: u32 = 0x20;
/// `mmap` protection bit.
const PROT_EXEC: u64 = 4;
/// `renameat2` flag.
const RENAME_EXCHANGE: u64 = 2;

/// What the hook is about: the accesses asked for, and where the path starts.
enum Target {
    /// An open file (`struct file *`); the accesses from its mode and flags.
    Open(u64),
    /// A `struct path *`.
    Path(u64, u32),
    /// A dentry in the directory of a `struct path *` (unlink, rmdir, mknod).
    Child(u64, u64, u32),
    /// A file mapped (`struct file *`), asked for these accesses.
    Mapped(u64, u32),
}

/// The verdict of the programs before this one, bounded for the verifier (see `neg_errno`).
#[inline(always)]
fn previous(prev: i32) -> Option<i32> {
    (prev != 0).then(|| neg_errno(prev.unsigned_abs()))
}

#[lsm(hook = "file_open")]
pub fn policy_files_open(ctx: LsmContext) -> i32 {
    // file_open(struct file *file), then the verdict so far
    if let Some(v) = previous(ctx.arg(1)) {
        return v;
    }
    decide(Target::Open(ctx.arg(0)), 0)
}

#[lsm(hook = "path_mknod")]
pub fn policy_files_mknod(ctx: LsmContext) -> i32 {
    // path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev)
    if let Some(v) = previous(ctx.arg(4)) {
        return v;
    }
    decide(Target::Child(ctx.arg(0), ctx.arg(1), access::WRITE), 0)
}

#[lsm(hook = "path_truncate")]
pub fn policy_files_truncate(ctx: LsmContext) -> i32 {
    // path_truncate(const struct path *path)
    if let Some(v) = previous(ctx.arg(1)) {
        return v;
    }
    decide(Target::Path(ctx.arg(0), access::WRITE), 0)
}

#[lsm(hook = "path_unlink")]
pub fn policy_files_unlink(ctx: LsmContext) -> i32 {
    // path_unlink(const struct path *dir, struct dentry *dentry)
    if let Some(v) = previous(ctx.arg(2)) {
        return v;
    }
    decide(Target::Child(ctx.arg(0), ctx.arg(1), access::UNLINK), 0)
}

#[lsm(hook = "path_rmdir")]
pub fn policy_files_rmdir(ctx: LsmContext) -> i32 {
    // path_rmdir(const struct path *dir, struct dentry *dentry)
    if let Some(v) = previous(ctx.arg(2)) {
        return v;
    }
    decide(Target::Child(ctx.arg(0), ctx.arg(1), access::UNLINK), 0)
}

#[lsm(hook = "path_chmod")]
pub fn policy_files_chmod(ctx: LsmContext) -> i32 {
    // path_chmod(const struct path *path, umode_t mode)
    if let Some(v) = previous(ctx.arg(2)) {
        return v;
    }
    decide(Target::Path(ctx.arg(0), access::CHMOD), 0)
}

#[lsm(hook = "mmap_file")]
pub fn policy_files_mmap(ctx: LsmContext) -> i32 {
    // mmap_file(struct file *file, unsigned long reqprot, unsigned long prot,
    //           unsigned long flags)
    if let Some(v) = previous(ctx.arg(4)) {
        return v;
    }
    let file: u64 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    if file == 0 || prot & PROT_EXEC == 0 {
        return 0;
    }
    decide(Target::Mapped(file, access::EXEC), 0)
}

#[lsm(hook = "path_mkdir")]
pub fn policy_files_mkdir(ctx: LsmContext) -> i32 {
    // path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode)
    if let Some(v) = previous(ctx.arg(3)) {
        return v;
    }
    decide(Target::Child(ctx.arg(0), ctx.arg(1), access::WRITE), 0)
}

#[lsm(hook = "path_symlink")]
pub fn policy_files_symlink(ctx: LsmContext) -> i32 {
    // path_symlink(const struct path *dir, struct dentry *dentry, const char *old_name)
    if let Some(v) = previous(ctx.arg(3)) {
        return v;
    }
    decide(Target::Child(ctx.arg(0), ctx.arg(1), access::WRITE), 0)
}

/// Every access a rule can refuse, and the directories above a pattern: a second name for a
/// denied file (or a denied tree moved away) would escape rules that match paths.
const ANY: u32 =
    access::READ | access::WRITE | access::UNLINK | access::CHMOD | access::EXEC | access::CONTAINS;

#[lsm(hook = "path_link")]
pub fn policy_files_link(ctx: LsmContext) -> i32 {
    // path_link(struct dentry *old_dentry, const struct path *new_dir,
    //           struct dentry *new_dentry); both on one mount (EXDEV is checked first)
    if let Some(v) = previous(ctx.arg(3)) {
        return v;
    }
    let (old, dir, new): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    // the file linked to, walked up from its own dentry (on the new directory's mount)
    match decide(Target::Child(dir, old, ANY), access::LINK) {
        0 => decide(Target::Child(dir, new, access::WRITE), access::LINK),
        v => v,
    }
}

#[lsm(hook = "path_rename")]
pub fn policy_files_rename(ctx: LsmContext) -> i32 {
    // path_rename(const struct path *old_dir, struct dentry *old_dentry,
    //             const struct path *new_dir, struct dentry *new_dentry, unsigned int flags)
    if let Some(v) = previous(ctx.arg(5)) {
        return v;
    }
    let flags: u64 = ctx.arg(4);
    // RENAME_EXCHANGE: the file at the new name moves to the old one as well
    let new_want = if flags & RENAME_EXCHANGE != 0 {
        ANY
    } else {
        access::WRITE | access::UNLINK
    };
    match decide(Target::Child(ctx.arg(0), ctx.arg(1), ANY), access::RENAME) {
        0 => decide(
            Target::Child(ctx.arg(2), ctx.arg(3), new_want),
            access::RENAME,
        ),
        v => v,
    }
}

/// The current call's x86_64 number (`u32::MAX` when not in a 64-bit call).
#[inline(always)]
fn current_call() -> u32 {
    // SAFETY: the current task (a BTF pointer), as bpf_task_pt_regs requires.
    let regs = unsafe { generated::bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    let read = |off: u64| {
        // SAFETY: bpf_probe_read_kernel checks the address; a fault reads as 0.
        unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0)
    };
    if read(REGS_CS) != USER_CS {
        return u32::MAX;
    }
    read(REGS_ORIG_AX) as u32
}

/// The verdict on `t` for the current task: 0, or the negated errno of the rule refusing it.
/// `report_as` (not 0) is the access the event names instead of the one matched (a rename
/// or a link of a denied file, or of a directory above one).
#[inline(always)]
fn decide(t: Target, report_as: u32) -> i32 {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(p) = policy_current(cgroup_id) else {
        return 0;
    };
    if p.flags & cgroup_flags::FILES == 0 {
        return 0;
    }
    let (Some(sc), Some(fs)) = (
        POLICY_SCRATCH.get_ptr_mut(0),
        POLICY_FILE_SCRATCH.get_ptr_mut(0),
    ) else {
        return 0;
    };
    let m = Kmem;
    let at = |b: u64, off: u32| b.wrapping_add(u64::from(off));
    // SAFETY: this CPU's scratch value; nothing else uses it while we run.
    let o = unsafe {
        (*sc).o = POLICY_EXEC_OFFSETS.load();
        &(*sc).o
    };
    let (path, child, want) = match t {
        Target::Open(file) => {
            let fmode = m.u32_at(at(file, o.file_mode)).unwrap_or(0);
            let flags = m.u32_at(at(file, o.file_flags)).unwrap_or(0);
            if fmode & FMODE_NOACCOUNT != 0 {
                return 0;
            }
            let want = if fmode & FMODE_EXEC != 0 || flags & O_FMODE_EXEC != 0 {
                access::EXEC
            } else {
                let mut w = open_access(u64::from(flags)) & access::WRITE;
                if fmode & FMODE_READ != 0 {
                    w |= access::READ;
                }
                if fmode & FMODE_WRITE != 0 {
                    w |= access::WRITE;
                }
                w
            };
            (at(file, o.file_path), 0, want)
        }
        Target::Mapped(file, want) => (at(file, o.file_path), 0, want),
        Target::Path(path, want) => (path, 0, want),
        Target::Child(dir, dentry, want) => (dir, dentry, want),
    };
    if want == 0 {
        return 0;
    }
    // SAFETY: helper without preconditions (process context).
    let task = unsafe { bpf_get_current_task() };
    let Some(fsp) = m.u64_at(at(task, o.task_fs)) else {
        return 0;
    };
    let root = at(fsp, o.fs_root);
    let (Some(root_mnt), Some(root_dentry)) = (
        m.u64_at(at(root, o.path_mnt)),
        m.u64_at(at(root, o.path_dentry)),
    ) else {
        return 0;
    };
    resolve_path(sc, path, child, root_mnt, root_dentry);
    let reason = {
        // SAFETY: this CPU's file scratch; `put` reads the other scratch.
        let x = unsafe { &mut (*fs).paths };
        let (len, reason) = put(sc, &mut x.given);
        x.flags = exec_flags::RESOLVED;
        x.path_unresolved = reason;
        x.interp_unresolved = 0;
        x.dev = 0;
        x.ino = 0;
        x.path_len = 0;
        x.interp_len = 0;
        x.given_len = len;
        reason
    };
    // a path cut short or unreadable cannot be matched (said in the README's limits)
    if matches!(reason, unresolved::TOO_LONG | unresolved::UNREADABLE) {
        return 0;
    }
    let mut found = matched(fs, p.slot, want);
    if found.rule == 0 {
        return 0;
    }
    if report_as != 0 {
        found.access = report_as;
    }
    let Some(info) = rule(found.rule) else {
        return 0;
    };
    let taken = if info.mode != mode::ENFORCE {
        if info.action == action::LOG {
            taken::LOG
        } else {
            taken::WOULD_BLOCK
        }
    } else {
        match info.action {
            action::ERRNO => taken::ERRNO,
            action::KILL => taken::KILL,
            _ => taken::LOG,
        }
    };
    let nr = current_call();
    report(
        what::FILE,
        found.rule,
        taken,
        cgroup_id,
        Subject::Current,
        &Detail {
            nr,
            abi: abi_id::X86_64,
            native: nr,
            errno: found.access,
            net: None,
            // SAFETY: the file scratch's `paths`, copied into the event by `report`.
            path: Some(unsafe { &raw const (*fs).paths }),
        },
    );
    match taken {
        taken::ERRNO => neg_errno(info.errno),
        taken::KILL => {
            // SAFETY: signals the current process, whose access is refused as well.
            unsafe { bpf_send_signal(SIGKILL) };
            -EPERM
        }
        _ => 0,
    }
}
