//! The live `/metrics` page against the exported-metric catalog (`palisade_tests::catalog`, the
//! same catalog every dashboard query and alert rule is checked against): an agent with every
//! opt-in family on and a policy in audit mode watches one workload that does a bit of
//! everything (syscalls and errors, fork/exec/exit, CPU under a quota, TCP established and
//! refused, ICMP, an audited policy violation, an OOM kill). Then every family the catalog names
//! must be on the page with the declared type, and every series on the page must belong to a
//! catalog family, carry only its labels, and use only the closed label values it lists — so a
//! renamed metric, label or value in the agent fails here instead of emptying a dashboard panel
//! or silencing an alert.
//!
//! Privileged: root, real kernel, a v1 cpu+memory cgroup (hybrid hosts) or the unified one.
use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    time::Duration,
};

use palisade_tests::{
    Metrics, TestCgroup, TestNetns,
    catalog::{self, Kind, METRICS},
    net_workload_bin,
    policy::{Setup, violations, wait_applied},
    promtool_check_metrics, start_server, wait_for, workload_bin,
};

/// The declared `# TYPE` of each catalog kind.
fn type_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    }
}

/// Everything wrong with `page` against the catalog, one line per problem.
fn problems(page: &Metrics) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for s in &page.samples {
        let Some((family, bucket)) = catalog::family(&s.name) else {
            out.push(format!("{} is exported but not in the catalog", s.name));
            continue;
        };
        seen.insert(family.name);
        let mut allowed: Vec<&str> = family.labels.to_vec();
        if bucket {
            allowed.push("le");
        }
        for (label, value) in &s.labels {
            if !allowed.contains(&label.as_str()) {
                out.push(format!(
                    "{}{{{label}={value:?}}}: label {label} is not one of {allowed:?}",
                    s.name
                ));
            }
            if let Some((_, set)) = family.values.iter().find(|(l, _)| *l == label.as_str())
                && !set.contains(&value.as_str())
            {
                out.push(format!(
                    "{}{{{label}={value:?}}}: value not one of {set:?}",
                    s.name
                ));
            }
        }
        // The cAdvisor-compatible families always carry all six labels (cAdvisor dashboards
        // join on them); the others always name what they count.
        if family.name.starts_with("container_") {
            for l in family.labels {
                if !s.labels.contains_key(*l) {
                    out.push(format!("{}{:?}: label {l} missing", s.name, s.labels));
                }
            }
        }
    }
    for m in METRICS {
        match page.types.get(m.name) {
            None => out.push(format!("{} (catalog) has no # TYPE on the page", m.name)),
            Some(t) if t != type_name(m.kind) => out.push(format!(
                "{} is declared {t} on the page, {} in the catalog",
                m.name,
                type_name(m.kind)
            )),
            Some(_) => {}
        }
        if !seen.contains(m.name) {
            out.push(format!("{} (catalog) has no sample on the page", m.name));
        }
    }
    out
}

fn succeeds(cmd: &mut std::process::Command, what: &str) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(st.success(), "{what}: {st}");
}

