//! `cargo xtask bench scrape`: scrape cost at several sizes and exec event throughput.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{agent_bin, step};

/// Scrape cost at 0, 100 and 1,000 simulated containers, as ratios to the smallest size.
pub fn scrape(scrapes: usize) -> Result<()> {
    step(&format!(
        "scrape cost, {scrapes} scrapes per size (fixture cgroup tree, no eBPF)"
    ));
    let mut rows = Vec::new();
    for n in [0usize, 100, 1000] {
        let out = Command::new(agent_bin(true))
            .args(["debug", "scrape-bench", "--containers", &n.to_string()])
            .args(["--scrapes", &scrapes.to_string()])
            .output()
            .context("run palisade debug scrape-bench")?;
        if !out.status.success() {
            bail!(
                "scrape-bench failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        rows.push((
            n,
            field("series"),
            field("wall_ms_per_scrape"),
            field("cpu_ms_per_scrape"),
            field("bytes"),
        ));
    }
    println!(
        "\n{:>10} {:>9} {:>12} {:>12} {:>10} {:>14}",
        "containers", "series", "wall ms", "cpu ms", "MiB", "cpu us/series"
    );
    for (n, series, wall, cpu, bytes) in &rows {
        println!(
            "{n:>10} {series:>9} {wall:>12.2} {cpu:>12.2} {:>10.2} {:>14.2}",
            bytes / 1048576.0,
            cpu * 1000.0 / series.max(1.0)
        );
    }
    if let (Some(a), Some(b)) = (rows.get(1), rows.get(2)) {
        println!(
            "1,000 vs 100 containers: {:.1}x the CPU for {:.1}x the series",
            b.3 / a.3,
            b.1 / a.1
        );
    }
    Ok(())
}

fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

