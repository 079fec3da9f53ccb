//! Checks of `dashboards/`: the Prometheus alerting rules pass `promtool check rules` and their
//! unit tests, and every query in the Grafana dashboards (every `dashboards/*.json`) and the rules
//! is valid PromQL that names only metrics, labels and label values that `palisade agent` exports,
//! so a typo in a query fails here rather than showing an empty panel or an alert that never fires.
//!
//! Unprivileged: needs only `promtool` (installed by `cargo xtask setup`, Debian package
//! `prometheus`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

/// The type of an exported metric family.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// Queried as `<name>_bucket` (with `le`), `<name>_sum` and `<name>_count`.
    Histogram,
}

/// Labels with a closed set of values: a literal matcher on them must use one of these.
type Values = &'static [(&'static str, &'static [&'static str])];

/// An exported metric family.
struct Metric {
    name: &'static str,
    kind: Kind,
    /// Its own labels; `instance` and `job` come from the scrape.
    labels: &'static [&'static str],
    /// Its labels with a closed set of values. Per family: `reason` and `direction` mean
    /// different things in different families.
    values: Values,
}

const fn m(name: &'static str, kind: Kind, labels: &'static [&'static str]) -> Metric {
    mv(name, kind, labels, &[])
}

const fn mv(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    values: Values,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        values,
    }
}

/// Per-container palisade_* families: the container name, plus `namespace` and `pod` for
/// Kubernetes containers (absent otherwise).
const CONTAINER: &[&str] = &["container", "namespace", "pod"];
/// The cAdvisor-compatible container_* families: always all five (possibly empty).
const CADVISOR: &[&str] = &["container", "id", "image", "namespace", "pod"];

const LOST_REASONS: &[&str] = &[
    "syscall_stats_map_full",
    "syscall_errno_map_full",
    "ringbuf_full",
    "syscall_untimed",
];
const MAPS: &[&str] = &["SYSCALL_STATS", "SYSCALL_ERRNOS"];
const CGROUP_STATES: &[&str] = &["live", "removed"];
const FEATURES: &[&str] = &[
    "btf",
    "raw_tracepoint",
    "tracepoint",
    "cgroup_skb",
    "cgroup_sock_addr",
    "sock_ops",
    "send_signal",
    "fentry",
    "bpf_lsm",
    "kprobe",
    "ring_buffer",
    "cgroup_v1",
    "cgroup_v2",
    "seccomp",
];
const EXIT_REASONS: &[&str] = &["exited", "failed", "signaled", "unknown"];
/// `direction` of the byte and packet families.
const NET_DIRECTIONS: &[&str] = &["tx", "rx"];
/// `direction` of `palisade_tcp_connections_total`.
const TCP_DIRECTIONS: &[&str] = &["outbound", "inbound"];
const TCP_RESULTS: &[&str] = &["established", "refused", "timeout"];
const EVENT_TYPES: &[&str] = &[
    "exec",
    "exit",
    "oom",
    "container_start",
    "container_stop",
    "flow",
];
const EVENT_SINKS: &[&str] = &["log", "subscriber", "otlp"];

