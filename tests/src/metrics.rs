//! The Prometheus text format as the tests read it: samples with their labels, the declared
//! family types, and `promtool check metrics`.

use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
};

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// `# TYPE` declarations: family name → `counter`, `gauge`, `histogram`, …
    pub types: BTreeMap<String, String>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix("# TYPE ") {
                let (name, kind) = decl
                    .split_once(' ')
                    .unwrap_or_else(|| panic!("bad TYPE line: {line}"));
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad sample line: {line}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|e| panic!("bad value in {line}: {e}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap_or(rest);
                    (name.to_owned(), parse_labels(body))
                }
            };
            samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        Self {
            samples,
            types,
            text: text.to_owned(),
        }
    }

    /// Samples named `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The single sample matching, or `None`; panics when several match.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "{name}{labels:?} matches {} samples",
            found.len()
        );
        found.first().map(|s| s.value)
    }

    /// Distinct values of `label` among samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            panic!("bad label set {body}");
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => break,
                },
                '"' => break,
                o => val.push(o),
            }
        }
        out.insert(key.trim_start_matches(',').to_owned(), val);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

/// Runs `promtool check metrics` on an exposition and panics with its output on failure.
pub fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); install it with `cargo xtask setup` (Debian package prometheus)")
        });
    child
        .stdin
        .take()
        .unwrap_or_else(|| panic!("promtool stdin"))
        .write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write to promtool: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE x counter\nx{a=\"1\",b=\"q\\\"z\"} 3\ny 4.5\nh_bucket{le=\"+Inf\"} 2\n",
        );
        assert_eq!(m.value("x", &[("a", "1")]), Some(3.0));
        assert_eq!(m.find("x", &[])[0].labels["b"], "q\"z");
        assert_eq!(m.value("y", &[]), Some(4.5));
        assert_eq!(m.value("h_bucket", &[("le", "+Inf")]), Some(2.0));
        assert_eq!(m.value("x", &[("a", "2")]), None);
        assert_eq!(m.types["x"], "counter");
    }
}
