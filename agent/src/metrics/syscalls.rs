//! Per-container syscall families: calls, errors per errno, latency histograms.
use std::collections::BTreeMap;

use palisade_common::SyscallStats;
use prometheus::proto::{MetricFamily, MetricType};

use super::{Budget, ContainerKey, Inputs, counter, family, histogram};

#[derive(Default)]
struct Agg {
    syscalls: BTreeMap<u32, SyscallStats>,
    errnos: BTreeMap<u32, BTreeMap<u32, u64>>,
}

fn aggregate(inp: &Inputs<'_>) -> BTreeMap<ContainerKey, Agg> {
    let mut out: BTreeMap<ContainerKey, Agg> = BTreeMap::new();
    for (id, stats) in &inp.model.by_cgroup {
        if stats.syscalls.is_empty() && stats.errnos.is_empty() {
            continue;
        }
        let agg = out
            .entry(ContainerKey::of(inp.registry.get(*id)))
            .or_default();
        for (nr, s) in &stats.syscalls {
            agg.syscalls
                .entry(*nr)
                .or_insert(SyscallStats::ZERO)
                .merge(s);
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

pub(crate) fn families(inp: &Inputs<'_>, budget: &mut Budget) -> Vec<MetricFamily> {
    let cfg = inp.cfg;
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
    for (key, agg) in aggregate(inp) {
        for (nr, stats) in &agg.syscalls {
            let errnos = agg.errnos.get(nr);
            if !budget.take(1 + hist_series + errnos.map_or(0, BTreeMap::len)) {
                continue;
            }
            let name = palisade_syscalls::label(*nr);
            let labels = key.labels(&[("syscall", name.as_ref())]);
            calls
                .mut_metric()
                .push(counter(&labels, stats.calls as f64));
            if cfg.syscall_latency {
                let h = histogram::convert(&stats.hist, stats.time_ns, step);
                duration.mut_metric().push(super::histogram(&labels, &h));
            }
            for (errno, n) in errnos.into_iter().flatten() {
                let e = palisade_syscalls::errno::label(*errno);
                let labels = key.labels(&[("syscall", name.as_ref()), ("errno", e.as_ref())]);
                errors.mut_metric().push(counter(&labels, *n as f64));
            }
        }
        // errnos of syscalls without a stats entry (its map was full): still worth showing
        for (nr, per_errno) in &agg.errnos {
            if agg.syscalls.contains_key(nr) {
                continue;
            }
            let name = palisade_syscalls::label(*nr);
            for (errno, n) in per_errno {
                if !budget.take(1) {
                    continue;
                }
                let e = palisade_syscalls::errno::label(*errno);
                let labels = key.labels(&[("syscall", name.as_ref()), ("errno", e.as_ref())]);
                errors.mut_metric().push(counter(&labels, *n as f64));
            }
        }
    }
    let mut fams = vec![calls, errors];
    if cfg.syscall_latency {
        fams.push(duration);
    }
    fams
}
