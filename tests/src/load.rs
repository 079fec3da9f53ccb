//! Helpers for the loss, churn and fault tests: stopping an agent (so its queues fill without
//! any timing), sums over metric families, a `palisade events` subscriber that reads when the
//! test says so, and a process's resource use (RSS, fds, tasks).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    time::Duration,
};

use crate::{Agent, Metrics, TestCgroup, wait_for};

/// An agent stopped with SIGSTOP (every thread, checked in /proc) until this is dropped: the
/// kernel keeps producing, nobody reads, and every queue in front of the agent fills.
pub struct Paused(u32);

/// Stops `agent` and returns once every one of its threads is stopped.
pub fn pause(agent: &Agent) -> Paused {
    let pid = agent.pid();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    wait_for(Duration::from_secs(20), "the agent to stop", || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let all_stopped = tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().next().map(str::to_owned))
                })
                .is_some_and(|st| st == "T" || st == "t")
        });
        all_stopped.then_some(())
    });
    Paused(pid)
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// The sum of every sample of `name` whose labels include `labels` (0 when none).
pub fn sum(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    m.find(name, labels).iter().map(|s| s.value as u64).sum()
}

/// Every event published, delivered and dropped, for the consumer `sink`: (published,
/// delivered, dropped). The three are read from one page.
pub fn sink_counts(m: &Metrics, sink: &str) -> (u64, u64, u64) {
    (
        sum(m, "palisade_events_total", &[]),
        sum(m, "palisade_events_delivered_total", &[("sink", sink)]),
        sum(m, "palisade_events_dropped_total", &[("sink", sink)]),
    )
}

/// Waits until every event the agent published has been delivered or counted dropped by
/// `sink` (the consumer may be a few events behind at any one scrape), and returns the page.
pub fn sink_settled(agent: &Agent, sink: &str) -> Metrics {
    let last = std::cell::Cell::new((0, 0, 0));
    crate::wait_for_explained(
        Duration::from_secs(60),
        &format!("{sink}: delivered + dropped == published"),
        || {
            let m = agent.metrics();
            let c = sink_counts(&m, sink);
            last.set(c);
            (c.0 == c.1 + c.2).then_some(m)
        },
        || format!("(published, delivered, dropped) = {:?}", last.get()),
    )
}

/// The agent's last word on its events, from the log of an agent stopped with
/// [`Agent::stop_keep`]: `published`, and `<sink>_delivered` / `<sink>_dropped` for `log`,
/// `subscriber` and `otlp`.
pub fn accounting(agent: &Agent) -> std::collections::BTreeMap<String, u64> {
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("events at shutdown"))
        .unwrap_or_else(|| panic!("no accounting line at shutdown:\n{log}"));
    line.split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.rsplit_once('=')?;
            let k = k.rsplit('=').next()?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

/// The event log's `delivered` count between two counts of the lines in its file (the log may
/// be writing meanwhile): (lines before, delivered, lines after). Each written event is one
/// line, so `before <= delivered <= after`; exactly equal once the agent has stopped.
pub fn log_lines_and_delivered(agent: &Agent, file: &std::path::Path) -> (u64, u64, u64) {
    let lines = || {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .count() as u64
    };
    let before = lines();
    let d = sum(
        &agent.metrics(),
        "palisade_events_delivered_total",
        &[("sink", "log")],
    );
    let after = lines();
    assert!(
        before <= d && d <= after,
        "{d} events counted written, {before}..{after} lines in {}",
        file.display()
    );
    (before, d, after)
}

/// A `palisade events` client on the agent's control socket that reads only when asked.
pub struct Subscriber {
    lines: BufReader<UnixStream>,
}

