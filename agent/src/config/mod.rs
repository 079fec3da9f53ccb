//! The agent's configuration: one YAML file, parsed once and validated once.
//!
//! Every section has `#[serde(default)]` and `deny_unknown_fields`, so an empty file (or none)
//! gives the defaults below and a typo is an error with `file:line:column`. Values that need
//! checking (durations, globs, powers of two) are newtypes that validate while parsing, so their
//! errors carry a position too.
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer, de};

/// A configuration error, already formatted as one line for people.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source} (check the path given to --config)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

/// Top-level configuration (`palisade agent --config FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server (`/metrics`, `/healthz`) listens on. Loopback by default: expose
    /// it deliberately (e.g. `0.0.0.0:9477` in a DaemonSet scraped by Prometheus).
    pub listen: SocketAddr,
    /// Log output: `text` for people, `json` for machines.
    pub log_format: LogFormat,
    /// Root-only unix socket where `palisade run` registers workloads before they start.
    pub control_socket: PathBuf,
    /// Mount point of the unified (cgroup v2) hierarchy. Found in /proc/self/mountinfo when unset.
    pub cgroup_root: Option<PathBuf>,
    pub syscalls: SyscallConfig,
    pub metrics: MetricsConfig,
    pub identity: IdentityConfig,
    pub resources: ResourcesConfig,
    pub events: EventsConfig,
    pub processes: ProcessesConfig,
    pub network: NetworkConfig,
    pub policy: crate::policy::PolicyConfig,
    /// OTLP log export of every event.
    pub otlp: crate::otlp::OtlpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
            log_format: LogFormat::Text,
            control_socket: PathBuf::from(palisade_proto::DEFAULT_SOCKET),
            cgroup_root: None,
            syscalls: SyscallConfig::default(),
            metrics: MetricsConfig::default(),
            identity: IdentityConfig::default(),
            resources: ResourcesConfig::default(),
            events: EventsConfig::default(),
            processes: ProcessesConfig::default(),
            network: NetworkConfig::default(),
            policy: crate::policy::PolicyConfig::default(),
            otlp: crate::otlp::OtlpConfig::default(),
        }
    }
}

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
}

impl Default for ResourcesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            cgroup_v1_root: None,
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
    /// Events a slow consumer (log, `palisade events`) may fall behind before it loses some
    /// (counted in `palisade_events_dropped_total`).
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            output: None,
            max_file_mib: 100,
            keep_files: 5,
            kernel_buffer_kib: 4096,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Syscall telemetry (`sys_enter`/`sys_exit` raw tracepoints).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyscallConfig {
    /// Trace only cgroups whose container name or cgroup path matches one of these globs
    /// (e.g. `web-*`, `/system.slice/*.service`). Empty: trace every cgroup.
    pub cgroups: Vec<Pattern>,
    /// Capacity of the (cgroup, syscall) table in the kernel. Kernel memory is
    /// `entries x 256 bytes x CPUs`, preallocated. When full, new pairs are dropped and counted
    /// in `palisade_kernel_lost_total{reason="syscall_stats_map_full"}`.
    pub stats_max_entries: Capacity,
    /// Capacity of the (cgroup, syscall, errno) table (`entries x 8 bytes x CPUs`).
    pub errno_max_entries: Capacity,
    /// Slots for in-flight syscall timestamps, indexed by thread id (a power of two; 16 bytes
    /// each). Threads whose ids collide modulo this size may lose a latency sample, never a count.
    pub thread_slots: PowerOfTwo,
}

impl Default for SyscallConfig {
    fn default() -> Self {
        Self {
            cgroups: Vec::new(),
            stats_max_entries: Capacity(10_240),
            errno_max_entries: Capacity(4_096),
            thread_slots: PowerOfTwo(65_536),
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
    /// Export `palisade_syscall_duration_seconds`.
    pub syscall_latency: bool,
    /// Export every `step`-th power of two as a histogram bucket: 1 = 128ns, 256ns, 512ns, ...
    /// (29 buckets); 2 = 128ns, 512ns, 2us, ... (15 buckets, the default).
    pub latency_bucket_step: BucketStep,
    /// How long a removed cgroup's final numbers stay on `/metrics` so the last scrape sees them.
    #[serde(with = "duration")]
    pub series_grace_period: Duration,
    /// Period of the background pass that reads kernel maps and reaps removed cgroups (scrapes
    /// also read the maps, so numbers on `/metrics` are always current).
    #[serde(with = "duration")]
    pub collect_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_series: 100_000,
            syscall_latency: true,
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
    pub roots: crate::identity::names::NameRoots,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            max_cgroups: 65_536,
            rescan_interval: Duration::from_secs(60),
            name_resolution_window: Duration::from_secs(30),
            roots: crate::identity::names::NameRoots::default(),
        }
    }
}

