//! Reading what the guest wrote (libtest's plain output per suite, its exit status and time)
//! and printing one table per kernel.
use std::{fmt::Write as _, path::Path};

/// How a suite's run ended inside the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The test binary exited with this status.
    Exited(i32),
    /// Killed by the guest's per-suite timeout (`timeout` exits 124, or 137 after `-k`).
    TimedOut,
    /// No status written: the guest stopped (or the VM timed out) before or during the suite.
    NotRun,
}

/// One suite on one kernel.
#[derive(Debug, Clone)]
pub struct Suite {
    pub name: String,
    pub passed: Vec<String>,
    /// (test, first lines of its panic message)
    pub failed: Vec<(String, String)>,
    pub ignored: Vec<String>,
    /// Tests libtest said were running for over 60 s and that never finished.
    pub unfinished: Vec<String>,
    pub ended: Ended,
    pub seconds: Option<u64>,
}

impl Suite {
    /// Whether this suite makes the run fail.
    pub fn bad(&self) -> bool {
        !self.failed.is_empty() || self.ended != Ended::Exited(0)
    }
}

/// Parses libtest's plain output (`test NAME ... ok|FAILED|ignored`, panic messages) of suite
/// `name`, with its exit status (`rc`, absent when never written).
pub fn parse(name: &str, log: &str, rc: Option<&str>, seconds: Option<u64>) -> Suite {
    let mut s = Suite {
        name: name.to_owned(),
        passed: Vec::new(),
        failed: Vec::new(),
        ignored: Vec::new(),
        unfinished: Vec::new(),
        ended: match rc.map(str::trim).map(str::parse::<i32>) {
            Some(Ok(124 | 137)) => Ended::TimedOut,
            Some(Ok(code)) => Ended::Exited(code),
            _ => Ended::NotRun,
        },
        seconds,
    };
    let mut running = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        if let Some(t) = rest.strip_suffix(" has been running for over 60 seconds") {
            running.push(t.to_owned());
        } else if let Some((test, verdict)) = rest.split_once(" ... ") {
            let test = test.to_owned();
            // `--nocapture`: a test's own output can follow the verdict on the same line
            // (`ok8 scrapes: ...`), so the verdict is the line's start
            if verdict.starts_with("ok") {
                s.passed.push(test);
            } else if verdict.starts_with("FAILED") {
                s.failed.push((test, String::new()));
            } else if verdict.starts_with("ignored") {
                s.ignored.push(test);
            }
        }
    }
    for (test, message) in &mut s.failed {
        *message = failure_message(log, test);
    }
    let done = |t: &String| {
        s.passed.contains(t) || s.ignored.contains(t) || s.failed.iter().any(|(f, _)| f == t)
    };
    s.unfinished = running.iter().filter(|t| !done(t)).cloned().collect();
    s
}

/// The first lines of TEST's panic message, or an empty string. The guest runs the suites
/// with `--nocapture`, so a message is in the log even when the suite is killed by its time
/// limit: `thread 'TEST' (TID) panicked at FILE:LINE:COL:` then the message.
fn failure_message(log: &str, test: &str) -> String {
    let thread = format!("thread '{test}'");
    let mut lines = log
        .lines()
        .skip_while(|l| !(l.starts_with(&thread) && l.contains(" panicked at ")));
    let Some(at) = lines.next() else {
        return String::new();
    };
    let location = at.split(" panicked at ").nth(1).unwrap_or_default();
    let message: Vec<&str> = lines
        .take_while(|l| {
            !l.starts_with("note: ")
                && !l.starts_with("stack backtrace:")
                && !l.starts_with("thread '")
                && !l.starts_with("test ")
                && l.trim() != "failures:"
        })
        .filter(|l| !l.trim().is_empty())
        .take(4)
        .collect();
    let mut text = message.join(" | ");
    if text.chars().count() > 400 {
        text = text.chars().take(400).collect::<String>() + "…";
    }
    format!("{text} ({})", location.trim_end_matches(':'))
}

/// Reads `DIR/NAME.log`, `.rc` and `.seconds` for each suite.
pub fn read(dir: &Path, suites: &[String]) -> Vec<Suite> {
    suites
        .iter()
        .map(|name| {
            let read = |ext: &str| std::fs::read_to_string(dir.join(format!("{name}.{ext}"))).ok();
            let seconds = read("seconds").and_then(|s| s.trim().parse().ok());
            parse(
                name,
                &read("log").unwrap_or_default(),
                read("rc").as_deref(),
                seconds,
            )
        })
        .collect()
}

