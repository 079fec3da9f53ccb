//! `cargo xtask bench syscalls --vm 6.1|6.12|all`: the syscall-hook comparison on a kernel
//! this host cannot attach fentry on, booted under qemu (TCG) with virtme-ng as `vm-test` does.
//!
//! One guest run of `bench/syscall_overhead.sh` with five cases interleaved round by round
//! (order rotated every round, loop pinned to the last vCPU): no hooks, the empty raw-tracepoint
//! pair, the agent on raw tracepoints, the empty fentry/fexit pair on `x64_sys_call`, the agent
//! on fentry/fexit. Every agent repetition checks that the agent counted exactly the loop's
//! calls in the bench cgroup. The host then prints medians and per-round ratios.
use std::{
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    agent_bin,
    bench_rounds::{Rounds, median, read_rounds},
    root, step,
    vm_setup::{self, KERNELS, Kernel},
};

/// The cases, in the order of the first round.
const CASES: &str = "base floor agent floor_fentry agent_fentry";

pub struct VmBench<'a> {
    pub kernel: &'a str,
    pub calls: u64,
    pub reps: u32,
    pub debug_agent: bool,
}

fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn sh_path(p: &Path) -> String {
    sh(&p.to_string_lossy())
}

/// The guest script: mounts, controllers, then the bench with both hook pairs.
fn guest_script(out: &Path, bin: &Path, calls: u64, reps: u32) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "#!/bin/sh\n# Written by `cargo xtask bench syscalls --vm`; runs in the guest.\nset -u\nout={}\nbin={}",
        sh_path(out),
        sh_path(bin)
    );
    s.push_str(
        r##"uname -r > "$out/uname"
grep -q ' /sys/fs/bpf bpf ' /proc/mounts || mount -t bpf bpf /sys/fs/bpf
grep -q ' /sys/kernel/tracing tracefs ' /proc/mounts || mount -t tracefs tracefs /sys/kernel/tracing
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
done
ip link set lo up
# the agent wants its control socket in a directory only root can write
mkdir -p /run/palisade-bench && chmod 700 /run/palisade-bench
export HOME=/root LANG=C.UTF-8
"$bin" doctor > "$out/doctor.txt" 2>&1
printf 'syscalls:\n  hook: raw_tracepoint\n' > "$out/raw.yaml"
printf 'syscalls:\n  hook: fentry\n' > "$out/fentry.yaml"
agent() {  # agent CONFIG: the command line of an agent case
    echo "$bin agent --config $out/$1.yaml --listen 127.0.0.1:0 --ready-file @READY@ --control-socket /run/palisade-bench/$1.sock"
}
"##,
    );
    let _ = writeln!(s, "export CASES={}", sh(CASES));
    s.push_str(
        r#"export FLOOR_CMD="$bin debug empty-hooks --hook raw_tracepoint --ready-file @READY@"
export CMD_floor_fentry="$bin debug empty-hooks --hook fentry --ready-file @READY@"
export CMD_agent_fentry="$(agent fentry)"
"#,
    );
    let _ = writeln!(
        s,
        "bash {} -n {calls} -r {reps} -o \"$out/raw.tsv\" -- $(agent raw) > \"$out/bench.log\" 2>&1\necho $? > \"$out/bench.rc\"",
        sh_path(&root().join("bench/syscall_overhead.sh"))
    );
    s
}

