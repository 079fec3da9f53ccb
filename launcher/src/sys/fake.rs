//! A recording [`Sys`] for tests: a tiny filesystem (which container paths exist and what they
//! are, which host paths exist) and a list of every call that changes something, written with
//! container paths as a person would read them:
//!
//! ```text
//! mount tmpfs on /dev type tmpfs flags=nosuid,strictatime data=mode=755,size=65536k
//! mkdir /dev/pts
//! mknod /dev/null c 1:3 mode=0666
//! pivot_root . .
//! ```
//!
//! Lookups are not recorded (they change nothing). Mounting a filesystem or a bind on a
//! directory hides what was below it and shows what the test said that filesystem (or the
//! bind's host directory) holds, so masked paths exist when procfs has them, as on a kernel.
//! [`Fake::fail`] makes one call fail with an errno, to walk the error paths.
use std::{
    collections::BTreeMap,
    io,
    path::{Path, PathBuf},
};

use super::{Loc, Sys};

/// Mount flags by name, in the order they are shown.
const MOUNT_FLAGS: &[(libc::c_ulong, &str)] = &[
    (libc::MS_REMOUNT, "remount"),
    (libc::MS_BIND, "bind"),
    (libc::MS_PRIVATE, "private"),
    (libc::MS_SLAVE, "slave"),
    (libc::MS_SHARED, "shared"),
    (libc::MS_UNBINDABLE, "unbindable"),
    (libc::MS_REC, "rec"),
    (libc::MS_RDONLY, "ro"),
    (libc::MS_NOSUID, "nosuid"),
    (libc::MS_NODEV, "nodev"),
    (libc::MS_NOEXEC, "noexec"),
    (libc::MS_SYNCHRONOUS, "sync"),
    (libc::MS_MANDLOCK, "mand"),
    (libc::MS_DIRSYNC, "dirsync"),
    (libc::MS_NOATIME, "noatime"),
    (libc::MS_NODIRATIME, "nodiratime"),
    (libc::MS_RELATIME, "relatime"),
    (libc::MS_STRICTATIME, "strictatime"),
];

/// `nosuid,nodev,noexec` for `MS_NOSUID | MS_NODEV | MS_NOEXEC`; unnamed bits in hex.
pub fn mount_flag_names(flags: libc::c_ulong) -> String {
    let mut left = flags;
    let mut names: Vec<String> = Vec::new();
    for (bit, name) in MOUNT_FLAGS {
        if flags & bit != 0 {
            names.push((*name).to_owned());
            left &= !bit;
        }
    }
    if left != 0 {
        names.push(format!("{left:#x}"));
    }
    names.join(",")
}

/// Namespace flags by name (`CLONE_NEW*`), in the order they are shown.
const NS_FLAGS: &[(libc::c_int, &str)] = &[
    (libc::CLONE_NEWNS, "mnt"),
    (libc::CLONE_NEWCGROUP, "cgroup"),
    (libc::CLONE_NEWUTS, "uts"),
    (libc::CLONE_NEWIPC, "ipc"),
    (libc::CLONE_NEWUSER, "user"),
    (libc::CLONE_NEWPID, "pid"),
    (libc::CLONE_NEWNET, "net"),
];

/// `mnt,uts,ipc,pid,net` for those `CLONE_NEW*` flags; other bits in hex.
pub fn ns_flag_names(flags: u64) -> String {
    let mut left = flags;
    let mut names: Vec<String> = Vec::new();
    for (bit, name) in NS_FLAGS {
        let bit = *bit as u64;
        if flags & bit != 0 {
            names.push((*name).to_owned());
            left &= !bit;
        }
    }
    if left != 0 {
        names.push(format!("{left:#x}"));
    }
    names.join(",")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Device,
    Symlink,
}

/// A place in the fake: a container path, or (for the directories opened by host path) the
/// path the init used, which is what a `chdir` to it shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    path: String,
    shown: String,
}

#[derive(Debug, Default)]
pub struct Fake {
    /// The container's tree (`/` is always a directory).
    tree: BTreeMap<String, Kind>,
    /// Host paths: bind sources and what is under them.
    host: BTreeMap<PathBuf, Kind>,
    /// What a fresh mount of a filesystem type shows (`proc` → `kcore`, `acpi/`, ...).
    fs: BTreeMap<String, Vec<(String, Kind)>>,
    /// (prefix of a recorded call, errno): the first call starting so fails once.
    failures: Vec<(String, i32)>,
    calls: Vec<String>,
}

