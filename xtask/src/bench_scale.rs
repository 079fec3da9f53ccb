//! `cargo xtask bench scale`: the release agent watching 1,000 real cgroups, each holding a
//! process that made a few syscalls; what one scrape of the live agent costs (kernel map reads,
//! cgroupfs, rendering, HTTP), how big the page is, how many series each container has and how
//! many the cap dropped, and the agent's memory.
//!
//! Scrape CPU is the agent's own (utime + stime from /proc/PID/stat) around a batch of
//! sequential scrapes: for the default agent, a batch in which no background collection ran
//! (one that had one is measured again); for the agent that reads cgroupfs on every scrape, less
//! what it spent in an idle window of the same length measured just before. A per-scrape figure
//! of the live agent.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{agent_bin, step};

/// The cgroups, their processes and the agent; removed on drop (processes killed first).
struct Fleet {
    /// Parent directories, unified first, then the v1 controllers' (hybrid hosts).
    parents: Vec<PathBuf>,
    children: Vec<String>,
    procs: Vec<Child>,
    agents: Vec<Child>,
    tmp: PathBuf,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for mut a in self.agents.drain(..) {
            let _ = Command::new("kill")
                .args(["-INT", &a.id().to_string()])
                .status();
            let _ = a.wait();
        }
        for p in &mut self.procs {
            let _ = p.kill();
        }
        for p in &mut self.procs {
            let _ = p.wait();
        }
        for parent in &self.parents {
            for c in &self.children {
                let dir = parent.join(c);
                // an emptied cgroup can stay busy for a moment
                for _ in 0..50 {
                    if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = std::fs::remove_dir(parent);
        }
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

/// The unified hierarchy's mount and the v1 controller mounts that hold resource files.
fn hierarchies() -> Result<(PathBuf, Vec<PathBuf>)> {
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.join("cgroup.procs").exists())
        .context("no cgroup2 mount")?
        .to_path_buf();
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let v1 = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(2) == Some(&"cgroup")).then(|| PathBuf::from(f[1]))
        })
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().into_owned());
            n.is_some_and(|n| {
                ["memory", "cpu", "cpuacct", "pids", "blkio"]
                    .iter()
                    .any(|c| n.split(',').any(|x| x == *c))
            })
        })
        .collect();
    Ok((unified, v1))
}

/// `n` cgroups (in the unified hierarchy and, on hybrid hosts, in the v1 controllers at the same
/// relative path, as runtimes create them), each with a `sleep` that a shell moved there.
fn fleet(n: usize, tmp: PathBuf, agents: Vec<Child>) -> Result<Fleet> {
    let (unified, v1) = hierarchies()?;
    let name = format!("palisade-bench-scale-{}", std::process::id());
    let mut f = Fleet {
        parents: std::iter::once(&unified)
            .chain(&v1)
            .map(|h| h.join(&name))
            .collect(),
        children: (0..n).map(|i| format!("c{i:04}")).collect(),
        procs: Vec::new(),
        agents,
        tmp,
    };
    for p in &f.parents {
        std::fs::create_dir(p).with_context(|| format!("mkdir {}", p.display()))?;
    }
    // pure v2: let the children have the controllers (best effort: what the root offers)
    if v1.is_empty()
        && let Ok(ctrls) = std::fs::read_to_string(unified.join("cgroup.subtree_control"))
    {
        let want: Vec<String> = ctrls.split_whitespace().map(|c| format!("+{c}")).collect();
        let _ = std::fs::write(f.parents[0].join("cgroup.subtree_control"), want.join(" "));
    }
    for c in &f.children {
        let mut procs_files = Vec::new();
        for p in &f.parents {
            let d = p.join(c);
            std::fs::create_dir(&d).with_context(|| format!("mkdir {}", d.display()))?;
            procs_files.push(d.join("cgroup.procs"));
        }
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"for f in "$@"; do echo $$ > "$f" || exit 1; done; exec sleep 100000"#)
            .arg("sh")
            .args(&procs_files)
            .stdin(Stdio::null())
            .spawn()
            .context("spawn a workload")?;
        f.procs.push(child);
    }
    Ok(f)
}

