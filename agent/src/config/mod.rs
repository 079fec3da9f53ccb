//! The agent's configuration: one YAML file, parsed once and validated once.
//!
//! Every section has `#[serde(default)]` and `deny_unknown_fields`, so an empty file (or none)
//! gives the defaults below and a typo is an error with `file:line:column`. Values that need
//! checking (durations, globs, powers of two) are newtypes that validate while parsing, so their
//! errors carry a position too.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer, de};

mod otlp;
mod policy;
mod sections;

pub use otlp::{OtlpConfig, OtlpProtocol};
pub use policy::PolicyConfig;
pub use sections::{
    EventsConfig, IdentityConfig, MetricsConfig, NameRoots, NetworkConfig, ProcessesConfig,
    ResourcesConfig, RuntimeParents, SyscallConfig, SyscallHookChoice,
};

/// A value that parses but cannot be used (alone or with the values beside it), named by its
/// key: `policy.pin_dir must be an absolute path on bpffs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {problem}")]
pub struct Invalid {
    pub key: &'static str,
    pub problem: String,
}

impl Invalid {
    pub fn new(key: &'static str, problem: impl Into<String>) -> Self {
        Self {
            key,
            problem: problem.into(),
        }
    }
}

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
    #[error("{}: {source}", path.display())]
    Invalid { path: PathBuf, source: Invalid },
    #[error("{flag}: {source}")]
    Flag {
        flag: &'static str,
        source: FlagError,
    },
}

/// Why a command-line flag's value was refused.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(transparent)]
    Invalid(#[from] Invalid),
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
    /// This node's name (`host.name` of OTLP telemetry, `node` of `palisade_build_info`).
    /// Unset: `--node-name`/`NODE_NAME`, else the kernel's hostname.
    pub node_name: Option<NodeName>,
    pub syscalls: SyscallConfig,
    pub metrics: MetricsConfig,
    pub identity: IdentityConfig,
    pub resources: ResourcesConfig,
    pub events: EventsConfig,
    pub processes: ProcessesConfig,
    pub network: NetworkConfig,
    pub policy: PolicyConfig,
    /// OTLP log export of every event.
    pub otlp: OtlpConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
            log_format: LogFormat::Text,
            control_socket: PathBuf::from(palisade_proto::DEFAULT_SOCKET),
            cgroup_root: None,
            node_name: None,
            syscalls: SyscallConfig::default(),
            metrics: MetricsConfig::default(),
            identity: IdentityConfig::default(),
            resources: ResourcesConfig::default(),
            events: EventsConfig::default(),
            processes: ProcessesConfig::default(),
            network: NetworkConfig::default(),
            policy: PolicyConfig::default(),
            otlp: OtlpConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A glob over container names and cgroup paths (`*` also matches `/`), compiled while
/// parsing: the policy language's glob, so a selector and a `--cgroup` filter match alike.
pub use palisade_policy::model::{Glob as Pattern, GlobError as PatternError};

/// A node name: 1 to 253 printable characters without spaces (a Kubernetes node name is a DNS
/// subdomain; a hostname fits too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName(pub String);

impl NodeName {
    pub fn new(name: &str) -> Result<Self, Invalid> {
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control()));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(Invalid::new(
                "node_name",
                format!("`{name}` must be 1 to 253 printable characters without spaces"),
            ))
        }
    }

    /// The kernel's hostname (`/proc/sys/kernel/hostname`), or `localhost` when unreadable.
    pub fn from_hostname() -> Self {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .and_then(|h| Self::new(h.trim()).ok())
            .unwrap_or_else(|| Self("localhost".into()))
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(|e| de::Error::custom(e.problem))
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

/// One in this many: a power of two between 1 and 1,024 (`syscalls.latency_sample`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleEvery(pub u32);

impl<'de> Deserialize<'de> for SampleEvery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u32::deserialize(d)?;
        if !v.is_power_of_two() || v > 1024 {
            return Err(de::Error::custom(format!(
                "must be a power of two between 1 and 1024: 1 times every call, 8 one in 8 (got {v})"
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
pub mod duration {
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

    /// What each section checks beyond single values.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.metrics
            .validate()
            .and_then(|()| self.events.validate())
            .and_then(|()| self.otlp.event_types().map(drop))
            .and_then(|()| self.network.validate())
            .and_then(|()| self.policy.validate())
            .and_then(|()| self.identity.validate())
            .map_err(|source| ConfigError::Invalid {
                path: path.to_owned(),
                source,
            })
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
