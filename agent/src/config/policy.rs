//! The `policy:` section of the agent's configuration.
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{Invalid, duration};

/// Policies: where they are, where enforcement state is pinned, how violations are reported.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Policy files or directories (every `*.yaml`/`*.yml` inside). Empty: no policies from
    /// files (workloads started with `palisade run --policy` still bring their own).
    pub paths: Vec<PathBuf>,
    /// bpffs directory where enforcement programs' links and maps are pinned, so enforcement
    /// survives an agent restart; `palisade agent --cleanup` removes it.
    pub pin_dir: PathBuf,
    /// How often the files are checked for changes (0s: only on SIGHUP or `palisade policy
    /// reload`).
    #[serde(with = "duration")]
    pub watch_interval: Duration,
    /// Violation events per (container, rule): at most `rate_limit_burst` per
    /// `rate_limit_interval`; the rest are counted and reported as `suppressed`.
    /// `rate_limit: false` sends one event per violation (floods included; what the ring
    /// buffer cannot hold is still counted and reported as `suppressed`).
    pub rate_limit: bool,
    pub rate_limit_burst: u64,
    #[serde(with = "duration")]
    pub rate_limit_interval: Duration,
    /// The violation ring buffer (`POLICY_EVENTS`), KiB, a power of two: 128 bytes per
    /// syscall or network violation, ~1 KiB with exec or file paths,
    /// what the kernel holds while the agent is busy or restarting. A pinned buffer from a
    /// previous agent keeps its size until the pins are removed (`palisade agent --cleanup`).
    pub events_buffer_kib: u32,
    /// The kernel's BTF, where exec rules find the `linux_binprm`/`file`/`dentry`/`mount`
    /// member offsets they need to see the file actually executed (a BTFHub file for a kernel
    /// without /sys/kernel/btf/vmlinux), and syscall rules the offset of `thread_info.status`
    /// that tells i386 calls from x86_64 ones. Without usable BTF, exec rules match the path
    /// given to execve and i386 calls are checked as the x86_64 call of the same number: best
    /// effort, and the agent says so.
    pub kernel_btf: PathBuf,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            paths: Vec::new(),
            pin_dir: PathBuf::from("/sys/fs/bpf/palisade"),
            watch_interval: Duration::from_secs(2),
            rate_limit: true,
            rate_limit_burst: 10,
            rate_limit_interval: Duration::from_secs(10),
            events_buffer_kib: 256,
            kernel_btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
        }
    }
}

impl PolicyConfig {
    /// The burst the kernel's rate limiter admits: unbounded when `rate_limit` is off.
    pub fn burst(&self) -> u64 {
        if self.rate_limit {
            self.rate_limit_burst
        } else {
            u64::MAX
        }
    }

    /// Checks that need more than one field; the message names the key.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.pin_dir.is_absolute() {
            return Err(Invalid::new(
                "policy.pin_dir",
                "must be an absolute path on bpffs",
            ));
        }
        if self.rate_limit_burst == 0 {
            return Err(Invalid::new(
                "policy.rate_limit_burst",
                "must be at least 1",
            ));
        }
        let kib = self.events_buffer_kib;
        if !kib.is_power_of_two() || !(4..=1 << 20).contains(&kib) {
            return Err(Invalid::new(
                "policy.events_buffer_kib",
                format!("must be a power of two between 4 and 1048576 (got {kib})"),
            ));
        }
        if self.rate_limit_interval < Duration::from_millis(10) {
            return Err(Invalid::new(
                "policy.rate_limit_interval",
                "must be at least 10ms",
            ));
        }
        Ok(())
    }
}
