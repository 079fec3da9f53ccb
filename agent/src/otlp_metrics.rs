//! OTLP metric export (`otlp.metrics`): the families of `/metrics`, with the same names, labels
//! (as attributes) and values, pushed by the SDK's periodic reader to `<endpoint>/v1/metrics`,
//! for fleets that collect only OTLP.
//!
//! The state owner publishes every collection's families ([`crate::metrics::Published`]); each
//! family is one asynchronous instrument whose callback reads the latest of them when the reader
//! collects, so an export carries the numbers of the agent's last collection
//! (`metrics.collect_interval`, or a scrape). Counters are cumulative monotonic sums, gauges are
//! gauges. The SDK has no asynchronous histogram, and its data points cannot be built outside
//! it, so a histogram goes as its Prometheus series: `<name>_bucket` (attribute `le`),
//! `<name>_sum` and `<name>_count`, each a cumulative sum: nothing is lost, and a backend that
//! stores OTLP as Prometheus series gets the ones a scrape would give.
use std::{collections::HashSet, sync::Arc, time::Duration};

use opentelemetry::{
    KeyValue,
    metrics::{Meter, MeterProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use prometheus::proto::{Metric, MetricFamily, MetricType};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    config::{OtlpConfig, OtlpProtocol},
    otlp::{OtlpError, resource},
};

type Families = watch::Receiver<Arc<Vec<MetricFamily>>>;

/// The running metric export; `shutdown` exports one last time.
pub struct Exporter {
    provider: SdkMeterProvider,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    pub fn shutdown(self) {
        self.task.abort();
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            warn!(error = %e, "OTLP metric export at shutdown failed");
        }
    }
}

