//! The deployment files: the systemd unit and the Kubernetes manifests in `deploy/kubernetes/`
//! use flags and configuration the real binary accepts and give the agent what it needs on a
//! node; every manifest validates offline against Kubernetes' schemas (`kubernetes-validate`)
//! or the Prometheus Operator's (`tests/data/prometheus-operator/`); the kustomizations list
//! every manifest; the PrometheusRule is the rules file.
//!
//! kubernetes-validate and the operator schema check run from the Python venv `cargo xtask
//! setup` makes (`~/.local/share/palisade/venv`, or `$PALISADE_VENV`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use palisade_tests::palisade_bin;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn repo(p: &str) -> String {
    let path = root().join(p);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs `palisade ARGS --check-config` (config path replaced by `config`) and asserts success.
fn check_config(args: &[String], config: &Path) {
    let mut args: Vec<String> = args.to_vec();
    if let Some(i) = args.iter().position(|a| a == "--config") {
        args[i + 1] = config.to_string_lossy().into_owned();
    }
    args.push("--check-config".into());
    let out = Command::new(palisade_bin())
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

/// The `Key=Value` lines of the unit's [Service] section, in order.
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}

#[test]
fn the_systemd_unit_reloads_with_sighup_and_is_sandboxed() {
    let unit = repo("deploy/palisade.service");
    let settings = service_settings(&unit);
    let get = |k: &str| {
        settings
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {k}= in deploy/palisade.service"))
    };
    assert_eq!(get("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(get("ProtectSystem"), "strict");
    assert_eq!(get("ProtectHome"), "yes");
    assert_eq!(get("PrivateTmp"), "yes");
    assert_eq!(get("NoNewPrivileges"), "yes");
    // what the agent writes is declared (and so writable under ProtectSystem=strict)
    assert_eq!(get("LogsDirectory"), "palisade");
    assert_eq!(get("RuntimeDirectory"), "palisade");
    assert!(get("ExecStart").contains("--events /var/log/palisade/"));
    // settings the agent cannot live with
    for k in [
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "PrivateNetwork",
        "SystemCallFilter",
    ] {
        assert!(
            settings.iter().all(|(key, _)| key != k),
            "{k}= would break the agent"
        );
    }
    // Every sandboxing line is explained: a comment right above it.
    let lines: Vec<&str> = unit.lines().collect();
    for k in [
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "NoNewPrivileges",
        "CapabilityBoundingSet",
        "ExecReload",
    ] {
        let i = lines
            .iter()
            .position(|l| l.starts_with(&format!("{k}=")))
            .unwrap();
        assert!(
            lines[i - 1].starts_with('#'),
            "{k}= has no comment above it"
        );
    }
    // systemd itself accepts every line (an unknown or misspelt key is a warning on stderr).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("palisade.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/palisade", &palisade_bin().to_string_lossy()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze (package systemd): {e}"));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- Kubernetes ----------------------------------------------------------------------------------

const KUBERNETES: &str = "deploy/kubernetes";
/// The kustomization roots a user applies (`kubectl apply -k DIR`).
const ROOTS: &[&str] = &[
    "deploy/kubernetes",
    "deploy/kubernetes/podmonitor",
    "deploy/kubernetes/base",
];
const OPERATOR_GROUP: &str = "monitoring.coreos.com/";

/// The documents of a YAML file.
fn docs(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every manifest under deploy/kubernetes (every `*.yaml` but the kustomizations), sorted.
fn manifest_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(KUBERNETES), &mut out);
    out.sort();
    assert!(!out.is_empty());
    out
}

/// What `kubectl apply -k DIR` applies: each resource of DIR's kustomization, a file or a
/// directory with a kustomization of its own, recursively. (Only `resources` are used here; a
/// kustomization with anything else fails, so this stays what kustomize does.)
fn kustomize(dir: &Path) -> Vec<(PathBuf, Value)> {
    let k = &docs(&dir.join("kustomization.yaml"))[0];
    assert_eq!(k["kind"], "Kustomization", "{}", dir.display());
    for key in k.as_object().unwrap().keys() {
        assert!(
            ["apiVersion", "kind", "resources"].contains(&key.as_str()),
            "{}/kustomization.yaml: `{key}` (this test only follows `resources`)",
            dir.display()
        );
    }
    let mut out = Vec::new();
    for r in k["resources"].as_array().unwrap() {
        let path = dir.join(r.as_str().unwrap());
        if path.is_dir() {
            out.extend(kustomize(&path));
        } else {
            out.extend(docs(&path).into_iter().map(|d| (path.clone(), d)));
        }
    }
    out
}

/// `kind/name` of every object.
fn kinds(objects: &[(PathBuf, Value)]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|(_, d)| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn object<'a>(objects: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {}", KUBERNETES))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// Whether every `matchLabels` pair is among `labels`.
fn selects(match_labels: &Value, labels: &Value) -> bool {
    let m = match_labels.as_object().unwrap();
    !m.is_empty() && m.iter().all(|(k, v)| labels[k] == *v)
}

/// `bin/NAME` in the venv `cargo xtask setup` makes.
fn venv_bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("PALISADE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".local/share/palisade/venv")
        });
    let bin = dir.join("bin").join(name);
    assert!(
        bin.exists(),
        "{} missing: `cargo xtask setup` makes the venv with kubernetes-validate (or set PALISADE_VENV)",
        bin.display()
    );
    bin
}

#[test]
fn daemonset_runs_the_agent_with_what_it_needs() {
    let objects = kustomize(&root().join("deploy/kubernetes/base"));
    let (cm, policies, ds) = (
        object(&objects, "ConfigMap", "palisade"),
        object(&objects, "ConfigMap", "palisade-policies"),
        object(&objects, "DaemonSet", "palisade"),
    );
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], true);
    // evicted last under node pressure
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["privileged"], true);
    // the image `cargo xtask image` builds
    assert_eq!(
        c["image"],
        format!(
            "ghcr.io/palisade-dev/palisade:{}",
            env!("CARGO_PKG_VERSION")
        )
        .as_str()
    );
    let args = strings(&c["args"]);
    let mounts: Vec<(&str, &str)> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    let volume = |name: &str| {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
            .clone()
    };
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|(_, p)| *p == path)
            .map(|(n, _)| volume(n))
            .unwrap_or_else(|| panic!("{path} not mounted: {mounts:?}"))
    };
    // No mount inside a ConfigMap's (or Secret's) mount: kubelet owns those volumes' contents
    // and rewrites them on every update; a mount point inside one is not among them.
    for (outer, outer_path) in &mounts {
        let v = volume(outer);
        if v.get("configMap").is_none() && v.get("secret").is_none() {
            continue;
        }
        for (inner, inner_path) in &mounts {
            assert!(
                !Path::new(inner_path).starts_with(outer_path) || inner == outer,
                "{inner} ({inner_path}) is mounted inside the {outer} ConfigMap's mount ({outer_path})"
            );
        }
    }
    // The config file is the config ConfigMap's key, at its mount.
    let config_arg = &args[args.iter().position(|a| a == "--config").unwrap() + 1];
    let config_path = Path::new(config_arg);
    let config_dir = config_path.parent().unwrap().to_str().unwrap();
    assert_eq!(mount_of(config_dir)["configMap"]["name"], "palisade");
    let key = config_path.file_name().unwrap().to_str().unwrap();
    let text = cm["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in the ConfigMap"));
    // The policy directory the config names is where the policies ConfigMap is mounted.
    let policy_dir = "/etc/palisade/policies";
    assert!(text.contains(&format!("paths: [{policy_dir}]")), "{text}");
    assert_eq!(
        mount_of(policy_dir)["configMap"]["name"],
        "palisade-policies"
    );

    // The shipped configuration, policies and flags are accepted by the real binary.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("palisade.yaml");
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
    let out = Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&local_policies)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "palisade policy check: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The port Prometheus scrapes is the one the agent listens on; every probe asks /healthz
    // on it.
    let port = &c["ports"][0];
    assert_eq!(port["name"], "metrics");
    let number = port["containerPort"].as_u64().unwrap();
    assert!(
        text.contains(&format!("listen: 0.0.0.0:{number}")),
        "{text}"
    );
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"], "/healthz", "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    // The node's name from the downward API (the agent does not read it yet).
    let env = c["env"].as_array().unwrap();
    let node = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");

    // The host paths the agent reads or mounts.
    for p in [
        "/sys/fs/cgroup",
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/sys/kernel/btf",
        "/run/palisade",
    ] {
        assert_eq!(mount_of(p)["hostPath"]["path"], p, "{p}");
    }
    // The name roots in the config hold the host directories the agent reads there (Docker:
    // containers/, podman and CRI-O: overlay-containers/, the kubelet: pods/ and containers/
    // under /var/log), and only those: the runtimes' whole storage would bring every
    // container's overlay mounts into the agent's mount namespace.
    for (root, read, host) in [
        (
            "/host/var/lib/docker",
            "/containers",
            "/var/lib/docker/containers",
        ),
        (
            "/host/var/lib/containers/storage",
            "/overlay-containers",
            "/var/lib/containers/storage/overlay-containers",
        ),
        ("/host/var/log", "", "/var/log"),
    ] {
        assert!(text.contains(root), "{root} not in the config");
        let at = format!("{root}{read}");
        assert_eq!(mount_of(&at)["hostPath"]["path"], host, "{at}");
    }
}

