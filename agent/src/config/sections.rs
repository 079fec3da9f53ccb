//! The sections of the configuration (`syscalls:`, `metrics:`, `identity:`, ...), each with
//! its documented defaults and the checks that need more than one value.
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{BucketStep, Capacity, Invalid, Pattern, PowerOfTwo, SampleEvery, duration};

/// Network flows and TCP telemetry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub enabled: bool,
    /// Flows the kernel table holds (LRU: the least recently active go first; counted in
    /// `palisade_network_flows_evicted_total`).
    pub flow_entries: Capacity,
    /// A UDP flow with no packet for this long ends (its flow record is written).
    #[serde(with = "duration")]
    pub udp_idle_timeout: Duration,
    /// A TCP flow with no packet and no close for this long is dropped from the table.
    #[serde(with = "duration")]
    pub tcp_idle_timeout: Duration,
    /// Long flows get an interim flow record this often.
    #[serde(with = "duration")]
    pub report_interval: Duration,
    /// Export `palisade_network_peer_bytes_total{container,direction,remote}` (remote as a CIDR).
    pub per_peer_metrics: bool,
    /// Prefix lengths the remote address is cut to for the `remote` label.
    pub peer_prefix_v4: u8,
    pub peer_prefix_v6: u8,
    /// Most per-peer series; the rest are counted in `palisade_network_peer_series_dropped`.
    pub max_peer_series: usize,
}

impl NetworkConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.peer_prefix_v4 > 32 || self.peer_prefix_v6 > 128 {
            return Err(Invalid::new(
                "network.peer_prefix_v4",
                "must be at most 32 and peer_prefix_v6 at most 128",
            ));
        }
        Ok(())
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            flow_entries: Capacity(65_536),
            udp_idle_timeout: Duration::from_secs(30),
            tcp_idle_timeout: Duration::from_secs(300),
            report_interval: Duration::from_secs(60),
            per_peer_metrics: false,
            peer_prefix_v4: 24,
            peer_prefix_v6: 64,
            max_peer_series: 10_000,
        }
    }
}

/// Resource readings from cgroupfs (cAdvisor-compatible `container_*` metrics).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourcesConfig {
    pub enabled: bool,
    /// Directory holding the v1 controller hierarchies (`memory/`, `cpu,cpuacct/`, …) instead of
    /// the mounts in /proc/self/mountinfo (for fixture trees).
    pub cgroup_v1_root: Option<PathBuf>,
    /// cgroupfs is read once per `metrics.collect_interval` (the background collection) and
    /// scrapes serve those readings, at most one interval old (as cAdvisor's housekeeping);
    /// a cgroup not read yet is read by the scrape that first sees it. `true` reads every live
    /// cgroup on every scrape as well: fresh values, at ~15 files per container per scrape.
    pub read_on_scrape: bool,
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cgroup_v1_root: None,
            read_on_scrape: false,
        }
    }
}

/// The JSON event stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Event log: unset = none, `-` = stdout, else a file (rotated by size).
    pub output: Option<PathBuf>,
    /// Rotate the log file when it would pass this many MiB.
    pub max_file_mib: u64,
    /// Rotated files kept (`FILE.1` … `FILE.N`).
    pub keep_files: u32,
    /// Kernel ring buffer for events, KiB (a power of two, at least 4).
    pub kernel_buffer_kib: u32,
    /// Events read from the ring buffer that may wait for the state owner. When it is full the
    /// kernel actor waits (counted in `palisade_kernel_queue_waits_total`), the ring buffer
    /// fills, and the kernel counts what it cannot queue (`ringbuf_full`, per container in
    /// `palisade_events_kernel_lost_total`).
    pub kernel_queue: usize,
    /// Events a slow consumer (log, `palisade events`) may fall behind before it loses some
    /// (counted in `palisade_events_dropped_total`).
    pub queue: usize,
}

impl EventsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        let kib = self.kernel_buffer_kib;
        if !kib.is_power_of_two() || !(4..=1 << 20).contains(&kib) {
            return Err(Invalid::new(
                "events.kernel_buffer_kib",
                format!("must be a power of two between 4 and 1048576 (got {kib})"),
            ));
        }
        if self.max_file_mib == 0 {
            return Err(Invalid::new("events.max_file_mib", "must be at least 1"));
        }
        if self.kernel_queue == 0 {
            return Err(Invalid::new("events.kernel_queue", "must be at least 1"));
        }
        Ok(())
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            output: None,
            max_file_mib: 100,
            keep_files: 5,
            kernel_buffer_kib: 4096,
            kernel_queue: 8192,
            queue: 16_384,
        }
    }
}

