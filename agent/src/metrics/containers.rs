//! Per-container process and OOM families (palisade_*) and the cAdvisor-compatible resource
//! families (container_*), which carry cAdvisor's labels: container, id (cgroup path), image,
//! name (the runtime's name for the container), namespace, pod.
use std::collections::BTreeMap;

use palisade_common::{ProcessCounts, net::NetTotals};

use super::{
    Budget, ContainerKey, Inputs,
    expo::{Family, Kind, LabelSet, Out},
};
use crate::resources::Resources;

#[derive(Default)]
struct ProcAgg {
    counts: ProcessCounts,
    has_counts: bool,
    ooms: u64,
    /// TCP connection ends the ring buffer had no room for (`None`: no TCP counters).
    flow_lost: Option<u64>,
}

fn process_families(inp: &Inputs<'_>, out: Out, budget: &mut Budget) -> Vec<Family> {
    let mut agg: BTreeMap<ContainerKey, ProcAgg> = BTreeMap::new();
    for (id, s) in &inp.model.by_cgroup {
        if s.processes.is_none() && s.oom_kills == 0 && s.tcp.is_none() {
            continue;
        }
        let a = agg
            .entry(ContainerKey::of(inp.registry.get(*id)))
            .or_default();
        if let Some(p) = &s.processes {
            a.has_counts = true;
            a.counts.merge(p);
        }
        a.ooms += s.oom_kills;
        if let Some(t) = &s.tcp {
            *a.flow_lost.get_or_insert(0) += t.events_lost;
        }
    }
    let mut forks = Family::new(
        out,
        "palisade_process_forks_total",
        "Tasks (processes and threads) created, per container.",
        Kind::Counter,
    );
    let mut execs = Family::new(
        out,
        "palisade_process_execs_total",
        "Successful execs, per container.",
        Kind::Counter,
    );
    let mut exits = Family::new(
        out,
        "palisade_process_exits_total",
        "Processes that ended, per container and reason (exited: status 0, failed: non-zero status, signaled: killed by a signal, unknown: no kernel BTF).",
        Kind::Counter,
    );
    let mut ooms = Family::new(
        out,
        "palisade_oom_kills_total",
        "Processes the OOM killer chose, per container (oom:mark_victim).",
        Kind::Counter,
    );
    let mut lost = Family::new(
        out,
        "palisade_events_kernel_lost_total",
        "Events of a container the kernel ring buffer had no room for, by type (exec, exit; flow: a connection's end, whose flow is then reported `idle` after network.tcp_idle_timeout). The events themselves are still counted in the process and TCP families.",
        Kind::Counter,
    );
    for (key, a) in &agg {
        let set = key.label_set();
        if a.has_counts && budget.take(2) {
            for (t, n) in [
                ("exec", a.counts.exec_events_lost),
                ("exit", a.counts.exit_events_lost),
            ] {
                lost.sample(&set, &[("type", t)], n);
            }
        }
        if let Some(n) = a.flow_lost
            && budget.take(1)
        {
            lost.sample(&set, &[("type", "flow")], n);
        }
        if a.has_counts && budget.take(6) {
            forks.sample(&set, &[], a.counts.forks);
            execs.sample(&set, &[], a.counts.execs);
            for (reason, n) in [
                ("exited", a.counts.exits_ok),
                ("failed", a.counts.exits_error),
                ("signaled", a.counts.exits_signal),
                ("unknown", a.counts.exits_unknown),
            ] {
                exits.sample(&set, &[("reason", reason)], n);
            }
        }
        if a.ooms > 0 && budget.take(1) {
            ooms.sample(&set, &[], a.ooms);
        }
    }
    vec![forks, execs, exits, ooms, lost]
}

/// One cAdvisor family: name, help, type, and how to read it from a cgroup.
struct Spec {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&Resources, &Extra) -> Option<f64>,
}

/// Values that do not come from cgroupfs.
struct Extra {
    ooms_seen: u64,
    last_seen: Option<f64>,
    /// The cgroup_skb socket counters (IP bytes and packets), when network telemetry runs.
    net: Option<NetTotals>,
}

