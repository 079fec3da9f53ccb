//! What to start: one [`Plan`], built from the command line or from an OCI bundle, fully
//! validated before anything is created.
use std::path::PathBuf;

use super::{caps::CapSets, seccomp::Compiled};

/// Filesystem mount types the launcher performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Proc,
    Sysfs,
    Tmpfs,
    Devpts,
    Mqueue,
    /// The cgroup hierarchies (cgroup2, or a tmpfs with the v1 controllers on hybrid hosts).
    Cgroup,
    Bind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: String,
    pub kind: MountKind,
    /// Host path for binds, the filesystem's name otherwise.
    pub source: PathBuf,
    /// `MS_*` flags (without propagation flags).
    pub flags: libc::c_ulong,
    /// Filesystem options (`mode=755,size=65536k`).
    pub data: String,
    /// `MS_PRIVATE`, `MS_SLAVE`, … (with `MS_REC`) or 0.
    pub propagation: libc::c_ulong,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Net {
    /// The host's network namespace.
    Host,
    /// A new one with only loopback, up.
    New,
    /// Join the namespace at this path (`linux.namespaces[].path`).
    Join(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces {
    pub pid: bool,
    pub mount: bool,
    pub uts: bool,
    pub ipc: bool,
    pub cgroup: bool,
    pub net: Net,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self {
            pid: true,
            mount: true,
            uts: true,
            ipc: true,
            cgroup: true,
            net: Net::New,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: libc::__rlimit_resource_t,
    pub name: &'static str,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: CapSets,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privs: bool,
    pub oom_score_adj: Option<i32>,
}

/// Cgroup limits; `None` leaves the kernel's default (unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    pub memory: Option<u64>,
    /// Memory plus swap (v1 semantics, as OCI has it); -1 unlimited. With only `memory` set,
    /// swap is off.
    pub memory_swap: Option<i64>,
    pub memory_reservation: Option<u64>,
    pub cpu_quota: Option<u64>,
    pub cpu_period: Option<u64>,
    pub cpu_shares: Option<u64>,
    pub pids: Option<i64>,
}

/// One device cgroup rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRule {
    pub allow: bool,
    /// `a`, `c` or `b`.
    pub kind: char,
    /// `None` = any.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// Some of `rwm`.
    pub access: String,
}

impl DeviceRule {
    /// The v1 `devices.allow`/`devices.deny` line (how the rule reads to people).
    #[cfg(test)]
    pub fn v1_line(&self) -> String {
        let num = |n: Option<u32>| n.map_or_else(|| "*".to_owned(), |n| n.to_string());
        if self.kind == 'a' {
            format!("a *:* {}", self.access)
        } else {
            format!(
                "{} {}:{} {}",
                self.kind,
                num(self.major),
                num(self.minor),
                self.access
            )
        }
    }
}

/// "Deny everything", the first rule of `runc spec`'s device list.
pub fn deny_all_devices() -> DeviceRule {
    DeviceRule {
        allow: false,
        kind: 'a',
        major: None,
        minor: None,
        access: "rwm".into(),
    }
}

/// Devices every container may use (as runc): null, zero, full, random, urandom, tty, the
/// pty master and slaves.
pub fn default_devices() -> Vec<DeviceRule> {
    let c = |major, minor: Option<u32>| DeviceRule {
        allow: true,
        kind: 'c',
        major: Some(major),
        minor,
        access: "rwm".into(),
    };
    vec![
        c(1, Some(3)),
        c(1, Some(5)),
        c(1, Some(7)),
        c(1, Some(8)),
        c(1, Some(9)),
        c(5, Some(0)),
        c(5, Some(2)),
        c(136, None),
    ]
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Base name; replicas are NAME-0 … NAME-{N-1}.
    pub name: String,
    pub replicas: u32,
    pub process: Process,
    /// `None`: the host's root, in a private mount namespace.
    pub root: Option<PathBuf>,
    pub root_readonly: bool,
    /// `None`: the workload name (when a UTS namespace is made).
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub mounts: Vec<Mount>,
    pub ns: Namespaces,
    pub resources: Resources,
    pub devices: Vec<DeviceRule>,
    /// The workload's filters, loaded in this order (none: unconfined): the baseline profile
    /// (`default`, `--seccomp FILE` or the bundle's), then the syscall rules of a policy. The
    /// kernel runs every filter on every call and takes the strictest answer, so a policy
    /// adds to the baseline and never replaces it.
    pub seccomp: Vec<Compiled>,
    /// The init's own filter (an allow-list of the calls it makes), set just before launch.
    pub init_seccomp: Option<Compiled>,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// Propagation of the container's mounts (`MS_PRIVATE|MS_REC` unless the bundle says).
    pub rootfs_propagation: libc::c_ulong,
}

impl Plan {
    /// The workload names: NAME, or NAME-0 … NAME-{N-1} with replicas.
    pub fn names(&self) -> Vec<String> {
        if self.replicas <= 1 {
            vec![self.name.clone()]
        } else {
            (0..self.replicas)
                .map(|i| format!("{}-{i}", self.name))
                .collect()
        }
    }
}

/// `runc spec`'s masked and read-only paths.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    "/sys/devices/virtual/powercap",
];

