//! End to end, with the real tools: the agent, a real Prometheus (1 s scrape and evaluation,
//! the shipped `dashboards/alerts/palisade.rules.yml`, a job deliberately not named
//! "palisade"), a real Alertmanager and a webhook receiver on loopback.
//!
//! A workload launched with `palisade run --policy` breaks its enforce-mode policy (a `mount`
//! refused by seccomp): `PolicyViolation` must reach the webhook, and the test prints how long
//! that took (no timing assertion). Workloads then make every dashboard panel's series exist
//! (syscalls and errors, fork/exec/exit, CPU under a quota, memory under a limit and an OOM
//! kill, TCP established and refused, UDP, ICMP, per-peer bytes, violations blocked, audited and
//! logged, a policy that cannot be put in place), and every PromQL expression of every shipped
//! dashboard panel must return data from that Prometheus.
//!
//! Privileged: root, real kernel. Needs `prometheus` and `prometheus-alertmanager` (Debian
//! packages, installed by `cargo xtask setup`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use palisade_tests::{
    TestCgroup, TestNetns,
    grafana::{dashboard_files, grafana_to_promql, panel_queries},
    launch::{Running, probe_bin, unique},
    net_workload_bin,
    policy::{Setup, wait_applied},
    require_root,
    stack::{Alertmanager, Prometheus, Webhook},
    start_server, wait_for_explained, workload_bin,
};
use serde_json::Value;

/// The scrape job: any name works, no rule or panel names one.
const JOB: &str = "node-agents";

fn succeeds(cmd: &mut std::process::Command, what: &str) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(st.success(), "{what}: {st}");
}

/// One round of activity in `cg`: syscalls and errors, a fork, TCP established (with an RTT
/// sample) and refused, UDP, ICMP.
fn activity(cg: &TestCgroup, ns: &TestNetns) {
    cg.run_workload(&["getppid", "10", "close-bad", "10", "fork", "1"]);
    let server = start_server(cg, ns, &["serve-tcp", "127.0.0.1:7411", "1"]);
    succeeds(
        cg.command_in(ns, net_workload_bin())
            .args(["send-tcp", "127.0.0.1:7411", "100000"]),
        "send-tcp",
    );
    let out = server.wait_with_output().unwrap();
    assert!(out.status.success(), "server failed");
    succeeds(
        cg.command_in(ns, net_workload_bin())
            .args(["connect", "127.0.0.1:1"]),
        "connect refused",
    );
    succeeds(
        cg.command_in(ns, net_workload_bin())
            .args(["send-udp", "127.0.0.1:7412", "3", "64"]),
        "send-udp",
    );
    succeeds(
        cg.command_in(ns, "/bin/busybox")
            .args(["ping", "-c", "1", "-W", "2", "127.0.0.1"])
            .stdout(Stdio::null()),
        "ping",
    );
}

/// Kills the CPU burner on drop.
struct Burner(Child);