/// Every metric family `palisade agent` exports: name, type and labels (`instance` and `job` are
/// added by Prometheus).
const METRICS: &[Metric] = &[
    // Syscalls (per container; `namespace` and `pod` for Kubernetes containers).
    m(
        "palisade_syscalls_total",
        Kind::Counter,
        &["container", "namespace", "pod", "syscall"],
    ),
    m(
        "palisade_syscall_errors_total",
        Kind::Counter,
        &["container", "namespace", "pod", "syscall", "errno"],
    ),
    m(
        "palisade_syscall_duration_seconds",
        Kind::Histogram,
        &["container", "namespace", "pod", "syscall"],
    ),
    // Processes and OOM kills.
    m("palisade_process_forks_total", Kind::Counter, CONTAINER),
    m("palisade_process_execs_total", Kind::Counter, CONTAINER),
    mv(
        "palisade_process_exits_total",
        Kind::Counter,
        &["container", "namespace", "pod", "reason"],
        &[("reason", EXIT_REASONS)],
    ),
    m("palisade_oom_kills_total", Kind::Counter, CONTAINER),
    // Network.
    mv(
        "palisade_network_bytes_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction"],
        &[("direction", NET_DIRECTIONS)],
    ),
    mv(
        "palisade_network_packets_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction"],
        &[("direction", NET_DIRECTIONS)],
    ),
    mv(
        "palisade_network_icmp_packets_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction"],
        &[("direction", NET_DIRECTIONS)],
    ),
    mv(
        "palisade_tcp_connections_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction", "result"],
        &[("direction", TCP_DIRECTIONS), ("result", TCP_RESULTS)],
    ),
    m("palisade_tcp_retransmits_total", Kind::Counter, CONTAINER),
    m("palisade_tcp_rtt_seconds", Kind::Histogram, CONTAINER),
    // Opt-in (network.per_peer_metrics); `remote` is a CIDR.
    mv(
        "palisade_network_peer_bytes_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction", "remote"],
        &[("direction", NET_DIRECTIONS)],
    ),
    // cAdvisor-compatible resources.
    m("container_cpu_usage_seconds_total", Kind::Counter, CADVISOR),
    m("container_cpu_user_seconds_total", Kind::Counter, CADVISOR),
    m(
        "container_cpu_system_seconds_total",
        Kind::Counter,
        CADVISOR,
    ),
    m("container_cpu_cfs_periods_total", Kind::Counter, CADVISOR),
    m(
        "container_cpu_cfs_throttled_periods_total",
        Kind::Counter,
        CADVISOR,
    ),
    m(
        "container_cpu_cfs_throttled_seconds_total",
        Kind::Counter,
        CADVISOR,
    ),
    m("container_oom_events_total", Kind::Counter, CADVISOR),
    m("container_fs_reads_bytes_total", Kind::Counter, CADVISOR),
    m("container_fs_writes_bytes_total", Kind::Counter, CADVISOR),
    m("container_memory_usage_bytes", Kind::Gauge, CADVISOR),
    m("container_memory_working_set_bytes", Kind::Gauge, CADVISOR),
    m("container_memory_rss", Kind::Gauge, CADVISOR),
    m("container_memory_cache", Kind::Gauge, CADVISOR),
    m("container_memory_failcnt", Kind::Gauge, CADVISOR),
    // 0 = unlimited.
    m("container_spec_memory_limit_bytes", Kind::Gauge, CADVISOR),
    m("container_spec_cpu_quota", Kind::Gauge, CADVISOR),
    m("container_spec_cpu_period", Kind::Gauge, CADVISOR),
    m("container_processes", Kind::Gauge, CADVISOR),
    m("container_threads", Kind::Gauge, CADVISOR),
    m("container_start_time_seconds", Kind::Gauge, CADVISOR),
    m("container_last_seen", Kind::Gauge, CADVISOR),
    // The agent itself.
    m("palisade_build_info", Kind::Gauge, &["version", "commit"]),
    mv(
        "palisade_kernel_feature",
        Kind::Gauge,
        &["feature"],
        &[("feature", FEATURES)],
    ),
    mv(
        "palisade_kernel_lost_total",
        Kind::Counter,
        &["reason"],
        &[("reason", LOST_REASONS)],
    ),
    mv(
        "palisade_bpf_map_entries",
        Kind::Gauge,
        &["map"],
        &[("map", MAPS)],
    ),
    mv(
        "palisade_bpf_map_capacity",
        Kind::Gauge,
        &["map"],
        &[("map", MAPS)],
    ),
    mv(
        "palisade_cgroups",
        Kind::Gauge,
        &["state"],
        &[("state", CGROUP_STATES)],
    ),
    m("palisade_identity_dropped_total", Kind::Counter, &[]),
    m("palisade_series_dropped", Kind::Gauge, &[]),
    m("palisade_scrape_duration_seconds", Kind::Histogram, &[]),
    m("palisade_network_flows", Kind::Gauge, &[]),
    m("palisade_network_flows_evicted_total", Kind::Counter, &[]),
    m("palisade_network_peer_series_dropped", Kind::Gauge, &[]),
    m("palisade_containers", Kind::Gauge, &["runtime"]),
    m("palisade_identity_unresolved_total", Kind::Counter, &[]),
    mv(
        "palisade_events_total",
        Kind::Counter,
        &["type"],
        &[("type", EVENT_TYPES)],
    ),
    mv(
        "palisade_events_dropped_total",
        Kind::Counter,
        &["sink"],
        &[("sink", EVENT_SINKS)],
    ),
    m("palisade_process_table_entries", Kind::Gauge, &[]),
    m("palisade_process_table_evicted_total", Kind::Counter, &[]),
];

