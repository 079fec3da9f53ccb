//! A small PromQL scanner that finds the vector selectors of an expression, and the check of
//! those selectors against the exported families.

use crate::exported::labels_of;

// --- A small PromQL scanner --------------------------------------------------------------------

/// A vector selector found in an expression: metric name and label matchers.
#[derive(Debug, PartialEq)]
pub(crate) struct Selector {
    pub(crate) metric: Option<String>,
    /// (label, operator, value).
    pub(crate) matchers: Vec<(String, String, String)>,
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

pub(crate) fn is_ident(c: char) -> bool {
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
pub(crate) fn selectors(expr: &str) -> Vec<Selector> {
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
        } else if c == '$' {
            // A Grafana variable outside a string (`offset $__range`): not a metric.
            i += 1;
            if chars.get(i) == Some(&'{') {
                skip_group(&chars, &mut i, '{', '}', expr);
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
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

/// Whether `expr` keeps only series of a target that exports `palisade_build_info`
/// (`... and on (job, instance) palisade_build_info`): how Palisade's `container_*` series are
/// told apart from the kubelet's cAdvisor, which exports the same names.
pub(crate) fn joined_with_build_info(expr: &str) -> bool {
    let flat = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    flat.contains("and on (job, instance) palisade_build_info")
}

/// Checks every selector of `expr` against what the agent exports; returns the problems found.
/// `extra` names non-Palisade metrics the file may use (with only target labels).
pub(crate) fn check_expr(expr: &str, extra: &[&str]) -> Vec<String> {
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
    // Grafana variables outside strings are not metrics.
    assert_eq!(
        selectors("x{a=~\"$a\"} unless x offset $__range or y offset ${__interval}").len(),
        3
    );
    // Policy families: `action`, `mode` and `hook` are closed sets, `container` comes alone.
    assert!(
        check_expr(
            r#"palisade_policy_violations_total{action=~"errno|kill|drop", container="web-0"}"#,
            &[]
        )
        .is_empty()
    );
    assert!(!check_expr(r#"palisade_policy_violations_total{action="deny"}"#, &[]).is_empty());
    assert!(!check_expr(r#"palisade_policy_violations_total{pod="web-0"}"#, &[]).is_empty());
    assert!(!check_expr(r#"palisade_policy_cgroups{mode="enforcing"}"#, &[]).is_empty());
    // `syscall` is the hook of a violation event, the hook group is `syscalls`.
    assert!(!check_expr(r#"palisade_policy_hook_attached{hook="syscall"}"#, &[]).is_empty());
    assert!(check_expr(r#"palisade_events_total{type="policy_violation"}"#, &[]).is_empty());
    // A series that is new in the window (`unless ... offset`).
    assert!(
        check_expr(
            "palisade_oom_kills_total > 0 unless palisade_oom_kills_total offset 5m",
            &[]
        )
        .is_empty()
    );
}
