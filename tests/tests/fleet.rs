//! The agent in a fleet: its node name (NODE_NAME from the downward API, `--node-name`) on
//! `palisade_build_info` and as the OTLP resource's `host.name`/`service.instance.id`, and the
//! `/metrics` families exported over OTLP (`otlp.metrics`) to a receiver, exactly.
//!
//! Privileged (a real agent): run as root with `PALISADE_BIN` set.
use std::{collections::BTreeSet, process::Command, time::Duration};

use palisade_tests::{
    Metrics, OtlpReceiver, TestCgroup,
    fleet::{RawAgent, latest, metric_points},
    otlp_attr, palisade_bin, wait_for,
};

fn config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("fleet.yaml");
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write config: {e}"));
    path.to_string_lossy().into_owned()
}

fn build_info_node(agent: &RawAgent) -> String {
    let (code, body) = agent.get("/metrics");
    assert_eq!(code, 200, "{body}");
    let m = Metrics::parse(&body);
    let nodes = m.label_values("palisade_build_info", "node");
    assert_eq!(nodes.len(), 1, "one build_info series: {nodes:?}");
    nodes[0].clone()
}

#[test]
fn the_node_name_comes_from_the_flag_the_environment_or_the_hostname() {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let a = RawAgent::start(&palisade_bin(), &[], &[]);
    assert_eq!(build_info_node(&a), hostname, "{}", a.log());
    drop(a);
    let a = RawAgent::start(&palisade_bin(), &[], &[("NODE_NAME", "env-node")]);
    assert_eq!(build_info_node(&a), "env-node", "{}", a.log());
    drop(a);
    let a = RawAgent::start(
        &palisade_bin(),
        &["--node-name", "flag-node"],
        &[("NODE_NAME", "env-node")],
    );
    assert_eq!(
        build_info_node(&a),
        "flag-node",
        "the flag wins\n{}",
        a.log()
    );
    drop(a);
    // A name with a space is refused as bad usage, naming the flag (NODE_NAME feeds it).
    let out = Command::new(palisade_bin())
        .args(["agent", "--check-config"])
        .env("NODE_NAME", "a b")
        .output()
        .unwrap_or_else(|e| panic!("palisade: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--node-name") && err.contains("`a b`"),
        "{err}"
    );
}

#[test]
fn metrics_and_events_reach_an_otlp_receiver_under_the_node_name() {
    let otlp = OtlpReceiver::start();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = config(
        dir.path(),
        &format!(
            "syscalls:\n  latency_sample: 1\nmetrics:\n  collect_interval: 1s\n  syscall_latency_detail: [getppid]\notlp:\n  endpoint: {}\n  protocol: http/json\n  events: [exec]\n  metrics: true\n  metrics_interval: 1s\n",
            otlp.endpoint()
        ),
    );
    let node = format!("fleet-node-{}", std::process::id());
    let agent = RawAgent::start(
        &palisade_bin(),
        &["--config", &cfg],
        &[("NODE_NAME", &node)],
    );
    let cg = TestCgroup::new("otlp-metrics");
    cg.run_workload(&["getppid", "10000"]);

    // The exec event as a log record, sent by this node.
    let (_, _, resource) = wait_for(Duration::from_secs(60), "the exec log record", || {
        otlp.records()
            .into_iter()
            .find(|(_, r, _)| otlp_attr(r, "container.name") == Some(cg.rel.clone().into()))
    });
    for key in ["host.name", "service.instance.id"] {
        assert_eq!(
            otlp_attr(&resource, key),
            Some(node.clone().into()),
            "{resource}"
        );
    }

    // The syscall counts, exactly, as OTLP metrics with the Prometheus labels as attributes.
    let labels = [("container", cg.rel.as_str()), ("syscall", "getppid")];
    let points = wait_for(
        Duration::from_secs(90),
        "10,000 getppid calls over OTLP",
        || {
            let p = metric_points(&otlp.bodies());
            (latest(&p, "palisade_syscalls_total", &labels) == Some(10_000.0)).then_some(p)
        },
    );
    let calls = points
        .iter()
        .rev()
        .find(|p| p.metric == "palisade_syscalls_total")
        .unwrap_or_else(|| panic!("no palisade_syscalls_total point"));
    assert_eq!(calls.kind, "sum");
    assert!(calls.monotonic, "a counter is a monotonic sum");
    assert_eq!(calls.resource.get("host.name"), Some(&node));
    assert_eq!(calls.resource.get("service.instance.id"), Some(&node));
    assert_eq!(
        calls.resource.get("service.name").map(String::as_str),
        Some("palisade")
    );
    // A histogram goes as its Prometheus series: the +Inf bucket and the count are the calls.
    let inf: Vec<(&str, &str)> = labels.iter().copied().chain([("le", "+Inf")]).collect();
    assert_eq!(
        latest(&points, "palisade_syscall_duration_seconds_bucket", &inf),
        Some(10_000.0)
    );
    assert_eq!(
        latest(&points, "palisade_syscall_duration_seconds_count", &labels),
        Some(10_000.0)
    );
    let build = points
        .iter()
        .rev()
        .find(|p| p.metric == "palisade_build_info")
        .unwrap_or_else(|| panic!("no palisade_build_info point"));
    assert_eq!(build.kind, "gauge");
    assert_eq!(build.attributes.get("node"), Some(&node));

    // Every family of /metrics is exported (histograms as _bucket, _sum and _count).
    let (_, page) = agent.get("/metrics");
    let page = Metrics::parse(&page);
    let want: BTreeSet<String> = page
        .types
        .iter()
        .flat_map(|(name, kind)| match kind.as_str() {
            "histogram" => vec![
                format!("{name}_bucket"),
                format!("{name}_sum"),
                format!("{name}_count"),
            ],
            _ => vec![name.clone()],
        })
        .collect();
    let missing = wait_for(Duration::from_secs(60), "every family over OTLP", || {
        let got: BTreeSet<String> = metric_points(&otlp.bodies())
            .into_iter()
            .map(|p| p.metric)
            .collect();
        let missing: Vec<&String> = want.difference(&got).collect();
        missing.is_empty().then_some(missing.len())
    });
    assert_eq!(missing, 0);
    assert!(agent.stop().success());
}
