//! Families written straight into the Prometheus text format, one line per sample, with no
//! object per series; and, only when the OTLP metrics export runs, also as `prometheus::proto`
//! families for it. A scrape of 1,000 containers writes ~100,000 lines: building a `Metric`
//! with its `LabelPair` strings for each cost several times the writing itself.
//!
//! A container's labels are escaped once ([`LabelSet`]) and copied in front of each of its
//! samples' own labels.
//!
//! A family's text is written in blocks ([`Text`]) that become the page's chunks as they are:
//! the ~9 MB of a 1,000-container page is neither grown by reallocation nor copied into one
//! buffer.
use std::{fmt::Write as _, sync::OnceLock};

use bytes::Bytes;
use palisade_common::{HIST_BUCKETS, bucket_upper_bound_ns};
use prometheus::proto::{MetricFamily, MetricType};

/// Which outputs a render builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Out {
    /// The text page (a scrape waits for it).
    pub text: bool,
    /// `prometheus::proto` families (the OTLP metrics export reads them).
    pub proto: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn text(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }

    fn proto(self) -> MetricType {
        match self {
            Self::Counter => MetricType::COUNTER,
            Self::Gauge => MetricType::GAUGE,
            Self::Histogram => MetricType::HISTOGRAM,
        }
    }
}

/// Appends `v` escaped as a label value (`\` → `\\`, newline → `\n`, `"` → `\"`).
fn escape_into(out: &mut String, v: &str) {
    if !v.bytes().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn pairs_into(out: &mut String, pairs: &[(&str, &str)]) {
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        escape_into(out, v);
        out.push('"');
    }
}

/// The labels one owner (a container) puts on all its samples, escaped once.
#[derive(Debug, Clone, Default)]
pub struct LabelSet {
    text: String,
    pairs: Vec<(String, String)>,
}