const SPECS: &[Spec] = &[
    Spec {
        name: "container_cpu_usage_seconds_total",
        help: "Cumulative CPU time consumed, in seconds.",
        kind: Kind::Counter,
        value: |r, _| r.cpu_usage_seconds,
    },
    Spec {
        name: "container_cpu_user_seconds_total",
        help: "Cumulative user CPU time consumed, in seconds.",
        kind: Kind::Counter,
        value: |r, _| r.cpu_user_seconds,
    },
    Spec {
        name: "container_cpu_system_seconds_total",
        help: "Cumulative system CPU time consumed, in seconds.",
        kind: Kind::Counter,
        value: |r, _| r.cpu_system_seconds,
    },
    Spec {
        name: "container_cpu_cfs_periods_total",
        help: "Number of elapsed enforcement period intervals.",
        kind: Kind::Counter,
        value: |r, _| r.cfs_periods.map(|v| v as f64),
    },
    Spec {
        name: "container_cpu_cfs_throttled_periods_total",
        help: "Number of throttled period intervals.",
        kind: Kind::Counter,
        value: |r, _| r.cfs_throttled_periods.map(|v| v as f64),
    },
    Spec {
        name: "container_cpu_cfs_throttled_seconds_total",
        help: "Total time duration the container has been throttled, in seconds.",
        kind: Kind::Counter,
        value: |r, _| r.cfs_throttled_seconds,
    },
    Spec {
        name: "container_memory_usage_bytes",
        help: "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        kind: Kind::Gauge,
        value: |r, _| r.memory_usage_bytes.map(|v| v as f64),
    },
    Spec {
        name: "container_memory_working_set_bytes",
        help: "Current working set in bytes (usage minus inactive file cache).",
        kind: Kind::Gauge,
        value: |r, _| r.memory_working_set_bytes.map(|v| v as f64),
    },
    Spec {
        name: "container_memory_rss",
        help: "Size of RSS (anonymous memory) in bytes.",
        kind: Kind::Gauge,
        value: |r, _| r.memory_rss_bytes.map(|v| v as f64),
    },
    Spec {
        name: "container_memory_cache",
        help: "Number of bytes of page cache memory.",
        kind: Kind::Gauge,
        value: |r, _| r.memory_cache_bytes.map(|v| v as f64),
    },
    Spec {
        name: "container_memory_failcnt",
        // cAdvisor types it as a counter; typed gauge here because the name has no `_total`
        // (promtool rejects such counters) and the name is kept for dashboard compatibility.
        help: "Number of times memory usage hit the limit (monotonic).",
        kind: Kind::Gauge,
        value: |r, _| r.memory_failcnt.map(|v| v as f64),
    },
    Spec {
        name: "container_memory_swap",
        help: "Container swap usage in bytes.",
        kind: Kind::Gauge,
        value: |r, _| r.memory_swap_bytes.map(|v| v as f64),
    },
    Spec {
        name: "container_memory_mapped_file",
        help: "Size of memory mapped files in bytes.",
        kind: Kind::Gauge,
        value: |r, _| r.memory_mapped_file_bytes.map(|v| v as f64),
    },
    Spec {
        name: "container_memory_max_usage_bytes",
        help: "Maximum memory usage recorded in bytes (memory.peak on cgroup v2, kernel 5.19+).",
        kind: Kind::Gauge,
        value: |r, _| r.memory_max_usage_bytes.map(|v| v as f64),
    },
    Spec {
        name: "container_spec_cpu_shares",
        help: "CPU share of the container (cgroup v2: cpu.weight converted as cAdvisor does).",
        kind: Kind::Gauge,
        value: |r, _| r.cpu_shares.map(|v| v as f64),
    },
    Spec {
        name: "container_network_receive_bytes_total",
        help: "Cumulative IP bytes the container's sockets received (all interfaces, loopback included).",
        kind: Kind::Counter,
        value: |_, x| x.net.map(|n| n.rx_bytes as f64),
    },
    Spec {
        name: "container_network_transmit_bytes_total",
        help: "Cumulative IP bytes the container's sockets sent (all interfaces, loopback included).",
        kind: Kind::Counter,
        value: |_, x| x.net.map(|n| n.tx_bytes as f64),
    },
    Spec {
        name: "container_network_receive_packets_total",
        help: "Cumulative IP packets the container's sockets received (all interfaces).",
        kind: Kind::Counter,
        value: |_, x| x.net.map(|n| n.rx_packets as f64),
    },
    Spec {
        name: "container_network_transmit_packets_total",
        help: "Cumulative IP packets the container's sockets sent (all interfaces).",
        kind: Kind::Counter,
        value: |_, x| x.net.map(|n| n.tx_packets as f64),
    },
    Spec {
        name: "container_spec_memory_limit_bytes",
        help: "Memory limit for the container in bytes (0: unlimited).",
        kind: Kind::Gauge,
        value: |r, _| r.memory_limit_bytes.map(|l| l.unwrap_or(0) as f64),
    },
    Spec {
        name: "container_spec_cpu_quota",
        help: "CPU quota of the container, in microseconds per period (absent: unlimited).",
        kind: Kind::Gauge,
        value: |r, _| r.cpu_quota_us.flatten().map(|v| v as f64),
    },
    Spec {
        name: "container_spec_cpu_period",
        help: "CPU period of the container, in microseconds.",
        kind: Kind::Gauge,
        value: |r, _| r.cpu_period_us.map(|v| v as f64),
    },
    Spec {
        name: "container_oom_events_total",
        help: "OOM kills in the container (memory.events oom_kill, else the kills seen by the agent).",
        kind: Kind::Counter,
        value: |r, x| Some(r.oom_kills.unwrap_or(0).max(x.ooms_seen) as f64),
    },
    Spec {
        name: "container_fs_reads_bytes_total",
        help: "Cumulative bytes read from block devices (all devices).",
        kind: Kind::Counter,
        value: |r, _| r.fs_read_bytes.map(|v| v as f64),
    },
    Spec {
        name: "container_fs_writes_bytes_total",
        help: "Cumulative bytes written to block devices (all devices).",
        kind: Kind::Counter,
        value: |r, _| r.fs_write_bytes.map(|v| v as f64),
    },
    Spec {
        name: "container_processes",
        help: "Number of processes running inside the container.",
        kind: Kind::Gauge,
        value: |r, _| r.processes.map(|v| v as f64),
    },
    Spec {
        name: "container_threads",
        help: "Number of threads running inside the container.",
        kind: Kind::Gauge,
        value: |r, _| r.threads.map(|v| v as f64),
    },
    Spec {
        name: "container_start_time_seconds",
        help: "Start time of the container since unix epoch in seconds.",
        kind: Kind::Gauge,
        value: |r, _| r.start_time_seconds,
    },
    Spec {
        name: "container_last_seen",
        help: "Last time the container was seen by the agent, unix seconds.",
        kind: Kind::Gauge,
        value: |_, x| x.last_seen,
    },
];