fn metric(text: &str, line_prefix: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Two loops of `n` execs of /bin/true in `cgroup`; returns execs per second.
fn exec_loops(cgroup: &Path, n: u32) -> Result<f64> {
    let script = format!(
        "echo 0 > {}/cgroup.procs && i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done",
        cgroup.display()
    );
    let t = Instant::now();
    let kids: Vec<Child> = (0..2)
        .map(|_| Command::new("/bin/sh").args(["-c", &script]).spawn())
        .collect::<std::io::Result<_>>()?;
    for mut k in kids {
        let st = k.wait()?;
        if !st.success() {
            bail!("exec loop failed: {st}");
        }
    }
    Ok(2.0 * f64::from(n) / t.elapsed().as_secs_f64())
}

/// Exec events per second through kernel, ring buffer, event log, with zero loss.
pub fn exec_events(n: u32) -> Result<()> {
    step(&format!(
        "exec event throughput: 2 loops x {n} execs of /bin/true, without and with the agent"
    ));
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists())
        .context("no cgroup2 mount")?;
    let cg = unified.join(format!("palisade-bench-execs-{}", std::process::id()));
    std::fs::create_dir(&cg).with_context(|| format!("mkdir {}", cg.display()))?;
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&cg)?.ino()
    };
    let tmp = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        let base = exec_loops(&cg, n)?;
        let events = tmp.join("events.jsonl");
        let ready = tmp.join("ready");
        let mut agent = Command::new(agent_bin(true))
            .args(["agent", "--listen", "127.0.0.1:0", "--control-socket"])
            .arg(tmp.join("agent.sock"))
            .arg("--events")
            .arg(&events)
            .arg("--ready-file")
            .arg(&ready)
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            if let Ok(a) = std::fs::read_to_string(&ready) {
                break a.trim().to_owned();
            }
            if Instant::now() > deadline {
                let _ = agent.kill();
                bail!("agent did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let traced = exec_loops(&cg, n)?;
        std::thread::sleep(Duration::from_secs(1));
        let m = http_get(&addr, "/metrics")?;
        // SAFETY-free: plain signal to our child.
        let _ = Command::new("kill")
            .args(["-INT", &agent.id().to_string()])
            .status();
        let _ = agent.wait();
        let got = std::fs::read_to_string(&events)?
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| {
                e["type"] == "exec"
                    && e["container"]["cgroup_id"] == cgroup_id
                    && e["process"]["exe"] == "/bin/true"
            })
            .count();
        let want = 2 * n as usize;
        println!(
            "\nexecs/s without agent {base:.0}, with agent {traced:.0} (ratio {:.2})",
            traced / base
        );
        println!(
            "exec events received {got} of {want} ({:.0} events/s); ringbuf_full {} log drops {}",
            got as f64 * traced / want as f64,
            metric(&m, "palisade_kernel_lost_total{reason=\"ringbuf_full\"} "),
            metric(&m, "palisade_events_dropped_total{sink=\"log\"} "),
        );
        if got != want {
            bail!("lost {} exec events", want - got);
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir(&cg);
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// Starts a release agent with default settings in `dir`; returns it once it serves.
fn start_agent(dir: &Path) -> Result<Child> {
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let mut agent = Command::new(agent_bin(true))
        .args(["agent", "--listen", "127.0.0.1:0", "--control-socket"])
        .arg(dir.join("agent.sock"))
        .arg("--ready-file")
        .arg(&ready)
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready.exists() {
        if Instant::now() > deadline {
            let _ = agent.kill();
            bail!("agent did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(agent)
}

fn stop_agent(mut agent: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &agent.id().to_string()])
        .status();
    let _ = agent.wait();
}

fn last_cpu() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
}

/// `taskset -c CPU PROGRAM`.
fn pinned(cpu: usize, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpu.to_string()).arg(program);
    c
}

/// One bulk transfer of `mib` MiB over loopback; returns MiB/s.
fn bulk(workload: &Path, port: u16, mib: u64) -> Result<f64> {
    let addr = format!("127.0.0.1:{port}");
    // pinned: receiver on CPU 0, sender on the last CPU (the scheduler's placement otherwise
    // swings loopback throughput by 3x on a 2-vCPU VM)
    let mut srv = pinned(0, workload)
        .args(["serve-tcp", &addr, "1"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = srv.stdout.as_mut() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    }
    let t = Instant::now();
    let st = pinned(last_cpu(), workload)
        .args(["send-tcp", &addr, &(mib << 20).to_string()])
        .status()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = srv.wait();
    if !st.success() {
        bail!("bulk sender failed");
    }
    Ok(mib as f64 / secs)
}

/// `n` connections to a server accepting them; returns connections/s.
fn conn_rate(workload: &Path, port: u16, n: u32) -> Result<f64> {
    let addr = format!("127.0.0.1:{port}");
    let mut srv = pinned(0, workload)
        .args(["serve-tcp", &addr, &n.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = srv.stdout.as_mut() {
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
    }
    let t = Instant::now();
    let st = pinned(last_cpu(), workload)
        .args(["connects", &addr, &n.to_string()])
        .status()?;
    let secs = t.elapsed().as_secs_f64();
    let _ = srv.wait();
    if !st.success() {
        bail!("connection loop failed");
    }
    Ok(f64::from(n) / secs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `cargo xtask bench net`.
pub fn net(mib: u64, connections: u32, reps: u32) -> Result<()> {
    step(&format!(
        "loopback TCP: {mib} MiB bulk transfers and {connections}-connection runs, {reps} reps, without/with the agent"
    ));
    let workload = agent_bin(true).with_file_name("net-workload");
    if !workload.exists() {
        bail!(
            "{} missing (built by `cargo xtask build --release`)",
            workload.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("palisade-bench-net-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut port = 23_000u16 + (std::process::id() % 1000) as u16;
    let mut next = || {
        port += 1;
        port
    };
    let (mut bulk_base, mut bulk_agent, mut conn_base, mut conn_agent) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for rep in 0..reps {
        // alternate which case goes first, so drift does not favour one
        for with_agent in if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            let agent = if with_agent {
                Some(start_agent(&dir)?)
            } else {
                None
            };
            let b = bulk(&workload, next(), mib);
            let c = conn_rate(&workload, next(), connections);
            if let Some(a) = agent {
                stop_agent(a);
            }
            let (b, c) = (b?, c?);
            eprintln!("    rep {rep} agent={with_agent}: {b:.0} MiB/s, {c:.0} conn/s");
            if with_agent {
                bulk_agent.push(b);
                conn_agent.push(c);
            } else {
                bulk_base.push(b);
                conn_base.push(c);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // ratios of the two cases within each repetition, then their median: robust to the drift
    // between repetitions on a shared VM
    let paired = |with: &[f64], without: &[f64]| {
        median(with.iter().zip(without).map(|(a, b)| a / b).collect())
    };
    let (pb, pc) = (
        paired(&bulk_agent, &bulk_base),
        paired(&conn_agent, &conn_base),
    );
    let (bb, ba, cb, ca) = (
        median(bulk_base),
        median(bulk_agent),
        median(conn_base),
        median(conn_agent),
    );
    println!(
        "\n{:<22} {:>12} {:>12} {:>8} {:>14}",
        "", "without", "with agent", "ratio", "paired ratio"
    );
    for (what, base, agent, p) in [
        ("bulk TCP MiB/s", bb, ba, pb),
        ("connections/s", cb, ca, pc),
    ] {
        println!(
            "{what:<22} {base:>12.0} {agent:>12.0} {:>8.3} {p:>14.3}",
            agent / base
        );
    }
    println!(
        "bulk throughput loss (paired median): {:.1}% (target <= 5%)",
        (1.0 - pb) * 100.0
    );
    Ok(())
}
