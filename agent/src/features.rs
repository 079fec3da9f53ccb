//! Kernel feature probes: each feature is tried (a tiny program loaded and, where harmless,
//! attached and detached), never guessed from the kernel version.
use std::{
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    Btf, EbpfLoader,
    maps::MapType,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, FEntry, KProbe, Lsm,
        RawTracePoint, SockOps, TracePoint,
    },
};

use palisade_cgroupfs::{Layout, Mounts};

use crate::kernel::{PROBES_OBJECT, describe_program_error};

/// One probed feature.
#[derive(Debug, Clone)]
pub struct Feature {
    /// Stable name, also the `feature` label of `palisade_kernel_feature`.
    pub name: &'static str,
    pub available: bool,
    /// Why not, or what was found.
    pub detail: String,
}

/// Everything `probe_all` learned.
#[derive(Debug, Clone)]
pub struct Report {
    pub features: Vec<Feature>,
    /// The kernel's BTF as aya parsed it for the fentry probe; the agent's fentry pair loads
    /// with it instead of parsing it again (each aya parse took 0.2-1.1 s of an agent start in
    /// the TCG guests).
    pub btf: Option<std::sync::Arc<Btf>>,
    pub layout: Option<Layout>,
    pub unified_root: Option<PathBuf>,
    pub elapsed_ms: u128,
}

impl Report {
    pub fn get(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }
}

