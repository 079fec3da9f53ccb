//! The seam where the container's plan meets the kernel: every call the init makes to build
//! the workload's namespaces and filesystem goes through [`Sys`] (in the spirit of youki's
//! `libcontainer::syscall`). [`Linux`] makes the real calls; the tests' recording fake keeps a
//! tiny filesystem and writes each call down in a readable form with container paths
//! (`mount tmpfs on /dev type tmpfs flags=nosuid,strictatime data=mode=755,size=65536k`), so the
//! mount order and the namespace plan are checked without root.
//!
//! Only what the plan decides goes through here. The init's own housekeeping (signals, pipes,
//! capabilities, seccomp, fork, exec) stays with the process code: the fake could not say
//! anything useful about it.
mod linux;

#[cfg(test)]
pub mod fake;

use std::{io, path::Path};

pub use linux::Linux;

/// A path or name as the init sees it (`/`, the rootfs, a bind source on the host, a
/// filesystem's source name such as `tmpfs`), or a node already resolved inside the rootfs.
#[derive(Debug)]
pub enum Loc<'a, N> {
    Path(&'a Path),
    Node(&'a N),
}

impl<'a, N> Loc<'a, N> {
    /// A filesystem's source name (`proc`, `tmpfs`) or a plain path.
    pub fn name(s: &'a str) -> Self {
        Loc::Path(Path::new(s))
    }
}

/// The calls the container plan makes. Paths inside the container are resolved once
/// ([`Sys::lookup`]) and used through the node, never by name again, so a symlink in the image
/// cannot send a later call outside the rootfs.
pub trait Sys {
    /// A resolved place: an `O_PATH` descriptor for the kernel, a container path for the fake.
    type Node;

    /// Opens a directory by its path as the init sees it (the rootfs, or `/`).
    fn open_dir(&mut self, path: &Path) -> io::Result<Self::Node>;
    /// Resolves `path` (as the container sees it) beneath `root`:
    /// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
    fn lookup(&mut self, root: &Self::Node, path: &str) -> io::Result<Self::Node>;
    /// The same place opened as a directory (`ENOTDIR` when it is not one).
    fn reopen_dir(&mut self, node: &Self::Node) -> io::Result<Self::Node>;
    fn is_dir(&mut self, node: &Self::Node) -> bool;
    /// Whether a path on the host (a bind source) is a regular file.
    fn host_is_file(&mut self, path: &Path) -> bool;

    /// `mkdirat(dir, name, mode)`.
    fn mkdir(&mut self, dir: &Self::Node, name: &str, mode: u32) -> io::Result<()>;
    /// Creates an empty regular file `name` in `dir` (a mount point for a file).
    fn create_file(&mut self, dir: &Self::Node, name: &str, mode: u32) -> io::Result<()>;
    /// `mknodat(dir, name, S_IFCHR | mode, makedev(major, minor))`.
    fn mknod(
        &mut self,
        dir: &Self::Node,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()>;
    /// `fchmodat(dir, name, mode)` (mknod's mode is filtered by the umask).
    fn chmod(&mut self, dir: &Self::Node, name: &str, mode: u32) -> io::Result<()>;
    /// `symlinkat(target, dir, name)`.
    fn symlink(&mut self, target: &str, dir: &Self::Node, name: &str) -> io::Result<()>;

    /// A detached copy of the mount tree at `path` (as the init sees it), every submount
    /// included: `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | AT_RECURSIVE)`.
    fn clone_tree(&mut self, path: &Path) -> io::Result<Self::Node>;
    /// Sets `attrs` (`MS_RDONLY`, `MS_NOSUID`, `MS_NODEV`, `MS_NOEXEC`) on the mount at
    /// `node` and every mount below it: `mount_setattr(node, "", AT_EMPTY_PATH |
    /// AT_RECURSIVE)`. (A remount with `MS_REC` changes the top mount only: the kernel ignores
    /// `MS_REC` there.) `node` must be the mount itself: a lookup made after the mount.
    fn set_tree_attrs(&mut self, node: &Self::Node, attrs: libc::c_ulong) -> io::Result<()>;
    /// Attaches a detached tree over `target`: `move_mount(tree, "", AT_FDCWD, target,
    /// MOVE_MOUNT_F_EMPTY_PATH)`.
    fn attach_tree(&mut self, tree: &Self::Node, target: &Path) -> io::Result<()>;

    /// `mount(2)`.
    fn mount(
        &mut self,
        source: Option<Loc<'_, Self::Node>>,
        target: Loc<'_, Self::Node>,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()>;
    fn fchdir(&mut self, dir: &Self::Node) -> io::Result<()>;
    fn chdir(&mut self, path: &str) -> io::Result<()>;
    fn pivot_root(&mut self, new_root: &str, put_old: &str) -> io::Result<()>;
    fn umount2(&mut self, target: &str, flags: libc::c_int) -> io::Result<()>;

    /// `unshare(2)` with `CLONE_NEW*` flags.
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()>;
    /// Joins the namespace of type `nstype` (`CLONE_NEWNET`, ...) held open at `path`.
    fn setns(&mut self, path: &Path, nstype: libc::c_int) -> io::Result<()>;
    fn sethostname(&mut self, name: &str) -> io::Result<()>;
    fn setdomainname(&mut self, name: &str) -> io::Result<()>;
    /// Brings the loopback interface up (in a new network namespace it starts down).
    fn loopback_up(&mut self) -> io::Result<()>;
    /// Blocks until the init is in every cgroup hierarchy and the agent has acknowledged its
    /// registration (one byte on the launcher's go pipe). An error means the launcher gave
    /// up: the init leaves without a word.
    fn wait_placed(&mut self) -> io::Result<()>;
}