/// The agent's directory: its control socket and the launcher's filter cache.
pub const AGENT_DIR: &str = "/run/palisade";
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Kernel and launcher floors for limits.
pub const MIN_MEMORY: u64 = 6 << 20;
pub const MIN_PIDS: i64 = 2;
pub const MIN_CPU_QUOTA_US: u64 = 1_000;
pub const CPU_PERIOD_US: u64 = 100_000;
pub const CPU_PERIOD_RANGE: (u64, u64) = (1_000, 1_000_000);
pub const CPU_SHARES_RANGE: (u64, u64) = (2, 262_144);

/// A limit or user id given as text (a flag or a bundle field) that cannot be used. The
/// message leaves out which flag or field: the caller names it (`--memory {error}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("`{0}` is not a size (try 256M or 1G)")]
    NotASize(String),
    #[error("`{value}`: unknown unit `{unit}` (use K, M, G or T)")]
    UnknownUnit { value: String, unit: String },
    #[error("`{0}` is out of range")]
    OutOfRange(String),
    #[error(
        "{} is below the 6 MiB minimum (a smaller limit OOM-kills the workload while it starts; Docker has the same floor)",
        human(*.0)
    )]
    MemoryBelowMinimum(u64),
    #[error("`{0}` is not a number (try 0.5 or 2)")]
    NotANumber(String),
    #[error("{0} must be more than 0")]
    NotPositive(String),
    #[error(
        "{0} is below the kernel's minimum of 0.01 (a CFS quota of at least 1 ms per 100 ms period)"
    )]
    CpusBelowMinimum(String),
    #[error("{value} is more than the {host} CPUs this host has")]
    MoreThanHostCpus { value: String, host: usize },
    #[error("{0} is below the minimum of 2 (the launcher's init and the command each count)")]
    PidsBelowMinimum(i64),
    #[error("`{0}`: expected UID:GID as numbers, e.g. 1000:1000")]
    NotAUser(String),
}

/// `256M`, `1G`, `512k`, `1048576`, `2GiB`: binary multiples (as Docker).
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    let t = s.trim();
    let digits_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(ValueError::NotASize(s.to_owned()));
    }
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(ValueError::UnknownUnit {
                value: s.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| ValueError::NotASize(s.to_owned()))?;
    let bytes = n * (1u64 << shift) as f64;
    if !bytes.is_finite() || !(0.0..=9.0e18).contains(&bytes) {
        return Err(ValueError::OutOfRange(s.to_owned()));
    }
    Ok(bytes as u64)
}