/// Families only exported when turned on in the agent config: a panel showing one says so.
const OPT_IN: &[(&str, &str)] = &[
    (
        "palisade_network_peer_bytes_total",
        "network.per_peer_metrics",
    ),
    (
        "palisade_network_peer_series_dropped",
        "network.per_peer_metrics",
    ),
];

/// Labels every series gets from the Prometheus scrape.
const TARGET_LABELS: &[&str] = &["instance", "job"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `promtool` with `args` from the repository root and panics with its output on failure.
fn promtool<S: AsRef<OsStr>>(args: &[S]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            if e.kind() == ErrorKind::NotFound {
                panic!(
                    "promtool not found: install it with `cargo xtask setup` \
                     (Debian package `prometheus`)"
                )
            }
            panic!("cannot run promtool: {e}")
        });
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(
        out.status.success(),
        "`promtool {}` failed ({}):\n--- stdout\n{}--- stderr\n{}",
        shown.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- A small PromQL scanner --------------------------------------------------------------------

/// A vector selector found in an expression: metric name and label matchers.
#[derive(Debug, PartialEq)]
struct Selector {
    metric: Option<String>,
    /// (label, operator, value).
    matchers: Vec<(String, String, String)>,
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Keywords followed by a parenthesised list of label names, not an expression.
const LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Reads a quoted string starting at `chars[*i]` (`"`, `'` or `` ` ``); returns its content.
fn read_string(chars: &[char], i: &mut usize, expr: &str) -> String {
    let quote = chars[*i];
    *i += 1;
    let mut s = String::new();
    while *i < chars.len() {
        let c = chars[*i];
        *i += 1;
        if c == '\\' && quote != '`' {
            if let Some(&n) = chars.get(*i) {
                s.push(n);
                *i += 1;
            }
        } else if c == quote {
            return s;
        } else {
            s.push(c);
        }
    }
    panic!("unterminated string in `{expr}`")
}

fn skip_ws(chars: &[char], i: &mut usize) {
    while *i < chars.len() && chars[*i].is_whitespace() {
        *i += 1;
    }
}

/// Skips from an opening bracket to just past its matching closing one (strings honoured).
fn skip_group(chars: &[char], i: &mut usize, open: char, close: char, expr: &str) {
    let mut depth = 0usize;
    while *i < chars.len() {
        match chars[*i] {
            '"' | '\'' | '`' => {
                read_string(chars, i, expr);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    *i += 1;
                    return;
                }
            }
            _ => {}
        }
        *i += 1;
    }
    panic!("unbalanced `{open}` in `{expr}`")
}

/// Parses the label matchers of `{...}` starting at `chars[*i] == '{'`.
fn read_matchers(chars: &[char], i: &mut usize, expr: &str) -> Vec<(String, String, String)> {
    *i += 1;
    let mut out = Vec::new();
    loop {
        while *i < chars.len() && (chars[*i].is_whitespace() || chars[*i] == ',') {
            *i += 1;
        }
        match chars.get(*i) {
            Some('}') => {
                *i += 1;
                return out;
            }
            Some(&c) if is_ident_start(c) => {}
            _ => panic!("bad label matcher at byte {} of `{expr}`", *i),
        }
        let start = *i;
        while *i < chars.len() && is_ident(chars[*i]) {
            *i += 1;
        }
        let label: String = chars[start..*i].iter().collect();
        skip_ws(chars, i);
        let op_start = *i;
        while *i < chars.len() && matches!(chars[*i], '=' | '!' | '~') {
            *i += 1;
        }
        let op: String = chars[op_start..*i].iter().collect();
        assert!(
            matches!(op.as_str(), "=" | "!=" | "=~" | "!~"),
            "bad matcher operator `{op}` after `{label}` in `{expr}`"
        );
        skip_ws(chars, i);
        assert!(
            matches!(chars.get(*i), Some('"' | '\'' | '`')),
            "label `{label}` needs a quoted value in `{expr}`"
        );
        let value = read_string(chars, i, expr);
        out.push((label, op, value));
    }
}

/// Whether the word at `chars[j..]` is `by` or `without` (after an aggregation operator).
fn next_word_is_grouping(chars: &[char], j: usize) -> bool {
    let word: String = chars[j.min(chars.len())..]
        .iter()
        .take_while(|c| is_ident(**c))
        .collect();
    matches!(word.to_ascii_lowercase().as_str(), "by" | "without")
}

