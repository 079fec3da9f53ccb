//! The walk from a file executed to its path, and the search for a script's own file: kernel
//! memory read through [`KernelMemory`], one step at a time so the programs can run each step
//! from `bpf_loop` (the verifier checks a step once, whatever the path).
use super::unresolved;
use crate::policy::POLICY_PATH_MAX;

/// Byte offsets of the kernel structure members the exec walk reads, from the kernel's BTF,
/// and the address of `____fput` (from kallsyms) that marks a file release in the task works.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecOffsets {
    /// Address of the kernel's `____fput` (0: unknown; scripts are then matched by the path
    /// given).
    pub fput_fn: u64,
    pub bprm_file: u32,
    pub bprm_filename: u32,
    pub bprm_interp: u32,
    pub file_path: u32,
    pub file_inode: u32,
    pub file_task_work: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_parent: u32,
    /// `d_name` plus the member of `struct qstr`.
    pub dentry_name_ptr: u32,
    pub dentry_name_len: u32,
    /// `d_hash` plus `hlist_bl_node.pprev` (NULL: unhashed).
    pub dentry_hash_pprev: u32,
    pub vfsmount_root: u32,
    /// Offset of `struct vfsmount mnt` inside `struct mount` (container_of).
    pub mount_mnt: u32,
    pub mount_parent: u32,
    pub mount_mountpoint: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub task_fs: u32,
    /// `fs_struct.root`.
    pub fs_root: u32,
    pub task_works: u32,
    pub work_next: u32,
    pub work_func: u32,
    /// `file.f_mode` and `file.f_flags` (the file rules' `file_open` hook).
    pub file_mode: u32,
    pub file_flags: u32,
}

impl ExecOffsets {
    pub const ZERO: Self = Self {
        fput_fn: 0,
        bprm_file: 0,
        bprm_filename: 0,
        bprm_interp: 0,
        file_path: 0,
        file_inode: 0,
        file_task_work: 0,
        path_mnt: 0,
        path_dentry: 0,
        dentry_parent: 0,
        dentry_name_ptr: 0,
        dentry_name_len: 0,
        dentry_hash_pprev: 0,
        vfsmount_root: 0,
        mount_mnt: 0,
        mount_parent: 0,
        mount_mountpoint: 0,
        inode_ino: 0,
        inode_sb: 0,
        sb_dev: 0,
        task_fs: 0,
        fs_root: 0,
        task_works: 0,
        work_next: 0,
        work_func: 0,
        file_mode: 0,
        file_flags: 0,
    };
}

/// Reads of kernel memory (`bpf_probe_read_kernel` in the programs; a model in the tests).
pub trait KernelMemory {
    fn u64_at(&self, addr: u64) -> Option<u64>;
    fn u32_at(&self, addr: u64) -> Option<u32>;
    /// Copies `len` (< 256) bytes from kernel address `src` to `dst`.
    ///
    /// # Safety
    /// `dst` is valid for writes of `len` bytes.
    unsafe fn copy(&self, dst: *mut u8, len: u32, src: u64) -> bool;
}

/// Bytes of [`Assembly::buf`]: twice the longest path, so masked offsets and lengths stay
/// inside it without a branch the verifier cannot follow.
pub const RESOLVE_BUF: usize = 2 * POLICY_PATH_MAX;
/// Index of the NUL that ends an assembled path.
pub const PATH_END: u32 = POLICY_PATH_MAX as u32 - 1;
const MASK: u32 = POLICY_PATH_MAX as u32 - 1;
/// Steps of the walk (path components plus mount crossings).
pub const WALK_MAX: u32 = 160;
/// Pending task works looked through for a script's release.
pub const TASK_WORKS_MAX: u32 = 256;

/// A walk from a file up to the process's root, one step at a time (a path component or a
/// mount crossing), assembling the path backwards so it ends at [`PATH_END`]. The programs run
/// [`Assembly::step`] from `bpf_loop` with this in map memory: the verifier checks one step,
/// once, whatever the path; the host runs the same steps in [`resolve`].
#[repr(C)]
pub struct Assembly {
    pub buf: [u8; RESOLVE_BUF],
    /// The dentry and `struct vfsmount` the walk is at, and the root it stops at.
    pub dentry: u64,
    pub vfs: u64,
    pub root_mnt: u64,
    pub root_dentry: u64,
    /// The path is `buf[start..PATH_END]`.
    pub start: u32,
    /// One of [`unresolved`]; [`Assembly::WALKING`] while the walk goes on.
    pub reason: u32,
    /// 1 when a dentry on the way was unhashed (unlinked).
    pub deleted: u32,
    /// The length of the name being copied, passed through memory so the compiler cannot drop
    /// the mask the verifier needs to bound the copy.
    pub name_len: u32,
}

