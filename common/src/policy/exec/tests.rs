//! The exec walk on a model of the kernel's objects: dentries, mounts, task works.
extern crate std;

use std::{collections::BTreeMap, format, string::String, vec::Vec};

use super::*;

/// Offsets of the model's objects (any distinct values do).
const O: ExecOffsets = ExecOffsets {
    fput_fn: 0xf00,
    bprm_file: 0,
    bprm_filename: 0,
    bprm_interp: 0,
    file_path: 16,
    file_inode: 0,
    file_task_work: 40,
    path_mnt: 0,
    path_dentry: 8,
    dentry_parent: 0,
    dentry_name_ptr: 8,
    dentry_name_len: 16,
    dentry_hash_pprev: 24,
    vfsmount_root: 0,
    mount_mnt: 32,
    mount_parent: 0,
    mount_mountpoint: 8,
    inode_ino: 0,
    inode_sb: 0,
    sb_dev: 0,
    task_fs: 0,
    fs_root: 0,
    task_works: 64,
    work_next: 0,
    work_func: 8,
    file_mode: 0,
    file_flags: 0,
};

#[derive(Default)]
struct Model {
    cells: BTreeMap<u64, u64>,
    names: BTreeMap<u64, Vec<u8>>,
    next: u64,
}

impl KernelMemory for Model {
    fn u64_at(&self, addr: u64) -> Option<u64> {
        self.cells.get(&addr).copied()
    }
    fn u32_at(&self, addr: u64) -> Option<u32> {
        self.cells.get(&addr).map(|v| *v as u32)
    }
    unsafe fn copy(&self, dst: *mut u8, len: u32, src: u64) -> bool {
        let Some(n) = self.names.get(&src) else {
            return false;
        };
        assert!(len as usize <= n.len());
        // SAFETY: the caller's promise.
        unsafe { core::ptr::copy_nonoverlapping(n.as_ptr(), dst, len as usize) };
        true
    }
}

impl Model {
    fn alloc(&mut self) -> u64 {
        self.next += 0x1000;
        self.next
    }
    fn set(&mut self, base: u64, off: u32, v: u64) {
        self.cells.insert(base + u64::from(off), v);
    }
    /// A hashed dentry `name` under `parent` (`None`: its own parent).
    fn dentry(&mut self, name: &str, parent: Option<u64>) -> u64 {
        let d = self.alloc();
        let n = self.alloc();
        self.names.insert(n, name.as_bytes().to_vec());
        self.set(d, O.dentry_parent, parent.unwrap_or(d));
        self.set(d, O.dentry_name_ptr, n);
        self.set(d, O.dentry_name_len, name.len() as u64);
        self.set(d, O.dentry_hash_pprev, 0xdead);
        d
    }
    fn path(&mut self, parts: &[&str], mut under: u64) -> u64 {
        for p in parts {
            under = self.dentry(p, Some(under));
        }
        under
    }
    /// A mount of the tree rooted at `root` at `point` in `parent` (`None`: a tree's top);
    /// returns the `struct vfsmount *`.
    fn mount(&mut self, root: u64, parent: Option<(u64, u64)>) -> u64 {
        let m = self.alloc();
        let vfs = m + u64::from(O.mount_mnt);
        self.set(vfs, O.vfsmount_root, root);
        match parent {
            Some((pvfs, point)) => {
                self.set(m, O.mount_parent, pvfs - u64::from(O.mount_mnt));
                self.set(m, O.mount_mountpoint, point);
            }
            None => {
                self.set(m, O.mount_parent, m);
                self.set(m, O.mount_mountpoint, root);
            }
        }
        vfs
    }
    fn file(&mut self, vfs: u64, dentry: u64) -> u64 {
        let f = self.alloc();
        self.set(f + u64::from(O.file_path), O.path_mnt, vfs);
        self.set(f + u64::from(O.file_path), O.path_dentry, dentry);
        f
    }
}

fn walk(m: &Model, file: u64, root: (u64, u64)) -> (String, u32) {
    let mut a = Assembly::EMPTY;
    resolve(m, &O, file, root.0, root.1, &mut a);
    assert_eq!(a.path().len() as u32, a.len());
    (String::from_utf8_lossy(a.path()).into_owned(), a.walk().1)
}

/// `/` of a host: an ext4 root with usr/bin/id, and its mount.
fn host() -> (Model, u64, u64) {
    let mut m = Model::default();
    let root = m.dentry("/", None);
    let vfs = m.mount(root, None);
    (m, vfs, root)
}

#[test]
fn a_path_is_the_chain_of_names_up_to_the_root() {
    let (mut m, vfs, root) = host();
    let id = m.path(&["usr", "bin", "id"], root);
    let f = m.file(vfs, id);
    assert_eq!(
        walk(&m, f, (vfs, root)),
        ("/usr/bin/id".into(), unresolved::NONE)
    );
}

