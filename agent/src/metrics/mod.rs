//! `/metrics` rendering: per-container families from the model (with a cardinality cap) plus the
//! agent's self-metrics, written straight into the Prometheus text format ([`expo`]).
//!
//! Label sets are fixed and documented in the README: `container` (the identity registry's
//! name), `syscall` (x86_64 name, or the number where unknown), `errno` (symbolic, e.g. EBADF).
//! Cgroups that share a name (e.g. a container and a sub-cgroup the rules could not tell apart)
//! are summed, so every label set appears once.
mod containers;
pub mod expo;
pub mod histogram;
mod network;
mod own;
mod page;
mod policy;
mod syscalls;

use expo::{Families, Kind, NONE, Out};
pub use page::{Page, accepts_gzip};
use prometheus::{
    core::Collector as _,
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};
pub(crate) use syscalls::detailed as detailed_syscalls;

use crate::{
    config::MetricsConfig,
    events::Hub,
    features::Feature,
    identity::{Identity, Registry},
    model::Model,
};

/// The families of the latest collection, for readers outside the state owner (the OTLP metrics
/// export): replaced whole after each collection, never waited on by the owner.
pub type Published = tokio::sync::watch::Sender<std::sync::Arc<Vec<MetricFamily>>>;

/// Static facts rendered on every scrape.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub features: Vec<Feature>,
    /// (map name, capacity)
    pub map_capacity: Vec<(&'static str, u64)>,
    /// This node's name (`node` of `palisade_build_info`).
    pub node: String,
}

/// Metrics about the agent itself that it accumulates (the rest is derived per scrape).
pub struct SelfMetrics {
    scrape_duration: prometheus::Histogram,
}

impl SelfMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let scrape_duration = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "palisade_scrape_duration_seconds",
                "Time to read the kernel maps and render /metrics.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
        )?;
        Ok(Self { scrape_duration })
    }

    pub fn observe_scrape(&self, seconds: f64) {
        self.scrape_duration.observe(seconds);
    }

    fn families(&self, out: Out) -> Vec<expo::Family> {
        self.scrape_duration
            .collect()
            .iter()
            .map(|f| {
                let mut fam = expo::Family::new(
                    out,
                    "palisade_scrape_duration_seconds",
                    "Time to read the kernel maps and render /metrics.",
                    Kind::Histogram,
                );
                for m in f.get_metric() {
                    let h = m.get_histogram();
                    fam.prom_histogram(
                        &NONE,
                        &histogram::PromHistogram {
                            buckets: h
                                .get_bucket()
                                .iter()
                                .map(|b| (b.upper_bound(), b.cumulative_count()))
                                .collect(),
                            count: h.get_sample_count(),
                            sum_seconds: h.get_sample_sum(),
                        },
                    );
                }
                fam
            })
            .collect()
    }
}

pub(crate) fn label_pairs(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
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

pub(crate) fn family(name: &str, help: &str, kind: MetricType) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f
}

pub(crate) fn counter(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::from_label(label_pairs(labels));
    m.set_counter(c);
    m
}

pub(crate) fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(label_pairs(labels));
    m.set_gauge(g);
    m
}

pub(crate) fn histogram(labels: &[(&str, &str)], h: &histogram::PromHistogram) -> Metric {
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

/// Everything one render reads.
pub struct Inputs<'a> {
    pub model: &'a Model,
    pub registry: &'a Registry,
    pub info: &'a Info,
    pub cfg: &'a MetricsConfig,
    pub hub: Option<&'a Hub>,
    /// Process-table entries dropped to stay within bounds, and entries now.
    pub procs_evicted: u64,
    pub procs_live: usize,
    /// Flow-level state (RTT histograms, per-peer totals), when network telemetry runs.
    pub net: Option<&'a crate::net::NetState>,
    pub network: Option<&'a crate::config::NetworkConfig>,
    /// Policy counters and state, when the agent enforces policies.
    pub policy: Option<&'a crate::policy::Snapshot>,
}

/// The cardinality cap shared by all per-container families.
pub struct Budget {
    left: usize,
    pub dropped: usize,
}

