//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/`, each for a bounded time, from its
//! committed seeds (`fuzz/seeds/<target>`; new inputs go to a scratch corpus, crashes to
//! `fuzz/artifacts/<target>/`). Returns what libFuzzer reports for each target.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{exec, root, step};

/// Every target in `fuzz/Cargo.toml`, in the order they run.
pub const TARGETS: &[&str] = &[
    "policy_parser",
    "oci_config",
    "seccomp_profile",
    "control_protocol",
    "cgroupfs",
    "procfs",
    "dns",
    "btf",
];

/// One target's run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub target: &'static str,
    pub seconds: u32,
    /// `stat::number_of_executed_units` from libFuzzer's final stats.
    pub executions: u64,
    /// Inputs in the corpus at the end (`cov:`/`corp:` of the last status line).
    pub corpus: u64,
}

/// `cargo fuzz SUBCOMMAND --fuzz-dir fuzz --sanitizer none`: the targets are safe Rust
/// parsers, where AddressSanitizer finds nothing libFuzzer's own checks do not (a panic, a
/// hang past -timeout, memory past -rss_limit_mb, a stack overflow): without it the build of
/// the agent's dependency tree takes 30 % less time and inputs run faster.
fn cargo_fuzz(sub: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz", sub])
        .args(["--fuzz-dir", "fuzz", "--sanitizer", "none"])
        .current_dir(root())
        // the agent's eBPF programs are never loaded by a fuzz target: skip building them
        .env("AYA_BUILD_SKIP", "1");
    c
}

/// Builds every target, then runs each for `seconds`.
pub fn run(seconds: u32) -> Result<Vec<Outcome>> {
    step("building the fuzz targets (cargo fuzz, nightly)");
    exec(&mut cargo_fuzz("build"))?;
    let mut out = Vec::new();
    for target in TARGETS {
        out.push(run_one(target, seconds)?);
    }
    eprintln!("    fuzz executions:");
    for o in &out {
        eprintln!(
            "      {:<18} {:>12} in {} s (corpus {})",
            o.target, o.executions, o.seconds, o.corpus
        );
    }
    Ok(out)
}

fn run_one(target: &'static str, seconds: u32) -> Result<Outcome> {
    step(&format!("fuzzing {target} for {seconds} s"));
    let corpus = std::env::temp_dir().join(format!(
        "palisade-fuzz-corpus-{}-{target}",
        std::process::id()
    ));
    std::fs::create_dir_all(&corpus).with_context(|| format!("mkdir {}", corpus.display()))?;
    let seeds = root().join("fuzz/seeds").join(target);
    let start = Instant::now();
    let mut child = cargo_fuzz("run")
        .arg(target)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start cargo fuzz run {target}"))?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    let mut executions = 0;
    let mut corpus_size = 0;
    let mut tail: Vec<String> = Vec::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            executions = n.trim().parse().unwrap_or(0);
        }
        if let Some(c) = line.split_whitespace().skip_while(|w| *w != "corp:").nth(1) {
            corpus_size = c
                .split('/')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
        // libFuzzer's status lines are many; keep the end for a failure report
        if line.starts_with('#') {
            continue;
        }
        tail.push(line);
        if tail.len() > 60 {
            tail.remove(0);
        }
    }
    let status = child.wait().context("cargo fuzz run")?;
    let _ = std::fs::remove_dir_all(&corpus);
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}) after {:.0} s; the input is in fuzz/artifacts/{target}/:\n{}",
            start.elapsed().as_secs_f64(),
            tail.join("\n")
        );
    }
    if executions == 0 {
        bail!("fuzz target {target} ran no input:\n{}", tail.join("\n"));
    }
    eprintln!(
        "    ({:.1} s, {executions} executions)",
        start.elapsed().as_secs_f64()
    );
    Ok(Outcome {
        target,
        seconds,
        executions,
        corpus: corpus_size,
    })
}
