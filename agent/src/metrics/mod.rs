//! `/metrics` rendering: per-container families from the model (with a cardinality cap) plus the
//! agent's self-metrics, in the Prometheus text format.
//!
//! Label sets are fixed and documented in the README: `container` (the identity registry's
//! name), `syscall` (x86_64 name, or the number where unknown), `errno` (symbolic, e.g. EBADF).
//! Cgroups that share a name (e.g. a container and a sub-cgroup the rules could not tell apart)
//! are summed, so every label set appears once.
pub mod histogram;

use std::collections::BTreeMap;

use palisade_common::{SyscallStats, loss};
use prometheus::{
    Encoder as _, TextEncoder,
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{config::MetricsConfig, features::Feature, identity::Registry, model::Model, syscalls};

/// Static facts rendered on every scrape.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub features: Vec<Feature>,
    /// (map name, capacity)
    pub map_capacity: Vec<(&'static str, u64)>,
}

/// Metrics about the agent itself that it accumulates (the rest is derived per scrape).
pub struct SelfMetrics {
    registry: prometheus::Registry,
    scrape_duration: prometheus::Histogram,
}

impl SelfMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = prometheus::Registry::new();
        let scrape_duration = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "palisade_scrape_duration_seconds",
                "Time to read the kernel maps and render /metrics.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        registry.register(Box::new(scrape_duration.clone()))?;
        Ok(Self {
            registry,
            scrape_duration,
        })
    }

    pub fn observe_scrape(&self, seconds: f64) {
        self.scrape_duration.observe(seconds);
    }
}

fn label_pairs(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f
}

fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::from_label(label_pairs(labels));
    m.set_counter(c);
    m
}

fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(label_pairs(labels));
    m.set_gauge(g);
    m
}

fn histogram(labels: &[(&str, &str)], h: &histogram::PromHistogram) -> Metric {
    let mut p = Histogram::default();
    p.set_sample_count(h.count);
    p.set_sample_sum(h.sum_seconds);
    p.set_bucket(
        h.buckets
            .iter()
            .map(|(le, c)| {
                let mut b = Bucket::default();
                b.set_upper_bound(*le);
                b.set_cumulative_count(*c);
                b
            })
            .collect(),
    );
    let mut m = Metric::from_label(label_pairs(labels));
    m.set_histogram(p);
    m
}

#[derive(Default)]
struct ContainerAgg {
    syscalls: BTreeMap<u32, SyscallStats>,
    errnos: BTreeMap<u32, BTreeMap<u32, u64>>,
}

fn add(into: &mut SyscallStats, s: &SyscallStats) {
    into.calls += s.calls;
    into.time_ns += s.time_ns;
    for (a, b) in into.hist.iter_mut().zip(s.hist.iter()) {
        *a += b;
    }
}

/// Sums the model by container name (cgroups the registry does not know are `other`).
fn aggregate(model: &Model, registry: &Registry) -> BTreeMap<String, ContainerAgg> {
    let mut out: BTreeMap<String, ContainerAgg> = BTreeMap::new();
    for (id, stats) in &model.by_cgroup {
        let name = registry.get(*id).map_or("other", |i| i.name.as_str());
        let agg = out.entry(name.to_owned()).or_default();
        for (nr, s) in &stats.syscalls {
            add(agg.syscalls.entry(*nr).or_insert(SyscallStats::ZERO), s);
        }
        for ((nr, errno), n) in &stats.errnos {
            *agg.errnos
                .entry(*nr)
                .or_default()
                .entry(*errno)
                .or_default() += n;
        }
    }
    out
}

