//! Helpers shared by the privileged tests: a real agent process, test cgroups in the unified
//! hierarchy, workloads placed in them before their first instruction, and a parser for the
//! Prometheus text format.
//!
//! Every test owns its cgroups (named `palisade-test-<pid>-<tag>-<n>`) and its agent (listening
//! on an ephemeral port), so tests run in parallel on one kernel without seeing each other.
//! Helpers panic with a message instead of returning errors: they only run inside tests.
pub mod bpf;
pub mod catalog;
pub mod fleet;
pub mod grafana;
mod http;
pub mod launch;
pub mod load;
mod metrics;
mod netns;
mod otlp;
mod podman;
pub mod policy;
pub mod stack;

pub use http::http_get;
pub use metrics::{Metrics, Sample, promtool_check_metrics};
pub use netns::{TestNetns, net_workload_bin, start_server};
pub use otlp::{OtlpReceiver, otlp_attr};
pub use podman::{PODMAN_FLAGS, PodmanContainer, busybox_image};

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// The `palisade` binary under test: `$PALISADE_BIN` (set by `cargo xtask test`), else the
/// workspace's debug build.
pub fn palisade_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/palisade");
    if !p.exists() {
        panic!(
            "palisade binary not found at {}; run the tests with `cargo xtask test` (or set PALISADE_BIN)",
            p.display()
        );
    }
    p
}

/// The workload binary built with these tests.
/// The `syscall-workload` binary built with these tests (next to the test's `deps/` folder).
pub fn workload_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let bin = dir.join("syscall-workload");
    assert!(
        bin.exists(),
        "{} missing; build it with `cargo build -p palisade-tests --bins`",
        bin.display()
    );
    bin
}

/// `d` times `PALISADE_TEST_TIME_SCALE` (a whole number, default 1). `cargo xtask vm-test`
/// sets it in guests under qemu's TCG, which runs code ~10× slower: only how long a wait may
/// last changes, never what it waits for.
pub fn scaled(d: Duration) -> Duration {
    let factor = std::env::var("PALISADE_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|f| *f > 0)
        .unwrap_or(1);
    d * factor
}

/// Privileged tests need root; they fail (not skip) without it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test loads eBPF programs and creates cgroups: run it as root (cargo xtask test)"
        );
    }
}

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

/// A running `palisade agent` with its own config, port and log.
pub struct Agent {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    /// The event log [`Agent::events`] reads.
    events_file: PathBuf,
    socket: PathBuf,
}

/// How [`Agent::start_with`] starts the agent; the default is [`Agent::start`]'s.
#[derive(Default)]
struct Launch<'a> {
    /// `--events`: none, the default log in the agent's directory (`Some(None)`) or one at a
    /// path.
    events: Option<Option<PathBuf>>,
    /// The control socket, else `agent.sock` in the agent's directory.
    socket: Option<PathBuf>,
    /// A program and its arguments that run the agent's command line (see
    /// [`Agent::with_events_wrapped`]).
    wrapper: &'a [&'a str],
    /// Mounts taken away in a private mount namespace first (see
    /// [`Agent::with_events_without_mounts`]).
    unmount: &'a [&'a str],
}

impl Launch<'_> {
    /// Events to the default log.
    fn with_log() -> Self {
        Self {
            events: Some(None),
            ..Self::default()
        }
    }
}

impl Agent {
    /// Like [`Agent::start`], writing events to the log [`Agent::events`] reads.
    pub fn with_events(config: &str, args: &[&str]) -> Self {
        Self::start_with(config, args, Launch::with_log())
    }

    /// Like [`Agent::with_events`], the event log at `path` (a directory the test prepared).
    pub fn with_events_file(config: &str, args: &[&str], path: &Path) -> Self {
        let events = Some(Some(path.to_owned()));
        Self::start_with(
            config,
            args,
            Launch {
                events,
                ..Launch::default()
            },
        )
    }

    /// Like [`Agent::with_events`], with the control socket at `socket` instead of in the
    /// agent's temporary directory (removed when the agent is dropped).
    pub fn with_events_at(config: &str, args: &[&str], socket: &Path) -> Self {
        let socket = Some(socket.to_owned());
        Self::start_with(
            config,
            args,
            Launch {
                socket,
                ..Launch::with_log()
            },
        )
    }

    /// Like [`Agent::with_events`], started through `wrapper` (a program and its arguments
    /// that ends by running the command it is given, e.g. `unshare ... sh -c '...; exec "$@"'`).
    pub fn with_events_wrapped(config: &str, args: &[&str], wrapper: &[&str]) -> Self {
        Self::start_with(
            config,
            args,
            Launch {
                wrapper,
                ..Launch::with_log()
            },
        )
    }

    /// Like [`Agent::with_events`], in a mount namespace of its own (private propagation) where
    /// every mount at `unmount` (e.g. bpffs, tracefs) is taken away first: the host's mounts
    /// are not touched.
    pub fn with_events_without_mounts(config: &str, args: &[&str], unmount: &[&str]) -> Self {
        Self::start_with(
            config,
            args,
            Launch {
                unmount,
                ..Launch::with_log()
            },
        )
    }

