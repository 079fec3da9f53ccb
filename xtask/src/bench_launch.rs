//! `cargo xtask bench launch`: start-to-exit time of `/bin/true` in a sandbox, Palisade and its
//! peers, every case once per round in a rotated order, all pinned to one CPU, so drift and the
//! machine's other load fall on every case alike; medians and paired (per-round) ratios.
//!
//! Cases: `spawn` (fork+exec floor), `bwrap --unshare-all` over the bundle's rootfs and over
//! the host tree read-only (the peers of plain `palisade run`), `palisade run` without seccomp
//! (`--seccomp unconfined`) over the same two trees, `palisade run` of the OCI bundle with
//! Docker's profile (filter cache warm, and emptied before every run: the first launch of a
//! profile), `crun` and `runc` with the same bundle, and `palisade run` registering with a live
//! agent (the handshake; `--require-agent`, so a run that did not register fails) as its own
//! row. crun refuses hybrid hosts: there it runs in a private mount namespace that hides the
//! unified `cgroup.controllers`, and that workaround, timed as a case of its own, is taken off
//! crun's time round by round. Only runs that exit 0 are timed; failures are counted and shown.
//! Each run starts after a pause (`--gap-ms`, 100 by default), as a lone launch on a quiet host
//! does: moving a task between cgroups by pid takes the kernel's global cgroup migration lock
//! for writing, and its first writer in a while waits for an RCU grace period (12–21 ms on the
//! CI host) that a launch right behind another skips.
use std::{
    collections::BTreeMap,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{agent_bin, exec, root, step};

struct Case {
    name: &'static str,
    /// The command (run with `taskset -c CPU`).
    argv: Vec<String>,
    /// Run before each timed run, untimed.
    prepare: Option<Vec<String>>,
}

fn case(name: &'static str, argv: &[&str]) -> Case {
    Case {
        name,
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        prepare: None,
    }
}

fn run_quiet(argv: &[String]) -> Result<bool> {
    Ok(Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("start {}", argv[0]))?
        .success())
}

