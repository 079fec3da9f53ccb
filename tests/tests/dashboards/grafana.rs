//! The Grafana dashboards: identity, variables, datasource, panels, coverage of every exported
//! family, and valid PromQL.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    path::{Path, PathBuf},
};

use serde_json::Value;

use palisade_tests::grafana::{all_panels, grafana_to_promql};

use crate::{
    exported::{METRICS, OPT_IN, family, labels_of},
    promql::{check_expr, is_ident, joined_with_build_info, selectors},
    promtool, read, repo_root,
};

// --- Grafana dashboards ------------------------------------------------------------------------

/// What a dashboard promises. Every `dashboards/*.json` is listed here, and every check below runs
/// over all of them.
struct DashboardSpec {
    file: &'static str,
    uid: &'static str,
    title: &'static str,
    /// Query variables besides `datasource`, each `label_values(<selector>, <name>)`.
    variables: &'static [&'static str],
    /// The metric the `container` variable lists the containers of.
    container_metric: &'static str,
    /// Panels it must have (titles).
    panels: &'static [&'static str],
}

const DASHBOARDS: &[DashboardSpec] = &[
    DashboardSpec {
        file: "dashboards/palisade-syscalls.json",
        uid: "palisade-syscalls",
        title: "Palisade / Syscalls per container",
        variables: &["instance", "container"],
        container_metric: "palisade_syscalls_total",
        panels: &[
            "Syscall rate per container (top 10)",
            "Error rate per container by errno",
            "Error ratio",
            "Agent health",
            "Kernel lost by reason",
            "Kernel map fill ratio",
            "Series dropped",
            "Scrape duration p99",
            "Kernel features",
        ],
    },
    DashboardSpec {
        file: "dashboards/palisade-containers.json",
        uid: "palisade-containers",
        title: "Palisade / Containers",
        variables: &["instance", "namespace", "container"],
        container_metric: "container_cpu_usage_seconds_total",
        panels: &[
            "Resources",
            "CPU cores used (top 10)",
            "CPU throttling ratio",
            "Memory working set vs limit",
            "Memory RSS / cache / usage",
            "Filesystem read / write rate",
            "Processes / threads",
            "OOM events",
            "Processes",
            "Exec rate (top 10)",
            "Exits by reason",
            "Fork rate (top 10)",
            "OOM kills",
            "Network",
            "Network bytes tx / rx",
            "Network packets tx / rx",
            "TCP connections by direction and result",
            "Failed TCP connects (refused + timeout)",
            "TCP retransmit rate",
            "TCP RTT p50 / p99",
            "Top remote peers (opt-in)",
            "Agent",
            "Flow table size and evictions",
            "Events published by type",
            "Events dropped by sink",
            "Unresolved container names",
            "Containers by runtime",
            "Process table",
        ],
    },
    DashboardSpec {
        file: "dashboards/palisade-policy.json",
        uid: "palisade-policy",
        title: "Palisade / Policy",
        variables: &["instance", "policy", "container"],
        container_metric: "palisade_policy_violations_total",
        panels: &[
            "Violations",
            "Violations over the range",
            "Violations by policy and rule",
            "Violations by action",
            "Violations by container (top 10)",
            "Top rules over the range",
            "Policies",
            "Cgroups per policy: enforce vs audit",
            "Hooks attached",
            "Agent",
            "Policy reloads and reload errors",
            "Violation events published and lost",
        ],
    },
];

/// Grafana's own variables, which the dashboards may use anywhere.
const GRAFANA_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range"];

/// Every `dashboards/*.json`, as a path from the repository root, sorted.
fn dashboard_files() -> Vec<String> {
    let dir = repo_root().join("dashboards");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json"))
        .map(|n| format!("dashboards/{n}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards/*.json");
    files
}

/// Every dashboard: its path and parsed JSON.
fn dashboards() -> Vec<(String, Value)> {
    dashboard_files()
        .into_iter()
        .map(|f| {
            let d = serde_json::from_str(&read(&f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            (f, d)
        })
        .collect()
}

fn spec(file: &str) -> &'static DashboardSpec {
    DASHBOARDS
        .iter()
        .find(|s| s.file == file)
        .unwrap_or_else(|| panic!("{file} is not listed in DASHBOARDS in {}", file!()))
}

/// `"$datasource"`, `"${datasource}"` or `{"type": "prometheus", "uid": "${datasource}"}`.
fn is_datasource_variable(ds: &Value) -> bool {
    let uid = match ds {
        Value::String(s) => s.as_str(),
        Value::Object(o) => {
            if o.get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t != "prometheus")
            {
                return false;
            }
            o.get("uid").and_then(Value::as_str).unwrap_or_default()
        }
        _ => return false,
    };
    uid == "$datasource" || uid == "${datasource}"
}

/// The query of a template variable (a string, or `{"query": ...}`).
fn variable_query(v: &Value) -> Option<&str> {
    v["query"].as_str().or_else(|| v["query"]["query"].as_str())
}

/// The names of the variables `$name`, `${name}` and `${name:format}` used in `s`.
fn variable_refs(s: &str) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            i += 1;
            continue;
        }
        i += 1;
        if chars.get(i) == Some(&'{') {
            i += 1;
        }
        let start = i;
        while i < chars.len() && is_ident(chars[i]) && chars[i] != ':' {
            i += 1;
        }
        if i > start {
            out.push(chars[start..i].iter().collect());
        }
    }
    out
}