/// A glob over container names and cgroup paths, compiled while parsing.
#[derive(Clone)]
pub struct Pattern {
    pub source: String,
    pub matcher: globset::GlobMatcher,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, String> {
        if source.is_empty() {
            return Err("empty pattern".into());
        }
        let glob = globset::GlobBuilder::new(source)
            .literal_separator(false)
            .build()
            .map_err(|e| format!("invalid glob `{source}`: {}", e.kind()))?;
        Ok(Self {
            source: source.to_owned(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Pattern::new(&s).map_err(de::Error::custom)
    }
}

/// A map capacity: 1 ..= 4,194,304 entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity(pub u32);

impl<'de> Deserialize<'de> for Capacity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if !(1..=4_194_304).contains(&v) {
            return Err(de::Error::custom(format!(
                "capacity must be between 1 and 4194304 (got {v})"
            )));
        }
        Ok(Self(v))
    }
}

/// A power of two between 1,024 and 4,194,304.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerOfTwo(pub u32);

impl<'de> Deserialize<'de> for PowerOfTwo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if !v.is_power_of_two() || !(1024..=4_194_304).contains(&v) {
            return Err(de::Error::custom(format!(
                "must be a power of two between 1024 and 4194304 (got {v})"
            )));
        }
        Ok(Self(v))
    }
}

/// Histogram bucket step: 1 ..= 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketStep(pub u32);

impl<'de> Deserialize<'de> for BucketStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if !(1..=4).contains(&v) {
            return Err(de::Error::custom(format!("must be 1, 2, 3 or 4 (got {v})")));
        }
        Ok(Self(v))
    }
}

/// Durations as humantime strings: `30s`, `5m`, `1h 30m`, `0s`.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| de::Error::custom(format!("invalid duration `{s}`: {e} (e.g. 30s, 5m)")))
    }
}

impl Config {
    /// Parses a configuration document; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: first_message_line(&e.to_string()),
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Checks that need more than one field.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        if self.metrics.collect_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "metrics.collect_interval must be at least 100ms".into(),
            });
        }
        let kib = self.events.kernel_buffer_kib;
        if !kib.is_power_of_two() || !(4..=1 << 20).contains(&kib) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "events.kernel_buffer_kib must be a power of two between 4 and 1048576 (got {kib})"
                ),
            });
        }
        if self.events.max_file_mib == 0 {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "events.max_file_mib must be at least 1".into(),
            });
        }
        if let Err(e) = crate::otlp::check(&self.otlp) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            });
        }
        if self.network.peer_prefix_v4 > 32 || self.network.peer_prefix_v6 > 128 {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "network.peer_prefix_v4 must be at most 32 and peer_prefix_v6 at most 128"
                    .into(),
            });
        }
        if let Err(message) = self.policy.validate() {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message,
            });
        }
        if self.identity.rescan_interval < Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                path: path.to_owned(),
                message: "identity.rescan_interval must be at least 1s".into(),
            });
        }
        Ok(())
    }

    /// The documented default configuration, as YAML (printed by `palisade agent --print-config`).
    pub const DEFAULT_YAML: &'static str = include_str!("../../palisade.yaml");
}

/// serde-saphyr renders `error: line L column C: message` followed by a source snippet; keep the
/// message only (the position is printed as `file:line:column`).
fn first_message_line(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered).trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.split_once(": ") {
        Some((pos, rest)) if pos.starts_with("line ") => rest.to_owned(),
        _ => first.to_owned(),
    }
}

#[cfg(test)]
mod tests;
