//! Helpers for the policy tests: a pin directory of the test's own under bpffs (never the real
//! `/sys/fs/bpf/palisade`), an agent configured with policy files, and waits on what the agent
//! says it enforces (its control socket), never on time.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{Agent, wait_for};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// `/sys/fs/bpf/palisade-test-<pid>-<n>`, removed (unpinning everything) on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new() -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/palisade-test-{}-{n}",
            std::process::id()
        )))
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

fn remove_tree(p: &Path) {
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                remove_tree(&path);
            } else {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let _ = std::fs::remove_dir(p);
}

impl Drop for PinDir {
    fn drop(&mut self) {
        remove_tree(&self.0);
    }
}

/// A policy directory and the agent configuration that points at it.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub pins: PinDir,
}

impl Setup {
    /// Writes `policy` (YAML) as `policy.yaml` in a fresh directory.
    pub fn new(policy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::write(dir.path().join("policy.yaml"), policy)
            .unwrap_or_else(|e| panic!("write policy: {e}"));
        Self {
            dir,
            pins: PinDir::new(),
        }
    }

    pub fn policy_file(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// The agent configuration: these policies, this pin directory, `extra` YAML keys under
    /// `policy:` (indented by 2), passes every second.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "metrics:\n  collect_interval: 1s\npolicy:\n  paths: [{}]\n  pin_dir: {}\n  watch_interval: 0s\n{extra}",
            self.policy_file().display(),
            self.pins.0.display()
        )
    }

    pub fn agent(&self, extra: &str) -> Agent {
        Agent::with_events(&self.config(extra), &[])
    }
}

/// The agent's `policy_status` answer.
pub fn status(agent: &Agent) -> serde_json::Value {
    let line = agent.control(r#"{"op":"policy_status"}"#);
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("status reply {line}: {e}"));
    assert_eq!(v["ok"], true, "{line}");
    v["data"].clone()
}

/// Waits until policy `name` applies to cgroup `cgroup_id` and the hooks in `hooks` are attached.
pub fn wait_applied(agent: &Agent, name: &str, cgroup_id: u64, hooks: &[&str]) {
    wait_for(
        Duration::from_secs(20),
        &format!("policy {name} on cgroup {cgroup_id}"),
        || {
            let s = status(agent);
            let on = s["policies"].as_array()?.iter().any(|p| {
                p["name"] == name
                    && p["cgroups"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["cgroup_id"] == cgroup_id))
            });
            let attached = hooks.iter().all(|h| {
                s["hooks"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == h))
            });
            (on && attached).then_some(())
        },
    );
}

/// Violation events of cgroup `cgroup_id` (waits for at least `n`).
pub fn violations(agent: &Agent, cgroup_id: u64, n: usize) -> Vec<serde_json::Value> {
    agent
        .wait_events(n, "policy violations", |e| {
            e["type"] == "policy_violation" && e["container"]["cgroup_id"] == cgroup_id
        })
        .into_iter()
        .collect()
}

