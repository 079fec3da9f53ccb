//! `cargo xtask bench policy`: what the policy `sys_enter` hook adds to every syscall, in a
//! cgroup without a policy (one cached resolution: an LRU hit), in one with a syscall policy
//! (plus the verdict lookup of an allowed call and the i386 check), and in a child of that one
//! (the policy holds there through its ancestor, resolved once and cached). One release agent;
//! each round measures the cgroups with the hook detached and attached (`palisade policy
//! reload` of a file selecting nothing, or the policy cgroup, then `palisade policy status`
//! polled until the hook group is as asked), in alternating order, so drift between rounds
//! cancels in the paired differences. Target (issue 13): at most 30 ns per call over the
//! telemetry alone.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{agent_bin, root, step};

pub(crate) fn unified_root() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mount = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .min_by_key(|p| p != Path::new("/sys/fs/cgroup"))
        .context("no cgroup2 mount")
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// ns per call of `calls` getppid calls in `cgroup`, pinned to the last CPU.
fn run(cgroup: &Path, calls: u64) -> Result<f64> {
    let workload = root().join("target/release/syscall-workload");
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let start = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec taskset -c {cpu} {} getppid {calls}",
            cgroup.display(),
            workload.display()
        ))
        .status()?;
    if !st.success() {
        bail!("workload failed: {st}");
    }
    Ok(start.elapsed().as_nanos() as f64 / calls as f64)
}

/// Whether `palisade policy status` lists the `syscalls` hook group as attached.
fn syscalls_attached(socket: &Path) -> Result<bool> {
    let out = Command::new(agent_bin(true))
        .args(["policy", "status", "--output", "json", "--socket"])
        .arg(socket)
        .output()?;
    if !out.status.success() {
        bail!("policy status: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v["hooks"]
        .as_array()
        .is_some_and(|h| h.iter().any(|x| x == "syscalls")))
}

/// Selects the cgroups `glob` matches and waits until the `syscalls` hook group is attached
/// (`attached`) or detached, as the agent says.
fn select(dir: &Path, socket: &Path, glob: &str, attached: bool) -> Result<()> {
    std::fs::write(
        dir.join("policy.yaml"),
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {{name: bench}}\nspec:\n  selector: {{cgroup: \"{glob}\"}}\n  syscalls:\n    action: kill\n    deny: [mount]\n"
        ),
    )?;
    let out = Command::new(agent_bin(true))
        .args(["policy", "reload", "--socket"])
        .arg(socket)
        .output()?;
    if !out.status.success() {
        bail!("reload: {}", String::from_utf8_lossy(&out.stderr));
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while syscalls_attached(socket)? != attached {
        if Instant::now() > deadline {
            bail!(
                "the syscalls hook group is not {}",
                if attached { "attached" } else { "detached" }
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

pub fn policy(calls: u64, rounds: u32) -> Result<()> {
    step(&format!(
        "policy sys_enter hook: {rounds} paired rounds of {calls} getppid calls"
    ));
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("palisade-bench-policy-{pid}"));
    std::fs::create_dir_all(&dir)?;
    let uni = unified_root()?;
    let (plain, pol) = (
        uni.join(format!("palisade-bench-plain-{pid}")),
        uni.join(format!("palisade-bench-policy-{pid}")),
    );
    let child = pol.join("child");
    for c in [&plain, &pol, &child] {
        std::fs::create_dir_all(c)?;
    }
    let socket = dir.join("agent.sock");
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\ncontrol_socket: {}\npolicy:\n  paths: [{}]\n  pin_dir: /sys/fs/bpf/palisade-bench-{pid}\n  watch_interval: 0s\n",
            socket.display(),
            dir.join("policy.yaml").display()
        ),
    )?;
    select_file_only(&dir)?;
    let ready = dir.join("ready");
    let mut agent = Command::new(agent_bin(true))
        .args(["agent", "--config"])
        .arg(&cfg)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let result = (|| -> Result<()> {
        let deadline = Instant::now() + std::time::Duration::from_secs(60);
        while !ready.exists() {
            if Instant::now() > deadline {
                bail!("agent did not start");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let pol_glob = format!("/palisade-bench-policy-{pid}");
        let (mut base, mut d_plain, mut d_pol, mut d_child) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let measure = |glob: &str, attached: bool| -> Result<(f64, f64, f64)> {
            select(&dir, &socket, glob, attached)?;
            Ok((run(&plain, calls)?, run(&pol, calls)?, run(&child, calls)?))
        };
        for round in 0..rounds {
            // detached first in even rounds, attached first in odd ones
            let ((a, b, e), (c, d, f)) = if round % 2 == 0 {
                let off = measure("/no-such-cgroup", false)?;
                (off, measure(&pol_glob, true)?)
            } else {
                let on = measure(&pol_glob, true)?;
                (measure("/no-such-cgroup", false)?, on)
            };
            base.push((a + b + e) / 3.0);
            d_plain.push(c - a);
            d_pol.push(d - b);
            d_child.push(f - e);
        }
        let b = median(base);
        let (p, q, r) = (median(d_plain), median(d_pol), median(d_child));
        println!("\nagent running, policy hook detached: {b:.1} ns/call (getppid)");
        println!(
            "added by the hook, cgroup without a policy:       {p:+.1} ns/call ({:+.1}%)",
            p / b * 100.0
        );
        println!(
            "added by the hook, cgroup with a syscall policy:  {q:+.1} ns/call ({:+.1}%)",
            q / b * 100.0
        );
        println!(
            "added by the hook, child of that cgroup:          {r:+.1} ns/call ({:+.1}%)",
            r / b * 100.0
        );
        let worst = p.max(q).max(r);
        println!(
            "target: at most 30 ns/call over the telemetry alone: {} ({:.2}x the target at worst)",
            if worst <= 30.0 { "met" } else { "not met" },
            worst / 30.0
        );
        Ok(())
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
    let _ = Command::new(agent_bin(true))
        .args(["agent", "--cleanup", "--config"])
        .arg(&cfg)
        .output();
    for c in [&child, &plain, &pol] {
        let _ = std::fs::remove_dir(c);
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The file the agent starts with (selects nothing).
fn select_file_only(dir: &Path) -> Result<()> {
    std::fs::write(
        dir.join("policy.yaml"),
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: bench}\nspec:\n  selector: {cgroup: \"/no-such-cgroup\"}\n  syscalls:\n    deny: [mount]\n",
    )?;
    Ok(())
}