#[test]
fn every_exported_series_matches_the_catalog_and_every_family_is_exported() {
    palisade_tests::require_root();
    let cg = TestCgroup::with_controllers("catalog", &["cpu", "memory"]);
    cg.set("cpu", "cpu.cfs_quota_us", "cpu.max", "50000");
    cg.set(
        "memory",
        "memory.limit_in_bytes",
        "memory.max",
        &(64u64 << 20).to_string(),
    );
    let ns = TestNetns::new("catalog");
    // one audited syscall rule; and five policies with ingress rules where a cgroup combines
    // four: the fifth is reported unenforced (`palisade_policy_unenforced`)
    let mut policy = format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: catalog\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: audit\n  syscalls:\n    action: kill\n    deny: [getppid]\n",
        cg.rel
    );
    for i in 0..5 {
        policy.push_str(&format!(
            "---\napiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: catalog-in-{i}\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: audit\n  network:\n    ingress:\n      default: allow\n",
            cg.rel
        ));
    }
    let setup = Setup::new(&policy);
    let agent = setup.agent("network:\n  per_peer_metrics: true\n  udp_idle_timeout: 1s\n");
    wait_applied(&agent, "catalog", cg.id, &["syscalls"]);

    // Syscalls (one audited by the policy), errors, a fork, CPU under the quota.
    cg.run_workload(&[
        "getppid",
        "10",
        "close-bad",
        "10",
        "fork",
        "1",
        "burn-ms",
        "100",
    ]);
    violations(&agent, cg.id, 1);
    // TCP established (with an RTT sample) and refused, UDP, ICMP.
    let server = start_server(&cg, &ns, &["serve-tcp", "127.0.0.1:7411", "1"]);
    succeeds(
        cg.command_in(&ns, net_workload_bin())
            .args(["send-tcp", "127.0.0.1:7411", "100000"]),
        "send-tcp",
    );
    let out = server
        .wait_with_output()
        .unwrap_or_else(|e| panic!("server: {e}"));
    assert!(out.status.success(), "server failed");
    succeeds(
        cg.command_in(&ns, net_workload_bin())
            .args(["connect", "127.0.0.1:1"]),
        "connect refused",
    );
    succeeds(
        cg.command_in(&ns, net_workload_bin())
            .args(["send-udp", "127.0.0.1:7412", "3", "64"]),
        "send-udp",
    );
    succeeds(
        cg.command_in(&ns, "/bin/busybox")
            .args(["ping", "-c", "1", "-W", "2", "127.0.0.1"])
            .stdout(Stdio::null()),
        "ping",
    );
    // An OOM kill at the memory limit.
    let st = cg
        .command(workload_bin())
        .args(["alloc-mb", "1024"])
        .status()
        .unwrap_or_else(|e| panic!("alloc: {e}"));
    assert!(!st.success(), "the memory hog was OOM-killed: {st}");

    let c: &str = &cg.rel;
    let page = wait_for(
        Duration::from_secs(20),
        "the workload's activity on /metrics",
        || {
            let m = agent.metrics();
            let has = |name: &str, labels: &[(&str, &str)]| {
                m.find(name, labels).iter().any(|s| s.value > 0.0)
            };
            (has("palisade_oom_kills_total", &[("container", c)])
                && has("palisade_tcp_rtt_seconds_count", &[("container", c)])
                && has(
                    "palisade_tcp_connections_total",
                    &[("container", c), ("result", "refused")],
                )
                && has("palisade_network_icmp_packets_total", &[("container", c)])
                && has("palisade_network_peer_bytes_total", &[("container", c)])
                && has(
                    "palisade_policy_violations_total",
                    &[("container", c), ("action", "would_block")],
                )
                && has(
                    "palisade_policy_unenforced",
                    &[("container", c), ("reason", "network_policies")],
                )
                && has("container_cpu_cfs_periods_total", &[("container", c)]))
            .then_some(m)
        },
    );
    promtool_check_metrics(&page.text);
    let problems = problems(&page);
    let families: BTreeMap<&str, usize> = page.samples.iter().fold(BTreeMap::new(), |mut a, s| {
        *a.entry(s.name.as_str()).or_default() += 1;
        a
    });
    assert!(
        problems.is_empty(),
        "the live /metrics page and the catalog (tests/src/catalog.rs) disagree:\n  {}\n\nseries per name on the page: {families:?}",
        problems.join("\n  ")
    );
}

/// The checker itself: a page with a family the catalog lacks, a wrong type, a stray label and
/// a value outside a closed set yields one problem each (plus the missing families).
#[test]
fn the_checker_reports_unknown_families_types_labels_and_values() {
    let page = Metrics::parse(concat!(
        "# TYPE palisade_syscalls_total gauge\n",
        "palisade_syscalls_total{container=\"a\",syscall=\"read\",colour=\"red\"} 1\n",
        "# TYPE palisade_process_exits_total counter\n",
        "palisade_process_exits_total{container=\"a\",reason=\"vanished\"} 1\n",
        "# TYPE palisade_made_up_total counter\n",
        "palisade_made_up_total 1\n",
        "# TYPE container_processes gauge\n",
        "container_processes{container=\"a\"} 1\n",
    ));
    let p = problems(&page);
    let has = |needle: &str| p.iter().any(|l| l.contains(needle));
    assert!(
        has("palisade_made_up_total is exported but not in the catalog"),
        "{p:#?}"
    );
    assert!(
        has("palisade_syscalls_total is declared gauge on the page, counter"),
        "{p:#?}"
    );
    assert!(has("label colour is not one of"), "{p:#?}");
    assert!(has("reason=\"vanished\"}: value not one of"), "{p:#?}");
    assert!(
        has("container_processes") && has("label image missing"),
        "{p:#?}"
    );
    assert!(
        has("palisade_build_info (catalog) has no # TYPE on the page"),
        "{p:#?}"
    );
    assert!(!has("palisade_process_exits_total is declared"), "{p:#?}");
}