/// Every vector selector in a PromQL expression. Identifiers followed by `(` are functions or
/// aggregations; label lists after `by`/`without`/`on`/`ignoring`/`group_*`, range and subquery
/// brackets and string literals are skipped; what is left is a metric name.
fn selectors(expr: &str) -> Vec<Selector> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            read_string(&chars, &mut i, expr);
        } else if c == '[' {
            skip_group(&chars, &mut i, '[', ']', expr);
        } else if c == '#' {
            // Comment to end of line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '{' {
            out.push(Selector {
                metric: None,
                matchers: read_matchers(&chars, &mut i, expr),
            });
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // A number (1, 0.99, 1e-9, 0x1f) or a duration outside brackets (offset 5m).
            while i < chars.len() {
                let d = chars[i];
                let exponent_sign = (d == '-' || d == '+') && matches!(chars[i - 1], 'e' | 'E');
                if d.is_ascii_alphanumeric() || d == '.' || exponent_sign {
                    i += 1;
                } else {
                    break;
                }
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            skip_ws(&chars, &mut j);
            let next = chars.get(j).copied();
            let lower = word.to_ascii_lowercase();
            if LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if next == Some('(') {
                    i = j;
                    skip_group(&chars, &mut i, '(', ')', expr);
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || next == Some('(')
                || next_word_is_grouping(&chars, j)
            {
                // A keyword, a function call, or an aggregation (`sum by (x) (...)`): its
                // arguments are scanned next.
            } else {
                let matchers = if next == Some('{') {
                    i = j;
                    read_matchers(&chars, &mut i, expr)
                } else {
                    Vec::new()
                };
                out.push(Selector {
                    metric: Some(word),
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The exported family a queried series name belongs to, and whether it is a histogram bucket.
fn family(name: &str) -> Option<(&'static Metric, bool)> {
    if let Some(m) = METRICS
        .iter()
        .find(|m| m.name == name && m.kind != Kind::Histogram)
    {
        return Some((m, false));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(m) = METRICS
                .iter()
                .find(|m| m.name == base && m.kind == Kind::Histogram)
        {
            return Some((m, suffix == "_bucket"));
        }
    }
    None
}

/// The labels a queried series name may carry and the closed value sets among them, or `None`
/// when the agent does not export it. `extra` names non-Palisade metrics (with only target
/// labels).
fn labels_of(metric: &str, extra: &[&str]) -> Option<(Vec<&'static str>, Values)> {
    if extra.contains(&metric) {
        return Some((TARGET_LABELS.to_vec(), &[]));
    }
    let (family, bucket) = family(metric)?;
    let mut l: Vec<&str> = family.labels.iter().chain(TARGET_LABELS).copied().collect();
    if bucket {
        l.push("le");
    }
    Some((l, family.values))
}

/// Checks every selector of `expr` against what the agent exports; returns the problems found.
/// `extra` names non-Palisade metrics the file may use (with only target labels).
fn check_expr(expr: &str, extra: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let sels = selectors(expr);
    if sels.is_empty() {
        problems.push(format!("no metric in `{expr}`"));
    }
    for sel in sels {
        let mut matchers = sel.matchers.iter();
        let metric = match sel.metric {
            Some(m) => m,
            // `{__name__="..."}`: the name is the matcher.
            None => match matchers.find(|(l, op, _)| l == "__name__" && op == "=") {
                Some((_, _, v)) => v.clone(),
                None => {
                    problems.push(format!("selector without a metric name in `{expr}`"));
                    continue;
                }
            },
        };
        let Some((labels, values)) = labels_of(&metric, extra) else {
            problems.push(format!(
                "`{metric}` is not exported by palisade agent (in `{expr}`)"
            ));
            continue;
        };
        for (label, op, value) in &sel.matchers {
            if label == "__name__" {
                continue;
            }
            if !labels.contains(&label.as_str()) {
                problems.push(format!(
                    "`{metric}` has no label `{label}` (has {labels:?}) in `{expr}`"
                ));
                continue;
            }
            let literal = value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|');
            if !(op == "=" || op == "=~") || !literal {
                continue;
            }
            if let Some((_, allowed)) = values.iter().find(|(l, _)| l == label) {
                for alt in value.split('|') {
                    if !allowed.contains(&alt) {
                        problems.push(format!(
                            "`{metric}`: `{label}` is never \"{alt}\" (one of {allowed:?}) in \
                             `{expr}`"
                        ));
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn scanner_finds_metrics_and_labels() {
    let sels = selectors(
        r#"histogram_quantile(0.99, sum by (le, syscall) (rate(palisade_syscall_duration_seconds_bucket{container=~"$container", instance!="a}b"}[5m]))) / on (instance) group_left up > 1e-9"#,
    );
    let names: Vec<_> = sels.iter().map(|s| s.metric.clone()).collect();
    assert_eq!(
        names,
        vec![
            Some("palisade_syscall_duration_seconds_bucket".to_owned()),
            Some("up".to_owned())
        ]
    );
    assert_eq!(sels[0].matchers.len(), 2);
    assert_eq!(sels[0].matchers[1].2, "a}b");

    // The checker catches typos in metric names, label names, label values and histogram use.
    assert!(check_expr("rate(palisade_syscalls_total[5m])", &[]).is_empty());
    assert!(check_expr("palisade_syscall_duration_seconds_count", &[]).is_empty());
    assert!(!check_expr("rate(palisade_syscall_total[5m])", &[]).is_empty());
    assert!(!check_expr("palisade_syscall_duration_seconds", &[]).is_empty());
    assert!(!check_expr("palisade_syscalls_total_count", &[]).is_empty());
    assert!(!check_expr(r#"palisade_syscalls_total{le="1"}"#, &[]).is_empty());
    assert!(!check_expr(r#"palisade_syscalls_total{contianer="x"}"#, &[]).is_empty());
    assert!(!check_expr(r#"palisade_kernel_lost_total{reason="map_full"}"#, &[]).is_empty());
    assert!(!check_expr("up == 0", &[]).is_empty());
    assert!(check_expr(r#"up{job="palisade"} == 0"#, &["up"]).is_empty());

    // Closed label values are per family: `reason` and `direction` differ between families.
    assert!(check_expr(r#"palisade_process_exits_total{reason="signaled"}"#, &[]).is_empty());
    assert!(
        !check_expr(
            r#"palisade_process_exits_total{reason="ringbuf_full"}"#,
            &[]
        )
        .is_empty()
    );
    assert!(!check_expr(r#"palisade_kernel_lost_total{reason="failed"}"#, &[]).is_empty());
    assert!(
        check_expr(
            r#"palisade_tcp_connections_total{direction="outbound", result=~"refused|timeout"}"#,
            &[]
        )
        .is_empty()
    );
    assert!(!check_expr(r#"palisade_tcp_connections_total{direction="tx"}"#, &[]).is_empty());
    assert!(!check_expr(r#"palisade_tcp_connections_total{result="reset"}"#, &[]).is_empty());
    assert!(!check_expr(r#"palisade_network_bytes_total{direction="inbound"}"#, &[]).is_empty());
    assert!(!check_expr(r#"palisade_events_dropped_total{sink="kafka"}"#, &[]).is_empty());
    // Label sets: cAdvisor families have `id` and `image`, palisade_* ones do not.
    assert!(check_expr(r#"container_memory_rss{image=~"nginx.*", id!=""}"#, &[]).is_empty());
    assert!(!check_expr(r#"palisade_oom_kills_total{image="nginx"}"#, &[]).is_empty());
    assert!(
        check_expr(
            r#"palisade_oom_kills_total{namespace="shop", pod="a"}"#,
            &[]
        )
        .is_empty()
    );
    assert!(!check_expr(r#"palisade_network_flows{container="x"}"#, &[]).is_empty());
    assert!(check_expr(r#"palisade_tcp_rtt_seconds_bucket{le="0.001"}"#, &[]).is_empty());
    assert!(!check_expr("container_memory_cache_bytes", &[]).is_empty());
    // A series that is new in the window (`unless ... offset`).
    assert!(
        check_expr(
            "palisade_oom_kills_total > 0 unless palisade_oom_kills_total offset 5m",
            &[]
        )
        .is_empty()
    );
}

// --- Alerting rules ------------------------------------------------------------------------------

const RULES: &str = "dashboards/alerts/palisade.rules.yml";
const RULES_TEST: &str = "dashboards/alerts/palisade.rules.test.yml";

#[test]
fn promtool_check_rules() {
    promtool(&["check", "rules", RULES]);
}

#[test]
fn promtool_rule_unit_tests() {
    promtool(&["test", "rules", RULES_TEST]);
}

/// The value of every `expr:` in a rules file, single-line or block scalar (`|`, `>`).
fn rule_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        i += 1;
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let indent = line.len() - trimmed.len();
            let mut block = String::new();
            while i < lines.len() {
                let l = lines[i];
                let t = l.trim_start();
                if !t.is_empty() && l.len() - t.len() <= indent {
                    break;
                }
                block.push_str(t);
                block.push('\n');
                i += 1;
            }
            out.push(block);
        } else {
            let unquoted = rest
                .strip_prefix('\'')
                .and_then(|r| r.strip_suffix('\''))
                .map(|r| r.replace("''", "'"))
                .unwrap_or_else(|| rest.to_owned());
            out.push(unquoted);
        }
    }
    out
}

#[test]
fn rules_query_only_exported_metrics() {
    let text = read(RULES);
    let exprs = rule_exprs(&text);
    let alerts = text.matches("- alert:").count();
    assert!(alerts > 0, "no alerts in {RULES}");
    assert_eq!(exprs.len(), alerts, "every alert in {RULES} has one expr");
    let problems: Vec<String> = exprs.iter().flat_map(|e| check_expr(e, &["up"])).collect();
    assert!(problems.is_empty(), "{RULES}:\n{}", problems.join("\n"));
}

/// For each `alertname: <name>` case of a promtool test file: whether it expects alerts
/// (`exp_alerts:` followed by a list) or none (`exp_alerts: []`).
fn alert_cases(tests: &str, name: &str) -> Vec<bool> {
    let key = format!("alertname: {name}");
    let lines: Vec<&str> = tests.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != key {
            continue;
        }
        let exp = lines
            .get(i + 1)
            .map(|l| l.trim())
            .filter(|l| l.starts_with("exp_alerts:"))
            .unwrap_or_else(|| panic!("`{key}` is not followed by `exp_alerts:`"));
        out.push(exp != "exp_alerts: []");
    }
    out
}

#[test]
fn every_alert_is_documented_and_tested() {
    let text = read(RULES);
    let tests = read(RULES_TEST);
    let mut names = BTreeSet::new();
    for block in text.split("- alert:").skip(1) {
        let name = block
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        for key in ["severity:", "summary:", "description:"] {
            assert!(
                block.contains(key),
                "alert {name} in {RULES} has no `{key}`"
            );
        }
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "alert {name} has no case in {RULES_TEST}"
        );
        // A case where it fires and one where it must not.
        let cases = alert_cases(&tests, &name);
        assert!(
            cases.contains(&true),
            "alert {name} never fires in {RULES_TEST}"
        );
        assert!(
            cases.contains(&false),
            "alert {name} has no case in {RULES_TEST} where it must not fire"
        );
        assert!(names.insert(name.clone()), "alert {name} defined twice");
    }
    for group in ["palisade-agent", "palisade-containers"] {
        assert!(
            text.contains(&format!("  - name: {group}\n")),
            "{RULES} lacks group {group}"
        );
    }
    for expected in [
        "PalisadeAgentDown",
        "PalisadeKernelMapFull",
        "PalisadeRingBufferLoss",
        "PalisadeMapNearlyFull",
        "PalisadeSeriesDropped",
        "PalisadeIdentityRegistryFull",
        "ContainerOOMKilled",
        "ContainerCPUThrottled",
        "ContainerMemoryNearLimit",
        "ContainerTCPConnectFailures",
        "PalisadeEventsDropped",
        "PalisadeFlowTableEvicting",
    ] {
        assert!(names.contains(expected), "{RULES} lacks alert {expected}");
    }
}

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

/// Every panel, including the ones nested in (collapsed) rows.
fn all_panels(d: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            if let Some(nested) = p.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
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

/// A Grafana query with its variables replaced by values Prometheus accepts: durations for
/// `$__rate_interval`, `$__interval` and `$__range`, `.*` for the template variables (which the
/// dashboards only use inside `=~` matchers).
fn grafana_to_promql(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h");
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' {
            i += 1;
            let braced = chars.get(i) == Some(&'{');
            if braced {
                i += 1;
            }
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            if braced && chars.get(i) == Some(&'}') {
                i += 1;
            }
            out.push_str(".*");
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
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