#[test]
fn every_dashboard_is_listed_once() {
    let files = dashboard_files();
    let listed: BTreeSet<&str> = DASHBOARDS.iter().map(|s| s.file).collect();
    assert_eq!(
        listed.len(),
        DASHBOARDS.len(),
        "a dashboard is listed twice"
    );
    let found: BTreeSet<&str> = files.iter().map(String::as_str).collect();
    assert_eq!(
        found,
        listed,
        "dashboards/*.json and DASHBOARDS in {} differ",
        file!()
    );
    let uids: BTreeSet<&str> = DASHBOARDS.iter().map(|s| s.uid).collect();
    assert_eq!(
        uids.len(),
        DASHBOARDS.len(),
        "dashboard uids are not unique"
    );
}

#[test]
fn dashboard_identity_and_variables() {
    for (file, d) in dashboards() {
        let spec = spec(&file);
        assert_eq!(d["uid"], spec.uid, "{file}: uid");
        assert_eq!(d["title"], spec.title, "{file}: title");
        assert!(
            d["schemaVersion"].as_u64().unwrap() >= 36,
            "{file}: schemaVersion"
        );

        let vars = d["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no templating.list"));
        let var = |name: &str| {
            vars.iter()
                .find(|v| v["name"] == name)
                .unwrap_or_else(|| panic!("{file}: no template variable `{name}`"))
        };
        let ds = var("datasource");
        assert_eq!(ds["type"], "datasource", "{file}: datasource variable");
        assert_eq!(ds["query"], "prometheus", "{file}: datasource variable");
        for name in spec.variables {
            var(name);
        }

        // Every query variable, promised or not: label_values(<selector>, <name>) over a label the
        // selector's metric has, multi-select with an All of `.*` (so All also keeps series
        // without the label, e.g. containers outside Kubernetes have no `namespace`).
        for v in vars.iter().filter(|v| v["type"] != "datasource") {
            let name = v["name"].as_str().unwrap_or("<unnamed>");
            assert_eq!(v["type"], "query", "{file}: variable {name}");
            assert!(
                is_datasource_variable(&v["datasource"]),
                "{file}: variable {name} uses $datasource"
            );
            assert_eq!(v["multi"], true, "{file}: variable {name} is multi-select");
            assert_eq!(
                v["includeAll"], true,
                "{file}: variable {name} includes All"
            );
            assert_eq!(v["allValue"], ".*", "{file}: variable {name}: All is `.*`");
            let query =
                variable_query(v).unwrap_or_else(|| panic!("{file}: variable {name} has no query"));
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(&format!(", {name})")))
                .unwrap_or_else(|| {
                    panic!(
                        "{file}: variable {name}: expected label_values(..., {name}), got {query}"
                    )
                });
            let problems = check_expr(inner, &[]);
            assert!(
                problems.is_empty(),
                "{file}: variable {name}:\n{}",
                problems.join("\n")
            );
            let sels = selectors(inner);
            assert_eq!(sels.len(), 1, "{file}: variable {name}: one selector");
            let metric = sels[0].metric.as_deref().unwrap_or_default();
            let (labels, _) = labels_of(metric, &[]).unwrap();
            assert!(
                labels.contains(&name),
                "{file}: variable {name}: `{metric}` has no label `{name}`"
            );
            if name == "container" {
                assert_eq!(
                    metric, spec.container_metric,
                    "{file}: container variable: {query}"
                );
            }
        }
    }
}