impl LabelSet {
    pub fn new(pairs: &[(&str, &str)]) -> Self {
        let mut text = String::with_capacity(64);
        pairs_into(&mut text, pairs);
        Self {
            text,
            pairs: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// The empty label set.
pub static NONE: LabelSet = LabelSet {
    text: String::new(),
    pairs: Vec::new(),
};

/// `le` of every kernel bucket bound as the text format writes it (the shortest decimal of the
/// bound in seconds, as `f64::to_string` gives it).
fn le_texts() -> &'static [String] {
    static LE: OnceLock<Vec<String>> = OnceLock::new();
    LE.get_or_init(|| {
        (0..HIST_BUCKETS)
            .map(|i| {
                bucket_upper_bound_ns(i)
                    .map(|ns| (ns as f64 / 1e9).to_string())
                    .unwrap_or_default()
            })
            .collect()
    })
}

/// A value as the text format writes it.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    Int(u64),
    Float(f64),
}

impl Value {
    fn as_f64(self) -> f64 {
        match self {
            Self::Int(n) => n as f64,
            Self::Float(v) => v,
        }
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Self::Int(n)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

/// Blocks of text grow to this size and are then sealed: big enough that a page is ~150 of
/// them, small enough that growing one by doubling costs little.
const BLOCK: usize = 64 * 1024;
/// A block with less room than this left is sealed before the next line, so a line almost
/// never makes its block grow.
const SLACK: usize = 2 * 1024;

/// Text written in sealed blocks plus the one being written.
#[derive(Debug, Default)]
pub struct Text {
    sealed: Vec<Bytes>,
    current: String,
}

impl Text {
    fn with_header(name: &str, help: &str, kind: Kind) -> Self {
        let mut current = String::with_capacity(1024);
        current.push_str("# HELP ");
        current.push_str(name);
        current.push(' ');
        escape_help(&mut current, help);
        current.push_str("\n# TYPE ");
        current.push_str(name);
        current.push(' ');
        current.push_str(kind.text());
        current.push('\n');
        Self {
            sealed: Vec::new(),
            current,
        }
    }

    /// The block to write the next line into: a fresh one once the current is nearly full.
    fn block(&mut self) -> &mut String {
        if self.current.len() + SLACK > BLOCK {
            let full = std::mem::replace(&mut self.current, String::with_capacity(BLOCK));
            self.sealed.push(Bytes::from(full));
        }
        &mut self.current
    }

    /// The blocks in order.
    pub fn into_chunks(self) -> impl Iterator<Item = Bytes> {
        let last = (!self.current.is_empty()).then(|| Bytes::from(self.current));
        self.sealed.into_iter().chain(last)
    }
}

/// Appends the decimal digits of `n` (the text format's integers; `fmt` costs several times
/// this on a page of 100,000 lines).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// One family being written.
pub struct Family {
    name: &'static str,
    kind: Kind,
    /// HELP, TYPE and sample lines (text output).
    body: Option<Text>,
    proto: Option<MetricFamily>,
    samples: usize,
}

impl Family {
    pub fn new(out: Out, name: &'static str, help: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            body: out.text.then(|| Text::with_header(name, help, kind)),
            proto: out.proto.then(|| super::family(name, help, kind.proto())),
            samples: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    fn line(
        text: &mut Text,
        name: &str,
        suffix: &str,
        set: &LabelSet,
        extra: &[(&str, &str)],
        le: Option<&str>,
        v: Value,
    ) {
        let body = text.block();
        body.push_str(name);
        body.push_str(suffix);
        let any = !set.text.is_empty() || !extra.is_empty() || le.is_some();
        if any {
            body.push('{');
            body.push_str(&set.text);
            if !extra.is_empty() {
                if !set.text.is_empty() {
                    body.push(',');
                }
                pairs_into(body, extra);
            }
            if let Some(le) = le {
                if !set.text.is_empty() || !extra.is_empty() {
                    body.push(',');
                }
                body.push_str("le=\"");
                body.push_str(le);
                body.push('"');
            }
            body.push('}');
        }
        body.push(' ');
        match v {
            Value::Int(n) => push_u64(body, n),
            // infallible: writing to a String
            Value::Float(f) => {
                let _ = write!(body, "{f}");
            }
        }
        body.push('\n');
    }

    fn proto_labels(set: &LabelSet, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        set.pairs
            .iter()
            .cloned()
            .chain(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            )
            .collect()
    }

    /// A counter or gauge sample.
    pub fn sample(&mut self, set: &LabelSet, extra: &[(&str, &str)], v: impl Into<Value>) {
        let v = v.into();
        self.samples += 1;
        if let Some(body) = &mut self.body {
            Self::line(body, self.name, "", set, extra, None, v);
        }
        if let Some(p) = &mut self.proto {
            let labels = Self::proto_labels(set, extra);
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let m = if self.kind == Kind::Counter {
                super::counter(&labels, v.as_f64())
            } else {
                super::gauge(&labels, v.as_f64())
            };
            p.mut_metric().push(m);
        }
    }

    /// A histogram from kernel log2 buckets, every `step`-th bound exported (see
    /// [`super::histogram::convert`]).
    pub fn kernel_histogram(
        &mut self,
        set: &LabelSet,
        extra: &[(&str, &str)],
        hist: &[u64; HIST_BUCKETS],
        sum_ns: u64,
        step: u32,
    ) {
        self.samples += 1;
        let step = step.max(1) as usize;
        if let Some(body) = &mut self.body {
            let les = le_texts();
            let mut cumulative = 0u64;
            for (i, n) in hist.iter().enumerate() {
                cumulative += n;
                let le = les.get(i).map_or("", String::as_str);
                // the overflow bucket has no bound: only +Inf holds it
                if i % step == 0 && !le.is_empty() {
                    let v = Value::Int(cumulative);
                    Self::line(body, self.name, "_bucket", set, extra, Some(le), v);
                }
            }
            Self::line(
                body,
                self.name,
                "_bucket",
                set,
                extra,
                Some("+Inf"),
                Value::Int(cumulative),
            );
            let sum = Value::Float(sum_ns as f64 / 1e9);
            Self::line(body, self.name, "_sum", set, extra, None, sum);
            Self::line(
                body,
                self.name,
                "_count",
                set,
                extra,
                None,
                Value::Int(cumulative),
            );
        }
        if let Some(p) = &mut self.proto {
            let labels = Self::proto_labels(set, extra);
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let h = super::histogram::convert(hist, sum_ns, step as u32);
            p.mut_metric().push(super::histogram(&labels, &h));
        }
    }

    /// A histogram already in Prometheus form (`le` in seconds, cumulative counts).
    pub fn prom_histogram(&mut self, set: &LabelSet, h: &super::histogram::PromHistogram) {
        self.samples += 1;
        if let Some(body) = &mut self.body {
            let mut le = String::new();
            for (bound, c) in &h.buckets {
                le.clear();
                let _ = write!(le, "{bound}");
                Self::line(
                    body,
                    self.name,
                    "_bucket",
                    set,
                    &[],
                    Some(&le),
                    Value::Int(*c),
                );
            }
            Self::line(
                body,
                self.name,
                "_bucket",
                set,
                &[],
                Some("+Inf"),
                Value::Int(h.count),
            );
            let sum = Value::Float(h.sum_seconds);
            Self::line(body, self.name, "_sum", set, &[], None, sum);
            Self::line(
                body,
                self.name,
                "_count",
                set,
                &[],
                None,
                Value::Int(h.count),
            );
        }
        if let Some(p) = &mut self.proto {
            let labels = Self::proto_labels(set, &[]);
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            p.mut_metric().push(super::histogram(&labels, h));
        }
    }
}

/// Families in page order.
#[derive(Default)]
pub struct Families(pub Vec<Family>);

impl Families {
    pub fn extend(&mut self, fams: impl IntoIterator<Item = Family>) {
        self.0.extend(fams);
    }

    /// The text page as chunks: every non-empty family with its HELP and TYPE lines.
    pub fn text(&mut self) -> Vec<Bytes> {
        self.0
            .iter_mut()
            .filter(|f| !f.is_empty())
            .filter_map(|f| f.body.take())
            .flat_map(Text::into_chunks)
            .collect()
    }

    /// The `prometheus::proto` families (non-empty ones), when they were built.
    pub fn into_proto(self) -> Vec<MetricFamily> {
        self.0
            .into_iter()
            .filter(|f| !f.is_empty())
            .filter_map(|f| f.proto)
            .collect()
    }
}

/// HELP text escaping: `\` and newline.
fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_written_as_display_writes_them() {
        for n in [
            0,
            7,
            9,
            10,
            99,
            100,
            123_456_789,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut s = String::from("x ");
            push_u64(&mut s, n);
            assert_eq!(s, format!("x {n}"));
        }
    }

    #[test]
    fn a_big_family_is_sealed_into_blocks_of_whole_lines() {
        let out = Out {
            text: true,
            proto: false,
        };
        let mut fams = Families::default();
        let mut f = Family::new(out, "t_total", "Help.", Kind::Counter);
        let set = LabelSet::new(&[("container", "c")]);
        for i in 0..20_000u64 {
            f.sample(&set, &[("syscall", "read")], i);
        }
        fams.extend([
            f,
            Family::new(out, "empty_total", "Left out.", Kind::Counter),
        ]);
        let chunks = fams.text();
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        let mut want = String::from("# HELP t_total Help.\n# TYPE t_total counter\n");
        for i in 0..20_000u64 {
            want.push_str(&format!(
                "t_total{{container=\"c\",syscall=\"read\"}} {i}\n"
            ));
        }
        for c in &chunks {
            assert!(c.len() <= BLOCK, "a block of {} bytes", c.len());
            assert_eq!(c.last(), Some(&b'\n'), "a line split across blocks");
        }
        let text: Vec<u8> = chunks.concat();
        assert_eq!(String::from_utf8(text).unwrap(), want);
    }
}
