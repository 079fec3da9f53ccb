//! Helpers for the `palisade run` tests: busybox root filesystems and OCI bundles built in
//! temporary directories, a builder for `palisade run` invocations, and checks that a workload
//! left nothing behind (cgroups, mounts, processes).
//!
//! Every test uses its own workload names (`lt<pid>-<tag>-<n>`), so tests run in parallel.
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{palisade_bin, require_root, wait_for};

/// The `launcher-probe` binary built with these tests.
pub fn probe_bin() -> PathBuf {
    sibling_bin("launcher-probe")
}

fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} missing; build it with `cargo build -p palisade-tests --bins`",
        bin.display()
    );
    bin
}

/// The repository's `tests/data` folder.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A workload name no other test (or test process) uses.
pub fn unique(tag: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("lt{}-{tag}-{n}", std::process::id())
}

/// A busybox-static root filesystem in a temporary directory.
pub struct Rootfs {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

fn busybox() -> PathBuf {
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("no /bin/busybox: install busybox-static (cargo xtask setup does)")
        });
    // ldd says "not a dynamic executable" (on stderr, exit 1) for a static binary
    let out = Command::new("ldd")
        .arg(&bb)
        .output()
        .unwrap_or_else(|e| panic!("ldd: {e}"));
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "{} is dynamically linked; install busybox-static (cargo xtask setup does)",
        bb.display()
    );
    bb
}

/// Fills `root` with busybox, one symlink per applet, and the usual empty directories.
pub fn make_busybox_root(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
    }
    let bb = busybox();
    std::fs::copy(&bb, root.join("bin/busybox")).unwrap_or_else(|e| panic!("copy busybox: {e}"));
    let list = Command::new(&bb)
        .arg("--list")
        .output()
        .unwrap_or_else(|e| panic!("busybox --list: {e}"));
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            let _ = std::os::unix::fs::symlink("busybox", link);
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .unwrap_or_else(|e| panic!("passwd: {e}"));
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap_or_else(|e| panic!("group: {e}"));
}

/// Copies `bin` to `root/at` together with the shared libraries `ldd` lists.
pub fn add_binary(root: &Path, bin: &Path, at: &str) {
    let dest = root.join(at.trim_start_matches('/'));
    if let Some(p) = dest.parent() {
        std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir: {e}"));
    }
    std::fs::copy(bin, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .unwrap_or_else(|e| panic!("ldd: {e}"));
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(lib) = path {
            let to = root.join(lib.trim_start_matches('/'));
            if let Some(p) = to.parent() {
                std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir: {e}"));
            }
            std::fs::copy(lib, &to).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
    }
}

impl Rootfs {
    pub fn busybox() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("rootfs");
        make_busybox_root(&path);
        Self { _dir: dir, path }
    }

    /// Adds the probe at /probe.
    pub fn with_probe(self) -> Self {
        add_binary(&self.path, &probe_bin(), "/probe");
        self
    }
}

/// An OCI bundle: `config.json` from `runc spec` (tests/data/runc-spec-config.json) with
/// terminal off, the given args and a busybox rootfs; change `config` and call `write`.
pub struct Bundle {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub config: serde_json::Value,
}

impl Bundle {
    pub fn new(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("bundle");
        make_busybox_root(&path.join("rootfs"));
        let text = std::fs::read_to_string(data_dir().join("runc-spec-config.json"))
            .unwrap_or_else(|e| panic!("runc-spec-config.json: {e}"));
        let mut config: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("runc spec JSON: {e}"));
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = args.iter().map(|a| (*a).to_owned()).collect();
        let b = Self {
            _dir: dir,
            path,
            config,
        };
        b.write();
        b
    }

    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    pub fn write(&self) {
        let text = serde_json::to_string_pretty(&self.config)
            .unwrap_or_else(|e| panic!("serialise config: {e}"));
        std::fs::write(self.path.join("config.json"), text)
            .unwrap_or_else(|e| panic!("write config.json: {e}"));
    }
}

