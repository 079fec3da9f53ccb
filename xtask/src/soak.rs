//! `cargo xtask soak [--minutes N] [--report FILE]`: the long versions of the reliability
//! tests, against a release agent, and a markdown report of what held:
//! - events/s held with zero unaccounted loss (an exec flood from two containers for a
//!   quarter of the time; every event delivered or counted lost, per container);
//! - the RSS curve of containers churned in waves (2,000 or more);
//! - the faults survived (faults.rs, sink_faults.rs: each test that passed);
//! - fuzz executions per target (two fifths of the time, shared by the targets).
use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{agent_bin, build, cargo, fuzz, root, step};

/// What a test printed on its `palisade-report KIND {json}` lines, and the tests that passed.
#[derive(Default)]
struct Run {
    reports: Vec<(String, serde_json::Value)>,
    passed: Vec<String>,
    failed: Vec<String>,
}

/// Runs `cargo test -p palisade-tests ARGS` against the release agent, echoing its output.
fn test(args: &[&str], env: &[(&str, String)]) -> Result<Run> {
    let mut cmd = cargo();
    cmd.args(["test", "-p", "palisade-tests"])
        .args(args)
        .env("PALISADE_BIN", agent_bin(true))
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let stderr = child.stderr.take().context("stderr")?;
    let echo = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{l}");
            lines.push(l);
        }
        lines
    });
    let stdout = child.stdout.take().context("stdout")?;
    let mut run = Run::default();
    for l in BufReader::new(stdout).lines().map_while(Result::ok) {
        eprintln!("{l}");
        if let Some(name) = l.strip_prefix("test ") {
            if let Some(n) = name.strip_suffix(" ... ok") {
                run.passed.push(n.to_owned());
            } else if let Some(n) = name.strip_suffix(" ... FAILED") {
                run.failed.push(n.to_owned());
            }
        }
    }
    let status = child.wait().context("cargo test")?;
    for l in echo.join().unwrap_or_default() {
        if let Some((kind, json)) = l
            .split_once("palisade-report ")
            .and_then(|(_, r)| r.split_once(' '))
            && let Ok(v) = serde_json::from_str(json)
        {
            run.reports.push((kind.to_owned(), v));
        }
    }
    if !status.success() {
        bail!("{shown} failed: {:?}", run.failed);
    }
    Ok(run)
}