/// Wall time of one pinned run.
fn timed(cpu: usize, argv: &[String]) -> Result<Option<Duration>> {
    let t = Instant::now();
    let ok = Command::new("taskset")
        .arg("-c")
        .arg(cpu.to_string())
        .args(argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    Ok(ok.then(|| t.elapsed()))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// crun refuses hybrid hosts whose cgroup2 root lists a controller; hide that one file from it
/// in a private mount namespace (nothing outside changes).
fn crun_wrap() -> Vec<String> {
    let f = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
    let hybrid = std::fs::read_to_string(f).is_ok_and(|s| !s.trim().is_empty());
    if !hybrid {
        return Vec::new();
    }
    [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount --bind /dev/null /sys/fs/cgroup/unified/cgroup.controllers && exec \"$@\"",
        "sh",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Starts an agent on `socket` for the handshake case.
fn start_agent(dir: &Path) -> Result<std::process::Child> {
    let ready = dir.join("agent.ready");
    let mut agent = Command::new(agent_bin(true))
        .args(["agent", "--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .arg("--control-socket")
        .arg(dir.join("agent.sock"))
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if Instant::now() > deadline {
            let _ = agent.kill();
            let _ = agent.wait();
            bail!("agent did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(agent)
}

pub fn launch(rounds: u32, gap: Duration) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("palisade-bench-launch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let agent_dir = tmp.join("agent");
    std::fs::create_dir_all(&agent_dir)?;
    let r = (|| -> Result<()> {
        exec(
            Command::new("bash")
                .arg(root().join("bench/make_bundle.sh"))
                .arg(tmp.join("b"))
                .arg("/bin/true"),
        )?;
        let agent = start_agent(&agent_dir);
        let result = agent.and_then(|a| {
            let r = measure(&tmp, rounds, gap);
            let mut a = a;
            let _ = Command::new("kill")
                .args(["-INT", &a.id().to_string()])
                .status();
            let _ = a.wait();
            r
        });
        for rt in ["runc", "crun"] {
            let state = tmp.join(format!("state-{rt}"));
            let _ = Command::new(rt)
                .arg("--root")
                .arg(&state)
                .args(["delete", "-f", "palisade-bench-ll"])
                .stderr(Stdio::null())
                .status();
        }
        result
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    r
}

fn measure(tmp: &Path, rounds: u32, gap: Duration) -> Result<()> {
    let b = tmp.join("b");
    let rootfs = b.join("rootfs").display().to_string();
    let plain = b.join("plain").display().to_string();
    let seccomp = b.join("seccomp").display().to_string();
    let bin = agent_bin(true).display().to_string();
    let nosock = tmp.join("no-agent.sock").display().to_string();
    let sock = tmp.join("agent/agent.sock").display().to_string();
    let state = |rt: &str| tmp.join(format!("state-{rt}")).display().to_string();
    let id = "palisade-bench-ll";
    let cpu = std::thread::available_parallelism().map_or(0, |n| n.get() - 1);
    let run = |name: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [bin.as_str(), "run", "--name", name, "--agent-socket"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        v.push(if extra.contains(&"--require-agent") {
            sock.clone()
        } else {
            nosock.clone()
        });
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };
    let mut cases = vec![
        case("spawn", &["/bin/true"]),
        case(
            "bwrap rootfs",
            &[
                "bwrap",
                "--unshare-all",
                "--ro-bind",
                &rootfs,
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "/bin/true",
            ],
        ),
        case(
            "bwrap host ro",
            &[
                "bwrap",
                "--unshare-all",
                "--ro-bind",
                "/",
                "/",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "/bin/true",
            ],
        ),
        Case {
            name: "palisade rootfs",
            argv: run(
                "bench-plain",
                &[
                    "--seccomp",
                    "unconfined",
                    "--rootfs",
                    &rootfs,
                    "--",
                    "/bin/true",
                ],
            ),
            prepare: None,
        },
        Case {
            name: "palisade host ro",
            argv: run(
                "bench-host",
                &["--seccomp", "unconfined", "--", "/bin/true"],
            ),
            prepare: None,
        },
        Case {
            name: "palisade docker",
            argv: run("bench-docker", &["--bundle", &seccomp]),
            prepare: None,
        },
        Case {
            name: "palisade docker 1st",
            argv: run("bench-docker-cold", &["--bundle", &seccomp]),
            prepare: Some(vec![
                "rm".into(),
                "-rf".into(),
                "/run/palisade/seccomp-cache".into(),
            ]),
        },
        Case {
            name: "palisade handshake",
            argv: run(
                "bench-agent",
                &[
                    "--require-agent",
                    "--seccomp",
                    "unconfined",
                    "--rootfs",
                    &rootfs,
                    "--",
                    "/bin/true",
                ],
            ),
            prepare: None,
        },
        case(
            "runc docker",
            &[
                "runc",
                "--root",
                &state("runc"),
                "run",
                "--bundle",
                &seccomp,
                id,
            ],
        ),
        case(
            "runc",
            &[
                "runc",
                "--root",
                &state("runc"),
                "run",
                "--bundle",
                &plain,
                id,
            ],
        ),
    ];
    let wrap = crun_wrap();
    if !wrap.is_empty() {
        // what the workaround itself costs, taken off crun's times in the ratios
        let mut argv = wrap.clone();
        argv.push("/bin/true".into());
        cases.push(Case {
            name: "crun workaround",
            argv,
            prepare: None,
        });
    }
    for (name, bundle) in [("crun docker", &seccomp), ("crun", &plain)] {
        let mut argv = wrap.clone();
        argv.extend(
            [
                "crun",
                "--cgroup-manager=cgroupfs",
                "--root",
                &state("crun"),
                "run",
                "--bundle",
                bundle,
                id,
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        cases.push(Case {
            name,
            argv,
            prepare: None,
        });
    }
    // each case once, untimed: a case that does not work here is reported and left out
    let mut failed = Vec::new();
    cases.retain(|c| {
        let ok = run_quiet(&c.argv).unwrap_or(false);
        if !ok {
            let out = Command::new(&c.argv[0]).args(&c.argv[1..]).output();
            let why = out
                .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
                .unwrap_or_else(|e| e.to_string());
            failed.push(format!("{}: {}", c.name, why.lines().last().unwrap_or("")));
        }
        ok
    });
    step(&format!(
        "launch of /bin/true: {} cases x {rounds} rounds, rotated order, pinned to CPU {cpu}, {} ms pause before each",
        cases.len(),
        gap.as_millis()
    ));
    let mut times: BTreeMap<&str, Vec<(u32, f64)>> = BTreeMap::new();
    let mut failures: BTreeMap<&str, u32> = BTreeMap::new();
    let n = cases.len();
    for round in 0..rounds {
        for k in 0..n {
            let c = &cases[(k + round as usize) % n];
            if let Some(p) = &c.prepare {
                run_quiet(p)?;
            }
            std::thread::sleep(gap);
            match timed(cpu, &c.argv)? {
                Some(d) => times
                    .entry(c.name)
                    .or_default()
                    .push((round, d.as_secs_f64() * 1e3)),
                // a run that failed did not do the work: not timed, and said below
                None => *failures.entry(c.name).or_default() += 1,
            }
        }
    }
    let med = |name: &str| {
        median(
            &mut times
                .get(name)
                .map(|v| v.iter().map(|(_, t)| *t).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    };
    let by_round = |name: &str| -> BTreeMap<u32, f64> {
        times
            .get(name)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    };
    // crun's times less the workaround's in the same round (nothing to take off elsewhere)
    let workaround = by_round("crun workaround");
    let net = |name: &str| -> BTreeMap<u32, f64> {
        let mut t = by_round(name);
        if name.starts_with("crun") && !workaround.is_empty() {
            t = t
                .into_iter()
                .filter_map(|(r, v)| workaround.get(&r).map(|w| (r, v - w)))
                .collect();
        }
        t
    };
    // ratio of two cases within each round, then the median
    let paired = |a: &str, b: &str| {
        let (x, y) = (net(a), net(b));
        median(
            &mut x
                .iter()
                .filter_map(|(r, t)| y.get(r).map(|u| t / u))
                .collect::<Vec<_>>(),
        )
    };
    println!("\nmedian start-to-exit of /bin/true, ms ({rounds} rounds):");
    for c in &cases {
        println!(
            "  {:<22} {:8.2}  (n={})",
            c.name,
            med(c.name),
            times.get(c.name).map_or(0, Vec::len)
        );
    }
    for (name, n) in &failures {
        println!("  {name}: {n} of {rounds} runs failed (left out of the medians and ratios)");
    }
    for f in &failed {
        println!("  left out: {f}");
    }
    println!("\npaired ratios (median of per-round ratios):");
    if !workaround.is_empty() {
        println!(
            "  (crun refuses this hybrid host; it runs behind the workaround, whose time in the \
             same round is taken off crun's)"
        );
    }
    for (a, b, target) in [
        ("palisade rootfs", "bwrap rootfs", "target <= 1.2"),
        ("palisade host ro", "bwrap host ro", "target <= 1.2"),
        ("palisade docker", "crun docker", ""),
        ("palisade docker 1st", "crun docker", "target <= 0.5"),
        ("palisade docker", "runc docker", ""),
        ("palisade docker 1st", "runc docker", "target <= 0.5 (runc)"),
        (
            "palisade handshake",
            "palisade rootfs",
            "the agent handshake",
        ),
    ] {
        println!("  {a:<20} / {b:<16} {:6.2}   {target}", paired(a, b));
    }
    Ok(())
}