    /// Starts an agent with `config` (YAML) plus `args`, listening on an ephemeral loopback
    /// port, and waits until it serves.
    pub fn start(config: &str, args: &[&str]) -> Self {
        Self::start_with(config, args, Launch::default())
    }

    fn start_with(config: &str, args: &[&str], how: Launch<'_>) -> Self {
        require_root();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let socket = how.socket.unwrap_or_else(|| dir.path().join("agent.sock"));
        let cfg = dir.path().join("palisade.yaml");
        std::fs::write(&cfg, config).unwrap_or_else(|e| panic!("write config: {e}"));
        let ready = dir.path().join("ready");
        let log = std::fs::File::create(dir.path().join("agent.log"))
            .unwrap_or_else(|e| panic!("create log: {e}"));
        let events = how.events;
        let events_file = match &events {
            Some(Some(p)) => p.clone(),
            _ => dir.path().join("events.jsonl"),
        };
        let mut cmd = match how.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(palisade_bin());
                c
            }
            None => Command::new(palisade_bin()),
        };
        if !how.unmount.is_empty() {
            load::without_mounts(&mut cmd, how.unmount);
        }
        let mut child = cmd
            .arg("agent")
            .arg("--config")
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .arg("--control-socket")
            .arg(&socket)
            .args(if events.is_some() {
                vec![
                    "--events".to_owned(),
                    events_file.to_string_lossy().into_owned(),
                ]
            } else {
                vec![]
            })
            .args(args)
            .env("RUST_LOG", "info,palisade=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", palisade_bin().display()));
        let ready_timeout = scaled(Duration::from_secs(60));
        let deadline = Instant::now() + ready_timeout;
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "agent exited during start-up ({status}):\n{}",
                    std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("agent not ready after {ready_timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            addr,
            dir,
            events_file,
            socket,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The event log (`--events`, JSON lines) of an agent started with [`Agent::with_events`].
    pub fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.events_file).unwrap_or_default();
        // the agent may be writing the last line right now: only complete lines count
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")))
            .collect()
    }

    /// Waits until the event log holds at least `n` events matching `pred`, returns them.
    pub fn wait_events(
        &self,
        n: usize,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let matching = || -> Vec<serde_json::Value> {
            self.events().into_iter().filter(|e| pred(e)).collect()
        };
        wait_for_explained(
            Duration::from_secs(20),
            what,
            || Some(matching()).filter(|v| v.len() >= n),
            || {
                let v = matching();
                let log = self.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                format!(
                    "{} of {n} matching events ({} events in all): {v:?}\nagent log (last lines):\n{}",
                    v.len(),
                    self.events().len(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            },
        )
    }

    /// This agent's control socket.
    pub fn control_socket(&self) -> PathBuf {
        self.socket.clone()
    }

    /// Sends one JSON request line on the control socket and returns the reply line.
    pub fn control(&self, request: &str) -> String {
        use std::{io::BufRead as _, os::unix::net::UnixStream};
        let mut s = UnixStream::connect(self.control_socket())
            .unwrap_or_else(|e| panic!("connect control socket: {e}\n{}", self.log()));
        // the policy task answers after what it is doing: loading and verifying the policy
        // programs takes seconds on a busy machine
        s.set_read_timeout(Some(scaled(Duration::from_secs(40))))
            .ok();
        writeln!(s, "{request}").unwrap_or_else(|e| panic!("send: {e}"));
        let mut line = String::new();
        std::io::BufReader::new(s)
            .read_line(&mut line)
            .unwrap_or_else(|e| panic!("read reply: {e}"));
        line.trim_end().to_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// GET `path` and return (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        let s = TcpStream::connect(self.addr)
            .unwrap_or_else(|e| panic!("connect {}: {e}\n{}", self.addr, self.log()));
        http::request(s, self.addr, path)
    }

    /// The `/metrics` page (must answer 200).
    pub fn scrape(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(
            code,
            200,
            "/metrics answered {code}: {body}\n{}",
            self.log()
        );
        body
    }

    pub fn metrics(&self) -> Metrics {
        Metrics::parse(&self.scrape())
    }

    /// SIGKILL: the agent gets no chance to clean anything up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGKILL, keeping this handle: its event log and log stay readable.
    pub fn kill9_keep(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait (at most 30 s); returns the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.stop_keep()
    }

    /// Like [`Agent::stop`], keeping this handle: its event log and log stay readable.
    pub fn stop_keep(&mut self) -> ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let limit = scaled(Duration::from_secs(30));
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent ignored SIGTERM for {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + scaled(Duration::from_secs(10));
            let mut exited = false;
            while !exited && Instant::now() < deadline {
                exited = matches!(self.child.try_wait(), Ok(Some(_)));
                if !exited {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            if !exited {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if !self.socket.starts_with(self.dir.path()) {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(timeout, what, f, String::new)
}

/// Like [`wait_for`]; on timeout the panic message also says what `explain` finds instead.
pub fn wait_for_explained<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            let seen = explain();
            let sep = if seen.is_empty() { "" } else { ": " };
            panic!("timed out after {timeout:?} waiting for {what}{sep}{seen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