fn norm(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

fn join(dir: &str, name: &str) -> String {
    norm(&format!("{dir}/{name}"))
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl Fake {
    pub fn new() -> Self {
        let mut f = Self::default();
        f.tree.insert("/".into(), Kind::Dir);
        f
    }

    /// Adds container paths (and their parent directories); a trailing `/` makes a directory.
    pub fn with(mut self, paths: &[&str]) -> Self {
        for p in paths {
            let kind = if p.ends_with('/') {
                Kind::Dir
            } else {
                Kind::File
            };
            self.add(&norm(p), kind);
        }
        self
    }

    fn add(&mut self, path: &str, kind: Kind) {
        let mut sofar = String::new();
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for (i, p) in parts.iter().enumerate() {
            sofar = join(&sofar, p);
            let k = if i + 1 == parts.len() {
                kind
            } else {
                Kind::Dir
            };
            self.tree.entry(sofar.clone()).or_insert(k);
        }
    }

    /// Adds host paths (bind sources); a trailing `/` makes a directory.
    pub fn with_host(mut self, paths: &[&str]) -> Self {
        for p in paths {
            let kind = if p.ends_with('/') {
                Kind::Dir
            } else {
                Kind::File
            };
            self.host.insert(PathBuf::from(norm(p)), kind);
        }
        self
    }

    /// What a fresh mount of `fstype` holds (entries relative to the mount point).
    pub fn with_fs(mut self, fstype: &str, entries: &[&str]) -> Self {
        let list = entries
            .iter()
            .map(|e| {
                let kind = if e.ends_with('/') {
                    Kind::Dir
                } else {
                    Kind::File
                };
                (e.trim_end_matches('/').to_owned(), kind)
            })
            .collect();
        self.fs.insert(fstype.to_owned(), list);
        self
    }

    /// The first call whose record starts with `prefix` fails with `errno` (and is recorded
    /// with `-> errno N`).
    pub fn fail(mut self, prefix: &str, errno: i32) -> Self {
        self.failures.push((prefix.to_owned(), errno));
        self
    }

    pub fn calls(&self) -> &[String] {
        &self.calls
    }

    pub fn kind(&self, path: &str) -> Option<Kind> {
        self.tree.get(&norm(path)).copied()
    }

    /// Records a call, or fails it if the test asked for that.
    fn record(&mut self, call: String) -> io::Result<()> {
        if let Some(i) = self.failures.iter().position(|(p, _)| call.starts_with(p)) {
            let (_, code) = self.failures.remove(i);
            self.calls.push(format!("{call} -> errno {code}"));
            return Err(err(code));
        }
        self.calls.push(call);
        Ok(())
    }

    fn node(path: &str) -> Node {
        Node {
            path: path.to_owned(),
            shown: path.to_owned(),
        }
    }

    /// A name that may be created in `dir`: the directory exists, the name does not.
    fn creatable(&self, dir: &Node, name: &str) -> io::Result<String> {
        if self.tree.get(&dir.path) != Some(&Kind::Dir) {
            return Err(err(libc::ENOTDIR));
        }
        let path = join(&dir.path, name);
        if self.tree.contains_key(&path) {
            return Err(err(libc::EEXIST));
        }
        Ok(path)
    }

    /// A mount on `target` (a container path) shows `entries` instead of what was there.
    fn cover(&mut self, target: &str, entries: Vec<(String, Kind)>) {
        let below = format!("{}/", target.trim_end_matches('/'));
        self.tree.retain(|p, _| !p.starts_with(&below));
        for (rel, kind) in entries {
            self.add(&join(target, &rel), kind);
        }
    }

    fn shown(loc: &Loc<'_, Node>) -> String {
        match loc {
            Loc::Path(p) => p.display().to_string(),
            Loc::Node(n) => n.shown.clone(),
        }
    }
}

impl Sys for Fake {
    type Node = Node;

    fn open_dir(&mut self, path: &Path) -> io::Result<Node> {
        // the directory becomes the fake's `/`: the rootfs, or the host's root
        Ok(Node {
            path: "/".into(),
            shown: path.display().to_string(),
        })
    }

    fn lookup(&mut self, _root: &Node, path: &str) -> io::Result<Node> {
        let path = norm(path);
        let mut sofar = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if self.tree.get(&norm(&sofar)) != Some(&Kind::Dir) {
                return Err(err(libc::ENOTDIR));
            }
            sofar = join(&sofar, part);
            if !self.tree.contains_key(&sofar) {
                return Err(err(libc::ENOENT));
            }
        }
        Ok(Self::node(&path))
    }

    fn reopen_dir(&mut self, node: &Node) -> io::Result<Node> {
        match self.tree.get(&node.path) {
            Some(Kind::Dir) => Ok(node.clone()),
            Some(_) => Err(err(libc::ENOTDIR)),
            None => Err(err(libc::ENOENT)),
        }
    }

    fn is_dir(&mut self, node: &Node) -> bool {
        self.tree.get(&node.path) == Some(&Kind::Dir)
    }

    fn host_is_file(&mut self, path: &Path) -> bool {
        self.host.get(path) == Some(&Kind::File)
    }

    fn mkdir(&mut self, dir: &Node, name: &str, mode: u32) -> io::Result<()> {
        let path = self.creatable(dir, name)?;
        self.record(format!("mkdir {path} mode={mode:04o}"))?;
        self.tree.insert(path, Kind::Dir);
        Ok(())
    }

    fn create_file(&mut self, dir: &Node, name: &str, mode: u32) -> io::Result<()> {
        let path = self.creatable(dir, name)?;
        self.record(format!("create {path} mode={mode:04o}"))?;
        self.tree.insert(path, Kind::File);
        Ok(())
    }

    fn mknod(
        &mut self,
        dir: &Node,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let path = self.creatable(dir, name)?;
        self.record(format!("mknod {path} c {major}:{minor} mode={mode:04o}"))?;
        self.tree.insert(path, Kind::Device);
        Ok(())
    }

    fn chmod(&mut self, dir: &Node, name: &str, mode: u32) -> io::Result<()> {
        let path = join(&dir.path, name);
        if !self.tree.contains_key(&path) {
            return Err(err(libc::ENOENT));
        }
        self.record(format!("chmod {path} {mode:04o}"))
    }

    fn symlink(&mut self, target: &str, dir: &Node, name: &str) -> io::Result<()> {
        let path = self.creatable(dir, name)?;
        self.record(format!("symlink {path} -> {target}"))?;
        self.tree.insert(path, Kind::Symlink);
        Ok(())
    }

    fn clone_tree(&mut self, path: &Path) -> io::Result<Node> {
        // the copy shows the same tree; calls on it read `tree:/`
        let shown = format!("tree:{}", path.display());
        self.record(format!("open_tree {} clone,rec -> {shown}", path.display()))?;
        Ok(Node {
            path: norm(&path.to_string_lossy()),
            shown,
        })
    }

    fn set_tree_attrs(&mut self, node: &Node, attrs: libc::c_ulong) -> io::Result<()> {
        self.record(format!(
            "mount_setattr {} rec {}",
            node.shown,
            mount_flag_names(attrs)
        ))
    }

    fn attach_tree(&mut self, tree: &Node, target: &Path) -> io::Result<()> {
        self.record(format!("move_mount {} on {}", tree.shown, target.display()))
    }

    fn mount(
        &mut self,
        source: Option<Loc<'_, Node>>,
        target: Loc<'_, Node>,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        let mut call = String::from("mount");
        if let Some(s) = &source {
            call.push(' ');
            call.push_str(&Self::shown(s));
        }
        call.push_str(" on ");
        call.push_str(&Self::shown(&target));
        if let Some(t) = fstype {
            call.push_str(&format!(" type {t}"));
        }
        if flags != 0 {
            call.push_str(&format!(" flags={}", mount_flag_names(flags)));
        }
        if let Some(d) = data {
            call.push_str(&format!(" data={d}"));
        }
        self.record(call)?;
        // what the mount point shows from now on (host paths: nothing the fake tracks)
        let Loc::Node(target) = target else {
            return Ok(());
        };
        if flags & libc::MS_REMOUNT != 0 || (fstype.is_none() && flags & libc::MS_BIND == 0) {
            return Ok(()); // a remount or a propagation change
        }
        let entries = match (fstype, &source) {
            (Some(t), _) => self.fs.get(t).cloned().unwrap_or_default(),
            (None, Some(Loc::Path(host))) => {
                let host = host.to_path_buf();
                self.host
                    .iter()
                    .filter_map(|(p, k)| {
                        let rel = p.strip_prefix(&host).ok()?;
                        (!rel.as_os_str().is_empty()).then(|| (rel.display().to_string(), *k))
                    })
                    .collect()
            }
            // a node bound on itself shows what it showed
            _ => return Ok(()),
        };
        if self.tree.get(&target.path) == Some(&Kind::Dir) {
            self.cover(&target.path, entries);
        }
        Ok(())
    }

    fn fchdir(&mut self, dir: &Node) -> io::Result<()> {
        self.record(format!("chdir {}", dir.shown))
    }

    fn chdir(&mut self, path: &str) -> io::Result<()> {
        self.record(format!("chdir {path}"))
    }

    fn pivot_root(&mut self, new_root: &str, put_old: &str) -> io::Result<()> {
        self.record(format!("pivot_root {new_root} {put_old}"))
    }

    fn umount2(&mut self, target: &str, flags: libc::c_int) -> io::Result<()> {
        let how = if flags == libc::MNT_DETACH {
            " detach".to_owned()
        } else if flags != 0 {
            format!(" flags={flags:#x}")
        } else {
            String::new()
        };
        self.record(format!("umount {target}{how}"))
    }

    fn wait_placed(&mut self) -> io::Result<()> {
        self.record("wait for placement".to_owned())
    }

    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
        self.record(format!("unshare {}", ns_flag_names(flags as u64)))
    }

    fn setns(&mut self, path: &Path, nstype: libc::c_int) -> io::Result<()> {
        self.record(format!(
            "setns {} {}",
            path.display(),
            ns_flag_names(nstype as u64)
        ))
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        self.record(format!("sethostname {name}"))
    }

    fn setdomainname(&mut self, name: &str) -> io::Result<()> {
        self.record(format!("setdomainname {name}"))
    }

    fn loopback_up(&mut self) -> io::Result<()> {
        self.record("ip link set lo up".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fake_filesystem_answers_like_a_kernel() {
        let mut f = Fake::new()
            .with(&["/bin/sh", "/etc/"])
            .with_fs("proc", &["kcore", "sys/"]);
        let root = f.open_dir(Path::new("/rootfs")).unwrap();
        assert!(f.lookup(&root, "/bin/sh").is_ok());
        let e = f.lookup(&root, "/bin/sh/x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        let e = f.lookup(&root, "/nope").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let etc = f.lookup(&root, "/etc").unwrap();
        assert_eq!(
            f.mkdir(&etc, "..", 0o755).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        f.mkdir(&root, "proc", 0o755).unwrap();
        let proc_ = f.lookup(&root, "/proc").unwrap();
        f.mount(
            Some(Loc::name("proc")),
            Loc::Node(&proc_),
            Some("proc"),
            0,
            None,
        )
        .unwrap();
        assert_eq!(f.kind("/proc/kcore"), Some(Kind::File));
        assert_eq!(f.kind("/proc/sys"), Some(Kind::Dir));
        f.fchdir(&root).unwrap();
        assert_eq!(
            f.calls(),
            [
                "mkdir /proc mode=0755",
                "mount proc on /proc type proc",
                "chdir /rootfs"
            ]
        );
    }

    #[test]
    fn flags_read_as_words() {
        assert_eq!(
            mount_flag_names(libc::MS_NOSUID | libc::MS_STRICTATIME),
            "nosuid,strictatime"
        );
        assert_eq!(
            mount_flag_names(libc::MS_RDONLY | libc::MS_REMOUNT | libc::MS_BIND),
            "remount,bind,ro"
        );
        assert_eq!(mount_flag_names(0), "");
        assert_eq!(mount_flag_names(1 << 40), "0x10000000000");
        assert_eq!(
            ns_flag_names((libc::CLONE_NEWNET | libc::CLONE_NEWNS) as u64),
            "mnt,net"
        );
    }
}
