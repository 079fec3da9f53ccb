//! The deployment files (systemd unit, Kubernetes DaemonSet) use flags and configuration the
//! real binary accepts, and give the agent what it needs on a node.
use std::path::Path;

use palisade_tests::palisade_bin;
use serde_json::Value;

fn repo(p: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `palisade ARGS --check-config` (config path replaced by `config`) and asserts success.
fn check_config(args: &[String], config: &Path) {
    let mut args: Vec<String> = args.to_vec();
    if let Some(i) = args.iter().position(|a| a == "--config") {
        args[i + 1] = config.to_string_lossy().into_owned();
    }
    args.push("--check-config".into());
    let out = std::process::Command::new(palisade_bin())
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("run palisade: {e}"));
    assert!(
        out.status.success(),
        "palisade {args:?} rejected: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_unit_flags_are_accepted() {
    let unit = repo("deploy/palisade.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("no ExecStart"));
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/palisade"));
    let args: Vec<String> = words.map(str::to_owned).collect();
    assert_eq!(args.first().map(String::as_str), Some("agent"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("palisade.yaml");
    std::fs::write(&cfg, repo("agent/palisade.yaml")).unwrap();
    check_config(&args, &cfg);
    assert!(
        unit.contains("KillSignal=SIGTERM"),
        "SIGTERM detaches cleanly"
    );
}

#[test]
fn daemonset_runs_the_agent_with_what_it_needs() {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&repo("deploy/kubernetes/daemonset.yaml"))
        .unwrap_or_else(|e| panic!("daemonset.yaml: {e}"));
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
            .clone()
    };
    let config_map = |name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
            .clone()
    };
    let (cm, policies, ds) = (
        config_map("palisade"),
        config_map("palisade-policies"),
        kind("DaemonSet"),
    );
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    // the shipped configuration, policies and flags are accepted by the real binary (the
    // policy directory is where the policies ConfigMap is mounted)
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("palisade.yaml");
    let text = cm["data"]["palisade.yaml"].as_str().unwrap();
    let policy_dir = "/etc/palisade/policies";
    assert!(text.contains(policy_dir), "{text}");
    let local_policies = dir.path().join("policies");
    std::fs::create_dir(&local_policies).unwrap();
    let files = policies["data"].as_object().unwrap();
    assert!(!files.is_empty());
    for (name, body) in files {
        std::fs::write(local_policies.join(name), body.as_str().unwrap()).unwrap();
    }
    std::fs::write(
        &cfg,
        text.replace(policy_dir, &local_policies.to_string_lossy()),
    )
    .unwrap();
    check_config(&args, &cfg);
    let out = std::process::Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&local_policies)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "palisade policy check: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the port Prometheus scrapes is the one the agent listens on, and /healthz is served
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert!(text.contains(&format!("listen: 0.0.0.0:{port}")), "{text}");
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/port"], port.to_string().as_str());
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz");
    // the host paths the agent reads or mounts
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for p in [
        "/sys/fs/cgroup",
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/sys/kernel/btf",
        "/run/palisade",
        policy_dir,
    ] {
        assert!(mounts.contains(&p), "{p} not mounted: {mounts:?}");
    }
    // the name roots in the config point at mounted host directories
    for root in [
        "/host/var/lib/docker",
        "/host/var/lib/containers",
        "/host/var/log",
    ] {
        assert!(text.contains(root), "{root} not in the config");
        assert!(mounts.contains(&root), "{root} not mounted");
    }
}
