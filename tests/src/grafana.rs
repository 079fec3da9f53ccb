//! The Grafana dashboards' queries as Prometheus runs them: shared by the dashboard checks
//! (`tests/tests/dashboards`) and the alerting end-to-end test, which asks a real Prometheus
//! every panel's query.
use std::path::Path;

use serde_json::Value;

/// Every `dashboards/*.json` of the repository, sorted.
pub fn dashboard_files() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// Every panel query of a dashboard: (panel title, query as Grafana stores it).
pub fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    all_panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("<untitled>").to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| t["expr"].as_str().map(|e| (title.clone(), e.to_owned())))
        })
        .collect()
}

/// Every panel, including the ones nested in (collapsed) rows.
pub fn all_panels(d: &Value) -> Vec<&Value> {
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

/// A Grafana query with its variables replaced by values Prometheus accepts: durations for
/// `$__rate_interval`, `$__interval` and `$__range`, `.*` for the template variables (which the
/// dashboards only use inside `=~` matchers).
pub fn grafana_to_promql(expr: &str) -> String {
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

/// A PromQL identifier character.
fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}
