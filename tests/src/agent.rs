//! A real `palisade agent` process per test: its own config, port, control socket and event
//! log, stopped (and its socket removed) when dropped.
use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use crate::{Metrics, http, load, palisade_bin, require_root, scaled, wait_for_explained};

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
