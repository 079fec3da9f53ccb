//! Resource limits of policies, written to running containers' cgroups: the unified directory
//! where the controller is enabled there (pure v2), else the v1 controller's directory at the
//! same relative path (hybrid hosts).
use std::{collections::HashMap, path::PathBuf};

use palisade_policy::model::Resources;

use palisade_cgroupfs::Mounts;

/// Where limits go.
#[derive(Debug, Clone, Default)]
pub struct Writer {
    unified: PathBuf,
    /// controller → v1 mount point
    v1: HashMap<String, PathBuf>,
}

const PERIOD_US: u64 = 100_000;

/// Why a limit was not written.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("no {controller} controller in {} nor a v1 hierarchy", unified.display())]
    NoController {
        controller: &'static str,
        unified: PathBuf,
    },
    #[error("write {value} to {}: {source}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
}

impl Writer {
    pub fn new(unified: PathBuf, mounts: &Mounts) -> Self {
        let mut v1 = HashMap::new();
        for (mount, ctrls) in &mounts.v1 {
            for c in ctrls {
                v1.entry(c.clone()).or_insert_with(|| mount.clone());
            }
        }
        Self { unified, v1 }
    }

    /// For tests: explicit roots.
    #[cfg(test)]
    pub fn with_roots(unified: PathBuf, v1: HashMap<String, PathBuf>) -> Self {
        Self { unified, v1 }
    }

    /// Writes `r` for the cgroup at `rel` (relative to the unified root); returns the files
    /// written.
    pub fn apply(&self, rel: &str, r: &Resources) -> Result<Vec<String>, LimitError> {
        let rel = rel.trim_start_matches('/');
        let v2 = self.unified.join(rel);
        let mut writes: Vec<(PathBuf, String)> = Vec::new();
        let v1 = |controller: &'static str, file: &str| -> Result<PathBuf, LimitError> {
            let m = self
                .v1
                .get(controller)
                .ok_or_else(|| LimitError::NoController {
                    controller,
                    unified: v2.clone(),
                })?;
            Ok(m.join(rel).join(file))
        };
        if let Some(m) = r.memory {
            if v2.join("memory.max").exists() {
                writes.push((v2.join("memory.max"), m.to_string()));
            } else {
                writes.push((v1("memory", "memory.limit_in_bytes")?, m.to_string()));
            }
        }
        if let Some(q) = r.cpu_quota_us {
            if v2.join("cpu.max").exists() {
                writes.push((v2.join("cpu.max"), format!("{q} {PERIOD_US}")));
            } else {
                writes.push((v1("cpu", "cpu.cfs_period_us")?, PERIOD_US.to_string()));
                writes.push((v1("cpu", "cpu.cfs_quota_us")?, q.to_string()));
            }
        }
        if let Some(p) = r.pids {
            if v2.join("pids.max").exists() {
                writes.push((v2.join("pids.max"), p.to_string()));
            } else {
                writes.push((v1("pids", "pids.max")?, p.to_string()));
            }
        }
        let mut done = Vec::new();
        for (path, value) in writes {
            if let Err(source) = std::fs::write(&path, &value) {
                return Err(LimitError::Write {
                    path,
                    value,
                    source,
                });
            }
            done.push(format!("{}={value}", path.display()));
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_files_first_then_v1_controllers() {
        let d = tempfile::tempdir().unwrap();
        let uni = d.path().join("unified");
        let mem = d.path().join("memory");
        let cpu = d.path().join("cpu");
        for p in [uni.join("a"), mem.join("a"), cpu.join("a")] {
            std::fs::create_dir_all(p).unwrap();
        }
        std::fs::write(uni.join("a/pids.max"), "max").unwrap();
        let w = Writer::with_roots(
            uni.clone(),
            HashMap::from([("memory".into(), mem.clone()), ("cpu".into(), cpu.clone())]),
        );
        let r = Resources {
            memory: Some(64 << 20),
            cpu_quota_us: Some(50_000),
            pids: Some(32),
        };
        let done = w.apply("/a", &r).unwrap();
        assert_eq!(done.len(), 4, "{done:?}");
        assert_eq!(
            std::fs::read_to_string(mem.join("a/memory.limit_in_bytes")).unwrap(),
            "67108864"
        );
        assert_eq!(
            std::fs::read_to_string(cpu.join("a/cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        assert_eq!(
            std::fs::read_to_string(uni.join("a/pids.max")).unwrap(),
            "32"
        );
        // a missing controller is an error naming it
        let w = Writer::with_roots(uni, HashMap::new());
        let e = w
            .apply(
                "/a",
                &Resources {
                    memory: Some(1 << 30),
                    ..Resources::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("no memory controller"), "{e}");
    }
}