/// The per-container families and the number of series the cap left out.
fn container_families(
    model: &Model,
    registry: &Registry,
    cfg: &MetricsConfig,
) -> (Vec<MetricFamily>, usize) {
    let mut calls = family(
        "palisade_syscalls_total",
        "Completed syscalls per container and syscall (exit and exit_group counted at entry).",
        MetricType::COUNTER,
    );
    let mut errors = family(
        "palisade_syscall_errors_total",
        "Syscalls that returned an error, per container, syscall and errno.",
        MetricType::COUNTER,
    );
    let mut duration = family(
        "palisade_syscall_duration_seconds",
        "Syscall latency from sys_enter to sys_exit, per container and syscall (log2 buckets).",
        MetricType::HISTOGRAM,
    );
    let step = cfg.latency_bucket_step.0;
    let hist_series = if cfg.syscall_latency {
        histogram::series_per_histogram(step)
    } else {
        0
    };
    let mut budget = cfg.max_series;
    let mut dropped = 0usize;
    for (container, agg) in aggregate(model, registry) {
        for (nr, stats) in &agg.syscalls {
            let errnos = agg.errnos.get(nr);
            let want = 1 + hist_series + errnos.map_or(0, BTreeMap::len);
            if want > budget {
                dropped += want;
                continue;
            }
            budget -= want;
            let name = syscalls::name(*nr);
            let labels = [
                ("container", container.as_str()),
                ("syscall", name.as_ref()),
            ];
            calls
                .mut_metric()
                .push(counter(&labels, stats.calls as f64));
            if cfg.syscall_latency {
                let h = histogram::convert(&stats.hist, stats.time_ns, step);
                duration.mut_metric().push(histogram(&labels, &h));
            }
            for (errno, n) in errnos.into_iter().flatten() {
                let e = syscalls::errno_name(*errno);
                errors.mut_metric().push(counter(
                    &[
                        ("container", container.as_str()),
                        ("syscall", name.as_ref()),
                        ("errno", e.as_ref()),
                    ],
                    *n as f64,
                ));
            }
        }
        // errnos of syscalls without a stats entry (its map was full): still worth showing
        for (nr, per_errno) in &agg.errnos {
            if agg.syscalls.contains_key(nr) {
                continue;
            }
            let name = syscalls::name(*nr);
            for (errno, n) in per_errno {
                if budget == 0 {
                    dropped += 1;
                    continue;
                }
                budget -= 1;
                let e = syscalls::errno_name(*errno);
                errors.mut_metric().push(counter(
                    &[
                        ("container", container.as_str()),
                        ("syscall", name.as_ref()),
                        ("errno", e.as_ref()),
                    ],
                    *n as f64,
                ));
            }
        }
    }
    let mut fams = vec![calls, errors];
    if cfg.syscall_latency {
        fams.push(duration);
    }
    (fams, dropped)
}

fn self_families(
    model: &Model,
    registry: &Registry,
    info: &Info,
    series_dropped: usize,
) -> Vec<MetricFamily> {
    let mut out = Vec::new();

    let mut f = family(
        "palisade_build_info",
        "Palisade build: version and git commit (value is always 1).",
        MetricType::GAUGE,
    );
    f.mut_metric().push(gauge(
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "commit",
                option_env!("PALISADE_GIT_COMMIT").unwrap_or("unknown"),
            ),
        ],
        1.0,
    ));
    out.push(f);

    let mut f = family(
        "palisade_kernel_feature",
        "Kernel features found by trying them at start (1 available, 0 not); see `palisade doctor`.",
        MetricType::GAUGE,
    );
    for feat in &info.features {
        f.mut_metric().push(gauge(
            &[("feature", feat.name)],
            if feat.available { 1.0 } else { 0.0 },
        ));
    }
    out.push(f);

    let mut f = family(
        "palisade_kernel_lost_total",
        "Data the kernel side could not record, by reason (map full, ring buffer full, untimed syscall).",
        MetricType::COUNTER,
    );
    for (i, reason) in loss::REASONS.iter().enumerate() {
        let v = model.losses.get(i).copied().unwrap_or(0);
        f.mut_metric()
            .push(counter(&[("reason", reason)], v as f64));
    }
    out.push(f);

    let mut entries = family(
        "palisade_bpf_map_entries",
        "Entries in Palisade's kernel maps at the last read.",
        MetricType::GAUGE,
    );
    let mut capacity = family(
        "palisade_bpf_map_capacity",
        "Capacity of Palisade's kernel maps (entries).",
        MetricType::GAUGE,
    );
    for (map, cap) in &info.map_capacity {
        let n = match *map {
            palisade_common::names::MAP_SYSCALL_STATS => model.stats_entries,
            palisade_common::names::MAP_SYSCALL_ERRNOS => model.errno_entries,
            _ => continue,
        };
        entries.mut_metric().push(gauge(&[("map", map)], n as f64));
        capacity
            .mut_metric()
            .push(gauge(&[("map", map)], *cap as f64));
    }
    out.push(entries);
    out.push(capacity);

    let (live, removed) = registry.counts();
    let mut f = family(
        "palisade_cgroups",
        "Cgroups in the identity registry: live, or removed and kept for the grace period.",
        MetricType::GAUGE,
    );
    f.mut_metric()
        .push(gauge(&[("state", "live")], live as f64));
    f.mut_metric()
        .push(gauge(&[("state", "removed")], removed as f64));
    out.push(f);

    let mut f = family(
        "palisade_identity_dropped_total",
        "Cgroups not tracked because the identity registry was full (identity.max_cgroups).",
        MetricType::COUNTER,
    );
    f.mut_metric()
        .push(counter(&[], registry.dropped_total as f64));
    out.push(f);

    let mut f = family(
        "palisade_series_dropped",
        "Per-container series left out of this scrape by the cardinality cap (metrics.max_series).",
        MetricType::GAUGE,
    );
    f.mut_metric().push(gauge(&[], series_dropped as f64));
    out.push(f);
    out
}