#[inline(always)]
fn load(p: &u32) -> u32 {
    // SAFETY: a reference is valid for reads.
    unsafe { core::ptr::read_volatile(p) }
}

#[inline(always)]
fn store(p: &mut u32, v: u32) {
    // SAFETY: a reference is valid for writes.
    unsafe { core::ptr::write_volatile(p, v) }
}

impl Assembly {
    /// [`Assembly::reason`] while the walk has not stopped.
    pub const WALKING: u32 = u32::MAX;

    pub const EMPTY: Self = Self {
        buf: [0; RESOLVE_BUF],
        dentry: 0,
        vfs: 0,
        root_mnt: 0,
        root_dentry: 0,
        start: PATH_END,
        reason: 0,
        deleted: 0,
        name_len: 0,
    };

    /// Starts a walk from the open file `file` (a `struct file *`) to the root of a process
    /// whose root is (`root_mnt`, `root_dentry`).
    #[inline(always)]
    pub fn start<M: KernelMemory>(
        &mut self,
        m: &M,
        o: &ExecOffsets,
        file: u64,
        root_mnt: u64,
        root_dentry: u64,
    ) {
        let fpath = file.wrapping_add(u64::from(o.file_path));
        self.start_path(m, o, fpath, 0, root_mnt, root_dentry);
    }

    /// Starts a walk from the `struct path` at `path`, or when `child` is not 0 from that
    /// dentry, a child of the path's directory (the name `path_unlink` and `path_mknod` are
    /// given), to the root (`root_mnt`, `root_dentry`).
    #[inline(always)]
    pub fn start_path<M: KernelMemory>(
        &mut self,
        m: &M,
        o: &ExecOffsets,
        path: u64,
        child: u64,
        root_mnt: u64,
        root_dentry: u64,
    ) {
        let at = |base: u64, off: u32| base.wrapping_add(u64::from(off));
        self.buf[PATH_END as usize] = 0;
        store(&mut self.start, PATH_END);
        store(&mut self.deleted, 0);
        self.root_mnt = root_mnt;
        self.root_dentry = root_dentry;
        match (
            m.u64_at(at(path, o.path_mnt)),
            m.u64_at(at(path, o.path_dentry)),
        ) {
            (Some(vfs), Some(d)) => {
                self.vfs = vfs;
                self.dentry = if child != 0 { child } else { d };
                store(&mut self.reason, Self::WALKING);
            }
            _ => store(&mut self.reason, unresolved::UNREADABLE),
        }
    }

    /// One step up; `false` once the walk has stopped ([`Assembly::reason`] says why).
    #[inline(always)]
    pub fn step<M: KernelMemory>(&mut self, m: &M, o: &ExecOffsets) -> bool {
        if load(&self.reason) != Self::WALKING {
            return false;
        }
        let r = self.step_inner(m, o);
        if r != Self::WALKING {
            store(&mut self.reason, r);
        }
        r == Self::WALKING
    }

    #[inline(always)]
    fn step_inner<M: KernelMemory>(&mut self, m: &M, o: &ExecOffsets) -> u32 {
        let at = |base: u64, off: u32| base.wrapping_add(u64::from(off));
        let (d, vfs) = (self.dentry, self.vfs);
        if d == self.root_dentry && vfs == self.root_mnt {
            return if load(&self.deleted) != 0 {
                unresolved::DELETED
            } else {
                unresolved::NONE
            };
        }
        let Some(mnt_root) = m.u64_at(at(vfs, o.vfsmount_root)) else {
            return unresolved::UNREADABLE;
        };
        if d == mnt_root {
            // the root of a mount: continue from where it is mounted, in the parent mount
            let mount = vfs.wrapping_sub(u64::from(o.mount_mnt));
            let (Some(parent), Some(point)) = (
                m.u64_at(at(mount, o.mount_parent)),
                m.u64_at(at(mount, o.mount_mountpoint)),
            ) else {
                return unresolved::UNREADABLE;
            };
            if parent == mount {
                // the top of a mount tree, and the root was not on the way
                return unresolved::UNREACHABLE;
            }
            self.dentry = point;
            self.vfs = at(parent, o.mount_mnt);
            return Self::WALKING;
        }
        let (Some(parent), Some(name), Some(len), Some(pprev)) = (
            m.u64_at(at(d, o.dentry_parent)),
            m.u64_at(at(d, o.dentry_name_ptr)),
            m.u32_at(at(d, o.dentry_name_len)),
            m.u64_at(at(d, o.dentry_hash_pprev)),
        ) else {
            return unresolved::UNREADABLE;
        };
        if len > MASK {
            return unresolved::TOO_LONG;
        }
        store(&mut self.name_len, len);
        let len = load(&self.name_len) & MASK;
        let pos = load(&self.start) & MASK;
        if len >= pos {
            return unresolved::TOO_LONG;
        }
        let pos = pos.wrapping_sub(len) & MASK;
        // SAFETY: `pos` and `len` are below 256, the buffer is 512 bytes.
        let copied = unsafe { m.copy(self.buf.as_mut_ptr().add(pos as usize), len, name) };
        if !copied {
            return unresolved::UNREADABLE;
        }
        store(&mut self.start, pos);
        if parent == d {
            // a dentry that is its own parent but no mount's root: a pseudo file (memfd) that
            // no path reaches; its name is all there is
            return unresolved::DETACHED;
        }
        let pos = pos.wrapping_sub(1) & MASK;
        self.buf[pos as usize] = b'/';
        store(&mut self.start, pos);
        if pprev == 0 {
            store(&mut self.deleted, 1);
        }
        self.dentry = parent;
        Self::WALKING
    }