/// The result of a finished `palisade run`.
#[derive(Debug)]
pub struct Out {
    /// The exit code (128+N when the launcher itself died of signal N).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Lines of stdout.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `palisade run ARGS`, with an agent socket nobody listens on unless ARGS name one (so a
/// developer's own agent never sees the tests' workloads).
pub fn run_cmd(args: &[&str]) -> Command {
    require_root();
    let mut c = Command::new(palisade_bin());
    c.arg("run");
    if !args
        .iter()
        .take_while(|a| **a != "--")
        .any(|a| *a == "--agent-socket")
    {
        c.args(["--agent-socket", "/nonexistent/palisade-test-agent.sock"]);
    }
    // Workloads inherit the launcher's directory unless a rootfs or --cwd says otherwise: run
    // from `/`, which every user may enter (the checkout may sit in a 0700 directory).
    c.args(args).stdin(Stdio::null()).current_dir("/");
    c
}

fn code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Runs to completion.
pub fn run(args: &[&str]) -> Out {
    output(&mut run_cmd(args))
}

pub fn output(cmd: &mut Command) -> Out {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn palisade run: {e}"));
    Out {
        code: code_of(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A `palisade run` in the background whose stdout is read line by line.
pub struct Running {
    pub child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    pub fn start(args: &[&str]) -> Self {
        let mut child = run_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn palisade run: {e}"));
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .unwrap_or_else(|| panic!("no stdout pipe")),
        );
        Self { child, stdout }
    }

    /// The next line the workload prints (panics at end of output).
    pub fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self
            .stdout
            .read_line(&mut l)
            .unwrap_or_else(|e| panic!("read workload output: {e}"));
        if n == 0 {
            let out = self.wait();
            panic!("workload ended before printing the expected line: {out}");
        }
        l.trim_end().to_owned()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the exit and collects what is left of the output.
    pub fn wait(&mut self) -> Out {
        use std::io::Read as _;
        let mut stdout = String::new();
        let _ = self.stdout.read_to_string(&mut stdout);
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("wait palisade run: {e}"));
        Out {
            code: code_of(status),
            stdout,
            stderr,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Mount points of the hierarchies where workload cgroups live: the unified one and the v1
/// memory, cpu, cpuacct and pids hierarchies (hybrid hosts).
pub fn hierarchies() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_else(|e| panic!("mountinfo: {e}"));
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mp = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let opts = r.nth(1)?;
            let wanted = fstype == "cgroup2"
                || (fstype == "cgroup"
                    && opts
                        .split(',')
                        .any(|o| matches!(o, "memory" | "cpu" | "cpuacct" | "pids")));
            wanted.then(|| PathBuf::from(mp))
        })
        .collect()
}

/// The workload's cgroup directory in the hierarchy whose mount point ends in `which`
/// (`unified`, `memory`, `cpu`, ...), or the cgroup2 root on pure v2 hosts for any `which`.
pub fn cgroup_dir(name: &str, which: &str) -> PathBuf {
    let hs = hierarchies();
    let h = hs
        .iter()
        .find(|h| h.file_name().is_some_and(|f| f == which))
        .or_else(|| hs.iter().find(|h| h == &Path::new("/sys/fs/cgroup")))
        .unwrap_or_else(|| panic!("no {which} hierarchy in {hs:?}"));
    h.join("palisade").join(name)
}

/// Processes whose command line holds `--name NAME`.
pub fn processes_named(name: &str) -> Vec<i32> {
    let needle = format!("--name\0{name}\0");
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Nothing of workload `name` is left: no cgroup in any hierarchy, no process, and no mount of
/// `rootfs` in this (the host's) mount namespace.
pub fn assert_clean(name: &str, rootfs: Option<&Path>) {
    for h in hierarchies() {
        let dir = h.join("palisade").join(name);
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    let procs = processes_named(name);
    assert!(procs.is_empty(), "processes of {name} left: {procs:?}");
    if let Some(r) = rootfs {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let r = r.to_string_lossy();
        assert!(
            !info.lines().any(|l| l.contains(r.as_ref())),
            "a mount of {r} is visible on the host:\n{info}"
        );
    }
}

/// Pids in the workload's unified cgroup, waiting until there are `n`.
pub fn wait_for_pids(name: &str, n: usize) -> Vec<i32> {
    let procs = cgroup_dir(name, "unified").join("cgroup.procs");
    wait_for(Duration::from_secs(30), "workload processes", || {
        let pids: Vec<i32> = std::fs::read_to_string(&procs)
            .ok()?
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        (pids.len() == n).then_some(pids)
    })
}

/// The pid in the container's own namespace (last NSpid field) of a host pid.
pub fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Starts `/bin/sh` in a busybox rootfs trapping each of `signals` in turn (signal, its name
/// without `SIG`), sends it to `palisade run` and asserts the workload got it (exit 42, its
/// trap's line on stdout) and that nothing is left behind.
pub fn assert_signals_forwarded(signals: &[(i32, &str)]) {
    let root = Rootfs::busybox();
    for &(sig, sname) in signals {
        let name = unique("sig");
        let script = format!(
            "trap 'echo got-{sname}; exit 42' {sname}; echo ready; while :; do sleep 0.05; done"
        );
        let rootfs = root.path.to_string_lossy();
        let mut w = Running::start(&[
            "--name", &name, "--rootfs", &rootfs, "--", "/bin/sh", "-c", &script,
        ]);
        assert_eq!(w.line(), "ready");
        w.signal(sig);
        let out = w.wait();
        assert_eq!(out.code, 42, "SIG{sname}\n{out}");
        assert!(out.stdout.contains(&format!("got-{sname}")), "{out}");
        assert_clean(&name, Some(&root.path));
    }
}

/// A cgroup directory named `name` made in every cgroup hierarchy of the host (v1 ones of
/// any controller, and the unified one) next to this process's own cgroup there: where the
/// launcher makes no cgroup of its own, its workload starts in this process's cgroup, so a
/// marker there is what a workload would see of the host's tree. Removed on drop.
pub struct CgroupMarkers {
    pub dirs: Vec<PathBuf>,
}

impl CgroupMarkers {
    pub fn new(name: &str) -> Self {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .unwrap_or_else(|e| panic!("/proc/self/cgroup: {e}"));
        let info = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_else(|e| panic!("mountinfo: {e}"));
        let mut dirs = Vec::new();
        for l in info.lines() {
            let Some((left, right)) = l.split_once(" - ") else {
                continue;
            };
            let (Some(mp), mut r) = (left.split_whitespace().nth(4), right.split_whitespace())
            else {
                continue;
            };
            let fstype = r.next().unwrap_or_default();
            let opts: Vec<&str> = r.nth(1).unwrap_or_default().split(',').collect();
            // this process's path in the hierarchy: "0::/path" (cgroup2) or "N:ctrl,...:/path"
            let path = own.lines().find_map(|line| {
                let mut f = line.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                let same = match fstype {
                    "cgroup2" => ctrls.is_empty(),
                    "cgroup" => !ctrls.is_empty() && ctrls.split(',').all(|c| opts.contains(&c)),
                    _ => false,
                };
                same.then(|| path.trim_start_matches('/').to_owned())
            });
            let Some(path) = path else {
                continue;
            };
            let dir = Path::new(mp).join(path).join(name);
            if std::fs::create_dir(&dir).is_ok() {
                dirs.push(dir);
            }
        }
        assert!(!dirs.is_empty(), "no cgroup hierarchy took a marker");
        Self { dirs }
    }
}

impl Drop for CgroupMarkers {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}