/// Renders the whole `/metrics` page. Returns the text and the number of dropped series.
pub fn render(
    model: &Model,
    registry: &Registry,
    info: &Info,
    cfg: &MetricsConfig,
    own: &SelfMetrics,
) -> Result<(String, usize), prometheus::Error> {
    let (mut fams, dropped) = container_families(model, registry, cfg);
    fams.extend(self_families(model, registry, info, dropped));
    fams.extend(own.registry.gather());
    // The text encoder rejects empty families (e.g. no errors yet).
    fams.retain(|f| !f.get_metric().is_empty());
    let mut buf = Vec::with_capacity(64 * 1024);
    TextEncoder::new().encode(&fams, &mut buf)?;
    Ok((String::from_utf8_lossy(&buf).into_owned(), dropped))
}

#[cfg(test)]
mod tests {
    use palisade_common::{HIST_BUCKETS, latency_bucket};

    use super::*;
    use crate::{config::Config, model::CgroupStats};

    fn stats(latencies: &[u64]) -> SyscallStats {
        let mut s = SyscallStats::ZERO;
        for &ns in latencies {
            s.calls += 1;
            s.time_ns += ns;
            s.hist[latency_bucket(ns)] += 1;
        }
        s
    }

    fn fixture() -> (Model, Registry) {
        let mut registry = Registry::new(100);
        registry.insert(10, "/system.slice/nginx.service");
        registry.insert(11, "/palisade/web-0");
        let mut model = Model::default();
        let mut a = CgroupStats::default();
        a.syscalls.insert(110, stats(&[100, 200, 300]));
        a.syscalls.insert(3, stats(&[50, 60]));
        a.errnos.insert((3, 9), 2);
        model.by_cgroup.insert(10, a);
        let mut b = CgroupStats::default();
        b.syscalls.insert(0, stats(&[1000]));
        model.by_cgroup.insert(11, b);
        (model, registry)
    }

    fn render_with(cfg: &MetricsConfig) -> (String, usize) {
        let (model, registry) = fixture();
        let own = SelfMetrics::new().unwrap();
        let info = Info {
            features: vec![Feature {
                name: "raw_tracepoint",
                available: true,
                detail: String::new(),
            }],
            map_capacity: vec![(palisade_common::names::MAP_SYSCALL_STATS, 10240)],
        };
        render(&model, &registry, &info, cfg, &own).unwrap()
    }

