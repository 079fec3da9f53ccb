//! `palisade debug scrape-bench`: the userspace cost of one scrape (cgroupfs reads for every
//! container + rendering) against a fixture cgroup tree of N simulated containers, without
//! loading eBPF. `cargo xtask bench scrape` runs it at several sizes.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use palisade_common::{SyscallStats, latency_bucket};

use palisade_cgroupfs::Mounts;

use crate::{
    config::Config,
    identity::Registry,
    metrics::{self, Info, Inputs, SelfMetrics},
    model::{CgroupStats, Model},
    resources::Reader,
};

/// Syscalls each simulated container has made (a typical web service's working set).
const SYSCALLS: [u32; 20] = [
    0, 1, 3, 5, 7, 9, 11, 13, 17, 20, 23, 39, 41, 42, 45, 202, 228, 232, 257, 262,
];

fn fixture(root: &Path, n: usize) -> std::io::Result<Vec<(u64, String)>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        // distinct 12-char prefixes: the short id is the container name
        let id = format!("{i:012x}{:052x}", 0);
        let rel = format!("/system.slice/docker-{id}.scope");
        let dir = palisade_cgroupfs::dir(root, &rel);
        std::fs::create_dir_all(&dir)?;
        let files = [
            (
                "cpu.stat",
                format!(
                    "usage_usec {}\nuser_usec {}\nsystem_usec {}\nnr_periods 10\nnr_throttled 1\nthrottled_usec 100\n",
                    1000 + i,
                    700 + i,
                    300
                ),
            ),
            ("cpu.max", "max 100000\n".to_owned()),
            ("memory.current", format!("{}\n", 1 << 24)),
            (
                "memory.stat",
                "anon 8000000\nfile 4000000\ninactive_file 1000000\n".to_owned(),
            ),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n".to_owned(),
            ),
            ("memory.max", "max\n".to_owned()),
            (
                "io.stat",
                "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n".to_owned(),
            ),
            ("cgroup.procs", "1\n2\n".to_owned()),
            ("cgroup.threads", "1\n2\n3\n".to_owned()),
        ];
        for (f, text) in files {
            std::fs::write(dir.join(f), text)?;
        }
        out.push((i as u64 + 1_000_000, rel));
    }
    Ok(out)
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("fixture: {0}")]
    Fixture(std::io::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot load the probe programs: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the probe object has no program {0}")]
    NoProgram(&'static str),
    #[error("empty hook program: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error("no kernel BTF (fentry needs it): {0}")]
    Btf(#[from] aya::BtfError),
    #[error("cannot write {path}: {source}", path = .path.display())]
    Ready {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for a signal: {0}")]
    Signal(#[from] nix::Error),
}

/// Where `palisade debug empty-hooks` attaches its empty programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyHooks {
    /// The raw tracepoints `sys_enter` and `sys_exit`.
    RawPair,
    /// The raw tracepoint `sys_exit` alone.
    RawExit,
    /// fentry/fexit on the syscall dispatcher.
    Fentry,
}

/// `palisade debug empty-hooks`: the probe object's empty raw tracepoint program attached to
/// `sys_enter` and `sys_exit` (or `sys_exit` alone; or its empty fentry/fexit pair on the
/// syscall dispatcher) until SIGINT or SIGTERM.
pub fn empty_hooks(ready: &Path, hooks: EmptyHooks) -> Result<(), BenchError> {
    use nix::sys::signal::{SigSet, Signal};
    // block the signals first, so one that arrives early is waited for, not fatal
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    let mut ebpf = aya::EbpfLoader::new().load(crate::kernel::PROBES_OBJECT)?;
    if hooks == EmptyHooks::Fentry {
        let btf = aya::Btf::from_sys_fs()?;
        const EXIT: &str = "probe_fexit_syscall";
        let p: &mut aya::programs::FExit = ebpf
            .program_mut(EXIT)
            .ok_or(BenchError::NoProgram(EXIT))?
            .try_into()?;
        p.load(palisade_common::names::FN_SYSCALL_DISPATCH, &btf)?;
        p.attach()?;
        const ENTRY: &str = "probe_fentry_syscall";
        let p: &mut aya::programs::FEntry = ebpf
            .program_mut(ENTRY)
            .ok_or(BenchError::NoProgram(ENTRY))?
            .try_into()?;
        p.load(palisade_common::names::FN_SYSCALL_DISPATCH, &btf)?;
        p.attach()?;
    } else {
        const PROGRAM: &str = "probe_raw_tracepoint";
        let p: &mut aya::programs::RawTracePoint = ebpf
            .program_mut(PROGRAM)
            .ok_or(BenchError::NoProgram(PROGRAM))?
            .try_into()?;
        p.load()?;
        if hooks == EmptyHooks::RawPair {
            p.attach("sys_enter")?;
        }
        p.attach("sys_exit")?;
    }
    std::fs::write(ready, "attached\n").map_err(|source| BenchError::Ready {
        path: ready.to_path_buf(),
        source,
    })?;
    set.wait()?;
    // dropping the object detaches both
    drop(ebpf);
    Ok(())
}

/// Runs `scrapes` scrapes over `containers` simulated containers; prints one result line:
/// `containers=N series=S wall_ms_per_scrape=W cpu_ms_per_scrape=C bytes=B`.
pub fn run(containers: usize, scrapes: usize) -> Result<(), BenchError> {
    let root = std::env::temp_dir().join(format!("palisade-scrape-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let result = run_in(&root, containers, scrapes);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run_in(root: &Path, containers: usize, scrapes: usize) -> Result<(), BenchError> {
    let cgroups = fixture(root, containers).map_err(BenchError::Fixture)?;
    let config = Config::default();
    let mut registry = Registry::new(containers + 16, config.identity.runtime_parents.clone());
    let mut model = Model::default();
    for (id, rel) in &cgroups {
        registry.insert(*id, rel);
        let mut st = CgroupStats::default();
        // the kernel keeps one latency histogram per container (LATENCY_OTHER) by default
        let mut other = SyscallStats::ZERO;
        for (k, nr) in SYSCALLS.iter().enumerate() {
            for lat in [200u64, 900, 5_000, 80_000] {
                *st.syscalls.entry(*nr).or_default() += 10 + k as u64;
                other.time_ns += lat;
                other.hist[latency_bucket(lat)] += 10 + k as u64;
            }
        }
        st.latency.insert(palisade_common::LATENCY_OTHER, other);
        st.errnos.insert((0, 11), 3);
        model.by_cgroup.insert(*id, st);
    }
    let reader = Reader::new(
        root.to_path_buf(),
        &Mounts::parse(""),
        Some(&root.join("no-v1")),
    );
    let own = SelfMetrics::new()?;
    let info = Info::default();
    let (mut bytes, mut series) = (0, 0);
    let wall0 = Instant::now();
    let cpu0 = cpu_time();
    for _ in 0..scrapes {
        // what one collection pass does in userspace: read cgroupfs for every live cgroup
        for (id, rel) in &cgroups {
            let r = reader.read(rel);
            if let Some(e) = model.by_cgroup.get_mut(id) {
                e.resources = Some(r);
            }
        }
        let (text, _) = metrics::render_text(
            &Inputs {
                model: &model,
                registry: &registry,
                info: &info,
                cfg: &config.metrics,
                hub: None,
                procs_evicted: 0,
                procs_live: 0,
                net: None,
                network: None,
                policy: None,
            },
            &own,
        );
        bytes = text.len();
        series = text.lines().filter(|l| !l.starts_with('#')).count();
    }
    let n = scrapes.max(1) as f64;
    println!(
        "containers={containers} series={series} wall_ms_per_scrape={:.2} cpu_ms_per_scrape={:.2} bytes={bytes}",
        wall0.elapsed().as_secs_f64() * 1e3 / n,
        (cpu_time() - cpu0).as_secs_f64() * 1e3 / n,
    );
    Ok(())
}
