//! Benchmarks, always as ratios to a baseline measured in the same run.
use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Result, bail};
use clap::Subcommand;

use crate::{
    agent_bin,
    bench_rounds::{median, read_rounds},
    build, exec, root, step,
};

#[derive(Subcommand)]
pub enum Bench {
    /// ns per syscall (getppid, 1-byte read) untraced, under bpftrace (empty, count per
    /// cgroup+syscall, count+latency histogram) and under `palisade agent`, interleaved.
    ///
    /// With `--vm 6.1|6.12|all`: inside Debian's kernels under qemu (TCG), the two hook pairs
    /// syscall telemetry can ride, each against its empty pair: raw tracepoints
    /// sys_enter/sys_exit and fentry/fexit on x64_sys_call (this host refuses fentry).
    Syscalls {
        /// Calls per measurement (default: 2,000,000; 200,000 with --vm, where TCG makes a
        /// syscall cost microseconds).
        #[arg(short = 'n', long)]
        calls: Option<u64>,
        /// Repetitions of every case (default: 15; 5 with --vm). Medians are reported, and the
        /// quartiles of the per-repetition ratios: on a VM that shares its host, the floor moves
        /// by tens of ns between repetitions, so many short ones say more than a few long ones.
        #[arg(short, long)]
        reps: Option<u32>,
        /// Run in the VM of this kernel: 6.1, 6.12 or all.
        #[arg(long, value_name = "KERNEL")]
        vm: Option<String>,
        /// With --vm: use the debug agent build (the eBPF programs are the same release-built
        /// object in both builds; only the idle agent's userspace differs).
        #[arg(long, requires = "vm")]
        debug_agent: bool,
    },
    /// Userspace cost of a scrape (cgroupfs reads + render) with 0, 100 and 1,000 simulated
    /// containers (fixture tree), and the exec events/s the pipeline sustains with zero loss.
    Scrape {
        /// Scrapes per size.
        #[arg(long, default_value_t = 20)]
        scrapes: usize,
        /// Execs per loop in the event throughput part (two loops run in parallel).
        #[arg(long, default_value_t = 5000)]
        execs: u32,
    },
    /// The live release agent with 1,000 real cgroups, each with a process that made a few
    /// syscalls: series per container, series dropped, CPU per scrape (plain and gzip), page
    /// size, concurrent scrapes, RSS.
    Scale {
        /// Cgroups (each with one process).
        #[arg(long, default_value_t = 1000)]
        containers: usize,
        /// Scrapes per case.
        #[arg(long, default_value_t = 20)]
        scrapes: u32,
        /// Record the agent with `perf record -g` during the plain scrapes into this file.
        #[arg(long, value_name = "FILE")]
        perf: Option<PathBuf>,
        /// Also run this agent binary (another build, e.g. main's) with the default config on
        /// the same cgroups, its batches interleaved with this build's, and print this build's
        /// numbers as ratios of it.
        #[arg(long, value_name = "BIN")]
        against: Option<PathBuf>,
    },
    /// Events per second the release agent delivers to its JSON log, every loss counted: a
    /// `log` rule on getppid (rate limiting off) in a generator's cgroup that makes an exact
    /// number of calls; produced, delivered, each counted loss, unaccounted (must be 0).
    Events {
        /// getppid calls of the generator's loop (plus a warm-up of 1/50 of that).
        #[arg(short = 'n', long, default_value_t = 1_000_000)]
        calls: u64,
        /// Record the agent with `perf record -g` during the run into this file.
        #[arg(long, value_name = "FILE")]
        perf: Option<PathBuf>,
        /// The agent's violation ring buffer (`policy.events_buffer_kib`), KiB.
        #[arg(long, default_value_t = 256)]
        ring_kib: u32,
        /// Run target/release/palisade as it is (no build first).
        #[arg(long)]
        no_build: bool,
        /// Another palisade binary to measure (e.g. an older build, for a before/after);
        /// implies --no-build.
        #[arg(long, value_name = "FILE")]
        agent: Option<PathBuf>,
    },
    /// Loopback TCP throughput (bulk transfer) and connections per second, without and with
    /// the agent, interleaved; medians and ratios.
    Net {
        /// MiB per bulk transfer.
        #[arg(long, default_value_t = 2048)]
        mib: u64,
        /// Connections per connection-rate run.
        #[arg(long, default_value_t = 5000)]
        connections: u32,
        /// Repetitions of each case.
        #[arg(short, long, default_value_t = 3)]
        reps: u32,
    },
    /// What the policy sys_enter hook adds per syscall (cgroups without and with a policy),
    /// as paired differences against the same agent with the hook detached.
    Policy {
        /// Calls per measurement.
        #[arg(short = 'n', long, default_value_t = 2_000_000)]
        calls: u64,
        /// Paired rounds (medians are reported).
        #[arg(short, long, default_value_t = 15)]
        rounds: u32,
    },
    /// What the exec policy hook adds per fork+exec in a cgroup with exec rules, as paired
    /// differences against the same agent with the hook detached: the hook on the file
    /// executed (kernel BTF) and the fallback on the path given (`policy.kernel_btf` pointed
    /// nowhere), in one run.
    Exec {
        /// fork+execs of /usr/bin/true per measurement.
        #[arg(short = 'n', long, default_value_t = 2000)]
        execs: u32,
        /// Paired rounds per hook (medians are reported).
        #[arg(short, long, default_value_t = 9)]
        rounds: u32,
    },
    /// Start-to-exit time of /bin/true: plain `palisade run` against bwrap with the same
    /// namespaces (over the bundle's rootfs and over the host tree read-only), Docker's profile
    /// against crun and runc (warm filter cache and first launch), and the agent handshake;
    /// every case once per round in a rotated order, pinned to one CPU; paired ratios.
    Launch {
        /// Rounds (each runs every case once).
        #[arg(short, long, default_value_t = 30)]
        rounds: u32,
        /// Pause before each run, in ms: a launch right after another finds the kernel's
        /// cgroup migration lock still in its fast state and skips the RCU grace period a
        /// lone launch waits for when it moves a task between cgroups (runc, crun; 0 times
        /// launches back to back).
        #[arg(long, default_value_t = 100)]
        gap_ms: u64,
    },
}

pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Syscalls {
            calls,
            reps,
            vm: Some(kernel),
            debug_agent,
        } => crate::bench_vm::run(&crate::bench_vm::VmBench {
            kernel: &kernel,
            calls: calls.unwrap_or(200_000),
            reps: reps.unwrap_or(5),
            debug_agent,
        }),
        Bench::Syscalls {
            calls,
            reps,
            vm: None,
            ..
        } => syscalls(calls.unwrap_or(2_000_000), reps.unwrap_or(15)),
        Bench::Net {
            mib,
            connections,
            reps,
        } => {
            build(true)?;
            crate::bench_agent::net(mib, connections, reps)
        }
        Bench::Scrape { scrapes, execs } => {
            build(true)?;
            crate::bench_agent::scrape(scrapes)?;
            crate::bench_agent::exec_events(execs)
        }
        Bench::Scale {
            containers,
            scrapes,
            perf,
            against,
        } => {
            build(true)?;
            crate::bench_scale::scale(containers, scrapes, perf.as_deref(), against.as_deref())
        }
        Bench::Events {
            calls,
            ring_kib,
            perf,
            no_build,
            agent,
        } => {
            if !no_build && agent.is_none() {
                build(true)?;
            }
            let bin = agent.unwrap_or_else(|| agent_bin(true));
            crate::bench_events::events(&bin, calls, ring_kib, perf.as_deref())
        }
        Bench::Launch { rounds, gap_ms } => {
            build(true)?;
            crate::bench_launch::launch(rounds, Duration::from_millis(gap_ms))
        }
        Bench::Policy { calls, rounds } => {
            build(true)?;
            crate::bench_policy::policy(calls, rounds)
        }
        Bench::Exec { execs, rounds } => {
            build(true)?;
            crate::bench_exec::exec(execs, rounds)
        }
    }
}

/// The peer benchmark scripts in the repository's `bench/` folder.
fn peer_bench_dir(script: &str) -> Result<PathBuf> {
    let dir = root().join("bench");
    if !dir.join(script).exists() {
        bail!("{} missing", dir.join(script).display());
    }
    Ok(dir)
}