#[test]
fn kustomizations_apply_every_manifest_with_one_scrape_object_each() {
    let mut listed = BTreeSet::new();
    for dir in ROOTS {
        let objects = kustomize(&root().join(dir));
        listed.extend(objects.iter().map(|(p, _)| p.canonicalize().unwrap()));
        let kinds = kinds(&objects);
        let has = |k: &str| kinds.contains(k);
        for k in [
            "Namespace/palisade",
            "ConfigMap/palisade",
            "ConfigMap/palisade-policies",
            "DaemonSet/palisade",
            "Service/palisade",
        ] {
            assert!(has(k), "{dir} does not apply {k}: {kinds:?}");
        }
        // One way to scrape each agent: never both (every agent would be scraped twice).
        let scrape: Vec<&String> = kinds.iter().filter(|k| k.contains("Monitor/")).collect();
        match *dir {
            "deploy/kubernetes/base" => {
                assert!(
                    objects.iter().all(|(_, d)| !d["apiVersion"]
                        .as_str()
                        .unwrap()
                        .starts_with(OPERATOR_GROUP)),
                    "{dir} works without the Prometheus Operator: {kinds:?}"
                );
            }
            _ => {
                assert_eq!(scrape.len(), 1, "{dir}: {scrape:?}");
                assert!(has("PrometheusRule/palisade"), "{dir}: {kinds:?}");
            }
        }
        assert_eq!(kinds.len(), objects.len(), "{dir} applies an object twice");
        // kustomize itself agrees (kubectl has it built in), where kubectl is installed.
        match Command::new("kubectl")
            .arg("kustomize")
            .arg(root().join(dir))
            .output()
        {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "kubectl kustomize {dir}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let built: Vec<Value> =
                    serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout)).unwrap();
                let built: BTreeSet<String> = built
                    .iter()
                    .map(|d| {
                        format!(
                            "{}/{}",
                            d["kind"].as_str().unwrap(),
                            d["metadata"]["name"].as_str().unwrap()
                        )
                    })
                    .collect();
                assert_eq!(built, kinds, "kubectl kustomize {dir}");
            }
            Err(e) => {
                eprintln!("NOTE: kubectl not runnable ({e}): `kubectl kustomize {dir}` not checked")
            }
        }
    }
    let files: BTreeSet<PathBuf> = manifest_files()
        .iter()
        .map(|p| p.canonicalize().unwrap())
        .collect();
    let unlisted: Vec<&PathBuf> = files.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "manifests no kustomization applies: {unlisted:?}"
    );
}