impl Subscriber {
    /// Subscribes (all events when `containers` and `types` are empty) and reads the ack.
    pub fn new(agent: &Agent, containers: &[&str], types: &[&str]) -> Self {
        let mut s = UnixStream::connect(agent.control_socket())
            .unwrap_or_else(|e| panic!("connect control socket: {e}"));
        let req = serde_json::json!({"op": "subscribe", "containers": containers, "types": types});
        writeln!(s, "{req}").unwrap_or_else(|e| panic!("subscribe: {e}"));
        let mut lines = BufReader::new(s);
        let mut ack = String::new();
        lines
            .read_line(&mut ack)
            .unwrap_or_else(|e| panic!("subscription ack: {e}"));
        assert_eq!(ack.trim(), r#"{"ok":true}"#, "subscription refused");
        Self { lines }
    }

    /// Starts reading on a thread of its own: each line arrives on the returned stream.
    pub fn start(self) -> Stream {
        let sock = self
            .lines
            .get_ref()
            .try_clone()
            .unwrap_or_else(|e| panic!("clone the subscriber socket: {e}"));
        let (tx, rx) = std::sync::mpsc::channel();
        let mut lines = self.lines;
        std::thread::spawn(move || {
            loop {
                let mut line = String::new();
                match lines.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let v: serde_json::Value = serde_json::from_str(&line)
                            .unwrap_or_else(|e| panic!("bad line {line}: {e}"));
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Stream { rx, sock }
    }
}

/// The lines of a [`Subscriber`] that is reading; hangs up when dropped.
pub struct Stream {
    pub rx: std::sync::mpsc::Receiver<serde_json::Value>,
    sock: UnixStream,
}

impl Stream {
    /// Collects lines until `last` matches one (which is included), or `timeout` passes
    /// without a line; `None` then.
    pub fn until(
        &self,
        out: &mut Vec<serde_json::Value>,
        timeout: Duration,
        last: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<()> {
        loop {
            let v = self.rx.recv_timeout(timeout).ok()?;
            let done = last(&v);
            out.push(v);
            if done {
                return Some(());
            }
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Resource use of a process: resident memory, open descriptors, threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub rss_kib: u64,
    pub fds: usize,
    pub tasks: usize,
}

/// Reads `/proc/PID/status` (VmRSS), `/proc/PID/fd` and `/proc/PID/task`.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let count = |d: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{d}"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/{d}: {e}"))
            .count()
    };
    Usage {
        rss_kib,
        fds: count("fd"),
        tasks: count("task"),
    }
}

/// Follows an event log as it grows (and across one rotation), handing each complete line to
/// a callback: counting millions of events without keeping them.
pub struct LogTail {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    partial: String,
}

impl LogTail {
    pub fn new(path: &std::path::Path) -> Self {
        Self {
            path: path.to_owned(),
            file: None,
            partial: String::new(),
        }
    }

    /// Reads what was appended since the last call.
    pub fn poll(&mut self, mut line: impl FnMut(&str)) {
        use std::{io::Read as _, os::unix::fs::MetadataExt as _};
        loop {
            if self.file.is_none() {
                self.file = std::fs::File::open(&self.path).ok();
            }
            let Some(f) = self.file.as_mut() else {
                return;
            };
            let mut buf = String::new();
            let _ = f.read_to_string(&mut buf);
            self.partial.push_str(&buf);
            while let Some(i) = self.partial.find('\n') {
                let l: String = self.partial.drain(..=i).collect();
                line(l.trim_end());
            }
            // rotated: the path names a new file; the old one is read to its end above
            let rotated = match (f.metadata(), std::fs::metadata(&self.path)) {
                (Ok(a), Ok(b)) => a.ino() != b.ino(),
                _ => false,
            };
            if !rotated {
                return;
            }
            self.file = None;
        }
    }
}

/// Makes `cmd` run in a mount namespace of its own (private propagation) where every mount at
/// `unmount` is taken away first (see [`Agent::with_events_without_mounts`]).
pub(crate) fn without_mounts(cmd: &mut std::process::Command, unmount: &[&str]) {
    use std::os::unix::process::CommandExt as _;

    let paths: Vec<std::ffi::CString> = unmount
        .iter()
        .map(|p| std::ffi::CString::new(*p).unwrap_or_else(|e| panic!("{p}: {e}")))
        .collect();
    // SAFETY: between fork and exec: unshare, mount and umount2 only, on memory
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for p in &paths {
                // every mount stacked there
                while libc::umount2(p.as_ptr(), libc::MNT_DETACH) == 0 {}
            }
            Ok(())
        });
    }
}

impl Agent {
    /// Waits until every event the kernel queued before this call is in the event log: the
    /// telemetry ring buffer, the agent's queue and the log keep their order, so once an exec
    /// made now (`/bin/true palisade-drain-N`, in a cgroup of its own) is logged, so is
    /// everything queued before it. "Exactly one" checks count after a drain, not at the first
    /// match. (Policy violations travel on their own ring buffer: not covered.)
    /// (A marker lost to a full ring buffer is counted like any event: the next one is sent.)
    pub fn drain(&self) {
        let cg = TestCgroup::new("drain");
        for _ in 0..20 {
            let n = crate::SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let marker = format!("palisade-drain-{}-{n}", std::process::id());
            let st = cg
                .command("/bin/true")
                .arg(&marker)
                .status()
                .unwrap_or_else(|e| panic!("drain marker: {e}"));
            assert!(st.success(), "drain marker: {st}");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if self.events().iter().any(|e| {
                    e["type"] == "exec"
                        && e["container"]["cgroup_id"] == cg.id
                        && e["process"]["args"][1] == marker.as_str()
                }) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("no drain marker reached the event log:\n{}", self.log());
    }
}
