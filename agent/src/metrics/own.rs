//! The agent's own metrics: build, kernel features, losses, table fill, registry, events.
use palisade_common::loss;

use super::{
    Inputs,
    expo::{Family, Kind, NONE, Out},
};

pub(crate) fn families(inp: &Inputs<'_>, o: Out, series_dropped: usize) -> Vec<Family> {
    let (model, registry, info) = (inp.model, inp.registry, inp.info);
    let mut out = Vec::new();

    let mut f = Family::new(
        o,
        "palisade_build_info",
        "Palisade build: version, git commit and the node the agent runs on (value is always 1).",
        Kind::Gauge,
    );
    f.sample(
        &NONE,
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            (
                "commit",
                option_env!("PALISADE_GIT_COMMIT").unwrap_or("unknown"),
            ),
            ("node", info.node.as_str()),
        ],
        1u64,
    );
    out.push(f);

    let mut f = Family::new(
        o,
        "palisade_kernel_feature",
        "Kernel features found by trying them at start (1 available, 0 not); see `palisade doctor`.",
        Kind::Gauge,
    );
    for feat in &info.features {
        f.sample(&NONE, &[("feature", feat.name)], u64::from(feat.available));
    }
    out.push(f);

    let mut f = Family::new(
        o,
        "palisade_kernel_lost_total",
        "Data the kernel side could not record, by reason (map full, ring buffer full, untimed syscall).",
        Kind::Counter,
    );
    for (i, reason) in loss::REASONS.iter().enumerate() {
        let v = model.losses.get(i).copied().unwrap_or(0);
        f.sample(&NONE, &[("reason", reason)], v);
    }
    out.push(f);

    let mut f = Family::new(
        o,
        "palisade_kernel_queue_waits_total",
        "Times the kernel actor found the queue to the state task full (events.kernel_queue) and waited; meanwhile events wait in the ring buffer, which counts what it cannot hold (ringbuf_full).",
        Kind::Counter,
    );
    f.sample(&NONE, &[], model.queue_waits);
    out.push(f);

    let mut entries = Family::new(
        o,
        "palisade_bpf_map_entries",
        "Entries in Palisade's kernel maps at the last read.",
        Kind::Gauge,
    );
    let mut capacity = Family::new(
        o,
        "palisade_bpf_map_capacity",
        "Capacity of Palisade's kernel maps (entries).",
        Kind::Gauge,
    );
    for (map, cap) in &info.map_capacity {
        let n = match *map {
            palisade_common::names::MAP_SYSCALL_COUNTS => model.count_entries,
            palisade_common::names::MAP_SYSCALL_STATS => model.stats_entries,
            palisade_common::names::MAP_SYSCALL_ERRNOS => model.errno_entries,
            _ => continue,
        };
        entries.sample(&NONE, &[("map", map)], n as u64);
        capacity.sample(&NONE, &[("map", map)], *cap);
    }
    out.push(entries);
    out.push(capacity);

    let (live, removed) = registry.counts();
    let mut f = Family::new(
        o,
        "palisade_cgroups",
        "Cgroups in the identity registry: live, or removed and kept for the grace period.",
        Kind::Gauge,
    );
    f.sample(&NONE, &[("state", "live")], live as u64);
    f.sample(&NONE, &[("state", "removed")], removed as u64);
    out.push(f);

    let mut f = Family::new(
        o,
        "palisade_identity_dropped_total",
        "Cgroups not tracked because the identity registry was full (identity.max_cgroups).",
        Kind::Counter,
    );
    f.sample(&NONE, &[], registry.dropped_total);
    out.push(f);

    let mut f = Family::new(
        o,
        "palisade_series_dropped",
        "Per-container series left out of this scrape by the cardinality cap (metrics.max_series).",
        Kind::Gauge,
    );
    f.sample(&NONE, &[], series_dropped as u64);
    out.push(f);

    let mut f = Family::new(
        o,
        "palisade_containers",
        "Live cgroups by runtime (docker, podman, containerd, cri-o, cri, kubernetes, palisade, systemd, host, cgroup).",
        Kind::Gauge,
    );
    for (runtime, n) in registry.live_by_runtime() {
        f.sample(&NONE, &[("runtime", runtime)], n as u64);
    }
    out.push(f);

    let mut f = Family::new(
        o,
        "palisade_identity_unresolved_total",
        "Container cgroups whose name was not found in the runtime's files within identity.name_resolution_window.",
        Kind::Counter,
    );
    f.sample(&NONE, &[], registry.unresolved_total);
    out.push(f);

    let mut f = Family::new(
        o,
        "palisade_process_table_evicted_total",
        "Processes dropped from the process table to stay within processes.max_per_container/max_total.",
        Kind::Counter,
    );
    f.sample(&NONE, &[], inp.procs_evicted);
    out.push(f);
    let mut f = Family::new(
        o,
        "palisade_process_table_entries",
        "Live processes in the process table.",
        Kind::Gauge,
    );
    f.sample(&NONE, &[], inp.procs_live as u64);
    out.push(f);

    if let Some(hub) = inp.hub {
        let mut f = Family::new(
            o,
            "palisade_events_total",
            "Events published, by type.",
            Kind::Counter,
        );
        for (t, n) in hub.published() {
            f.sample(&NONE, &[("type", t.as_str())], n);
        }
        out.push(f);
        let mut f = Family::new(
            o,
            "palisade_events_dropped_total",
            "Events a consumer lost (sink: log, subscriber, otlp): it fell behind the hub's queue, or its write, queue or export failed.",
            Kind::Counter,
        );
        for (sink, n) in hub.dropped() {
            f.sample(&NONE, &[("sink", sink)], n);
        }
        out.push(f);
        let mut f = Family::new(
            o,
            "palisade_events_delivered_total",
            "Events a consumer delivered (log: lines written; subscriber: lines sent to `palisade events` clients, summed; otlp: log records the collector accepted).",
            Kind::Counter,
        );
        for (sink, n) in hub.delivered() {
            f.sample(&NONE, &[("sink", sink)], n);
        }
        out.push(f);
    }
    out
}