/// `palisade policy ARGS --socket <agent's>`: (exit code, stdout, stderr).
pub fn cli(agent: &Agent, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(crate::palisade_bin())
        .arg("policy")
        .args(args)
        .arg("--socket")
        .arg(agent.control_socket())
        .output()
        .unwrap_or_else(|e| panic!("palisade policy: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `exec-workload` binary built with these tests (execs through fds and memfds).
pub fn exec_workload_bin() -> PathBuf {
    crate::workload_bin().with_file_name("exec-workload")
}

/// How a command run in a test cgroup ended: `Ok(code)` or `Err(signal)`.
pub fn outcome(cmd: &mut std::process::Command) -> Result<i32, i32> {
    use std::os::unix::process::ExitStatusExt as _;
    let st = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    match (st.code(), st.signal()) {
        (Some(c), _) => Ok(c),
        (None, Some(s)) => Err(s),
        _ => panic!("{cmd:?}: {st}"),
    }
}

/// A policy document selecting exactly `cgroup` (its path), in `mode`, with `body` (YAML under
/// `spec:`, indented by 2).
pub fn doc(name: &str, cgroup: &crate::TestCgroup, mode: &str, body: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: {mode}\n{body}",
        cgroup.rel
    )
}

/// `net-workload ARGS` in the cgroup and namespace: its output, trimmed (empty when killed).
pub fn net(cg: &crate::TestCgroup, ns: &crate::TestNetns, args: &[&str]) -> String {
    let out = cg
        .command_in(ns, crate::net_workload_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("net-workload: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `palisade_policy_violations_total` of `policy` with `action` in `cgroup` (by its name).
pub fn violation_count(agent: &Agent, policy: &str, action: &str, container: &str) -> f64 {
    agent
        .metrics()
        .find(
            "palisade_policy_violations_total",
            &[
                ("policy", policy),
                ("action", action),
                ("container", container),
            ],
        )
        .iter()
        .map(|s| s.value)
        .sum()
}

/// `palisade_policy_violations_total` of `policy`'s rule `rule` with `action` in `cg`.
pub fn rule_violations(
    agent: &Agent,
    policy: &str,
    rule: &str,
    action: &str,
    cg: &crate::TestCgroup,
) -> f64 {
    agent
        .metrics()
        .find(
            "palisade_policy_violations_total",
            &[
                ("policy", policy),
                ("rule", rule),
                ("action", action),
                ("container", &cg.rel),
            ],
        )
        .iter()
        .map(|s| s.value)
        .sum()
}

/// Waits (20 s, scaled) until [`rule_violations`] is exactly `n`.
pub fn wait_rule_violations(
    agent: &Agent,
    policy: &str,
    rule: &str,
    action: &str,
    cg: &crate::TestCgroup,
    n: f64,
) {
    crate::wait_for(
        std::time::Duration::from_secs(20),
        &format!("{n} violations of {policy}/{rule} ({action}) on /metrics"),
        || (rule_violations(agent, policy, rule, action, cg) == n).then_some(()),
    );
}

/// A TCP listener in `ns` (outside any policy cgroup) on 127.0.0.1:`port`, until dropped.
pub struct Listener(std::process::Child, Option<crate::TestCgroup>);

impl Listener {
    pub fn start(ns: &crate::TestNetns, port: u16) -> Self {
        let cg = crate::TestCgroup::new("pol-listener");
        let c = crate::start_server(&cg, ns, &["serve-tcp", &format!("127.0.0.1:{port}"), "100"]);
        Self(c, Some(cg))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        drop(self.1.take());
    }
}

/// What a command's process ended with: `signal N` or `exit N`.
pub fn ended(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.signal(), status.code()) {
        (Some(s), _) => format!("signal {s}"),
        (None, Some(c)) => format!("exit {c}"),
        _ => "unknown".into(),
    }
}

/// Whether this host must refuse in the kernel (BPF-LSM), checked against what it has: BPF-LSM
/// is required unless `PALISADE_HOST_LSM=none` says this host has none (`cargo xtask test`
/// sets it where /sys/kernel/security/lsm has no `bpf`; the VM run does not). A mismatch either
/// way panics; the answer and the probe are printed.
pub fn host_has_lsm() -> bool {
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    let has = lsms.split(',').any(|l| l.trim() == "bpf");
    let said_none = std::env::var("PALISADE_HOST_LSM").is_ok_and(|v| v == "none");
    match (has, said_none) {
        (true, true) => panic!(
            "PALISADE_HOST_LSM=none but this host has BPF-LSM (active LSMs: {})",
            lsms.trim()
        ),
        (false, false) => panic!(
            "this host has no BPF-LSM (active LSMs: {:?}): these tests need `lsm=...,bpf` (cargo xtask vm-test), or PALISADE_HOST_LSM=none to check the fallback here",
            lsms.trim()
        ),
        _ => {}
    }
    println!(
        "BPF-LSM on this host: {has} (active LSMs: {:?})",
        lsms.trim()
    );
    has
}

/// (events with a process, suppressed) of cgroup `cgroup_id`'s `policy_violation` events in
/// `events`: their sum is the violations they report (each event one, plus its `suppressed`).
pub fn violation_sums(events: &[serde_json::Value], cgroup_id: u64) -> (u64, u64) {
    events
        .iter()
        .filter(|e| e["type"] == "policy_violation" && e["container"]["cgroup_id"] == cgroup_id)
        .fold((0, 0), |(p, s), e| {
            (
                p + u64::from(e.get("process").is_some()),
                s + e["violation"]["suppressed"].as_u64().unwrap_or(0),
            )
        })
}
