//! Benchmarks, always as ratios to a baseline measured in the same run.
use std::{collections::BTreeMap, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use crate::{agent_bin, build, exec, root, step};

#[derive(Subcommand)]
pub enum Bench {
    /// ns per syscall (getppid, 1-byte read) untraced, under bpftrace (empty, count per
    /// cgroup+syscall, count+latency histogram) and under `palisade agent`, interleaved.
    Syscalls {
        /// Calls per measurement.
        #[arg(short = 'n', long, default_value_t = 5_000_000)]
        calls: u64,
        /// Repetitions of every case (medians are reported).
        #[arg(short, long, default_value_t = 5)]
        reps: u32,
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
    /// Start-to-exit time of /bin/true from the same OCI bundle with Docker's seccomp profile
    /// under `palisade run`, `crun run` and `runc run` (plus spawn, unshare, bwrap), measured
    /// with hyperfine in one run; prints palisade/crun and palisade/runc.
    Launch {
        /// Timed runs per case (after 3 warm-up runs).
        #[arg(short, long, default_value_t = 50)]
        runs: u32,
    },
}

pub fn run(which: Bench) -> Result<()> {
    match which {
        Bench::Syscalls { calls, reps } => syscalls(calls, reps),
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
        Bench::Launch { runs } => launch(runs),
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

/// The shared peer scripts (`../shared/bench` next to the repository, or `$PALISADE_PEER_BENCH`).
fn peer_bench_dir(script: &str) -> Result<PathBuf> {
    let dir = std::env::var_os("PALISADE_PEER_BENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/bench"));
    if !dir.join(script).exists() {
        bail!(
            "peer benchmark scripts not found in {}; set PALISADE_PEER_BENCH to the folder holding {script}",
            dir.display()
        );
    }
    Ok(dir)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn syscalls(calls: u64, reps: u32) -> Result<()> {
    let dir = peer_bench_dir("syscall_overhead.sh")?;
    build(true)?;
    let tmp = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let raw = tmp.join("raw.tsv");
    step(&format!(
        "syscall overhead: n={calls} reps={reps}; cases base, bpftrace x3, palisade (full accounting, all cgroups)"
    ));
    exec(
        Command::new("bash")
            .arg(dir.join("syscall_overhead.sh"))
            .args(["-n", &calls.to_string(), "-r", &reps.to_string(), "-o"])
            .arg(&raw)
            .arg("--")
            .arg(agent_bin(true))
            .args(["agent", "--listen", "127.0.0.1:0"]),
    )?;

    let text = std::fs::read_to_string(&raw).with_context(|| format!("read {}", raw.display()))?;
    let mut by: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if let [_, case, mode, ns] = f.as_slice()
            && let Ok(ns) = ns.parse::<f64>()
        {
            by.entry(((*mode).to_owned(), (*case).to_owned()))
                .or_default()
                .push(ns);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "\nadded cost per syscall (median ns over base) and Palisade's ratio to each bpftrace case:"
    );
    println!(
        "{:<8} {:>8} {:>10} {:>10} {:>10} {:>10}   {:>8} {:>8}",
        "mode", "base", "bt_noop", "bt_count", "bt_lat", "palisade", "/count", "/lat"
    );
    for mode in ["getppid", "read"] {
        let mut get = |case: &str| {
            by.get_mut(&(mode.to_owned(), case.to_owned()))
                .map_or(f64::NAN, |v| median(v))
        };
        let base = get("base");
        let (noop, count, lat, agent) =
            (get("bt_noop"), get("bt_count"), get("bt_lat"), get("agent"));
        println!(
            "{:<8} {:>8.1} {:>+10.1} {:>+10.1} {:>+10.1} {:>+10.1}   {:>8.2} {:>8.2}",
            mode,
            base,
            noop - base,
            count - base,
            lat - base,
            agent - base,
            (agent - base) / (count - base),
            (agent - base) / (lat - base)
        );
    }
    println!(
        "(/count < 1: Palisade adds less per syscall than bpftrace counting per cgroup+syscall,"
    );
    println!(" while also timing every call into a histogram and counting errors per errno)");
    Ok(())
}

/// Median seconds from a hyperfine JSON export.
fn hyperfine_median(path: &std::path::Path) -> Result<f64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    v["results"][0]["median"]
        .as_f64()
        .with_context(|| format!("no median in {}", path.display()))
}

fn launch(runs: u32) -> Result<()> {
    let dir = peer_bench_dir("launch_latency.sh")?;
    build(true)?;
    let tmp = std::env::temp_dir().join(format!("palisade-bench-launch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    step(&format!(
        "launch latency: /bin/true from one bundle with Docker's seccomp profile; {runs} runs per case"
    ));
    // the agent socket points nowhere: this measures the launcher alone (one warning per run,
    // which hyperfine discards)
    let palisade = format!(
        "{} run --name palisade-bench-launch --agent-socket {}/no-agent.sock --bundle @BUNDLE_SECCOMP@",
        agent_bin(true).display(),
        tmp.display()
    );
    exec(
        Command::new("bash")
            .arg(dir.join("launch_latency.sh"))
            .args(["-r", &runs.to_string(), "-o"])
            .arg(tmp.join("json"))
            .arg("--")
            .args(palisade.split(' ')),
    )?;
    // palisade caches compiled filters (/run/palisade/seccomp-cache): also time the first
    // launch of a profile, when libseccomp compiles it, as crun and runc do on every launch
    step("launch latency: palisade run with the filter cache emptied before every run");
    let bundle = tmp.join("b");
    exec(
        Command::new("bash")
            .arg(dir.join("make_bundle.sh"))
            .arg(&bundle)
            .arg("/bin/true"),
    )?;
    let cold_cmd = palisade.replace(
        "@BUNDLE_SECCOMP@",
        &bundle.join("seccomp").to_string_lossy(),
    );
    exec(
        Command::new("hyperfine")
            .args([
                "-N",
                "--style",
                "basic",
                "--runs",
                &runs.to_string(),
                "--warmup",
                "3",
            ])
            .args([
                "--prepare",
                "rm -rf /run/palisade/seccomp-cache",
                "--export-json",
            ])
            .arg(tmp.join("cold.json"))
            .arg(&cold_cmd),
    )?;
    let median = |case: &str| hyperfine_median(&tmp.join("json").join(format!("{case}.json")));
    let warm = median("extra")?;
    let cold = hyperfine_median(&tmp.join("cold.json"))?;
    println!("\nmedian start-to-exit of /bin/true, same bundle, Docker's seccomp profile:");
    println!("  palisade run              {:8.2} ms", warm * 1e3);
    println!(
        "  palisade run, first run   {:8.2} ms   (filter compiled, cache empty)",
        cold * 1e3
    );
    for peer in ["crun+seccomp", "runc+seccomp"] {
        let short = peer.trim_end_matches("+seccomp");
        match median(peer) {
            Ok(m) => println!(
                "  {short:<24}  {:8.2} ms   palisade/{short} = {:.2} (first run: {:.2})",
                m * 1e3,
                warm / m,
                cold / m
            ),
            Err(e) => println!("  {peer}: no result ({e:#})"),
        }
    }
    println!(
        "(ratio < 1: palisade starts and reaps the workload faster; target: palisade <= crun)"
    );
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}