#[test]
fn dashboard_panels_use_the_datasource_variable_and_exported_metrics() {
    for (file, d) in dashboards() {
        let spec = spec(&file);
        let panels = all_panels(&d);
        let variables: BTreeSet<&str> = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str())
            .chain(GRAFANA_VARIABLES.iter().copied())
            .collect();
        let mut ids = BTreeSet::new();
        let mut problems = Vec::new();
        let mut queries = 0;
        for p in &panels {
            let title = p["title"].as_str().unwrap_or("<untitled>");
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: panel {title} has no id"));
            assert!(
                ids.insert(id),
                "{file}: panel id {id} ({title}) is not unique"
            );
            if p["type"] == "row" {
                continue;
            }
            if !is_datasource_variable(&p["datasource"]) {
                problems.push(format!(
                    "panel {title}: datasource is {}, not ${{datasource}}",
                    p["datasource"]
                ));
            }
            let description = p["description"].as_str().unwrap_or_default();
            if description.trim().is_empty() {
                problems.push(format!("panel {title}: no description"));
            }
            let targets = p["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("panel {title}: no targets"));
            }
            for t in targets {
                if let Some(ds) = t.get("datasource")
                    && !is_datasource_variable(ds)
                {
                    problems.push(format!("panel {title}: a target's datasource is {ds}"));
                }
                let Some(expr) = t["expr"].as_str().filter(|e| !e.trim().is_empty()) else {
                    problems.push(format!("panel {title}: target {} has no expr", t["refId"]));
                    continue;
                };
                queries += 1;
                problems.extend(
                    check_expr(expr, &[])
                        .into_iter()
                        .map(|e| format!("panel {title}: {e}")),
                );
                // Template variables exist and only stand inside regex matchers (see
                // grafana_to_promql), where All's `.*` and multi-value `(a|b)` fit.
                let in_matchers: Vec<String> = selectors(expr)
                    .iter()
                    .flat_map(|s| s.matchers.iter())
                    .filter(|(_, op, _)| op == "=~" || op == "!~")
                    .flat_map(|(_, _, v)| variable_refs(v))
                    .collect();
                for name in variable_refs(expr) {
                    if !variables.contains(name.as_str()) {
                        problems.push(format!("panel {title}: no variable `${name}` in `{expr}`"));
                    } else if !GRAFANA_VARIABLES.contains(&name.as_str())
                        && !in_matchers.contains(&name)
                    {
                        problems.push(format!(
                            "panel {title}: `${name}` outside a =~ matcher in `{expr}`"
                        ));
                    }
                }
                // The job is named by the scrape config; Palisade's container_* series are told
                // apart from the kubelet's cAdvisor (same names) by palisade_build_info.
                let sels = selectors(expr);
                if sels
                    .iter()
                    .any(|s| s.matchers.iter().any(|(l, _, _)| l == "job"))
                {
                    problems.push(format!("panel {title}: selects a scrape job in `{expr}`"));
                }
                if sels.iter().any(|s| {
                    s.metric
                        .as_deref()
                        .is_some_and(|m| m.starts_with("container_"))
                }) && !joined_with_build_info(expr)
                {
                    problems.push(format!(
                        "panel {title}: container_* without `and on (job, instance) \
                         palisade_build_info` (the kubelet's cAdvisor exports the same names) in \
                         `{expr}`"
                    ));
                }
                // Opt-in families are empty by default: the panel says how to turn them on.
                for sel in selectors(expr) {
                    if let Some((_, setting)) = OPT_IN
                        .iter()
                        .find(|(m, _)| sel.metric.as_deref() == Some(*m))
                        && !description.contains(setting)
                    {
                        problems.push(format!(
                            "panel {title}: shows an opt-in family, its description does not \
                             name `{setting}`"
                        ));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{file}:\n{}", problems.join("\n"));
        assert!(queries >= 10, "{file}: only {queries} queries");

        // The panels the dashboard promises.
        let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
        for expected in spec.panels {
            assert!(titles.contains(expected), "{file}: no panel {expected:?}");
        }
    }
}

#[test]
fn dashboards_cover_every_exported_metric() {
    let mut used = BTreeSet::new();
    for (_, d) in dashboards() {
        for p in all_panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                for sel in selectors(t["expr"].as_str().unwrap_or_default()) {
                    if let Some((family, _)) = sel.metric.as_deref().and_then(family) {
                        used.insert(family.name);
                    }
                }
            }
        }
    }
    let missing: Vec<&str> = METRICS
        .iter()
        .map(|m| m.name)
        .filter(|n| !used.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "no dashboard in dashboards/ shows {missing:?}"
    );
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // Each query becomes a recording rule, so `promtool check rules` parses it offline: one group
    // per dashboard, named after its file.
    let mut rules = String::from("groups:\n");
    for (file, d) in dashboards() {
        let mut exprs: Vec<String> = Vec::new();
        for p in all_panels(&d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                exprs.extend(t["expr"].as_str().map(str::to_owned));
            }
        }
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            if let Some(inner) = variable_query(v)
                .and_then(|q| q.strip_prefix("label_values("))
                .and_then(|q| q.rsplit_once(',').map(|(sel, _)| sel.to_owned()))
            {
                exprs.push(inner);
            }
        }
        assert!(!exprs.is_empty(), "{file}: no queries");

        let stem: String = Path::new(&file)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .chars()
            .map(|c| if is_ident(c) { c } else { '_' })
            .collect();
        rules.push_str(&format!("  - name: {file}\n    rules:\n"));
        for (n, expr) in exprs.iter().enumerate() {
            let promql = grafana_to_promql(expr).replace('\'', "''");
            rules.push_str(&format!(
                "      - record: dashboard:{stem}:query_{n}\n        expr: '{promql}'\n"
            ));
        }
    }

    let path = std::env::temp_dir().join(format!(
        "palisade-dashboard-queries-{}.rules.yml",
        std::process::id()
    ));
    std::fs::write(&path, &rules).unwrap();
    // Removed even when promtool fails: the panic unwinds through this guard.
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(path.clone());
    promtool(&[OsStr::new("check"), OsStr::new("rules"), path.as_os_str()]);
}