    #[test]
    fn renders_counters_errors_and_histograms() {
        let cfg = Config::default().metrics;
        let (text, dropped) = render_with(&cfg);
        assert_eq!(dropped, 0);
        assert!(
            text.contains("# TYPE palisade_syscalls_total counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "palisade_syscalls_total{container=\"nginx.service\",syscall=\"getppid\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("palisade_syscalls_total{container=\"web-0\",syscall=\"read\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "palisade_syscall_errors_total{container=\"nginx.service\",syscall=\"close\",errno=\"EBADF\"} 2\n"
        ), "{text}");
        assert!(text.contains(
            "palisade_syscall_duration_seconds_bucket{container=\"nginx.service\",syscall=\"getppid\",le=\"0.000000128\"} 1\n"
        ), "{text}");
        assert!(text.contains(
            "palisade_syscall_duration_seconds_bucket{container=\"nginx.service\",syscall=\"getppid\",le=\"0.000000512\"} 3\n"
        ), "{text}");
        assert!(text.contains(
            "palisade_syscall_duration_seconds_count{container=\"nginx.service\",syscall=\"getppid\"} 3\n"
        ), "{text}");
        assert!(text.contains(
            "palisade_syscall_duration_seconds_sum{container=\"nginx.service\",syscall=\"getppid\"} 0.0000006\n"
        ), "{text}");
        assert!(text.contains("palisade_kernel_feature{feature=\"raw_tracepoint\"} 1\n"));
        assert!(text.contains("palisade_kernel_lost_total{reason=\"syscall_stats_map_full\"} 0\n"));
        assert!(text.contains("palisade_bpf_map_capacity{map=\"SYSCALL_STATS\"} 10240\n"));
        assert!(text.contains("palisade_build_info{version="));
        assert!(text.contains("palisade_series_dropped 0\n"));
        assert!(text.contains("palisade_cgroups{state=\"live\"} 2\n"));
        // HELP on every family
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP for {name}"
            );
        }
    }

    #[test]
    fn cardinality_cap_drops_whole_metrics() {
        let mut cfg = Config::default().metrics;
        let per = 1 + histogram::series_per_histogram(cfg.latency_bucket_step.0);
        // room for exactly one syscall group without errnos
        cfg.max_series = per;
        let (text, dropped) = render_with(&cfg);
        // 3 groups: nginx close (+1 errno), nginx getppid, web-0 read; only the first fits? close
        // needs per+1, so getppid (per) is the first that fits.
        assert_eq!(dropped, (per + 1) + per);
        assert_eq!(text.matches("palisade_syscalls_total{").count(), 1);
        assert!(text.contains("syscall=\"getppid\"} 3"));
        assert!(text.contains(&format!("palisade_series_dropped {}\n", dropped)));
        // a dropped histogram never leaves partial buckets behind
        assert_eq!(
            text.matches("palisade_syscall_duration_seconds_count{")
                .count(),
            1
        );
    }

    #[test]
    fn same_name_cgroups_are_summed() {
        let (mut model, mut registry) = fixture();
        registry.insert(12, "/other.slice/nginx.service");
        let mut c = CgroupStats::default();
        c.syscalls.insert(110, stats(&[100]));
        model.by_cgroup.insert(12, c);
        let own = SelfMetrics::new().unwrap();
        let (text, _) = render(
            &model,
            &registry,
            &Info::default(),
            &Config::default().metrics,
            &own,
        )
        .unwrap();
        assert!(
            text.contains(
                "palisade_syscalls_total{container=\"nginx.service\",syscall=\"getppid\"} 4\n"
            ),
            "{text}"
        );
        assert_eq!(
            text.matches(
                "palisade_syscalls_total{container=\"nginx.service\",syscall=\"getppid\"}"
            )
            .count(),
            1
        );
        let _ = HIST_BUCKETS;
    }

    #[test]
    fn latency_can_be_turned_off() {
        let mut cfg = Config::default().metrics;
        cfg.syscall_latency = false;
        let (text, _) = render_with(&cfg);
        assert!(!text.contains("palisade_syscall_duration_seconds"));
        assert!(text.contains("palisade_syscalls_total"));
    }
}
