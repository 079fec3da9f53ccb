//! `cargo xtask bench events`: how many events per second the release agent delivers to its
//! JSON log, with every loss counted. The generator knows what it produced: a `log` rule on
//! `getppid` (rate limiting off) in the generator's own cgroup, and `bench/sysbench.c` making
//! exactly `calls + calls / 50` `getppid` calls there (its warm-up and its loop). Each call is
//! one violation; each violation is one `policy_violation` line in the log or a counted loss:
//! the policy ring buffer full or the record left out while the event log was behind
//! (`palisade_policy_events_lost_total`, also reported in the
//! `suppressed` of the next event), or the log sink behind (`palisade_events_dropped_total`).
//! Unaccounted = produced − delivered − counted losses, asserted to be 0.
//!
//! Delivered/s is the log lines of the bench cgroup over the time from the generator's start
//! to the last growth of the log (or to the generator's end, if later) (polled every 2 ms by size, nothing parsed until the end so
//! the bench takes no CPU from the agent while it runs).
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    bench_scale::{cpu_seconds, get},
    root, step,
};

/// The target: events delivered per second.
const TARGET: f64 = 200_000.0;

/// The agent, its cgroup for the generator and its pin directory; removed on drop.
struct Run {
    bin: PathBuf,
    agent: Option<Child>,
    cgroup: PathBuf,
    pins: PathBuf,
    tmp: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = Command::new("kill")
                .args(["-INT", &a.id().to_string()])
                .status();
            let _ = a.wait();
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.cgroup).is_ok() || !self.cgroup.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new(&self.bin)
            .args(["agent", "--cleanup", "--config"])
            .arg(self.tmp.join("agent.yaml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.pins);
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// Sum of every sample of `name` (any labels) whose label text contains each of `with`.
fn sum(page: &str, name: &str, with: &[&str]) -> u64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter(|l| with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

/// What the log holds, over the log and its rotated files.
#[derive(Default)]
struct Logged {
    /// `policy_violation` lines of the bench cgroup with a process: one violation each.
    delivered: u64,
    /// The sum of their `suppressed` (and of the summary lines').
    suppressed: u64,
    /// Every `policy_violation` line (summaries too).
    violation_lines: u64,
}

fn count_log(log: &Path, cgroup_id: u64) -> Result<Logged> {
    let needle = format!("\"cgroup_id\":{cgroup_id},");
    let mut n = Logged::default();
    let mut files = vec![log.to_path_buf()];
    for i in 1..=4 {
        files.push(PathBuf::from(format!("{}.{i}", log.display())));
    }
    for f in files.iter().filter(|f| f.exists()) {
        let r = BufReader::new(std::fs::File::open(f)?);
        for line in r.lines() {
            let line = line?;
            if !line.starts_with("{\"type\":\"policy_violation\"") {
                continue;
            }
            n.violation_lines += 1;
            if !line.contains(&needle) {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("a log line that is not JSON: {line}"))?;
            n.delivered += u64::from(v.get("process").is_some());
            n.suppressed += v["violation"]["suppressed"].as_u64().unwrap_or(0);
        }
    }
    Ok(n)
}

fn wait_applied(bin: &Path, socket: &Path, cgroup_id: u64, deadline: Instant) -> Result<()> {
    loop {
        let out = Command::new(bin)
            .args(["policy", "status", "--output", "json", "--socket"])
            .arg(socket)
            .output()?;
        if let Ok(s) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            let on = s["policies"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| {
                    p["cgroups"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["cgroup_id"] == cgroup_id))
                })
            });
            let hooked = s["hooks"]
                .as_array()
                .is_some_and(|h| h.iter().any(|x| x == "syscalls"));
            if on && hooked {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the bench policy never applied: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cargo xtask bench events`.
pub fn events(agent: &Path, calls: u64, ring_kib: u32, perf: Option<&Path>) -> Result<()> {
    let produced = calls + calls / 50;
    step(&format!(
        "events: a log rule on getppid, rate limiting off, {produced} calls in one cgroup"
    ));
    let pid = std::process::id();
    let tmp = std::env::temp_dir().join(format!("palisade-bench-events-{pid}"));
    std::fs::create_dir_all(&tmp)?;
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists())
        .context("no cgroup2 mount")?;
    let name = format!("palisade-bench-events-{pid}");
    let mut run = Run {
        bin: agent.to_path_buf(),
        agent: None,
        cgroup: unified.join(&name),
        pins: PathBuf::from(format!("/sys/fs/bpf/palisade-bench-events-{pid}")),
        tmp: tmp.clone(),
    };
    std::fs::create_dir(&run.cgroup).with_context(|| format!("mkdir {}", run.cgroup.display()))?;
    let cgroup_id = {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&run.cgroup)?.ino()
    };
    let gen_bin = tmp.join("sysbench");
    crate::exec(
        Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&gen_bin)
            .arg(root().join("bench/sysbench.c")),
    )?;
    std::fs::write(
        tmp.join("policy.yaml"),
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: events-bench\nspec:\n  selector:\n    cgroup: \"/{name}\"\n  mode: enforce\n  syscalls:\n    action: log\n    deny: [getppid]\n"
        ),
    )?;
    let log = tmp.join("events.jsonl");
    // the default size is left unsaid (an agent older than the key runs too)
    let ring = if ring_kib == 256 {
        String::new()
    } else {
        format!("  events_buffer_kib: {ring_kib}\n")
    };
    // one log file big enough for every event (no rotation during the run)
    let mib = (produced * 1024 / (1 << 20)).max(64) + 64;
    std::fs::write(
        tmp.join("agent.yaml"),
        format!(
            "policy:\n  paths: [{}]\n  pin_dir: {}\n  watch_interval: 0s\n  rate_limit: false\n{ring}events:\n  output: {}\n  max_file_mib: {mib}\n  keep_files: 1\n",
            tmp.join("policy.yaml").display(),
            run.pins.display(),
            log.display(),
        ),
    )?;
    let ready = tmp.join("ready");
    let socket = tmp.join("agent.sock");
    run.agent = Some(
        Command::new(agent)
            .arg("agent")
            .arg("--config")
            .arg(tmp.join("agent.yaml"))
            .args(["--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .arg("--control-socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.join("agent.log"))?)
            .spawn()?,
    );
    let agent_pid = run.agent.as_ref().map_or(0, Child::id);
    let deadline = Instant::now() + Duration::from_secs(120);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&ready) {
            break a.trim().to_owned();
        }
        if Instant::now() > deadline {
            bail!(
                "agent did not start (log: {})",
                tmp.join("agent.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    wait_applied(agent, &socket, cgroup_id, deadline)?;
    let size = || std::fs::metadata(&log).map_or(0, |m| m.len());
    let size0 = size();

    let mut recorder = match perf {
        Some(out) => {
            let r = Command::new("perf")
                .args(["record", "-F", "999", "-g", "-o"])
                .arg(out)
                .args(["-p", &agent_pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("perf record")?;
            std::thread::sleep(Duration::from_secs(1));
            Some(r)
        }
        None => None,
    };
    let cpu0 = cpu_seconds(agent_pid)?;
    let start = Instant::now();
    let mut generator = Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1/cgroup.procs" || exit 1; exec "$2" getppid "$3""#)
        .arg("sh")
        .arg(&run.cgroup)
        .arg(&gen_bin)
        .arg(calls.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn the generator")?;
    // the log's growth, polled by size; settled once the generator is done and the log has
    // not grown for a second
    let (mut last_size, mut last_growth) = (size0, start);
    let mut gen_done: Option<Duration> = None;
    loop {
        std::thread::sleep(Duration::from_millis(2));
        let s = size();
        let now = Instant::now();
        if s != last_size {
            (last_size, last_growth) = (s, now);
        }
        if gen_done.is_none()
            && let Some(st) = generator.try_wait()?
        {
            if !st.success() {
                bail!("the generator failed: {st}");
            }
            gen_done = Some(start.elapsed());
        }
        if gen_done.is_some() && now - last_growth > Duration::from_secs(1) {
            break;
        }
        if now - start > Duration::from_secs(600) {
            bail!("the log still grows after 10 minutes");
        }
    }
    let cpu = cpu_seconds(agent_pid)? - cpu0;
    if let Some(mut r) = recorder.take() {
        let _ = Command::new("kill")
            .args(["-INT", &r.id().to_string()])
            .status();
        let _ = r.wait();
    }
    let gen_out = {
        let mut s = String::new();
        if let Some(mut o) = generator.stdout.take() {
            use std::io::Read as _;
            o.read_to_string(&mut s)?;
        }
        s
    };
    let gen_wall = gen_done.unwrap_or_default().as_secs_f64();
    // from the generator's start to the last line (or to its end, if the log stalled first)
    let span = (last_growth - start)
        .as_secs_f64()
        .max(gen_done.unwrap_or_default().as_secs_f64());

    // the counters: every violation counted by the kernel, every event published delivered or
    // dropped by the log (a scrape also sweeps the violation counters)
    let mut page;
    let settle = Instant::now() + Duration::from_secs(60);
    loop {
        page = String::from_utf8_lossy(&get(&addr, false)?.body).into_owned();
        let counted = sum(
            &page,
            "palisade_policy_violations_total",
            &["policy=\"events-bench\""],
        );
        let published = sum(&page, "palisade_events_total", &[]);
        let done = sum(&page, "palisade_events_delivered_total", &["sink=\"log\""])
            + sum(&page, "palisade_events_dropped_total", &["sink=\"log\""]);
        if counted >= produced && published == done {
            break;
        }
        if Instant::now() > settle {
            bail!(
                "counters did not settle: {counted} of {produced} violations counted, {done} of {published} events delivered or dropped"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let counted = sum(
        &page,
        "palisade_policy_violations_total",
        &["policy=\"events-bench\""],
    );
    let ring_lost = sum(&page, "palisade_policy_events_lost_total", &[]);
    let published_v = sum(
        &page,
        "palisade_events_total",
        &["type=\"policy_violation\""],
    );
    let sink_dropped = sum(&page, "palisade_events_dropped_total", &["sink=\"log\""]);
    let kernel_lost = sum(&page, "palisade_events_kernel_lost_total", &[]);
    let queue_waits = sum(&page, "palisade_kernel_queue_waits_total", &[]);
    let n = count_log(&log, cgroup_id)?;
    let delivered = n.delivered;
    // the log's counter is by sink, not by type: the violations it dropped are the violation
    // events published less those in the file (only the bench's policy makes violations)
    let sink_dropped_v = published_v.saturating_sub(n.violation_lines);
    let lost = ring_lost + sink_dropped_v;
    let unaccounted = produced as i64 - delivered as i64 - lost as i64;
    let rate = delivered as f64 / span;

    println!(
        "\nevents: a log rule on getppid (rate limiting off, policy.events_buffer_kib {ring_kib}), release agent pid {agent_pid}"
    );
    println!(
        "  generator: {produced} calls in {gen_wall:.2} s ({:.0}/s; {})",
        produced as f64 / gen_wall,
        gen_out.trim()
    );
    println!("  violations counted by the kernel      {counted}");
    println!("  delivered to the JSON log             {delivered} in {span:.2} s = {rate:.0}/s");
    println!(
        "  lost, policy ring full / log behind   {ring_lost} (suppressed in the log: {})",
        n.suppressed
    );
    println!(
        "  lost, log sink behind (dropped)       {sink_dropped_v} violations ({sink_dropped} events of every type)"
    );
    println!(
        "  event ring buffer lost (other events) {kernel_lost}; kernel queue waits {queue_waits}"
    );
    println!("  unaccounted = {produced} - {delivered} - {lost} = {unaccounted}");
    println!(
        "  agent CPU {cpu:.2} s = {:.2} us per delivered event ({:.2} of 2 cores over the span)",
        cpu * 1e6 / delivered.max(1) as f64,
        cpu / span / 2.0
    );
    println!(
        "  against the target: delivered/s {:.2} of 200,000/s (>= 1 is met); delivered {:.1} % of produced",
        rate / TARGET,
        100.0 * delivered as f64 / produced as f64
    );
    if counted != produced {
        bail!("the kernel counted {counted} violations, the generator made {produced}");
    }
    if unaccounted != 0 {
        bail!("{unaccounted} events unaccounted for");
    }
    if n.suppressed != ring_lost {
        // the last losses of a key are reported by a summary event once the key has been quiet
        // for a second (at the next sweep), or were in events the sink dropped
        println!(
            "  note: suppressed {} != ring buffer lost {ring_lost} (a summary event pending, or dropped by the sink)",
            n.suppressed
        );
    }
    drop(run);
    Ok(())
}
