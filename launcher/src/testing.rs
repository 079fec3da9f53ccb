//! Test helpers: plans built by the real builders (the command line, OCI bundles in a
//! temporary directory), a fake filesystem that looks like a small image and a kernel's
//! procfs and sysfs, and exact comparison of recorded calls.
use std::path::{Path, PathBuf};

use crate::{RunArgs, cmdline, oci, plan::Plan, sys::fake::Fake};

/// `palisade run --seccomp unconfined [--rootfs DIR] -- /bin/sh` (unconfined: nothing to
/// compile).
pub fn run_args(rootfs: Option<&Path>) -> RunArgs {
    RunArgs {
        name: Some("web".into()),
        bundle: None,
        replicas: 1,
        memory: None,
        cpus: None,
        pids: None,
        seccomp: Some("unconfined".into()),
        net: None,
        hostname: None,
        rootfs: rootfs.map(Path::to_path_buf),
        volumes: Vec::new(),
        user: None,
        cwd: Some("/".into()),
        env: Vec::new(),
        require_agent: false,
        agent_socket: None,
        agent_timeout: std::time::Duration::from_secs(30),
        policy: None,
        command: vec!["/bin/sh".into()],
    }
}

/// A directory standing for a bundle or a rootfs; records show it as `/bundle`.
pub struct Dir {
    /// Removed with the `Dir`.
    _tmp: tempfile::TempDir,
    /// The canonical path (what the plan holds).
    pub path: PathBuf,
}

impl Dir {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let path = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir(path.join("rootfs")).unwrap();
        Self { _tmp: tmp, path }
    }

    /// The plan of the command line with `--rootfs DIR/rootfs`.
    pub fn cmdline_plan(&self) -> Plan {
        cmdline::from_args(&run_args(Some(&self.path.join("rootfs")))).unwrap()
    }

    /// The plan of a bundle: `runc spec`'s config.json changed by `edit`.
    pub fn bundle_plan(&self, edit: impl FnOnce(&mut serde_json::Value)) -> Plan {
        let mut config: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/data/runc-spec-config.json")).unwrap();
        config["process"]["terminal"] = false.into();
        edit(&mut config);
        std::fs::write(self.path.join("config.json"), config.to_string()).unwrap();
        oci::load(&self.path).unwrap().0
    }

    /// Creates host files (and directories, with a trailing `/`) under the bundle, for bind
    /// sources, and tells the fake about them.
    pub fn host(&self, fake: Fake, paths: &[&str]) -> Fake {
        let mut full = Vec::new();
        for p in paths {
            let host = self.path.join(p.trim_end_matches('/'));
            if p.ends_with('/') {
                std::fs::create_dir_all(&host).unwrap();
                full.push(format!("{}/", host.display()));
            } else {
                std::fs::create_dir_all(host.parent().unwrap()).unwrap();
                std::fs::write(&host, "").unwrap();
                full.push(host.display().to_string());
            }
        }
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        fake.with_host(&refs)
    }

    /// The recorded calls with the bundle's path shown as `/bundle`.
    pub fn calls(&self, fake: &Fake) -> Vec<String> {
        let dir = self.path.display().to_string();
        fake.calls()
            .iter()
            .map(|c| c.replace(&dir, "/bundle"))
            .collect()
    }
}

/// A small image (busybox-like), and what fresh procfs, sysfs and devpts mounts hold: procfs
/// has some of runc's masked paths (`asound`, `latency_stats`, `timer_stats` and `scsi` are
/// missing, as on most kernels), sysfs has `firmware` and the cgroup mount point.
pub fn image() -> Fake {
    Fake::new()
        .with(&[
            "/bin/sh",
            "/bin/busybox",
            "/etc/passwd",
            "/proc/",
            "/dev/",
            "/sys/",
            "/tmp/",
        ])
        .with_fs(
            "proc",
            &[
                "acpi/",
                "kcore",
                "keys",
                "timer_list",
                "sched_debug",
                "bus/",
                "fs/",
                "irq/",
                "sys/",
                "sysrq-trigger",
                "self/",
            ],
        )
        .with_fs("sysfs", &["firmware/", "fs/cgroup/", "kernel/"])
        .with_fs("devpts", &["ptmx"])
}

/// Compares recorded calls with `expected` (one call a line, leading spaces ignored).
#[track_caller]
pub fn assert_calls(calls: &[String], expected: &str) {
    let want: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let got: Vec<&str> = calls.iter().map(String::as_str).collect();
    assert_eq!(got, want, "\ngot:\n{}\n", got.join("\n"));
}

/// Asserts `expected` (lines) appears in `calls` as one contiguous run.
#[track_caller]
pub fn assert_run(calls: &[String], expected: &str) {
    let want: Vec<&str> = expected
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let got: Vec<&str> = calls.iter().map(String::as_str).collect();
    let found = got.windows(want.len()).any(|w| w == want.as_slice());
    assert!(
        found,
        "\nexpected this run of calls:\n{}\nin:\n{}\n",
        want.join("\n"),
        got.join("\n")
    );
}
