//! The alerting rules: promtool checks and unit tests, exported metrics only, and every alert
//! documented and tested both firing and not firing.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::{
    promql::{check_expr, joined_with_build_info, selectors},
    promtool, read,
};

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
    for group in ["palisade-agent", "palisade-containers", "palisade-policy"] {
        assert!(
            text.contains(&format!("  - name: {group}\n")),
            "{RULES} lacks group {group}"
        );
    }
    for expected in [
        "PalisadeAgentDown",
        "PalisadeAgentsMissing",
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
        "PolicyViolation",
        "PolicyWouldBlock",
        "PolicyLogViolation",
        "PolicyReloadFailed",
        "PolicyEventsLost",
        "PolicyUnenforced",
    ] {
        assert!(names.contains(expected), "{RULES} lacks alert {expected}");
    }
}

/// Every alerting rule of the rules file, parsed: (name, rule object).
fn alerts() -> Vec<(String, Value)> {
    let rules: Value =
        serde_saphyr::from_str(&read(RULES)).unwrap_or_else(|e| panic!("{RULES}: {e}"));
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                out.push((name.to_owned(), rule.clone()));
            }
        }
    }
    assert!(!out.is_empty(), "no alerts in {RULES}");
    out
}

/// The anchor GitHub gives a Markdown heading: lowercase, punctuation other than `-` and `_`
/// dropped, spaces as `-`.
pub(crate) fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// `repository` of the workspace's Cargo.toml.
fn repository() -> String {
    read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("repository = "))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .expect("repository in Cargo.toml")
}

#[test]
fn every_alert_has_a_runbook_url_to_its_section_in_the_dashboards_readme() {
    let readme = read("dashboards/README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| github_anchor(h.trim_start_matches('#')))
        .collect();
    let base = format!("{}/blob/main/dashboards/README.md#", repository());
    let mut problems = Vec::new();
    for (name, rule) in alerts() {
        let Some(url) = rule["annotations"]["runbook_url"].as_str() else {
            problems.push(format!("{name}: no runbook_url annotation"));
            continue;
        };
        let Some(anchor) = url.strip_prefix(&base) else {
            problems.push(format!(
                "{name}: runbook_url {url} does not start with {base}"
            ));
            continue;
        };
        if anchor != name.to_lowercase() {
            problems.push(format!(
                "{name}: runbook_url points at #{anchor}, not at its own section #{}",
                name.to_lowercase()
            ));
        }
        if !anchors.contains(anchor) {
            problems.push(format!(
                "{name}: dashboards/README.md has no heading with anchor #{anchor} (add `### {name}` under Runbooks)"
            ));
        }
    }
    assert!(problems.is_empty(), "{RULES}:\n{}", problems.join("\n"));
}

#[test]
fn no_rule_names_a_scrape_job_and_resource_rules_read_only_palisades_series() {
    let mut problems = Vec::new();
    for (name, rule) in alerts() {
        let expr = rule["expr"].as_str().unwrap_or_default();
        for sel in selectors(expr) {
            if sel.matchers.iter().any(|(l, _, _)| l == "job") {
                problems.push(format!(
                    "{name}: selects a job ({:?}); the job is named by the scrape config",
                    sel.metric
                ));
            }
        }
        let cadvisor_names = selectors(expr).iter().any(|s| {
            s.metric
                .as_deref()
                .is_some_and(|m| m.starts_with("container_"))
        });
        if cadvisor_names && !joined_with_build_info(expr) {
            problems.push(format!(
                "{name}: reads container_* series without `and on (job, instance) palisade_build_info` (the kubelet's cAdvisor exports them too)"
            ));
        }
    }
    assert!(problems.is_empty(), "{RULES}:\n{}", problems.join("\n"));
}

#[test]
fn github_anchors() {
    assert_eq!(github_anchor(" PalisadeAgentDown"), "palisadeagentdown");
    assert_eq!(
        github_anchor("Where the alerts find the agent"),
        "where-the-alerts-find-the-agent"
    );
    assert_eq!(
        github_anchor("The alerts in `palisade-agent`"),
        "the-alerts-in-palisade-agent"
    );
}