/// Why a feature is not available: what `palisade doctor` prints beside it.
#[derive(Debug, thiserror::Error)]
enum Unavailable {
    #[error("{}", describe_program_error(.0))]
    Program(#[from] aya::programs::ProgramError),
    #[error("no program {0} in the probe object")]
    MissingProgram(&'static str),
    #[error("attach not tried: {0}")]
    NoScratchCgroup(String),
    #[error("needs BTF: {0}")]
    NoBtf(String),
    #[error("no kernel BTF ({0}); optional: only fentry/LSM upgrades need it")]
    Btf(String),
    #[error("program loads but `bpf` is not in the active LSMs ({0}); boot with lsm=...,bpf")]
    LsmInactive(String),
    #[error("probe failed: {0}")]
    Probe(std::io::Error),
    #[error("seccomp filters unavailable: {0}")]
    Seccomp(std::io::Error),
    /// Plainly absent (no v1 hierarchy, no ring buffer map type, ...).
    #[error("{0}")]
    Absent(&'static str),
}

/// A scratch cgroup for attach probes, removed on drop.
struct ScratchCgroup {
    path: PathBuf,
    dir: std::fs::File,
}

/// The prefix of a scratch cgroup's name; the probing process's pid follows.
const SCRATCH_PREFIX: &str = "palisade-probe-";

impl ScratchCgroup {
    fn create(root: &Path) -> std::io::Result<Self> {
        remove_stale_scratch(root);
        let path = root.join(format!("{SCRATCH_PREFIX}{}", std::process::id()));
        let context = |what: &str, e: std::io::Error| {
            std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
        };
        std::fs::create_dir(&path).map_err(|e| context("mkdir", e))?;
        match std::fs::File::open(&path) {
            Ok(dir) => Ok(Self { path, dir }),
            Err(e) => {
                let e = context("open", e);
                let _ = std::fs::remove_dir(&path);
                Err(e)
            }
        }
    }
}

/// Removes the scratch cgroups of probing processes that are gone: one killed while probing
/// (SIGKILL runs no `Drop`) left its empty directory at the hierarchy's root. Kept: a live
/// process's (a `palisade doctor` running now), and any made in the last minute (probing
/// takes a second; the pid may be of another pid namespace, such as a containerized agent's).
/// One that holds a process is not removable anyway.
fn remove_stale_scratch(root: &Path) {
    const FRESH: std::time::Duration = std::time::Duration::from_secs(60);
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SCRATCH_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > FRESH));
        if old && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

impl Drop for ScratchCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A probe's outcome: what was found, or why the feature is not there.
fn feature(name: &'static str, r: Result<String, Unavailable>) -> Feature {
    match r {
        Ok(detail) => Feature {
            name,
            available: true,
            detail,
        },
        Err(why) => Feature {
            name,
            available: false,
            detail: why.to_string(),
        },
    }
}

/// Program `name` of the probe object, as the program type `T`.
fn prog<'a, T>(ebpf: &'a mut aya::Ebpf, name: &'static str) -> Result<&'a mut T, Unavailable>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    Ok(ebpf
        .program_mut(name)
        .ok_or(Unavailable::MissingProgram(name))?
        .try_into()?)
}

/// Features probed by loading a program from the probe object, in report order.
const PROGRAM_FEATURES: [&str; 11] = [
    "raw_tracepoint",
    "tracepoint",
    "cgroup_skb",
    "cgroup_sock_addr",
    "sock_ops",
    "send_signal",
    "cgroup_ancestors",
    "fentry",
    "syscall_fentry",
    "bpf_lsm",
    "kprobe",
];

/// Probes everything. Never fails: a probe that cannot run reports "not available" and why.
pub fn probe_all() -> Report {
    let start = Instant::now();
    let mut features = Vec::new();
    let mounts = Mounts::detect().ok();
    let layout = mounts.as_ref().map(|m| m.layout);
    let unified_root = mounts.as_ref().and_then(|m| m.unified.clone());

    let btf = Btf::from_sys_fs();
    features.push(feature(
        "btf",
        btf.as_ref()
            .map(|_| "/sys/kernel/btf/vmlinux".to_owned())
            .map_err(|e| Unavailable::Btf(e.to_string())),
    ));

    let mut ebpf = match EbpfLoader::new().btf(btf.as_ref().ok()).load(PROBES_OBJECT) {
        Ok(e) => Some(e),
        Err(e) => {
            let why = format!("bpf() refused: {}", crate::kernel::error_chain(&e));
            for name in PROGRAM_FEATURES {
                features.push(Feature {
                    name,
                    available: false,
                    detail: why.clone(),
                });
            }
            None
        }
    };
    let scratch = match unified_root.as_deref() {
        Some(root) => ScratchCgroup::create(root).map_err(|e| e.to_string()),
        None => Err("no cgroup v2 hierarchy".to_owned()),
    };

    if let Some(ebpf) = ebpf.as_mut() {
        features.push(feature(
            "raw_tracepoint",
            (|| {
                let p: &mut RawTracePoint = prog(ebpf, "probe_raw_tracepoint")?;
                p.load()?;
                let link = p.attach("sys_enter")?;
                p.detach(link)?;
                Ok("sys_enter attach ok".to_owned())
            })(),
        ));
        features.push(feature(
            "tracepoint",
            (|| {
                let p: &mut TracePoint = prog(ebpf, "probe_tracepoint")?;
                p.load()?;
                let link = p.attach("sched", "sched_process_exec")?;
                p.detach(link)?;
                Ok("sched:sched_process_exec attach ok".to_owned())
            })(),
        ));
        let cg = scratch.as_ref().map(|s| s.dir.as_fd());
        features.push(feature(
            "cgroup_skb",
            (|| {
                let p: &mut CgroupSkb = prog(ebpf, "probe_cgroup_skb")?;
                p.load()?;
                let cg = cg.map_err(|e| Unavailable::NoScratchCgroup(e.clone()))?;
                let link = p.attach(cg, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)?;
                p.detach(link)?;
                Ok("ingress attach ok".to_owned())
            })(),
        ));
        features.push(feature(
            "cgroup_sock_addr",
            (|| {
                let p: &mut CgroupSockAddr = prog(ebpf, "probe_cgroup_sock_addr")?;
                p.load()?;
                let cg = cg.map_err(|e| Unavailable::NoScratchCgroup(e.clone()))?;
                let link = p.attach(cg, CgroupAttachMode::Single)?;
                p.detach(link)?;
                Ok("connect4 attach ok".to_owned())
            })(),
        ));
        features.push(feature(
            "sock_ops",
            (|| {
                let p: &mut SockOps = prog(ebpf, "probe_sock_ops")?;
                p.load()?;
                let cg = cg.map_err(|e| Unavailable::NoScratchCgroup(e.clone()))?;
                let link = p.attach(cg, CgroupAttachMode::Single)?;
                p.detach(link)?;
                Ok("attach ok".to_owned())
            })(),
        ));
        features.push(feature(
            "send_signal",
            (|| {
                let p: &mut RawTracePoint = prog(ebpf, "probe_send_signal")?;
                p.load()?;
                Ok("bpf_send_signal accepted by the verifier".to_owned())
            })(),
        ));
        features.push(feature(
            "cgroup_ancestors",
            (|| {
                let p: &mut RawTracePoint = prog(ebpf, "probe_ancestor_tracing")?;
                p.load()?;
                let p: &mut CgroupSockAddr = prog(ebpf, "probe_ancestor_sock_addr")?;
                p.load()?;
                let p: &mut CgroupSkb = prog(ebpf, "probe_ancestor_skb")?;
                p.load()?;
                Ok("ancestor cgroup ids in tracing, cgroup_sock_addr and cgroup_skb programs (policies hold for child cgroups)".to_owned())
            })(),
        ));
        features.push(feature(
            "fentry",
            (|| {
                let btf = btf
                    .as_ref()
                    .map_err(|e| Unavailable::NoBtf(e.to_string()))?;
                let p: &mut FEntry = prog(ebpf, "probe_fentry")?;
                p.load("bpf_fentry_test1", btf)?;
                let link = p.attach()?;
                p.detach(link)?;
                Ok("bpf_fentry_test1 attach ok".to_owned())
            })(),
        ));
        // Loaded, not attached: attaching patches the syscall dispatcher's first instruction
        // while every CPU runs through it, on each agent start. That costs every CPU a
        // text-patching round trip, and under qemu's TCG it left both vCPUs spinning on that
        // instruction (soft lockups at x64_sys_call+0x0, seen in `cargo xtask vm-test` on 6.1).
        // The load proves the verifier and the function's BTF; trampolines are proven by the
        // `fentry` attach above on a test function nothing else calls.
        let trampolines = features.last().is_some_and(|f| f.available);
        features.push(feature(
            "syscall_fentry",
            (|| {
                let btf = btf
                    .as_ref()
                    .map_err(|e| Unavailable::NoBtf(e.to_string()))?;
                let p: &mut FEntry = prog(ebpf, "probe_fentry_syscall")?;
                p.load(palisade_common::names::FN_SYSCALL_DISPATCH, btf)?;
                if !trampolines {
                    return Err(Unavailable::Absent(
                        "loads, but fentry programs do not attach on this kernel",
                    ));
                }
                Ok(format!(
                    "{} loads (attached only when syscalls.hook is fentry)",
                    palisade_common::names::FN_SYSCALL_DISPATCH
                ))
            })(),
        ));
        features.push(feature(
            "bpf_lsm",
            (|| {
                let btf = btf
                    .as_ref()
                    .map_err(|e| Unavailable::NoBtf(e.to_string()))?;
                let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
                let p: &mut Lsm = prog(ebpf, "probe_lsm")?;
                p.load("file_open", btf)?;
                if !lsms.split(',').any(|l| l.trim() == "bpf") {
                    return Err(Unavailable::LsmInactive(lsms.trim().to_owned()));
                }
                // not attached, as `syscall_fentry`: an LSM program rides the same trampolines
                // (proven by the `fentry` attach), and attaching would patch `file_open`'s hook
                // under every CPU at each agent start
                if !trampolines {
                    return Err(Unavailable::Absent(
                        "loads and `bpf` is an active LSM, but BPF trampolines do not attach on this kernel",
                    ));
                }
                Ok("file_open loads, `bpf` is an active LSM, trampolines attach".to_owned())
            })(),
        ));
        features.push(feature(
            "kprobe",
            (|| {
                let p: &mut KProbe = prog(ebpf, "probe_kprobe")?;
                p.load()?;
                let link = p.attach("bpf_fentry_test1", 0)?;
                p.detach(link)?;
                Ok("bpf_fentry_test1 attach ok".to_owned())
            })(),
        ));
    }
    drop(ebpf);
    drop(scratch);

    features.push(feature(
        "ring_buffer",
        match aya::sys::is_map_supported(MapType::RingBuf) {
            Ok(true) => Ok("BPF_MAP_TYPE_RINGBUF".to_owned()),
            Ok(false) => Err(Unavailable::Absent("BPF_MAP_TYPE_RINGBUF not supported")),
            Err(e) => Err(Unavailable::Probe(std::io::Error::other(e))),
        },
    ));
    features.push(feature(
        "cgroup_v1",
        match &mounts {
            Some(m) if !m.v1.is_empty() => Ok(format!("{} v1 hierarchies", m.v1.len())),
            Some(_) => Err(Unavailable::Absent("no v1 hierarchy mounted")),
            None => Err(Unavailable::Absent("cannot read /proc/self/mountinfo")),
        },
    ));
    features.push(feature(
        "cgroup_v2",
        match &unified_root {
            Some(p) => Ok(format!("unified hierarchy at {}", p.display())),
            None => Err(Unavailable::Absent("no cgroup2 mount")),
        },
    ));
    features.push(feature("seccomp", probe_seccomp()));
    Report {
        features,
        btf: btf.ok().map(std::sync::Arc::new),
        layout,
        unified_root,
        elapsed_ms: start.elapsed().as_millis(),
    }
}

/// Seccomp filter mode with the actions the launcher uses.
fn probe_seccomp() -> Result<String, Unavailable> {
    const SECCOMP_GET_ACTION_AVAIL: libc::c_uint = 2;
    let mut missing = Vec::new();
    for (name, action) in [
        ("errno", libc::SECCOMP_RET_ERRNO),
        ("kill_process", libc::SECCOMP_RET_KILL_PROCESS),
        ("log", libc::SECCOMP_RET_LOG),
        ("user_notif", libc::SECCOMP_RET_USER_NOTIF),
    ] {
        let a: u32 = action;
        // SAFETY: SECCOMP_GET_ACTION_AVAIL only reads the u32 we point at.
        let r =
            unsafe { libc::syscall(libc::SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &raw const a) };
        if r != 0 {
            if name == "errno" {
                return Err(Unavailable::Seccomp(std::io::Error::last_os_error()));
            }
            missing.push(name);
        }
    }
    if missing.is_empty() {
        Ok("filter mode; errno, kill_process, log, user_notif".to_owned())
    } else {
        Ok(format!(
            "filter mode; missing actions: {}",
            missing.join(", ")
        ))
    }
}