/// The process table behind exit and OOM events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessesConfig {
    pub max_per_container: usize,
    pub max_total: usize,
}

impl Default for ProcessesConfig {
    fn default() -> Self {
        Self {
            max_per_container: 4096,
            max_total: 65_536,
        }
    }
}

/// Which kernel hook carries the syscall telemetry (`syscalls.hook`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyscallHookChoice {
    /// The pair `palisade doctor` names for this host: today raw tracepoints everywhere
    /// (fentry/fexit was not measured cheaper, see the README's "Which hook carries syscall
    /// telemetry").
    #[default]
    Auto,
    /// `sys_enter`/`sys_exit` raw tracepoints (every kernel).
    RawTracepoint,
    /// fentry/fexit on `x64_sys_call` (kernel BTF, 6.9+ or a BHI backport); the agent fails
    /// to start where the kernel refuses them.
    Fentry,
}

/// Syscall telemetry (`sys_enter`/`sys_exit` raw tracepoints, or fentry/fexit on the syscall
/// dispatcher: `hook`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyscallConfig {
    /// `auto`, `raw_tracepoint` or `fentry`: the kernel hook pair that sees every syscall.
    /// `palisade doctor` says which one `auto` picks on this host.
    pub hook: SyscallHookChoice,
    /// Trace only cgroups whose container name or cgroup path matches one of these globs
    /// (e.g. `web-*`, `/system.slice/*.service`). Empty: trace every cgroup.
    pub cgroups: Vec<Pattern>,
    /// Capacity of the (cgroup, syscall) tables in the kernel, preallocated: the counts (this
    /// rounded up to a power of two, per CPU: `positions x 24 bytes x CPUs`) and, a quarter of
    /// it, the latencies of the timed calls (`entries / 4 x 256 bytes x CPUs`: one entry per
    /// cgroup, plus one per cgroup and syscall in `metrics.syscall_latency_detail`). A call that
    /// finds no room in either is counted in
    /// `palisade_kernel_lost_total{reason="syscall_stats_map_full"}`.
    pub stats_max_entries: Capacity,
    /// Capacity of the (cgroup, syscall, errno) table (`entries x 8 bytes x CPUs`).
    pub errno_max_entries: Capacity,
    /// Slots per thread (cgroup cache, sampling state; indexed by thread id) and per syscall in
    /// flight (indexed by kernel stack): a power of two, 24 + 32 bytes each. Threads that
    /// collide modulo this size may lose a latency sample, never a count.
    pub thread_slots: PowerOfTwo,
    /// Time one call in this many (a power of two, 1 to 1024; 1 = every call), chosen at
    /// random per call: the latency histograms (`palisade_syscall_duration_seconds`) hold that
    /// sample, while call and error counts stay exact. Timing a call costs two clock reads,
    /// which were most of what syscall telemetry added to every syscall.
    pub latency_sample: SampleEvery,
}

impl SyscallConfig {
    /// Entries of the latency table (`SYSCALL_STATS`): a quarter of `stats_max_entries`, since
    /// it holds about one key per cgroup where the count table holds one per (cgroup, syscall).
    pub fn latency_max_entries(&self) -> u32 {
        (self.stats_max_entries.0 / 4).max(1)
    }

    /// The kernel's `LATENCY_SAMPLE_MASK`: 0 times every call, `LATENCY_NEVER` none (the
    /// histograms are not exported: `metrics.syscall_latency: false`), else one call in
    /// `latency_sample`.
    pub fn latency_sample_mask(&self, latency_exported: bool) -> u32 {
        if latency_exported {
            self.latency_sample.0 - 1
        } else {
            palisade_common::LATENCY_NEVER
        }
    }
}

impl Default for SyscallConfig {
    fn default() -> Self {
        Self {
            hook: SyscallHookChoice::Auto,
            cgroups: Vec::new(),
            stats_max_entries: Capacity(20_480),
            errno_max_entries: Capacity(4_096),
            thread_slots: PowerOfTwo(65_536),
            latency_sample: SampleEvery(8),
        }
    }
}