fn syscalls(calls: u64, reps: u32) -> Result<()> {
    let dir = peer_bench_dir("syscall_overhead.sh")?;
    build(true)?;
    let tmp = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let raw = tmp.join("raw.tsv");
    step(&format!(
        "syscall overhead: n={calls} reps={reps}; cases base, empty raw tracepoints (floor) and their sys_exit alone, bpftrace x3, palisade (default: counts, errors, one call in 8 timed) and palisade timing every call (syscalls.latency_sample: 1), all cgroups"
    ));
    let bin = agent_bin(true);
    // the floor: the probe object's empty program on sys_enter and sys_exit, loaded by the
    // agent binary itself; every case waits for its ready file, and every palisade run is
    // checked to have counted exactly the loop's calls (a late attach cannot look cheap)
    let floor = format!("{} debug empty-hooks --ready-file @READY@", bin.display());
    // the empty sys_exit program alone: the pair less it is the entry's dispatch
    let floor_exit = format!(
        "{} debug empty-hooks --hook raw_tracepoint_exit --ready-file @READY@",
        bin.display()
    );
    let every = tmp.join("every-call.yaml");
    std::fs::write(&every, "syscalls:\n  latency_sample: 1\n")?;
    let agent_every = format!(
        "{} agent --config {} --listen 127.0.0.1:0 --ready-file @READY@ --control-socket {}",
        bin.display(),
        every.display(),
        tmp.join("agent-every.sock").display()
    );
    exec(
        Command::new("bash")
            .arg(dir.join("syscall_overhead.sh"))
            .args(["-n", &calls.to_string(), "-r", &reps.to_string(), "-o"])
            .arg(&raw)
            .env("FLOOR_CMD", floor)
            .env(
                "CASES",
                "base bt_noop bt_count bt_lat floor floor_exit agent agent_every_call",
            )
            .env("CMD_floor_exit", floor_exit)
            .env("CMD_agent_every_call", agent_every)
            .arg("--")
            .arg(&bin)
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--ready-file",
                "@READY@",
            ])
            .arg("--control-socket")
            .arg(tmp.join("agent.sock")),
    )?;

    let rounds = read_rounds(&raw)?;
    let _ = std::fs::remove_dir_all(&tmp);
    println!("\nadded cost per syscall (median ns over base); Palisade's added cost as a ratio to");
    println!("the empty raw-tracepoint pair (floor) and to bpftrace counting per cgroup+syscall,");
    println!("as the median of the per-repetition ratios:");
    println!(
        "{:<8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   {:>7} {:>7} {:>7} {:>7}",
        "mode",
        "base",
        "floor",
        "exit",
        "bt_noop",
        "bt_count",
        "bt_lat",
        "palisade",
        "every",
        "/floor",
        "/count",
        "/lat",
        "/every"
    );
    for mode in ["getppid", "read"] {
        let med =
            |case: &str| median(&mut rounds.series(mode, case).into_values().collect::<Vec<_>>());
        let ratio = |over: &str| rounds.ratio(mode, "agent", over);
        let b = med("base");
        println!(
            "{:<8} {:>8.1} {:>+9.1} {:>+9.1} {:>+9.1} {:>+9.1} {:>+9.1} {:>+9.1} {:>+9.1}   {:>7.2} {:>7.2} {:>7.2} {:>7.2}",
            mode,
            b,
            med("floor") - b,
            med("floor_exit") - b,
            med("bt_noop") - b,
            med("bt_count") - b,
            med("bt_lat") - b,
            med("agent") - b,
            med("agent_every_call") - b,
            ratio("floor"),
            ratio("bt_count"),
            ratio("bt_lat"),
            ratio("agent_every_call"),
        );
    }
    println!("\nthe same ratios with the quartiles of the per-repetition ratios, median (q1-q3):");
    for mode in ["getppid", "read"] {
        println!(
            "{:<8} /floor {}   /count {}   exit/floor {}",
            mode,
            rounds.ratio_spread(mode, "agent", "floor"),
            rounds.ratio_spread(mode, "agent", "bt_count"),
            rounds.ratio_spread(mode, "floor_exit", "floor"),
        );
    }
    println!("(targets: /floor <= 1.5, /count <= 0.8. Palisade also counts errors per errno and");
    println!(" times one call in 8 into a histogram, which bt_count does not; `every` is the");
    println!(" agent timing every call, syscalls.latency_sample: 1, and /every palisade over it;");
    println!(
        " `exit` is the empty sys_exit program alone: the floor less it is the entry's dispatch)"
    );
    Ok(())
}