impl Drop for Burner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The PolicyViolation alerts for `container` the webhook received, with their arrival time.
fn violation_alerts(webhook: &Webhook, container: &str) -> Vec<(Instant, Value)> {
    webhook
        .received()
        .into_iter()
        .flat_map(|n| {
            n.body["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |a| (n.at, a))
        })
        .filter(|(_, a)| {
            a["labels"]["alertname"] == "PolicyViolation" && a["labels"]["container"] == container
        })
        .collect()
}

#[test]
fn an_enforced_violation_reaches_the_webhook_and_every_dashboard_panel_has_data() {
    require_root();
    // cgroup A: audited (would_block on getppid), CPU quota and memory limit, all the activity;
    // cgroup B: an enforce-mode policy whose exec rule only logs; cgroup C: selected by one
    // more policy with network rules per direction than a cgroup holds (unenforced).
    let cg = TestCgroup::with_controllers("alerting", &["cpu", "memory"]);
    cg.set("cpu", "cpu.cfs_quota_us", "cpu.max", "20000");
    cg.set(
        "memory",
        "memory.limit_in_bytes",
        "memory.max",
        &(64u64 << 20).to_string(),
    );
    let logged = TestCgroup::new("alerting-log");
    let crowded = TestCgroup::new("alerting-full");
    let ns = TestNetns::new("alerting");
    let setup = Setup::new(&format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: e2e-audit\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: audit\n  syscalls:\n    action: kill\n    deny: [getppid]\n",
        cg.rel
    ));
    std::fs::write(
        setup.dir.path().join("logged.yaml"),
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: e2e-log\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: enforce\n  exec:\n    action: log\n    deny: [\"**/busybox\"]\n",
            logged.rel
        ),
    )
    .unwrap();
    let crowded_policies: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: e2e-in-{i}\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: audit\n  network:\n    ingress:\n      default: allow\n",
                crowded.rel
            )
        })
        .collect();
    std::fs::write(
        setup.dir.path().join("crowded.yaml"),
        crowded_policies.join("---\n"),
    )
    .unwrap();
    let agent = palisade_tests::Agent::with_events(
        &format!(
            "metrics:\n  collect_interval: 1s\nnetwork:\n  per_peer_metrics: true\n  udp_idle_timeout: 1s\npolicy:\n  paths: [{}]\n  pin_dir: {}\n  watch_interval: 0s\n",
            setup.dir.path().display(),
            setup.pins.0.display()
        ),
        &[],
    );
    wait_applied(&agent, "e2e-audit", cg.id, &["syscalls"]);
    wait_applied(&agent, "e2e-log", logged.id, &["exec"]);

    let dir = tempfile::tempdir().unwrap();
    let webhook = Webhook::start();
    let alertmanager = Alertmanager::start(dir.path(), webhook.addr);
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dashboards/alerts/palisade.rules.yml")
        .canonicalize()
        .unwrap();
    let prometheus = Prometheus::start(dir.path(), &rules, JOB, &[agent.addr], alertmanager.addr);
    prometheus.wait_for_series(&format!("palisade_build_info{{job=\"{JOB}\"}}"));
    // The workload cgroups are on /metrics before anything runs in them, so the rates below
    // see their counters grow.
    prometheus.wait_for_series(&format!(
        "container_cpu_cfs_periods_total{{container=\"{}\"}}",
        cg.rel
    ));
    let _burner = Burner(
        cg.command(workload_bin())
            .args(["burn-ms", "600000"])
            .spawn()
            .unwrap(),
    );

    // A launched workload breaks its enforce policy: seccomp refuses mount.
    let name = unique("e2e");
    let prefix = name.rsplit_once('-').map_or(name.as_str(), |(a, _)| a);
    let policy = dir.path().join("launch.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {{name: e2e-enforce}}\nspec:\n  selector: {{workload: \"{prefix}-*\"}}\n  syscalls:\n    action: errno\n    errno: EPERM\n    deny: [mount]\n"
        ),
    )
    .unwrap();
    let sock = agent.control_socket().to_string_lossy().into_owned();
    let probe = probe_bin().to_string_lossy().into_owned();
    let policy_arg = policy.to_string_lossy().into_owned();
    // The workload stays up (sleeping) until the alert arrives: the agent names a violation's
    // container from the live policy targets when it folds the kernel counts into
    // palisade_policy_violations_total, so a workload gone by then is counted as
    // container="cgroup:<id>".
    let launched = Instant::now();
    let mut workload = Running::start(&[
        "--name",
        &name,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--policy",
        &policy_arg,
        "--",
        "/bin/sh",
        "-c",
        "\"$0\" syscalls mount && exec sleep 600",
        &probe,
    ]);
    assert_eq!(workload.line(), "mount 1", "mount refused by seccomp");
    let refused = launched.elapsed();
    let alerts = wait_for_explained(
        Duration::from_secs(120),
        "PolicyViolation at the webhook",
        || Some(violation_alerts(&webhook, &name)).filter(|a| !a.is_empty()),
        || {
            format!(
                "the webhook received {:?}\nPrometheus alerts: {:?}\n{}\n{}\nagent log:\n{}",
                webhook.received(),
                prometheus.query("ALERTS"),
                prometheus.log(),
                alertmanager.log(),
                agent.log()
            )
        },
    );
    let (at, alert) = &alerts[0];
    let latency = at.duration_since(launched);
    eprintln!(
        "ALERT LATENCY: PolicyViolation reached the webhook {:.2} s after `palisade run` started \
         (mount was refused {:.2} s after the start; 1 s scrape and rule evaluation, Alertmanager \
         group_wait 0s)",
        latency.as_secs_f64(),
        refused.as_secs_f64()
    );
    workload.signal(libc::SIGTERM);
    let out = workload.wait();
    assert_eq!(out.code, 128 + libc::SIGTERM, "{out}");
    let labels = &alert["labels"];
    assert_eq!(labels["container"], name.as_str(), "{alert}");
    assert_eq!(labels["policy"], "e2e-enforce", "{alert}");
    assert_eq!(labels["action"], "errno", "{alert}");
    assert_eq!(labels["rule"], "syscalls.deny[0]", "{alert}");
    assert_eq!(labels["job"], JOB, "{alert}");
    assert_eq!(labels["severity"], "warning", "{alert}");
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "https://github.com/palisade-dev/palisade/blob/main/dashboards/README.md#policyviolation",
        "{alert}"
    );

    // Every panel's series: activity in A (twice, with Prometheus scraping in between, so
    // rates see an increase), an OOM kill at A's limit, a logged exec in B.
    activity(&cg, &ns);
    let st = cg
        .command(workload_bin())
        .args(["alloc-mb", "1024"])
        .status()
        .unwrap();
    assert!(!st.success(), "the memory hog was OOM-killed: {st}");
    succeeds(
        logged.command("/bin/busybox").arg("true"),
        "busybox in the logged cgroup",
    );
    for q in [
        format!("palisade_tcp_rtt_seconds_count{{container=\"{}\"}}", cg.rel),
        format!("palisade_oom_kills_total{{container=\"{}\"}}", cg.rel),
        "palisade_policy_violations_total{action=\"log\"}".to_owned(),
        "palisade_policy_violations_total{action=\"would_block\"}".to_owned(),
        format!(
            "palisade_policy_unenforced{{container=\"{}\", reason=\"network_policies\"}}",
            crowded.rel
        ),
    ] {
        prometheus.wait_for_series(&q);
    }
    activity(&cg, &ns);

    let mut queries: Vec<(String, String, String)> = Vec::new();
    for file in dashboard_files() {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let short = file.file_name().unwrap().to_string_lossy().into_owned();
        for (title, expr) in panel_queries(&d) {
            queries.push((short.clone(), title, grafana_to_promql(&expr)));
        }
    }
    assert!(queries.len() > 50, "{} panel queries", queries.len());
    let empty = |queries: &[(String, String, String)]| -> Vec<String> {
        queries
            .iter()
            .filter_map(|(file, title, q)| match prometheus.query(q) {
                Ok(r) if !r.is_empty() => None,
                Ok(_) => Some(format!("{file} / {title}: no data for `{q}`")),
                Err(e) => Some(format!("{file} / {title}: `{q}` failed: {e}")),
            })
            .collect()
    };
    wait_for_explained(
        Duration::from_secs(120),
        "data for every dashboard panel query",
        || Some(()).filter(|()| empty(&queries).is_empty()),
        || format!("\n  {}", empty(&queries).join("\n  ")),
    );
    eprintln!(
        "all {} panel queries of {} dashboards returned data",
        queries.len(),
        dashboard_files().len()
    );
}