pub fn duration(seconds: u64) -> String {
    if seconds >= 60 {
        format!("{}m{:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{seconds}s")
    }
}

/// The result table of one kernel, then one line per failure and per suite that did not end.
pub fn table(title: &str, suites: &[Suite]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{title}");
    let w = suites
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let _ = writeln!(
        out,
        "| {:w$} | passed | failed | ignored | time    | ended |",
        "suite"
    );
    let _ = writeln!(
        out,
        "|{}|--------|--------|---------|---------|-------|",
        "-".repeat(w + 2)
    );
    let (mut p, mut f, mut i, mut t) = (0, 0, 0, 0);
    for s in suites {
        let ended = match s.ended {
            Ended::Exited(0) => "ok".to_owned(),
            Ended::Exited(c) => format!("exit {c}"),
            Ended::TimedOut => "TIMEOUT".to_owned(),
            Ended::NotRun => "NOT RUN".to_owned(),
        };
        let secs = s.seconds.map(duration).unwrap_or_default();
        let _ = writeln!(
            out,
            "| {:w$} | {:>6} | {:>6} | {:>7} | {:>7} | {ended} |",
            s.name,
            s.passed.len(),
            s.failed.len(),
            s.ignored.len(),
            secs
        );
        p += s.passed.len();
        f += s.failed.len();
        i += s.ignored.len();
        t += s.seconds.unwrap_or(0);
    }
    let _ = writeln!(
        out,
        "| {:w$} | {p:>6} | {f:>6} | {i:>7} | {:>7} |       |",
        "all",
        duration(t)
    );
    for s in suites {
        for (test, message) in &s.failed {
            let _ = writeln!(out, "FAILED {}::{test}: {message}", s.name);
        }
        for test in &s.unfinished {
            let _ = writeln!(
                out,
                "UNFINISHED {}::{test} (still running when the suite ended)",
                s.name
            );
        }
        if s.ended == Ended::TimedOut {
            let _ = writeln!(
                out,
                "TIMEOUT {}: the suite was killed by its time limit",
                s.name
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "
running 4 tests
test cpu_time ... ok
test skipped ... ignored, needs podman
test slow has been running for over 60 seconds
test hangs has been running for over 60 seconds
test oom_event ... FAILED
test slow ... ok

failures:

starting agent
thread 'oom_event' (412) panicked at tests/tests/containers.rs:97:5:
timed out after 20s waiting for the oom event
second line
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    oom_event

test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out; finished in 81.20s
";

    #[test]
    fn reads_libtest_output() {
        let s = parse("containers", LOG, Some("101\n"), Some(82));
        assert_eq!(s.passed, ["cpu_time", "slow"]);
        assert_eq!(s.ignored, ["skipped"]);
        assert_eq!(s.unfinished, ["hangs"]);
        assert_eq!(s.ended, Ended::Exited(101));
        assert_eq!(s.failed.len(), 1);
        assert_eq!(s.failed[0].0, "oom_event");
        assert_eq!(
            s.failed[0].1,
            "timed out after 20s waiting for the oom event | second line (tests/tests/containers.rs:97:5)"
        );
        assert!(s.bad());
        let t = table("kernel 6.1", &[s]);
        assert!(
            t.contains("| containers |      2 |      1 |       1 |   1m22s | exit 101 |"),
            "{t}"
        );
        assert!(t.contains("FAILED containers::oom_event: timed out"), "{t}");
        assert!(t.contains("UNFINISHED containers::hangs"), "{t}");
    }

    #[test]
    fn a_test_s_own_output_after_its_verdict_is_read_through() {
        // seen in CI's agent suite: a test's print landed right after another's verdict
        let log = "test cgroup_filter ... ok8 scrapes: 1.2 ms\ntest b ... FAILEDthread x\n\
                   test c ... ignored, needs root\n";
        let s = parse("agent", log, Some("101"), None);
        assert_eq!(s.passed, ["cgroup_filter"]);
        assert_eq!(s.failed.len(), 1);
        assert_eq!(s.ignored, ["c"]);
    }

    #[test]
    fn a_missing_status_is_not_a_pass() {
        let s = parse("agent", "", None, None);
        assert_eq!(s.ended, Ended::NotRun);
        assert!(s.bad());
        assert_eq!(parse("agent", "", Some("124"), None).ended, Ended::TimedOut);
        assert!(!parse("agent", "test a ... ok\n", Some("0"), None).bad());
    }
}