pub fn run(opts: &VmBench<'_>) -> Result<()> {
    let kernels: Vec<Kernel> = if opts.kernel == "all" {
        KERNELS.to_vec()
    } else {
        vec![
            Kernel::by_label(opts.kernel)
                .with_context(|| format!("unknown kernel {:?}: 6.1, 6.12 or all", opts.kernel))?,
        ]
    };
    let releases = vm_setup::run(&kernels)?;
    crate::build(!opts.debug_agent)?;
    let bin = agent_bin(!opts.debug_agent);
    let venv_bin = vm_setup::venv()?.join("bin");
    let path = std::env::join_paths(std::iter::once(venv_bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))?;
    let mut failed = Vec::new();
    for (kernel, release) in &releases {
        let out = root().join("target/bench-vm").join(kernel.label);
        if out.exists() {
            std::fs::remove_dir_all(&out).with_context(|| format!("rm -r {}", out.display()))?;
        }
        std::fs::create_dir_all(&out).with_context(|| format!("mkdir {}", out.display()))?;
        let script = out.join("run.sh");
        std::fs::write(&script, guest_script(&out, &bin, opts.calls, opts.reps))
            .with_context(|| format!("write {}", script.display()))?;
        step(&format!(
            "booting {release} (qemu TCG): syscall hooks, n={} reps={}, cases {CASES}",
            opts.calls, opts.reps
        ));
        // TCG: a guest syscall costs microseconds; 90 min covers 5 cases x 2 loops x reps
        let status = Command::new("timeout")
            .args(["-k", "30", "90m", "vng"])
            .args(["--disable-kvm", "--disable-microvm", "-r"])
            .arg(format!("/boot/vmlinuz-{release}"))
            .args(["--append", "lsm=lockdown,capability,bpf"])
            .args(["--memory", "2G", "--cpus", "2"])
            // one host thread for both vCPUs: multi-threaded TCG freezes on kernel text
            // patching (`vm::TCG`), and fentry attaches patch it
            .arg(format!("--qemu-opts=-accel {}", crate::vm::TCG))
            .arg("--rwdir")
            .arg(&out)
            .arg("--exec")
            .arg(format!("sh {}", sh_path(&script)))
            .env("PATH", &path)
            .current_dir(&out)
            .stdin(Stdio::null())
            .status()
            .context("cannot start vng (timeout from coreutils)")?;
        if !status.success() {
            eprintln!("    vng ended with {status}");
        }
        let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
        let rc = read("bench.rc");
        if rc.trim() != "0" {
            eprintln!("{}", read("bench.log"));
            failed.push(kernel.label);
            eprintln!(
                "    the bench failed in the guest (exit {:?}); log: {}",
                rc.trim(),
                out.join("bench.log").display()
            );
            continue;
        }
        let rounds = read_rounds(&out.join("raw.tsv"))?;
        println!(
            "\nkernel {} ({}), qemu TCG (emulated CPU: absolute ns are not a real machine's; compare ratios), n={} per loop, {} rounds, {} agent build",
            kernel.label,
            read("uname").trim(),
            opts.calls,
            opts.reps,
            if opts.debug_agent { "debug" } else { "release" }
        );
        println!("{}", table(&rounds));
        println!(
            "agent hook lines from doctor: {}",
            doctor_line(&read("doctor.txt"))
        );
    }
    if !failed.is_empty() {
        bail!("the VM bench failed on {}", failed.join(", "));
    }
    Ok(())
}

fn doctor_line(doctor: &str) -> String {
    doctor
        .lines()
        .filter(|l| l.starts_with("syscall_fentry ") || l.starts_with("agent: "))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The table's ratios: (column, case, over).
const RATIOS: [(&str, &str, &str); 4] = [
    ("raw/raw0", "agent", "floor"),
    ("fe/fe0", "agent_fentry", "floor_fentry"),
    ("fe0/raw0", "floor_fentry", "floor"),
    ("fe/raw", "agent_fentry", "agent"),
];

/// Medians of the added cost per case, and per-round ratios (median over rounds).
pub fn table(r: &Rounds) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<8} {:>9} {:>9} {:>9} {:>10} {:>10}   {:>8} {:>8} {:>9} {:>9}",
        "mode",
        "base ns",
        "+raw0",
        "+raw",
        "+fentry0",
        "+fentry",
        "raw/raw0",
        "fe/fe0",
        "fe0/raw0",
        "fe/raw"
    );
    for mode in ["getppid", "read"] {
        let med = |case: &str| median(&mut r.series(mode, case).into_values().collect::<Vec<_>>());
        let b = med("base");
        let [raw, fe, fe0, fe_raw] = RATIOS.map(|(_, case, over)| r.ratio(mode, case, over));
        let _ = writeln!(
            s,
            "{:<8} {:>9.0} {:>+9.0} {:>+9.0} {:>+10.0} {:>+10.0}   {:>8.2} {:>8.2} {:>9.2} {:>9.2}",
            mode,
            b,
            med("floor") - b,
            med("agent") - b,
            med("floor_fentry") - b,
            med("agent_fentry") - b,
            raw,
            fe,
            fe0,
            fe_raw,
        );
    }
    s.push_str("quartiles of the per-round ratios, median (q1-q3):\n");
    for mode in ["getppid", "read"] {
        let spreads: Vec<String> = RATIOS
            .iter()
            .map(|(column, case, over)| format!("{column} {}", r.ratio_spread(mode, case, over)))
            .collect();
        let _ = writeln!(s, "{mode:<8} {}", spreads.join("  "));
    }
    s.push_str(
        "(+X: ns per call over no hooks, median over rounds; raw0/fentry0: the empty pairs (floors),\n\
          raw/fentry: the agent on that pair; ratios of added cost within each round, median over rounds.\n\
          fe/raw < 1: the agent is cheaper on fentry/fexit)\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_the_spread_of_the_per_round_ratios() {
        let mut tsv = String::from("rep\tcase\tmode\tns_per_call\n");
        // rounds 1-3: floors +10, +20, +40; the agent +20, +20, +40 (ratios 2, 1, 1)
        for (rep, floor, agent) in [(1, 110, 120), (2, 120, 120), (3, 140, 140)] {
            for (case, v) in [
                ("base", 100),
                ("floor", floor),
                ("agent", agent),
                ("floor_fentry", floor),
                ("agent_fentry", agent),
            ] {
                tsv.push_str(&format!("{rep}\t{case}\tgetppid\t{v}\n"));
            }
        }
        let t = table(&crate::bench_rounds::parse_rounds(&tsv));
        assert!(
            t.contains("getppid  raw/raw0 1.00 (1.00-2.00)"),
            "no spread line in:\n{t}"
        );
    }
}