/// A memory limit at least [`MIN_MEMORY`].
pub fn check_memory(bytes: u64) -> Result<u64, ValueError> {
    if bytes < MIN_MEMORY {
        return Err(ValueError::MemoryBelowMinimum(bytes));
    }
    Ok(bytes)
}

pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// `--cpus 0.5` → a CFS quota per [`CPU_PERIOD_US`]; at least 1 ms per period (the kernel's
/// minimum), at most the CPUs this host has.
pub fn parse_cpus(s: &str, host_cpus: usize) -> Result<u64, ValueError> {
    let cpus: f64 = s
        .trim()
        .parse()
        .map_err(|_| ValueError::NotANumber(s.to_owned()))?;
    if !cpus.is_finite() || cpus <= 0.0 {
        return Err(ValueError::NotPositive(s.to_owned()));
    }
    let quota = (cpus * CPU_PERIOD_US as f64).round() as u64;
    if quota < MIN_CPU_QUOTA_US {
        return Err(ValueError::CpusBelowMinimum(s.to_owned()));
    }
    if cpus > host_cpus as f64 {
        return Err(ValueError::MoreThanHostCpus {
            value: s.to_owned(),
            host: host_cpus,
        });
    }
    Ok(quota)
}

pub fn check_pids(n: i64) -> Result<i64, ValueError> {
    if n < MIN_PIDS && n != -1 {
        return Err(ValueError::PidsBelowMinimum(n));
    }
    Ok(n)
}

/// `UID:GID` or `UID` (then GID = UID), numbers only.
pub fn parse_user(s: &str) -> Result<(u32, u32), ValueError> {
    let bad = || ValueError::NotAUser(s.to_owned());
    let (u, g) = s.split_once(':').unwrap_or((s, s));
    Ok((u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("256m").unwrap(), 256 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("512k").unwrap(), 512 << 10);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size("2T").unwrap(), 2 << 40);
        assert_eq!(
            parse_size("12Q").unwrap_err(),
            ValueError::UnknownUnit {
                value: "12Q".into(),
                unit: "Q".into()
            }
        );
        assert_eq!(
            parse_size("lots").unwrap_err().to_string(),
            "`lots` is not a size (try 256M or 1G)"
        );
        assert!(
            check_memory(1 << 20)
                .unwrap_err()
                .to_string()
                .starts_with("1 MiB is below the 6 MiB minimum")
        );
        assert_eq!(check_memory(6 << 20).unwrap(), 6 << 20);
        assert_eq!(human(256 << 20), "256 MiB");
        assert_eq!(human(1000), "1000 bytes");
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0.5", 2).unwrap(), 50_000);
        assert_eq!(parse_cpus("2", 2).unwrap(), 200_000);
        assert_eq!(parse_cpus("0.01", 2).unwrap(), 1_000);
        assert_eq!(
            parse_cpus("0.001", 2).unwrap_err(),
            ValueError::CpusBelowMinimum("0.001".into())
        );
        assert_eq!(
            parse_cpus("3", 2).unwrap_err().to_string(),
            "3 is more than the 2 CPUs this host has"
        );
        assert!(parse_cpus("0", 2).is_err());
        assert!(parse_cpus("half", 2).is_err());
    }

    #[test]
    fn pids_and_users() {
        assert_eq!(check_pids(1).unwrap_err(), ValueError::PidsBelowMinimum(1));
        assert_eq!(check_pids(2).unwrap(), 2);
        assert_eq!(check_pids(-1).unwrap(), -1);
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        assert_eq!(parse_user("7").unwrap(), (7, 7));
        assert!(parse_user("nobody").is_err());
    }

    #[test]
    fn device_lines() {
        let d = default_devices();
        assert_eq!(d[0].v1_line(), "c 1:3 rwm");
        assert_eq!(d[7].v1_line(), "c 136:* rwm");
        let all = DeviceRule {
            allow: false,
            kind: 'a',
            major: None,
            minor: None,
            access: "rwm".into(),
        };
        assert_eq!(all.v1_line(), "a *:* rwm");
    }
}