#[test]
fn mounts_are_crossed_at_their_mountpoints() {
    let (mut m, vfs, root) = host();
    // a file system mounted at /opt/app, and a single file bind-mounted at /etc/tool
    let point = m.path(&["opt", "app"], root);
    let fs_root = m.dentry("/", None);
    let app = m.mount(fs_root, Some((vfs, point)));
    let bin = m.path(&["bin", "run"], fs_root);
    let f = m.file(app, bin);
    assert_eq!(walk(&m, f, (vfs, root)).0, "/opt/app/bin/run");
    let etc_tool = m.path(&["etc", "tool"], root);
    let other_root = m.dentry("/", None);
    let real = m.path(&["lib", "tool-1.2"], other_root);
    let bind = m.mount(real, Some((vfs, etc_tool)));
    let f = m.file(bind, real);
    assert_eq!(
        walk(&m, f, (vfs, root)),
        ("/etc/tool".into(), unresolved::NONE)
    );
}

#[test]
fn the_path_is_relative_to_the_processs_root() {
    let (mut m, vfs, root) = host();
    // a chroot at /srv/jail (same mount) and a container root mount of its own
    let jail = m.path(&["srv", "jail"], root);
    let sh = m.path(&["bin", "sh"], jail);
    let f = m.file(vfs, sh);
    assert_eq!(walk(&m, f, (vfs, jail)).0, "/bin/sh");
    let outside = m.path(&["usr", "bin", "id"], root);
    let f = m.file(vfs, outside);
    assert_eq!(
        walk(&m, f, (vfs, jail)),
        ("/usr/bin/id".into(), unresolved::UNREACHABLE)
    );
    let croot = m.dentry("/", None);
    let cvfs = m.mount(croot, None);
    let nginx = m.path(&["usr", "sbin", "nginx"], croot);
    let f = m.file(cvfs, nginx);
    assert_eq!(walk(&m, f, (cvfs, croot)).0, "/usr/sbin/nginx");
}

#[test]
fn memfd_and_deleted_files_are_unresolved() {
    let (mut m, vfs, root) = host();
    let shm_root = m.dentry("/", None);
    let shm = m.mount(shm_root, None);
    let memfd = m.dentry("memfd:payload", None);
    let f = m.file(shm, memfd);
    assert_eq!(
        walk(&m, f, (vfs, root)),
        ("memfd:payload".into(), unresolved::DETACHED)
    );
    let gone = m.path(&["tmp", "x"], root);
    m.set(gone, O.dentry_hash_pprev, 0);
    let f = m.file(vfs, gone);
    assert_eq!(
        walk(&m, f, (vfs, root)),
        ("/tmp/x".into(), unresolved::DELETED)
    );
}

#[test]
fn long_paths_and_unreadable_objects_are_unresolved() {
    let (mut m, vfs, root) = host();
    let long = "d".repeat(100);
    let deep = m.path(&[&long, &long, &long], root);
    let f = m.file(vfs, deep);
    let (tail, why) = walk(&m, f, (vfs, root));
    assert_eq!(why, unresolved::TOO_LONG);
    assert_eq!(tail, format!("/{long}/{long}"));
    // a path of 254 bytes fits (the longest is 255)
    let name = "n".repeat(253);
    let fits = m.path(&[&name], root);
    let f = m.file(vfs, fits);
    assert_eq!(walk(&m, f, (vfs, root)).1, unresolved::NONE);
    let f = m.alloc();
    assert_eq!(walk(&m, f, (vfs, root)).1, unresolved::UNREADABLE);
}

#[test]
fn the_oldest_file_release_of_the_exec_is_the_script() {
    let mut m = Model::default();
    let task = m.alloc();
    let (script, lib, other) = (m.alloc(), m.alloc(), m.alloc());
    let work = |f: u64| f + u64::from(O.file_task_work);
    // head → lib (fput) → other work → script (fput) → end
    m.set(task, O.task_works, work(lib));
    m.set(work(lib), O.work_func, O.fput_fn);
    m.set(work(lib), O.work_next, other);
    m.set(other, O.work_func, 0xbad);
    m.set(other, O.work_next, work(script));
    m.set(work(script), O.work_func, O.fput_fn);
    m.set(work(script), O.work_next, 0);
    assert_eq!(script_file(&m, &O, task), Some(script));
    m.set(work(script), O.work_func, 0xbad);
    assert_eq!(script_file(&m, &O, task), Some(lib));
    m.set(work(lib), O.work_func, 0xbad);
    assert_eq!(script_file(&m, &O, task), None);
    // a list too long to see its end: not found rather than a guess
    m.set(other, O.work_next, other);
    m.set(work(lib), O.work_func, O.fput_fn);
    assert_eq!(script_file(&m, &O, task), None);
}

#[test]
fn both_lookup_forms_give_the_same_keys() {
    let path = b"/usr/bin/nc";
    let mut a = Vec::new();
    exec_lookups(path, |k, h| a.push((k, h)));
    let mut buf = [0u8; POLICY_PATH_MAX];
    buf[..path.len()].copy_from_slice(path);
    let mut b = Vec::new();
    exec_lookups_in(&buf, path.len() as u32, |k, h| b.push((k, h)));
    assert_eq!(a, b);
    let p = ExecPaths {
        dev: (8 << 20) | 1,
        ..ExecPaths::EMPTY
    };
    assert_eq!(p.dev_numbers(), (8, 1));
}