impl Budget {
    fn new(max: usize) -> Self {
        Self {
            left: max,
            dropped: 0,
        }
    }

    /// Takes `n` series if they fit; otherwise counts them as dropped.
    pub fn take(&mut self, n: usize) -> bool {
        if n <= self.left {
            self.left -= n;
            true
        } else {
            self.dropped += n;
            false
        }
    }
}

/// Who per-container palisade_* series belong to: the container name plus, for Kubernetes,
/// namespace and pod (left out when empty). Cgroups with the same key are summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ContainerKey {
    pub name: String,
    pub namespace: String,
    pub pod: String,
}

impl ContainerKey {
    /// Unknown cgroups (the registry was full) are `other`.
    pub fn of(identity: Option<&Identity>) -> Self {
        match identity {
            Some(i) => Self {
                name: i.name.clone(),
                namespace: i.namespace.clone(),
                pod: i.pod.clone(),
            },
            None => Self {
                name: "other".into(),
                ..Self::default()
            },
        }
    }

    /// Its labels, escaped once for all its samples.
    pub fn label_set(&self) -> expo::LabelSet {
        let mut v = vec![("container", self.name.as_str())];
        if !self.namespace.is_empty() {
            v.push(("namespace", self.namespace.as_str()));
        }
        if !self.pod.is_empty() {
            v.push(("pod", self.pod.as_str()));
        }
        expo::LabelSet::new(&v)
    }
}

/// One render: the text page and/or the `prometheus::proto` families (as [`Out`] asked), and
/// the number of per-container series the cardinality cap dropped.
pub struct Rendered {
    /// The text page in chunks (see [`expo::Text`]).
    pub text: Vec<bytes::Bytes>,
    pub families: Vec<MetricFamily>,
    pub dropped: usize,
}

/// Every family of the `/metrics` page (empty ones left out): as text for the page, as
/// `prometheus::proto` families for the OTLP metrics export.
pub fn render(inp: &Inputs<'_>, own: &SelfMetrics, out: Out) -> Rendered {
    let mut budget = Budget::new(inp.cfg.max_series);
    // Cheap, high-value families take the budget first; latency histograms (18 series each)
    // are the first to go when the cap bites.
    let mut fams = Families::default();
    fams.extend(containers::families(inp, out, &mut budget));
    fams.extend(network::families(inp, out, &mut budget));
    if let Some(p) = inp.policy {
        fams.extend(policy::families(p, out, &mut budget));
    }
    fams.extend(syscalls::families(inp, out, &mut budget));
    fams.extend(own::families(inp, out, budget.dropped));
    fams.extend(own.families(out));
    let text = if out.text { fams.text() } else { Vec::new() };
    Rendered {
        text,
        families: if out.proto {
            fams.into_proto()
        } else {
            Vec::new()
        },
        dropped: budget.dropped,
    }
}

/// The text page and the number of dropped series.
pub fn render_text(inp: &Inputs<'_>, own: &SelfMetrics) -> (String, usize) {
    let r = render(
        inp,
        own,
        Out {
            text: true,
            proto: false,
        },
    );
    let text = r.text.iter().map(|c| String::from_utf8_lossy(c)).collect();
    (text, r.dropped)
}

#[cfg(test)]
mod tests {
    use palisade_common::{HIST_BUCKETS, LATENCY_OTHER, SyscallStats, latency_bucket};

    use super::*;
    use crate::{config::Config, model::CgroupStats};