/// `/metrics` rendering.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Cardinality cap: most series (sample lines) per scrape across the per-container families.
    /// Whole metrics past the cap are left out and reported in `palisade_series_dropped`.
    pub max_series: usize,
    /// Export `palisade_syscall_duration_seconds`: one histogram per container holding every
    /// syscall (`syscall="other"`), plus one per syscall matched by `syscall_latency_detail`.
    pub syscall_latency: bool,
    /// Syscalls (names or globs: `read`, `epoll_*`, `*`) that get a latency histogram of their
    /// own in every container (18 series each with the default step), out of `other`.
    pub syscall_latency_detail: Vec<Pattern>,
    /// Export every `step`-th power of two as a histogram bucket: 1 = 128ns, 256ns, 512ns, ...
    /// (29 buckets); 2 = 128ns, 512ns, 2us, ... (15 buckets, the default).
    pub latency_bucket_step: BucketStep,
    /// How long a removed cgroup's final numbers stay on `/metrics` so the last scrape sees them.
    #[serde(with = "duration")]
    pub series_grace_period: Duration,
    /// Period of the background pass that reads kernel maps and cgroupfs and reaps removed
    /// cgroups. Scrapes also read the maps, so kernel counts on `/metrics` are always current;
    /// resource readings (`container_*`) are at most this old (see `resources.read_on_scrape`).
    #[serde(with = "duration")]
    pub collect_interval: Duration,
}

impl MetricsConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.collect_interval < Duration::from_millis(100) {
            return Err(Invalid::new(
                "metrics.collect_interval",
                "must be at least 100ms",
            ));
        }
        Ok(())
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_series: 100_000,
            syscall_latency: true,
            syscall_latency_detail: Vec::new(),
            latency_bucket_step: BucketStep(2),
            series_grace_period: Duration::from_secs(60),
            collect_interval: Duration::from_secs(10),
        }
    }
}

/// Cgroup discovery and naming.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Most cgroups the registry tracks; past it new cgroups are counted in
    /// `palisade_identity_dropped_total` and their numbers shown under `container="other"`.
    pub max_cgroups: usize,
    /// Full rescan period of the unified hierarchy. It repairs what a lost event missed and is the
    /// only discovery when the `cgroup:*` tracepoints are unavailable.
    #[serde(with = "duration")]
    pub rescan_interval: Duration,
    /// How long a container's name is looked up on every pass before it counts as unresolved
    /// (`palisade_identity_unresolved_total`); it is then retried once per window.
    #[serde(with = "duration")]
    pub name_resolution_window: Duration,
    /// Where runtimes keep the files names are read from.
    pub roots: NameRoots,
    /// Where runtimes create their containers' cgroups: a runtime's name rule applies only
    /// there, so a delegated subtree cannot name a cgroup `docker-<id>.scope` and pass for
    /// that container.
    pub runtime_parents: RuntimeParents,
}

impl IdentityConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.rescan_interval < Duration::from_secs(1) {
            return Err(Invalid::new(
                "identity.rescan_interval",
                "must be at least 1s",
            ));
        }
        Ok(())
    }
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            max_cgroups: 65_536,
            rescan_interval: Duration::from_secs(60),
            name_resolution_window: Duration::from_secs(30),
            roots: NameRoots::default(),
            runtime_parents: RuntimeParents::default(),
        }
    }
}

/// Parent cgroups (paths relative to the unified root) under which each runtime's name rules
/// apply.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeParents {
    /// `docker-<id>.scope` (systemd driver) or `<id>` (cgroupfs driver) directly below one.
    pub docker: Vec<String>,
    /// `libpod-<id>.scope` or `libpod-<id>` directly below one (root podman; rootless
    /// podman's cgroups live in a user's delegated subtree and are named by path).
    pub podman: Vec<String>,
    /// Kubernetes roots: `[QoS class/]pod<uid>[/<container>]` below one.
    pub kubernetes: Vec<String>,
}

impl Default for RuntimeParents {
    fn default() -> Self {
        let v = |s: &[&str]| s.iter().map(|p| (*p).to_owned()).collect();
        Self {
            docker: v(&["/system.slice", "/docker"]),
            podman: v(&["/machine.slice", "/libpod_parent"]),
            kubernetes: v(&["/kubepods.slice", "/kubepods"]),
        }
    }
}

/// Where runtimes keep their files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NameRoots {
    pub docker: PathBuf,
    pub podman: Vec<PathBuf>,
    /// CRI-O's containers/storage roots (`overlay-containers/containers.json`, podman's format).
    pub crio: Vec<PathBuf>,
    /// containerd's state directory (its runtime v2 bundles' `config.json`).
    pub containerd: PathBuf,
    /// Parent of kubelet's `pods/` and `containers/` log directories.
    pub kubernetes_logs: PathBuf,
}

impl Default for NameRoots {
    fn default() -> Self {
        Self {
            docker: PathBuf::from("/var/lib/docker"),
            podman: vec![PathBuf::from("/var/lib/containers/storage")],
            crio: vec![PathBuf::from("/var/lib/containers/storage")],
            containerd: PathBuf::from("/run/containerd"),
            kubernetes_logs: PathBuf::from("/var/log"),
        }
    }
}
