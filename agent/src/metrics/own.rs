//! The agent's own metrics: build, kernel features, losses, table fill, registry, events.
use palisade_common::loss;
use prometheus::proto::{MetricFamily, MetricType};

use super::{Inputs, counter, family, gauge};

pub(crate) fn families(inp: &Inputs<'_>, series_dropped: usize) -> Vec<MetricFamily> {
    let (model, registry, info) = (inp.model, inp.registry, inp.info);
    let mut out = Vec::new();

    let mut f = family(
        "palisade_build_info",
        "Palisade build: version, git commit and the node the agent runs on (value is always 1).",
        MetricType::GAUGE,
    );
    f.mut_metric().push(gauge(
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "commit",
                option_env!("PALISADE_GIT_COMMIT").unwrap_or("unknown"),
            ),
            ("node", info.node.as_str()),
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

    let mut f = family(
        "palisade_kernel_queue_waits_total",
        "Times the kernel actor found the queue to the state task full (events.kernel_queue) and waited; meanwhile events wait in the ring buffer, which counts what it cannot hold (ringbuf_full).",
        MetricType::COUNTER,
    );
    f.mut_metric().push(counter(&[], model.queue_waits as f64));
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

    let mut f = family(
        "palisade_containers",
        "Live cgroups by runtime (docker, podman, containerd, cri-o, cri, kubernetes, palisade, systemd, host, cgroup).",
        MetricType::GAUGE,
    );
    for (runtime, n) in registry.live_by_runtime() {
        f.mut_metric()
            .push(gauge(&[("runtime", runtime)], n as f64));
    }
    out.push(f);

    let mut f = family(
        "palisade_identity_unresolved_total",
        "Container cgroups whose name was not found in the runtime's files within identity.name_resolution_window.",
        MetricType::COUNTER,
    );
    f.mut_metric()
        .push(counter(&[], registry.unresolved_total as f64));
    out.push(f);

    let mut f = family(
        "palisade_process_table_evicted_total",
        "Processes dropped from the process table to stay within processes.max_per_container/max_total.",
        MetricType::COUNTER,
    );
    f.mut_metric().push(counter(&[], inp.procs_evicted as f64));
    out.push(f);
    let mut f = family(
        "palisade_process_table_entries",
        "Live processes in the process table.",
        MetricType::GAUGE,
    );
    f.mut_metric().push(gauge(&[], inp.procs_live as f64));
    out.push(f);

    if let Some(hub) = inp.hub {
        let mut f = family(
            "palisade_events_total",
            "Events published, by type.",
            MetricType::COUNTER,
        );
        for (t, n) in hub.published() {
            f.mut_metric()
                .push(counter(&[("type", t.as_str())], n as f64));
        }
        out.push(f);
        let mut f = family(
            "palisade_events_dropped_total",
            "Events a consumer lost (sink: log, subscriber, otlp): it fell behind the hub's queue, or its write, queue or export failed.",
            MetricType::COUNTER,
        );
        for (sink, n) in hub.dropped() {
            f.mut_metric().push(counter(&[("sink", sink)], n as f64));
        }
        out.push(f);
        let mut f = family(
            "palisade_events_delivered_total",
            "Events a consumer delivered (log: lines written; subscriber: lines sent to `palisade events` clients, summed; otlp: log records the collector accepted).",
            MetricType::COUNTER,
        );
        for (sink, n) in hub.delivered() {
            f.mut_metric().push(counter(&[("sink", sink)], n as f64));
        }
        out.push(f);
    }
    out
}