fn report_of<'a>(run: &'a Run, kind: &str) -> Result<&'a serde_json::Value> {
    run.reports
        .iter()
        .find(|(k, _)| k == kind)
        .map(|(_, v)| v)
        .with_context(|| format!("no `palisade-report {kind}` line in the test output"))
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn run(minutes: u32, report: Option<&Path>) -> Result<()> {
    let started = Instant::now();
    let seconds = u64::from(minutes.max(1)) * 60;
    build(true)?;
    step("building the test binaries");
    crate::exec(cargo().args(["build", "-p", "palisade-tests", "--bins", "--tests"]))?;

    let flood = (seconds / 4).max(30);
    step(&format!("events/s with zero unaccounted loss ({flood} s)"));
    let throughput = test(
        &[
            "--test",
            "loss",
            "soak_events_per_second",
            "--",
            "--ignored",
            "--nocapture",
        ],
        &[("PALISADE_SOAK_SECONDS", flood.to_string())],
    )?;
    let t = report_of(&throughput, "throughput")?.clone();

    let waves = (minutes * 2).max(20);
    step(&format!("churn: {waves} waves of 100 containers"));
    let churn = test(
        &["--test", "churn", "--", "--nocapture"],
        &[
            ("PALISADE_CHURN_WAVES", waves.to_string()),
            ("PALISADE_CHURN_PER_WAVE", "100".to_owned()),
        ],
    )?;
    let c = report_of(&churn, "churn")?.clone();

    step("faults");
    let faults = test(
        &[
            "--test",
            "faults",
            "--test",
            "sink_faults",
            "--",
            "--nocapture",
        ],
        &[],
    )?;

    let per_target = ((seconds * 2 / 5) / fuzz::TARGETS.len() as u64).max(20) as u32;
    let fuzzed = fuzz::run(per_target)?;

    let mut md = String::new();
    let _ = writeln!(md, "# Palisade soak report\n");
    let _ = writeln!(
        md,
        "Commit `{}`, kernel {}, {} CPUs, {} minutes asked, {:.1} minutes taken; release agent.\n",
        sh("git", &["rev-parse", "--short=12", "HEAD"]),
        sh("uname", &["-r"]),
        sh("nproc", &[]),
        minutes,
        started.elapsed().as_secs_f64() / 60.0
    );
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let _ = writeln!(md, "## Events/s held with zero unaccounted loss\n");
    let _ = writeln!(
        md,
        "Exec floods from two containers for {:.0} s against an agent with its default queues. Every exec and exit event is delivered to the event log or counted lost per container (`palisade_events_kernel_lost_total`), checked against the kernel's own exec and exit counts.\n",
        num(&t, "seconds")
    );
    let _ = writeln!(
        md,
        "| events delivered/s | produced | delivered | counted lost | unaccounted | ring buffer full | queue waits | agent RSS |\n|---|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| **{:.0}** | {} | {} | {} | **{}** | {} | {} | {:.1} MiB |\n",
        num(&t, "events_per_second"),
        num(&t, "produced"),
        num(&t, "delivered"),
        num(&t, "lost_counted"),
        num(&t, "unaccounted"),
        num(&t, "ringbuf_full"),
        num(&t, "queue_waits"),
        num(&t, "rss_kib") / 1024.0
    );
    md.push_str(&churn_section(&c));
    let _ = writeln!(md, "\n## Faults survived\n");
    for f in &faults.passed {
        let _ = writeln!(md, "- {}", f.replace('_', " "));
    }
    let _ = writeln!(md, "\n## Fuzzing\n");
    let _ = writeln!(
        md,
        "| target | seconds | executions | corpus |\n|---|---|---|---|"
    );
    for o in &fuzzed {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            o.target, o.seconds, o.executions, o.corpus
        );
    }
    let total: u64 = fuzzed.iter().map(|o| o.executions).sum();
    let _ = writeln!(md, "| all | | {total} | |");

    match report {
        Some(p) => {
            std::fs::write(p, &md).with_context(|| format!("write {}", p.display()))?;
            step(&format!("report written to {}", p.display()));
        }
        None => println!("{md}"),
    }
    Ok(())
}

/// `[53, 53]` → `53 → 53`.
fn before_after(v: &serde_json::Value) -> String {
    let n = |i: usize| {
        v[i].as_u64()
            .map_or_else(|| "?".to_owned(), |n| n.to_string())
    };
    format!("{} → {}", n(0), n(1))
}

/// The churn section of the report, from the churn test's `palisade-report churn` line.
fn churn_section(c: &serde_json::Value) -> String {
    let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let mut md = String::new();
    let _ = writeln!(md, "## Churn: the RSS curve\n");
    let rss: Vec<f64> = c["rss_kib"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    let _ = writeln!(
        md,
        "{} containers (cgroups with a live process) created and removed in {} waves of {}; after each wave the agent's RSS. Afterwards the registry, the kernel maps and /metrics held nothing of them; descriptors {}, threads {} (before → after).\n",
        num(c, "containers"),
        num(c, "waves"),
        num(c, "containers") / num(c, "waves").max(1.0),
        before_after(&c["fds"]),
        before_after(&c["tasks"])
    );
    let _ = writeln!(md, "| after wave | RSS (MiB) |\n|---|---|");
    for (i, r) in rss.iter().enumerate() {
        let label = if i == 0 {
            "start".to_owned()
        } else {
            i.to_string()
        };
        let _ = writeln!(md, "| {label} | {:.1} |", r / 1024.0);
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_section_shows_plain_numbers() {
        let c = serde_json::json!({
            "containers": 200, "waves": 2, "rss_kib": [1024, 2048, 2048],
            "fds": [53, 53], "tasks": [5, 4],
        });
        let md = churn_section(&c);
        assert!(
            md.contains(
                "200 containers (cgroups with a live process) created and removed in 2 waves of 100"
            ),
            "{md}"
        );
        assert!(md.contains("descriptors 53 → 53, threads 5 → 4"), "{md}");
        assert!(
            md.contains("| start | 1.0 |\n| 1 | 2.0 |\n| 2 | 2.0 |\n"),
            "{md}"
        );
    }
}