    /// Where the walk stopped: (`start`, reason); a walk still going after [`WALK_MAX`] steps
    /// is [`unresolved::TOO_LONG`].
    #[inline(always)]
    pub fn walk(&self) -> (u32, u32) {
        let r = load(&self.reason);
        let r = if r == Self::WALKING {
            unresolved::TOO_LONG
        } else {
            r
        };
        (load(&self.start), r)
    }

    /// Bytes of the assembled path (at most 255).
    #[inline(always)]
    pub fn len(&self) -> u32 {
        PATH_END.wrapping_sub(load(&self.start)) & MASK
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The assembled path.
    pub fn path(&self) -> &[u8] {
        let start = (load(&self.start) & MASK) as usize;
        &self.buf[start..PATH_END as usize]
    }
}

/// The path of the open file `file` (a `struct file *`) as a process whose root is
/// (`root_mnt`, `root_dentry`) sees it, assembled in `a` (the steps the programs take).
pub fn resolve<M: KernelMemory>(
    m: &M,
    o: &ExecOffsets,
    file: u64,
    root_mnt: u64,
    root_dentry: u64,
    a: &mut Assembly,
) {
    a.start(m, o, file, root_mnt, root_dentry);
    for _ in 0..WALK_MAX {
        if !a.step(m, o) {
            break;
        }
    }
}

/// A search of the exec'ing task's pending works for the release of a script's file: the
/// oldest `____fput` work queued is the outermost script's (the kernel let go of it first,
/// before the interpreter was loaded). One step per work; the programs run it from
/// `bpf_loop`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ScriptSearch {
    /// The `callback_head` to look at next (0: the end of the list).
    pub work: u64,
    /// The file of the oldest `____fput` work seen so far (0: none).
    pub found: u64,
    /// 1 once the end of the list was reached (else the list was longer than the search).
    pub done: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
}

impl ScriptSearch {
    #[inline(always)]
    pub fn start<M: KernelMemory>(&mut self, m: &M, o: &ExecOffsets, task: u64) {
        self.found = 0;
        self.done = 0;
        match m.u64_at(task.wrapping_add(u64::from(o.task_works))) {
            Some(w) => self.work = w,
            None => {
                self.work = 0;
                self.done = 2;
            }
        }
    }

    /// One work; `false` once the search is over.
    #[inline(always)]
    pub fn step<M: KernelMemory>(&mut self, m: &M, o: &ExecOffsets) -> bool {
        if self.done != 0 {
            return false;
        }
        let w = self.work;
        if w == 0 {
            self.done = 1;
            return false;
        }
        let (Some(func), Some(next)) = (
            m.u64_at(w.wrapping_add(u64::from(o.work_func))),
            m.u64_at(w.wrapping_add(u64::from(o.work_next))),
        ) else {
            self.done = 2;
            return false;
        };
        if func == o.fput_fn {
            self.found = w.wrapping_sub(u64::from(o.file_task_work));
        }
        self.work = next;
        true
    }

    /// The script's file, when the whole list was seen and had a release.
    pub fn file(&self) -> Option<u64> {
        (self.done == 1 && self.found != 0).then_some(self.found)
    }
}

/// The file of the outermost script of this exec (a `struct file *`); `None` when there is no
/// release, or more works than [`TASK_WORKS_MAX`] to look through (the steps the programs
/// take).
pub fn script_file<M: KernelMemory>(m: &M, o: &ExecOffsets, task: u64) -> Option<u64> {
    let mut s = ScriptSearch::default();
    s.start(m, o, task);
    for _ in 0..=TASK_WORKS_MAX {
        if !s.step(m, o) {
            break;
        }
    }
    s.file()
}