/// Starts the export when an endpoint is configured and `otlp.metrics` is on; the families
/// come from `families` (the state owner's [`crate::metrics::Published`]).
pub fn start(
    cfg: &OtlpConfig,
    node: &str,
    families: Families,
) -> Result<Option<Exporter>, OtlpError> {
    let Some(endpoint) = cfg.endpoint.as_ref().filter(|_| cfg.metrics) else {
        return Ok(None);
    };
    let url = format!("{}/v1/metrics", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_protocol(match cfg.protocol {
            OtlpProtocol::Protobuf => Protocol::HttpBinary,
            OtlpProtocol::Json => Protocol::HttpJson,
        })
        .with_timeout(cfg.timeout)
        .with_headers(cfg.headers.clone().into_iter().collect())
        .with_temporality(Temporality::Cumulative)
        .build()?;
    let reader = PeriodicReader::builder(exporter)
        .with_interval(cfg.metrics_interval)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_resource(resource(node))
        .with_reader(reader)
        .build();
    let meter = provider.meter("palisade");
    let task = tokio::spawn(register_new_families(meter, families));
    info!(endpoint = %url, interval = ?cfg.metrics_interval, "exporting metrics over OTLP");
    Ok(Some(Exporter { provider, task }))
}

/// Registers an instrument for every family the first time it shows up (families such as the
/// policy ones appear only once there is something to count).
async fn register_new_families(meter: Meter, mut families: Families) {
    let mut known: HashSet<String> = HashSet::new();
    loop {
        let fresh: Vec<(String, String, MetricType)> = families
            .borrow_and_update()
            .iter()
            .filter(|f| !known.contains(f.name()))
            .map(|f| (f.name().to_owned(), f.help().to_owned(), f.get_field_type()))
            .collect();
        for (name, help, kind) in fresh {
            register(&meter, &name, &help, kind, &families);
            known.insert(name);
        }
        if families.changed().await.is_err() {
            return;
        }
    }
}

/// The value(s) one instrument reads from a family's metric.
#[derive(Clone, Copy)]
enum Part {
    Value,
    Bucket,
    Sum,
    Count,
}

fn register(meter: &Meter, name: &str, help: &str, kind: MetricType, families: &Families) {
    let parts: &[(&str, Part)] = match kind {
        MetricType::HISTOGRAM => &[
            ("_bucket", Part::Bucket),
            ("_sum", Part::Sum),
            ("_count", Part::Count),
        ],
        _ => &[("", Part::Value)],
    };
    for (suffix, part) in parts.iter().copied() {
        let family = name.to_owned();
        let rx = families.clone();
        let observe = move |observe: &dyn Fn(f64, &[KeyValue])| {
            let fams = rx.borrow();
            if let Some(f) = fams.iter().find(|f| f.name() == family) {
                for m in f.get_metric() {
                    for (value, attrs) in points(m, f.get_field_type(), part) {
                        observe(value, &attrs);
                    }
                }
            }
        };
        let instrument = format!("{name}{suffix}");
        let description = help.to_owned();
        if kind == MetricType::GAUGE {
            meter
                .f64_observable_gauge(instrument)
                .with_description(description)
                .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                .build();
        } else {
            meter
                .f64_observable_counter(instrument)
                .with_description(description)
                .with_callback(move |o| observe(&|v, a| o.observe(v, a)))
                .build();
        }
    }
}

/// The data points of one Prometheus metric for one instrument: its labels as attributes (and
/// `le` for buckets, the `+Inf` bucket included as the text format writes it).
fn points(m: &Metric, kind: MetricType, part: Part) -> Vec<(f64, Vec<KeyValue>)> {
    let attrs: Vec<KeyValue> = m
        .get_label()
        .iter()
        .map(|l| KeyValue::new(l.name().to_owned(), l.value().to_owned()))
        .collect();
    let h = m.get_histogram();
    match part {
        Part::Value => {
            let v = if kind == MetricType::COUNTER {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            };
            vec![(v, attrs)]
        }
        Part::Sum => vec![(h.get_sample_sum(), attrs)],
        Part::Count => vec![(h.get_sample_count() as f64, attrs)],
        Part::Bucket => {
            let mut out: Vec<(f64, Vec<KeyValue>)> = h
                .get_bucket()
                .iter()
                .map(|b| (b.cumulative_count() as f64, le(&attrs, b.upper_bound())))
                .collect();
            if h.get_bucket()
                .last()
                .is_none_or(|b| b.upper_bound().is_finite())
            {
                out.push((h.get_sample_count() as f64, le(&attrs, f64::INFINITY)));
            }
            out
        }
    }
}

fn le(attrs: &[KeyValue], bound: f64) -> Vec<KeyValue> {
    let mut a = attrs.to_vec();
    let text = if bound.is_infinite() {
        "+Inf".to_owned()
    } else {
        bound.to_string()
    };
    a.push(KeyValue::new("le", text));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{counter, histogram::PromHistogram};

    #[test]
    fn histogram_points_are_the_prometheus_series() {
        let h = PromHistogram {
            buckets: vec![(0.5, 1), (1.0, 3)],
            count: 4,
            sum_seconds: 2.5,
        };
        let m = crate::metrics::histogram(&[("container", "web")], &h);
        let b = points(&m, MetricType::HISTOGRAM, Part::Bucket);
        let les: Vec<(f64, String)> = b
            .iter()
            .map(|(v, a)| {
                (
                    *v,
                    a.last().map(|kv| kv.value.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            les,
            [(1.0, "0.5".into()), (3.0, "1".into()), (4.0, "+Inf".into())]
        );
        assert_eq!(b[0].1[0], KeyValue::new("container", "web"));
        assert_eq!(points(&m, MetricType::HISTOGRAM, Part::Sum)[0].0, 2.5);
        assert_eq!(points(&m, MetricType::HISTOGRAM, Part::Count)[0].0, 4.0);
        let c = counter(&[("container", "web"), ("syscall", "read")], 7.0);
        let v = points(&c, MetricType::COUNTER, Part::Value);
        assert_eq!(v[0].0, 7.0);
        assert_eq!(v[0].1.len(), 2);
    }
}
