//! `cargo xtask bench exec`: what the exec policy hook adds to a fork+exec in a cgroup with
//! exec rules (a deny pattern no exec matches, so every exec runs the whole check). For each
//! hook — the raw tracepoint on the file executed, and the classic tracepoint on the path
//! given (the fallback, forced with `policy.kernel_btf` pointing nowhere) — one release agent;
//! each round times the same loop with the hook detached (a policy selecting no cgroup) and
//! attached, so drift between rounds cancels in the paired differences. A fork+exec is slow
//! and noisy next to the hook, so the hook's own run time is also read from the kernel's BPF
//! statistics (`kernel.bpf_stats_enabled` is on during the run and restored after).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{
    agent_bin,
    bench_policy::{median, unified_root},
    step,
};

/// µs per fork+exec of /usr/bin/true, `n` times from one shell in `cgroup`, pinned to a CPU.
fn run(cgroup: &Path, n: u32) -> Result<f64> {
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let start = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec taskset -c {cpu} sh -c 'i=0; while [ $i -lt {n} ]; do /usr/bin/true; i=$((i+1)); done'",
            cgroup.display()
        ))
        .status()?;
    if !st.success() {
        bail!("exec loop failed: {st}");
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(n))
}

fn select(dir: &Path, socket: &Path, glob: &str) -> Result<()> {
    std::fs::write(
        dir.join("policy.yaml"),
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {{name: bench}}\nspec:\n  selector: {{cgroup: \"{glob}\"}}\n  exec:\n    action: kill\n    deny: [/nonexistent/bench/tool]\n"
        ),
    )?;
    let out = Command::new(agent_bin(true))
        .args(["policy", "reload", "--socket"])
        .arg(socket)
        .output()?;
    if !out.status.success() {
        bail!("reload: {}", String::from_utf8_lossy(&out.stderr));
    }
    // until the hook is attached or detached as asked
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// (run_time_ns, run_cnt) of the program of `prog_type` that `pid` loaded last (the policy
/// object loads after the telemetry, and its exec program is the only one of its type there:
/// raw tracepoint 17, classic tracepoint 5).
fn hook_stats(pid: u32, prog_type: u64) -> Option<(u64, u64)> {
    let mut best: Option<(u64, u64, u64)> = None;
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let field = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
        };
        if field("prog_type:") != Some(prog_type) {
            continue;
        }
        let (Some(id), Some(t), Some(c)) =
            (field("prog_id:"), field("run_time_ns:"), field("run_cnt:"))
        else {
            continue;
        };
        if best.is_none_or(|b| id > b.0) {
            best = Some((id, t, c));
        }
    }
    best.map(|(_, t, c)| (t, c))
}

/// What one agent measured: µs per exec with the hook detached, µs added by the hook
/// (paired medians), ns the hook itself ran per exec.
struct Measured {
    base: f64,
    added: f64,
    hook_ns: f64,
}

/// Paired rounds with one agent.
fn rounds(
    dir: &Path,
    cgroup: &Path,
    glob: &str,
    btf: Option<&str>,
    n: u32,
    rounds: u32,
) -> Result<Measured> {
    let pid = std::process::id();
    let socket = dir.join("agent.sock");
    let cfg = dir.join("agent.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:0\ncontrol_socket: {}\npolicy:\n  paths: [{}]\n  pin_dir: /sys/fs/bpf/palisade-bench-exec-{pid}\n  watch_interval: 0s\n{}",
            socket.display(),
            dir.join("policy.yaml").display(),
            btf.map(|b| format!("  kernel_btf: {b}\n"))
                .unwrap_or_default()
        ),
    )?;
    select_nothing(dir)?;
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let mut agent = Command::new(agent_bin(true))
        .args(["agent", "--config"])
        .arg(&cfg)
        .arg("--ready-file")
        .arg(&ready)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let prog_type = if btf.is_some() { 5 } else { 17 };
    let result = (|| -> Result<Measured> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            if Instant::now() > deadline {
                bail!("agent did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (mut base, mut added, mut hook) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            select(dir, &socket, "/no-such-cgroup")?;
            let a = run(cgroup, n)?;
            select(dir, &socket, glob)?;
            let before = hook_stats(agent.id(), prog_type);
            let b = run(cgroup, n)?;
            if let (Some((t0, c0)), Some((t1, c1))) = (before, hook_stats(agent.id(), prog_type))
                && c1 > c0
            {
                hook.push((t1 - t0) as f64 / (c1 - c0) as f64);
            }
            base.push(a);
            added.push(b - a);
        }
        Ok(Measured {
            base: median(base),
            added: median(added),
            hook_ns: median(hook),
        })
    })();
    let _ = Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
    let _ = Command::new(agent_bin(true))
        .args(["agent", "--cleanup", "--config"])
        .arg(&cfg)
        .output();
    result
}

/// The file each agent starts with (selects nothing).
fn select_nothing(dir: &Path) -> Result<()> {
    std::fs::write(
        dir.join("policy.yaml"),
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: bench}\nspec:\n  selector: {cgroup: \"/no-such-cgroup\"}\n  exec:\n    deny: [/nonexistent/bench/tool]\n",
    )?;
    Ok(())
}

pub fn exec(n: u32, r: u32) -> Result<()> {
    step(&format!(
        "exec policy hook: {r} paired rounds of {n} fork+execs of /usr/bin/true, per hook"
    ));
    let pid = std::process::id();
    let dir: PathBuf = std::env::temp_dir().join(format!("palisade-bench-exec-{pid}"));
    std::fs::create_dir_all(&dir)?;
    let cgroup = unified_root()?.join(format!("palisade-bench-exec-{pid}"));
    std::fs::create_dir_all(&cgroup)?;
    let glob = format!("/palisade-bench-exec-{pid}");
    let stats = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let before = std::fs::read_to_string(stats).unwrap_or_else(|_| "0".into());
    let _ = std::fs::write(stats, "1");
    let result = (|| -> Result<()> {
        let file = rounds(&dir, &cgroup, &glob, None, n, r)?;
        let given = rounds(&dir, &cgroup, &glob, Some("/nonexistent/vmlinux"), n, r)?;
        let base = (file.base + given.base) / 2.0;
        println!("\nagent running, exec hook detached: {base:.1} µs per fork+exec");
        for (what, m) in [
            ("on the file executed (raw tracepoint, BTF)", &file),
            ("on the path given (classic tracepoint)    ", &given),
        ] {
            println!(
                "hook {what}: runs {:.2} µs per exec ({:.3}% of a fork+exec); wall clock, paired: {:+.1} µs ({:+.1}%)",
                m.hook_ns / 1000.0,
                m.hook_ns / 1000.0 / base * 100.0,
                m.added,
                m.added / base * 100.0
            );
        }
        println!(
            "hook run time, file / path given: {:.2}; exec rate, file / path given (from the hook's run time): {:.4}",
            file.hook_ns / given.hook_ns,
            (base * 1000.0 + given.hook_ns) / (base * 1000.0 + file.hook_ns)
        );
        Ok(())
    })();
    let _ = std::fs::write(stats, before.trim());
    let _ = std::fs::remove_dir(&cgroup);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