    fn inputs<'a>(
        model: &'a Model,
        registry: &'a Registry,
        info: &'a Info,
        cfg: &'a MetricsConfig,
    ) -> Inputs<'a> {
        Inputs {
            model,
            registry,
            info,
            cfg,
            hub: None,
            procs_evicted: 0,
            procs_live: 0,
            net: None,
            network: None,
            policy: None,
        }
    }

    fn stats(latencies: &[u64]) -> SyscallStats {
        let mut s = SyscallStats::ZERO;
        for &ns in latencies {
            s.time_ns += ns;
            s.hist[latency_bucket(ns)] += 1;
        }
        s
    }

    /// Calls of `nr`, each timed, under the latency key `key` (the kernel's: `nr` for a
    /// syscall with a histogram of its own, `LATENCY_OTHER` for the rest).
    fn add(c: &mut CgroupStats, nr: u32, key: u32, latencies: &[u64]) {
        *c.syscalls.entry(nr).or_default() += latencies.len() as u64;
        c.latency
            .entry(key)
            .or_insert(SyscallStats::ZERO)
            .merge(&stats(latencies));
    }

    fn fixture() -> (Model, Registry) {
        let mut registry = Registry::new(100, Default::default());
        registry.insert(10, "/system.slice/nginx.service");
        registry.insert(11, "/palisade/web-0");
        let mut model = Model::default();
        let mut a = CgroupStats::default();
        add(&mut a, 110, 110, &[100, 200, 300]);
        add(&mut a, 3, 3, &[50, 60]);
        a.errnos.insert((3, 9), 2);
        model.by_cgroup.insert(10, a);
        let mut b = CgroupStats::default();
        add(&mut b, 0, 0, &[1000]);
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
            node: "worker-1".into(),
        };
        render_text(&inputs(&model, &registry, &info, cfg), &own)
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
        // one histogram per container by default: getppid (100, 200, 300 ns) and close (50, 60)
        let other = r#"container="nginx.service",syscall="other""#;
        for want in [
            format!("palisade_syscall_duration_seconds_bucket{{{other},le=\"0.000000128\"}} 3\n"),
            format!("palisade_syscall_duration_seconds_bucket{{{other},le=\"0.000000512\"}} 5\n"),
            format!("palisade_syscall_duration_seconds_bucket{{{other},le=\"+Inf\"}} 5\n"),
            format!("palisade_syscall_duration_seconds_count{{{other}}} 5\n"),
            format!("palisade_syscall_duration_seconds_sum{{{other}}} 0.00000071\n"),
        ] {
            assert!(text.contains(&want), "missing {want}\n{text}");
        }
        assert!(!text.contains(r#"syscall="getppid",le="#), "{text}");
        assert!(text.contains("palisade_kernel_feature{feature=\"raw_tracepoint\"} 1\n"));
        assert!(text.contains("palisade_kernel_lost_total{reason=\"syscall_stats_map_full\"} 0\n"));
        assert!(text.contains("palisade_bpf_map_capacity{map=\"SYSCALL_STATS\"} 10240\n"));
        assert!(text.contains("palisade_build_info{version="));
        // the commit is the checkout's (build.rs asks git), "unknown" only without one
        let head = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        let want = match &head {
            Some(h) => &h[..12],
            None => "unknown",
        };
        assert!(
            text.contains(&format!("commit=\"{want}\"")),
            "build_info commit is not {want}: {}",
            text.lines()
                .find(|l| l.starts_with("palisade_build_info{"))
                .unwrap_or("")
        );
        assert!(text.contains(",node=\"worker-1\"} 1\n"), "{text}");
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
        let per = histogram::series_per_histogram(cfg.latency_bucket_step.0);
        // nginx: close (+1 errno), getppid and its histogram fit; web-0's read and histogram not
        cfg.max_series = per + 3;
        let (text, dropped) = render_with(&cfg);
        assert_eq!(dropped, 1 + per);
        assert_eq!(text.matches("palisade_syscalls_total{").count(), 2);
        assert!(!text.contains("container=\"web-0\""), "{text}");
        assert!(text.contains(&format!("palisade_series_dropped {dropped}\n")));
        // a dropped histogram never leaves partial buckets behind
        assert_eq!(
            text.matches("palisade_syscall_duration_seconds_bucket{")
                .count(),
            per - 2
        );
    }

    #[test]
    fn the_kernel_is_told_the_numbers_of_the_detailed_syscalls() {
        let p = |g: &str| crate::config::Pattern::new(g).unwrap();
        assert_eq!(detailed_syscalls(&[p("read")]), vec![0]);
        let getp = detailed_syscalls(&[p("getp*")]);
        assert!(getp.contains(&110) && getp.contains(&39), "{getp:?}");
        assert!(!getp.contains(&0), "{getp:?}");
        assert!(detailed_syscalls(&[]).is_empty());
    }

    #[test]
    fn the_kernels_per_container_latency_is_the_other_histogram() {
        // what the kernel keeps by default: one latency key per cgroup
        let mut registry = Registry::new(100, Default::default());
        registry.insert(20, "/palisade/api-0");
        let mut c = CgroupStats::default();
        add(&mut c, 0, LATENCY_OTHER, &[100, 200]);
        add(&mut c, 1, LATENCY_OTHER, &[5_000]);
        // detailed: its own key
        add(&mut c, 39, 39, &[300, 400, 500]);
        let mut model = Model::default();
        model.by_cgroup.insert(20, c);
        let mut cfg = Config::default().metrics;
        cfg.syscall_latency_detail = vec![crate::config::Pattern::new("getpid").unwrap()];
        let own = SelfMetrics::new().unwrap();
        let (text, _) = render_text(&inputs(&model, &registry, &Info::default(), &cfg), &own);
        let n = r#"container="api-0""#;
        for want in [
            format!("palisade_syscall_duration_seconds_count{{{n},syscall=\"other\"}} 3\n"),
            format!("palisade_syscall_duration_seconds_count{{{n},syscall=\"getpid\"}} 3\n"),
            format!("palisade_syscalls_total{{{n},syscall=\"read\"}} 2\n"),
            format!("palisade_syscalls_total{{{n},syscall=\"write\"}} 1\n"),
        ] {
            assert!(text.contains(&want), "missing {want}\n{text}");
        }
        // the key is never a syscall of its own
        assert!(!text.contains(&LATENCY_OTHER.to_string()), "{text}");
    }

    #[test]
    fn selected_syscalls_get_histograms_of_their_own() {
        let mut cfg = Config::default().metrics;
        cfg.syscall_latency_detail = vec![crate::config::Pattern::new("getp*").unwrap()];
        let (text, _) = render_with(&cfg);
        let n = r#"container="nginx.service""#;
        for want in [
            format!("palisade_syscall_duration_seconds_count{{{n},syscall=\"getppid\"}} 3\n"),
            // close alone is left in other; nothing counted twice
            format!("palisade_syscall_duration_seconds_count{{{n},syscall=\"other\"}} 2\n"),
            // web-0 made no getppid: its read stays in other
            "palisade_syscall_duration_seconds_count{container=\"web-0\",syscall=\"other\"} 1\n"
                .to_owned(),
        ] {
            assert!(text.contains(&want), "missing {want}\n{text}");
        }
        // every syscall selected: no empty other histogram
        cfg.syscall_latency_detail = vec![crate::config::Pattern::new("*").unwrap()];
        let (text, _) = render_with(&cfg);
        assert!(!text.contains(r#"syscall="other",le="#), "{text}");
        assert!(text.contains(
            r#"palisade_syscall_duration_seconds_count{container="web-0",syscall="read"} 1"#
        ));
    }

    #[test]
    fn text_is_what_the_prometheus_encoder_writes_of_the_proto_families() {
        use prometheus::Encoder as _;
        let (mut model, mut registry) = fixture();
        registry.insert(13, "/weird\\\"name\nx");
        let mut c = CgroupStats::default();
        add(&mut c, 110, LATENCY_OTHER, &[100, 9_000_000]);
        c.resources = Some(crate::resources::Resources {
            cpu_usage_seconds: Some(0.25),
            memory_usage_bytes: Some(1 << 20),
            ..Default::default()
        });
        c.processes = Some(palisade_common::ProcessCounts::default());
        model.by_cgroup.insert(13, c);
        let own = SelfMetrics::new().unwrap();
        own.observe_scrape(0.003);
        let mut cfg = Config::default().metrics;
        cfg.syscall_latency_detail = vec![crate::config::Pattern::new("read").unwrap()];
        let info = Info::default();
        let r = render(
            &inputs(&model, &registry, &info, &cfg),
            &own,
            Out {
                text: true,
                proto: true,
            },
        );
        let mut buf = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&r.families, &mut buf)
            .unwrap();
        let text: String = r.text.iter().map(|c| String::from_utf8_lossy(c)).collect();
        assert_eq!(text, String::from_utf8(buf).unwrap());
        assert!(text.contains(r#"container="/weird\\\"name\nx""#), "{text}");
    }
    #[test]
    fn same_name_cgroups_are_summed() {
        let (mut model, mut registry) = fixture();
        registry.insert(12, "/other.slice/nginx.service");
        let mut c = CgroupStats::default();
        add(&mut c, 110, LATENCY_OTHER, &[100]);
        model.by_cgroup.insert(12, c);
        let own = SelfMetrics::new().unwrap();
        let cfg = Config::default().metrics;
        let (text, _) = render_text(&inputs(&model, &registry, &Info::default(), &cfg), &own);
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
    fn process_oom_and_cadvisor_families() {
        let (mut model, mut registry) = fixture();
        registry.apply_names(
            10,
            Some(crate::identity::names::Resolved {
                name: Some("web".into()),
                image: Some("nginx:1".into()),
                namespace: Some("shop".into()),
                pod: Some("cart".into()),
                runtime_name: Some("k8s_web_cart".into()),
            }),
            std::time::Instant::now(),
            std::time::Duration::from_secs(1),
        );
        let e = model.by_cgroup.get_mut(&10).unwrap();
        e.processes = Some(palisade_common::ProcessCounts {
            forks: 4,
            execs: 3,
            exits_ok: 2,
            exits_error: 1,
            exits_signal: 0,
            exits_unknown: 0,
            exec_events_lost: 2,
            exit_events_lost: 0,
        });
        e.oom_kills = 1;
        e.net = Some(palisade_common::net::NetTotals {
            tx_bytes: 100,
            rx_bytes: 200,
            tx_packets: 3,
            rx_packets: 4,
            ..Default::default()
        });
        e.resources = Some(crate::resources::Resources {
            cpu_shares: Some(1024),
            memory_swap_bytes: Some(0),
            cpu_usage_seconds: Some(1.5),
            memory_limit_bytes: Some(None),
            cpu_quota_us: Some(None),
            oom_kills: Some(0),
            ..Default::default()
        });
        let own = SelfMetrics::new().unwrap();
        let cfg = Config::default().metrics;
        let (text, _) = render_text(&inputs(&model, &registry, &Info::default(), &cfg), &own);
        let l = r#"container="web",namespace="shop",pod="cart""#;
        let c = r#"container="web",id="/system.slice/nginx.service",image="nginx:1",name="k8s_web_cart",namespace="shop",pod="cart""#;
        for want in [
            format!("palisade_process_execs_total{{{l}}} 3\n"),
            format!("palisade_process_forks_total{{{l}}} 4\n"),
            format!("palisade_process_exits_total{{{l},reason=\"failed\"}} 1\n"),
            format!("palisade_oom_kills_total{{{l}}} 1\n"),
            format!("palisade_events_kernel_lost_total{{{l},type=\"exec\"}} 2\n"),
            format!("palisade_events_kernel_lost_total{{{l},type=\"exit\"}} 0\n"),
            format!("palisade_syscalls_total{{{l},syscall=\"getppid\"}} 3\n"),
            format!("container_cpu_usage_seconds_total{{{c}}} 1.5\n"),
            // unlimited memory is 0, an unlimited quota is absent, OOMs seen by the agent count
            format!("container_spec_memory_limit_bytes{{{c}}} 0\n"),
            format!("container_oom_events_total{{{c}}} 1\n"),
            format!("container_spec_cpu_shares{{{c}}} 1024\n"),
            format!("container_memory_swap{{{c}}} 0\n"),
            // the socket counters of cgroup_skb, as cAdvisor's interface counters
            format!("container_network_transmit_bytes_total{{{c}}} 100\n"),
            format!("container_network_receive_bytes_total{{{c}}} 200\n"),
            format!("container_network_transmit_packets_total{{{c}}} 3\n"),
            format!("container_network_receive_packets_total{{{c}}} 4\n"),
        ] {
            assert!(text.contains(&want), "missing {want}\n{text}");
        }
        assert!(!text.contains("container_spec_cpu_quota{"));
        assert!(!text.contains("container_memory_mapped_file{"));
        assert!(
            !text.contains("container_memory_usage_bytes{"),
            "absent values are left out"
        );
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