fn resource_families(inp: &Inputs<'_>, out: Out, budget: &mut Budget) -> Vec<Family> {
    let mut fams: Vec<Family> = SPECS
        .iter()
        .map(|s| Family::new(out, s.name, s.help, s.kind))
        .collect();
    let mut rows: Vec<_> = inp
        .model
        .by_cgroup
        .iter()
        .filter_map(|(id, s)| Some((inp.registry.get(*id)?, s)))
        .filter(|(i, s)| i.is_live() && s.resources.is_some())
        .collect();
    rows.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    let mut values: Vec<Option<f64>> = Vec::with_capacity(SPECS.len());
    for (identity, stats) in rows {
        let Some(r) = &stats.resources else { continue };
        let extra = Extra {
            ooms_seen: stats.oom_kills,
            last_seen: stats.last_seen,
            net: stats.net,
        };
        values.clear();
        values.extend(SPECS.iter().map(|s| (s.value)(r, &extra)));
        if !budget.take(values.iter().flatten().count()) {
            continue;
        }
        let set = LabelSet::new(&[
            ("container", identity.name.as_str()),
            ("id", identity.path.as_str()),
            ("image", identity.image.as_str()),
            ("name", identity.cadvisor_name()),
            ("namespace", identity.namespace.as_str()),
            ("pod", identity.pod.as_str()),
        ]);
        for (v, fam) in values.iter().zip(fams.iter_mut()) {
            if let Some(v) = v {
                fam.sample(&set, &[], *v);
            }
        }
    }
    fams
}

pub(crate) fn families(inp: &Inputs<'_>, out: Out, budget: &mut Budget) -> Vec<Family> {
    let mut v = process_families(inp, out, budget);
    v.extend(resource_families(inp, out, budget));
    v
}
