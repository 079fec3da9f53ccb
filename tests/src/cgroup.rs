//! Test cgroups: one per test (`palisade-test-<pid>-<tag>-<n>`) in the unified hierarchy and,
//! where asked, the v1 controllers, removed with everything below them when dropped.
use std::{
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{TestNetns, workload_bin};

/// Mount point of the unified (cgroup v2) hierarchy.
pub fn unified_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_else(|e| panic!("read mountinfo: {e}"));
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    found.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
    found
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no cgroup2 mount on this host; the agent needs one"))
}

pub(crate) static SEQ: AtomicU32 = AtomicU32::new(0);

/// A cgroup in the unified hierarchy owned by one test; removed (with its children, after
/// killing what runs in them) on drop.
#[derive(Debug)]
pub struct TestCgroup {
    pub path: PathBuf,
    /// Path relative to the unified root, e.g. `/palisade-test-123-exact-0` (the agent's name).
    pub rel: String,
    /// The cgroup v2 id (inode number).
    pub id: u64,
    /// v1 controller directories at the same relative path (hybrid hosts), joined by `command`.
    pub v1: Vec<(String, PathBuf)>,
    owned: bool,
}

/// Mount point of a v1 controller (`memory`, `cpu`, …), if this host mounts it.
pub fn v1_mount(controller: &str) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        if r.next()? != "cgroup" {
            return None;
        }
        let opts = r.nth(1)?;
        opts.split(',')
            .any(|o| o == controller)
            .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap_or_default()))
    })
}

impl TestCgroup {
    /// A fresh top-level test cgroup.
    pub fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("palisade-test-{}-{tag}-{n}", std::process::id());
        Self::create(&unified_root(), &name, format!("/{name}"))
    }

    /// A child cgroup (dropped on its own, or with its parent).
    pub fn child(&self, name: &str) -> Self {
        Self::create(&self.path, name, format!("{}/{name}", self.rel))
    }

    fn create(parent: &Path, name: &str, rel: String) -> Self {
        let path = parent.join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let id = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .ino();
        Self {
            path,
            rel,
            id,
            v1: Vec::new(),
            owned: true,
        }
    }

    /// A fresh test cgroup that also has `controllers` (memory, cpu, …): on hybrid hosts a v1
    /// directory at the same relative path per controller; on cgroup2-only hosts the controllers
    /// are enabled for the root's children.
    pub fn with_controllers(tag: &str, controllers: &[&str]) -> Self {
        let mut cg = Self::new(tag);
        for c in controllers {
            match v1_mount(c) {
                Some(mount) => {
                    let dir = mount.join(cg.rel.trim_start_matches('/'));
                    std::fs::create_dir(&dir)
                        .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
                    cg.v1.push(((*c).to_owned(), dir));
                }
                None => {
                    let ctl = unified_root().join("cgroup.subtree_control");
                    let on = std::fs::read_to_string(&ctl).unwrap_or_default();
                    if !on.split_whitespace().any(|x| x == *c) {
                        std::fs::write(&ctl, format!("+{c}"))
                            .unwrap_or_else(|e| panic!("enable {c} in {}: {e}", ctl.display()));
                    }
                }
            }
        }
        cg
    }

    /// Writes a controller file: the v1 directory of `controller` when there is one, else the
    /// unified directory (use the v2 file name there).
    pub fn set(&self, controller: &str, v1_file: &str, v2_file: &str, value: &str) {
        let path = match self.v1.iter().find(|(c, _)| c == controller) {
            Some((_, dir)) => dir.join(v1_file),
            None => self.path.join(v2_file),
        };
        std::fs::write(&path, value)
            .unwrap_or_else(|e| panic!("write {value} to {}: {e}", path.display()));
    }

    /// Removes the cgroup now (it must be empty) and returns its id.
    pub fn remove(mut self) -> u64 {
        self.remove_all();
        self.owned = false;
        self.id
    }

    fn remove_all(&self) {
        remove_tree(&self.path);
        for (_, dir) in &self.v1 {
            remove_tree(dir);
        }
    }

    /// Like [`TestCgroup::command`], and the program also enters network namespace `netns`.
    pub fn command_in(&self, netns: &TestNetns, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let path = std::ffi::CString::new(netns.path().into_os_string().into_encoded_bytes())
            .unwrap_or_else(|e| panic!("netns path: {e}"));
        let mut cmd = self.command(program);
        // SAFETY: between fork and exec: open and setns only, on memory prepared before.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let r = libc::setns(fd, libc::CLONE_NEWNET);
                libc::close(fd);
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// A command that moves itself into this cgroup (and its v1 directories) before `exec`, so
    /// everything the program does is accounted to the cgroup from its first instruction.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let procs: Vec<std::ffi::CString> = std::iter::once(&self.path)
            .chain(self.v1.iter().map(|(_, d)| d))
            .map(|d| {
                std::ffi::CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes())
                    .unwrap_or_else(|e| panic!("cgroup path: {e}"))
            })
            .collect();
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
        // functions (open, write, close) on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for p in &procs {
                    let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if r != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs the workload binary with `args` in this cgroup and checks it succeeded.
    pub fn run_workload(&self, args: &[&str]) {
        let status = self
            .command(workload_bin())
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("spawn workload in {}: {e}", self.rel));
        assert!(status.success(), "workload {args:?} failed: {status}");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        if self.owned {
            self.remove_all();
        }
    }
}

/// Kills every process in the tree and removes it, children first.
fn remove_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..100 {
        if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: sending SIGKILL to a pid that lives in our own test cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: could not remove test cgroup {}", path.display());
}