pub(crate) struct Reply {
    pub headers: String,
    pub body: Vec<u8>,
}

pub(crate) fn get(addr: &str, gzip: bool) -> Result<Reply> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    let enc = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{enc}Connection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let headers = String::from_utf8_lossy(&buf[..split]).into_owned();
    if !headers.starts_with("HTTP/1.1 200") {
        bail!("scrape failed: {headers}");
    }
    let mut body = buf[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    Ok(Reply { headers, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let len = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16)?;
        b = &b[eol + 2..];
        if len == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..len).context("short chunk")?);
        b = &b[len + 2..];
    }
}

/// utime + stime of `pid`, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // fields after the command name (which may hold spaces): state is field 3
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    Ok(ticks / hz)
}

fn status_kib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn value(page: &str, prefix: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Series per bench container (by its `container` label, every family).
fn series_per_container(page: &str, marker: &str) -> Vec<usize> {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for l in page.lines().filter(|l| !l.starts_with('#')) {
        if let Some(i) = l.find("container=\"") {
            let v = &l[i + 11..];
            let v = &v[..v.find('"').unwrap_or(v.len())];
            if v.contains(marker) {
                *by.entry(v).or_default() += 1;
            }
        }
    }
    let mut v: Vec<usize> = by.into_values().collect();
    v.sort_unstable();
    v
}

/// One agent under measurement.
struct Agent {
    what: &'static str,
    pid: u32,
    addr: String,
    /// CPU per second while nobody scrapes (background collections every `collect_interval`).
    idle_rate: f64,
    /// Default config: measured in batches without a background collection ([`quiet_batch`]).
    quiet: bool,
}

/// Starts the agent `bin` with `config` (YAML), named `name` in the temporary directory.
fn start(tmp: &Path, name: &str, config: &str, bin: &Path) -> Result<(Child, String)> {
    let cfg = tmp.join(format!("{name}.yaml"));
    std::fs::write(&cfg, config)?;
    let ready = tmp.join(format!("{name}.ready"));
    let mut agent = Command::new(bin)
        .args(["agent", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--control-socket")
        .arg(tmp.join(format!("{name}.sock")))
        .arg("--ready-file")
        .arg(&ready)
        .stderr(std::fs::File::create(tmp.join(format!("{name}.log")))?)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(a) = std::fs::read_to_string(&ready) {
            return Ok((agent, a.trim().to_owned()));
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            let _ = agent.wait();
            bail!(
                "agent did not start (log: {})",
                tmp.join(format!("{name}.log")).display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `container_last_seen` line of the first bench container: it changes only when
/// the agent reads cgroupfs.
fn last_seen(addr: &str, marker: &str) -> Result<String> {
    let page = String::from_utf8_lossy(&get(addr, false)?.body).into_owned();
    page.lines()
        .find(|l| l.starts_with("container_last_seen{") && l.contains(marker))
        .map(str::to_owned)
        .context("no container_last_seen line for a bench container")
}

/// [`batch`] of the default agent with no background collection inside: a collection (a
/// cgroupfs pass of every container, ~100-150 ms) landing in a batch of 10 scrapes added
/// 10-15 ms to each, and subtracting the idle rate only evened that out over many runs. A batch
/// in which one ran (the containers' `last_seen` moved) is measured again.
fn quiet_batch(a: &Agent, marker: &str, scrapes: u32, gzip: bool) -> Result<Row> {
    for _ in 0..5 {
        let before = last_seen(&a.addr, marker)?;
        let row = batch(a, scrapes, gzip, 0.0)?;
        if last_seen(&a.addr, marker)? == before {
            return Ok(row);
        }
        eprintln!("    a background collection ran during the batch: measuring it again");
    }
    bail!("a background collection ran during five batches in a row")
}

/// CPU per scrape, wall per scrape, body size, content encoding.
type Row = (f64, f64, usize, String);

/// `scrapes` sequential scrapes of `a`: (CPU per scrape less `idle_rate` times the wall time,
/// wall per scrape, body size, content encoding).
fn batch(a: &Agent, scrapes: u32, gzip: bool, idle_rate: f64) -> Result<Row> {
    let t = Instant::now();
    let c0 = cpu_seconds(a.pid)?;
    let mut size = 0;
    let mut enc = String::new();
    for _ in 0..scrapes {
        let r = get(&a.addr, gzip)?;
        size = r.body.len();
        enc = r
            .headers
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-encoding:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_else(|| "identity".into());
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(a.pid)? - c0 - idle_rate * wall;
    Ok((
        cpu / f64::from(scrapes),
        wall / f64::from(scrapes),
        size,
        enc,
    ))
}

/// Default collection interval (`metrics.collect_interval`): background cgroupfs reads.
const COLLECT_S: f64 = 10.0;

/// The default config of the measured agents (background collections every [`COLLECT_S`]).
const DEFAULT: &str = "metrics:\n  collect_interval: 10s\n";

/// `cargo xtask bench scale`.
pub fn scale(
    containers: usize,
    scrapes: u32,
    perf: Option<&Path>,
    against: Option<&Path>,
) -> Result<()> {
    step(&format!(
        "scale: {containers} cgroups with a process each, release agent (default config) and one reading cgroupfs on every scrape (as before){}, {scrapes} scrapes per case, interleaved",
        against.map_or(String::new(), |b| format!(
            ", and {} (default config) as the baseline",
            b.display()
        ))
    ));
    let tmp = std::env::temp_dir().join(format!("palisade-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let this = agent_bin(true);
    let mut wanted: Vec<(&'static str, &str, &Path)> = vec![
        ("default", DEFAULT, this.as_path()),
        (
            "read_on_scrape",
            "resources:\n  read_on_scrape: true\n",
            this.as_path(),
        ),
    ];
    if let Some(b) = against {
        wanted.push(("baseline", DEFAULT, b));
    }
    let mut children = Vec::new();
    let mut addrs = Vec::new();
    for (what, config, bin) in &wanted {
        match start(&tmp, what, config, bin) {
            Ok((c, a)) => {
                children.push(c);
                addrs.push(a);
            }
            Err(e) => {
                for mut c in children {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                return Err(e);
            }
        }
    }
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let (pid, pid_b) = (pids[0], pids[1]);
    let idle_rss: Vec<f64> = pids.iter().map(|p| status_kib(*p, "VmRSS:")).collect();
    // the workloads start under the agents, so their syscalls are counted
    let t = Instant::now();
    let f = fleet(containers, tmp.clone(), children)?;
    eprintln!(
        "    {containers} cgroups and processes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // every cgroup known (the first walk), then one scrape to settle names
    let deadline = Instant::now() + Duration::from_secs(120);
    let marker = format!("palisade-bench-scale-{}/", std::process::id());
    for ad in &addrs {
        loop {
            let r = get(ad, false)?;
            let page = String::from_utf8_lossy(&r.body).into_owned();
            if series_per_container(&page, &marker).len() >= containers {
                break;
            }
            if Instant::now() > deadline {
                bail!("the agent does not show {containers} bench containers");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    let pages: Vec<String> = addrs
        .iter()
        .map(|a| get(a, false).map(|r| String::from_utf8_lossy(&r.body).into_owned()))
        .collect::<Result<_>>()?;
    let page = &pages[0];
    let per = series_per_container(page, &marker);
    let dropped = value(page, "palisade_series_dropped ");
    // Keys the kernel's tables had no room for are series missing too: the run says so.
    let lost_calls = |page: &str| -> f64 {
        ["syscall_stats_map_full", "syscall_errno_map_full"]
            .iter()
            .map(|r| {
                value(
                    page,
                    &format!("palisade_kernel_lost_total{{reason=\"{r}\"}} "),
                )
            })
            .filter(|v| v.is_finite())
            .sum()
    };
    let series_of = |page: &str| page.lines().filter(|l| !l.starts_with('#')).count();
    let (series, series_b) = (series_of(page), series_of(&pages[1]));
    let map_full = lost_calls(page);

    // idle window (every agent at once): three background collections each
    let idle = Duration::from_secs_f64(3.0 * COLLECT_S);
    let c0: Vec<f64> = pids
        .iter()
        .map(|p| cpu_seconds(*p))
        .collect::<Result<_>>()?;
    std::thread::sleep(idle);
    let mut agents = Vec::new();
    for (i, (what, config, _)) in wanted.iter().enumerate() {
        agents.push(Agent {
            what,
            pid: pids[i],
            addr: addrs[i].clone(),
            idle_rate: (cpu_seconds(pids[i])? - c0[i]) / idle.as_secs_f64(),
            quiet: *config == DEFAULT,
        });
    }
    let addr = addrs[0].clone();
    // the default agent under `perf record` for its first plain batch
    let mut recorder = match perf {
        Some(out) => {
            let r = Command::new("perf")
                .args([
                    "record",
                    "-F",
                    "999",
                    "-g",
                    "--call-graph",
                    "dwarf,16384",
                    "-o",
                ])
                .arg(out)
                .args(["-p", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("perf record")?;
            std::thread::sleep(Duration::from_secs(1));
            Some(r)
        }
        None => None,
    };
    // (agent, gzip) → CPU and wall per scrape summed over rounds, size, encoding
    let mut rows: BTreeMap<(usize, bool), Row> = BTreeMap::new();
    let rounds = 4;
    let per_round = scrapes.div_ceil(rounds).max(1);
    for round in 0..rounds {
        for gzip in [false, true] {
            // alternate which agent goes first
            let mut order: Vec<usize> = (0..agents.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let a = &agents[i];
                let (cpu, wall, size, enc) = if a.quiet {
                    quiet_batch(a, &marker, per_round, gzip)?
                } else {
                    // every scrape of this one reads cgroupfs: background collections cannot
                    // be told apart, so its idle rate is subtracted
                    batch(a, per_round, gzip, a.idle_rate)?
                };
                let e = rows.entry((i, gzip)).or_default();
                e.0 += cpu / f64::from(rounds);
                e.1 += wall / f64::from(rounds);
                (e.2, e.3) = (size, enc);
                if let Some(mut r) = recorder.take() {
                    let _ = Command::new("kill")
                        .args(["-INT", &r.id().to_string()])
                        .status();
                    let _ = r.wait();
                }
            }
        }
    }
    // concurrent scrapes: one collection and one page between those that arrive together
    let a0 = &agents[0];
    let c0 = cpu_seconds(pid)?;
    let t = Instant::now();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let a = addr.clone();
            std::thread::spawn(move || get(&a, true).map(|r| r.body.len()))
        })
        .collect();
    for th in threads {
        th.join()
            .map_err(|_| anyhow::anyhow!("scrape thread panicked"))??;
    }
    let conc_cpu = cpu_seconds(pid)? - c0 - a0.idle_rate * t.elapsed().as_secs_f64();
    let rss = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let (anon, file) = (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"));

    let pct = |q: f64| {
        per.get(((per.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "\n{containers} containers, agents pid {pid} (default) and {pid_b} (resources.read_on_scrape: true, the behaviour before)"
    );
    println!(
        "  series on /metrics {series} ({series_b}); per container min {} median {} max {}; dropped {dropped}; calls the kernel maps had no room for {map_full}",
        pct(0.0),
        pct(0.5),
        pct(1.0)
    );
    println!(
        "  CPU per scrape (agent's utime+stime around the batch; default: batches with no background collection, read_on_scrape: less its idle rate):"
    );
    for ((i, gzip), (cpu, wall, size, enc)) in &rows {
        println!(
            "  {:<15} {:<22} CPU {:7.1} ms/scrape  wall {:7.1} ms  body {:8.1} KiB ({enc})",
            agents[*i].what,
            if *gzip {
                "Accept-Encoding: gzip"
            } else {
                "plain"
            },
            cpu * 1e3,
            wall * 1e3,
            *size as f64 / 1024.0
        );
    }
    let cpu_of = |i: usize| {
        rows.iter()
            .filter(|((j, _), _)| *j == i)
            .map(|(_, r)| r.0)
            .fold(0.0, f64::max)
    };
    let (cpu, cpu_b) = (cpu_of(0), cpu_of(1));
    // a background collection: maps + cgroupfs of every container, every COLLECT_S
    let collector = agents[0].idle_rate * COLLECT_S;
    let gzip_one = rows.get(&(0, true)).map_or(f64::NAN, |r| r.0);
    println!(
        "  8 concurrent gzip scrapes (default agent): CPU {:.1} ms in all ({:.2}x one sequential scrape)",
        conc_cpu * 1e3,
        conc_cpu / gzip_one
    );
    println!(
        "  idle CPU (background collections every {COLLECT_S} s, nothing scraped): default {:.1} ms/s = {:.1} ms per collection; read_on_scrape {:.1} ms/s",
        agents[0].idle_rate * 1e3,
        collector * 1e3,
        agents[1].idle_rate * 1e3,
    );
    println!(
        "  cgroupfs pass of {containers} containers (read_on_scrape less default, per scrape): {:.1} ms",
        (cpu_b - cpu) * 1e3
    );
    println!(
        "  RSS before the containers {:.1} MiB, after scrapes {:.1} MiB ({:.1} anonymous, {:.1} file-backed, mostly the binary), peak {:.1} MiB",
        idle_rss[0] / 1024.0,
        rss / 1024.0,
        anon / 1024.0,
        file / 1024.0,
        hwm / 1024.0
    );
    let max_series = pct(1.0) as f64;
    let gzip = rows.get(&(0, true)).map_or(f64::NAN, |r| r.2 as f64);
    println!("  against the targets (measured / target, <= 1 is met):");
    println!(
        "    series per container (max)  {:.2}   dropped {dropped}, kernel map full {map_full}",
        max_series / 100.0
    );
    println!(
        "    CPU per scrape (worse case) {:.2} (read_on_scrape, as before: {:.2}; {:.2}x before)   gzip body {:.2}   RSS {:.2}",
        cpu * 1e3 / 50.0,
        cpu_b * 1e3 / 50.0,
        cpu / cpu_b,
        gzip / (1024.0 * 1024.0),
        rss / (64.0 * 1024.0)
    );
    println!(
        "    background collection CPU {:.2} of 50 ms per interval ({:.1} % of one core at {COLLECT_S} s)",
        collector * 1e3 / 50.0,
        agents[0].idle_rate * 100.0
    );
    if let Some(base) = agents.get(2) {
        let row = |i: usize, gzip: bool| rows.get(&(i, gzip)).map_or(f64::NAN, |r| r.0);
        let base_rss = status_kib(base.pid, "VmRSS:");
        println!(
            "  against the baseline ({} containers, same cgroups, batches interleaved):",
            containers
        );
        println!(
            "    baseline: series {}, calls the kernel maps had no room for {}, RSS idle {:.1} MiB, after scrapes {:.1} MiB",
            series_of(&pages[2]),
            lost_calls(&pages[2]),
            idle_rss[2] / 1024.0,
            base_rss / 1024.0
        );
        println!(
            "    this build / baseline: CPU per plain scrape {:.2}, per gzip scrape {:.2}; RSS after scrapes {:.2}",
            row(0, false) / row(2, false),
            row(0, true) / row(2, true),
            rss / base_rss
        );
    }
    drop(f);
    Ok(())
}