#[test]
fn core_manifests_validate_against_the_kubernetes_schemas() {
    let files = manifest_files();
    let core: usize = files
        .iter()
        .flat_map(|f| docs(f))
        .filter(|d| {
            !d["apiVersion"]
                .as_str()
                .unwrap()
                .starts_with(OPERATOR_GROUP)
        })
        .count();
    assert!(core >= 5);
    // The oldest and the newest Kubernetes release kubernetes-validate knows.
    for version in ["1.25.0", "1.37.0"] {
        let out = Command::new(venv_bin("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let passed = text
            .lines()
            .filter(|l| l.starts_with("INFO") && l.contains(" passed for resource "))
            .count();
        let problems: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with("INFO"))
            // the operator's objects: no Kubernetes schema, checked against theirs below
            .filter(|l| {
                !(l.starts_with("WARN") && l.contains("with api version monitoring.coreos.com/v1"))
            })
            .collect();
        assert!(
            out.status.success() && problems.is_empty() && passed == core,
            "kubernetes-validate --strict against {version}: {passed} of {core} objects passed:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("{core} objects valid against Kubernetes {version} (strict)");
    }
}

/// Runs tests/data/prometheus-operator/validate.py on `files`: (success, output).
fn validate_operator_objects(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(venv_bin("python"))
        .arg(root().join("tests/data/prometheus-operator/validate.py"))
        .args(files)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn prometheus_operator_objects_validate_against_the_crd_schemas() {
    let files: Vec<PathBuf> = manifest_files()
        .into_iter()
        .filter(|f| {
            docs(f).iter().any(|d| {
                d["apiVersion"]
                    .as_str()
                    .unwrap()
                    .starts_with(OPERATOR_GROUP)
            })
        })
        .collect();
    let (ok, text) = validate_operator_objects(&files);
    assert!(ok, "{text}");
    for what in [
        "ServiceMonitor/palisade",
        "PodMonitor/palisade",
        "PrometheusRule/palisade",
    ] {
        assert!(
            text.contains(&format!("ok {what} ")),
            "{what} not validated:\n{text}"
        );
    }
    eprint!("{text}");
    // The check is strict: a misspelled field and a non-string `for` fail.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        repo("deploy/kubernetes/servicemonitor.yaml").replace("interval: 30s", "intervall: 30s")
            + "---\napiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: x}\nspec:\n  groups: [{name: g, rules: [{alert: A, expr: up, for: 5}]}]\n",
    )
    .unwrap();
    let (ok, text) = validate_operator_objects(&[bad]);
    assert!(!ok, "{text}");
    assert!(text.contains("'intervall' was unexpected"), "{text}");
    assert!(text.contains("for: 5 is not of type 'string'"), "{text}");
}

#[test]
fn the_prometheusrule_is_the_rules_file() {
    let rule = &docs(&root().join("deploy/kubernetes/rules/prometheusrule.yaml"))[0];
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let rules = &docs(&root().join("dashboards/alerts/palisade.rules.yml"))[0];
    assert!(
        rule["spec"] == *rules,
        "deploy/kubernetes/rules/prometheusrule.yaml differs from dashboards/alerts/palisade.rules.yml: \
         run `cargo xtask prometheus-rule`"
    );
}

#[test]
fn the_service_and_the_monitors_scrape_every_agent_pod() {
    let default = kustomize(&root().join(KUBERNETES));
    let with_pod_monitor = kustomize(&root().join("deploy/kubernetes/podmonitor"));
    let ds = object(&default, "DaemonSet", "palisade");
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    let namespace = ds["metadata"]["namespace"].as_str().unwrap();
    let port_name = ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["name"]
        .as_str()
        .unwrap();
    let svc = object(&default, "Service", "palisade");
    assert!(selects(&svc["spec"]["selector"], pod_labels), "{svc}");
    let svc_port = &svc["spec"]["ports"][0];
    assert_eq!(svc_port["targetPort"], port_name);
    let sm = object(&default, "ServiceMonitor", "palisade");
    assert!(
        selects(
            &sm["spec"]["selector"]["matchLabels"],
            &svc["metadata"]["labels"]
        ),
        "{sm}"
    );
    let pm = object(&with_pod_monitor, "PodMonitor", "palisade");
    assert!(
        selects(&pm["spec"]["selector"]["matchLabels"], pod_labels),
        "{pm}"
    );
    for (monitor, endpoint, port) in [
        (
            sm,
            &sm["spec"]["endpoints"][0],
            svc_port["name"].as_str().unwrap(),
        ),
        (pm, &pm["spec"]["podMetricsEndpoints"][0], port_name),
    ] {
        let kind = monitor["kind"].as_str().unwrap();
        assert_eq!(
            strings(&monitor["spec"]["namespaceSelector"]["matchNames"]),
            [namespace],
            "{kind}"
        );
        assert_eq!(endpoint["port"], port, "{kind}");
        assert_eq!(endpoint["path"], "/metrics", "{kind}");
        let relabel = endpoint["relabelings"].as_array().unwrap();
        // The operator's namespace/pod/container target labels would rename the agent's own
        // labels of those names (the observed containers') to exported_*.
        let dropped: Vec<&str> = relabel
            .iter()
            .filter(|r| r["action"] == "labeldrop")
            .flat_map(|r| r["regex"].as_str().unwrap().split('|'))
            .collect();
        for l in ["namespace", "pod", "container"] {
            assert!(
                dropped.contains(&l),
                "{kind} keeps the target label {l}: {relabel:?}"
            );
        }
        // instance = the node: stable across a re-created pod (see PalisadeAgentDown).
        assert!(
            relabel.iter().any(|r| r["targetLabel"] == "instance"
                && strings(&r["sourceLabels"]) == ["__meta_kubernetes_pod_node_name"]),
            "{kind}: {relabel:?}"
        );
    }
}
