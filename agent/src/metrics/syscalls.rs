//! Per-container syscall families: calls and errors per syscall (and errno), and latency.
//!
//! Latency, by default, is one histogram per container: every syscall of the container under
//! `syscall="other"`. Syscalls named by `metrics.syscall_latency_detail` (names or globs) get a
//! histogram of their own and leave `other`, so summing over `syscall` never counts a call
//! twice. A histogram is 18 series (15 bounds with the default bucket step): per syscall for
//! every syscall it was ~500 series per container, five times cAdvisor's whole set.
use std::collections::BTreeMap;

use palisade_common::{LATENCY_OTHER, SyscallStats};

use super::{
    Budget, ContainerKey, Inputs,
    expo::{Family, Kind, Out},
    histogram,
};
use crate::config::Pattern;

/// `syscall` of the histogram holding every syscall without one of its own.
pub const OTHER: &str = "other";

#[derive(Default)]
struct Agg {
    syscalls: BTreeMap<u32, u64>,
    latency: BTreeMap<u32, SyscallStats>,
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
        for (nr, n) in &stats.syscalls {
            *agg.syscalls.entry(*nr).or_default() += n;
        }
        for (nr, s) in &stats.latency {
            agg.latency
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

/// Which syscalls have a histogram of their own (answers cached by number).
struct Detail<'a> {
    patterns: &'a [Pattern],
    known: BTreeMap<u32, bool>,
}

impl Detail<'_> {
    fn wants(&mut self, nr: u32) -> bool {
        if self.patterns.is_empty() {
            return false;
        }
        let patterns = self.patterns;
        *self.known.entry(nr).or_insert_with(|| {
            let name = palisade_syscalls::label(nr);
            patterns.iter().any(|p| p.is_match(&name))
        })
    }
}

/// The syscall numbers below `LATENCY_DETAIL_ENTRIES` that `patterns` give a latency histogram
/// of their own: the kernel keys their timed calls by syscall, the rest by cgroup alone.
pub(crate) fn detailed(patterns: &[Pattern]) -> Vec<u32> {
    let mut detail = Detail {
        patterns,
        known: BTreeMap::new(),
    };
    (0..palisade_common::LATENCY_DETAIL_ENTRIES)
        .filter(|nr| detail.wants(*nr))
        .collect()
}

pub(crate) fn families(inp: &Inputs<'_>, out: Out, budget: &mut Budget) -> Vec<Family> {
    let cfg = inp.cfg;
    let mut calls = Family::new(
        out,
        "palisade_syscalls_total",
        "Completed syscalls per container and syscall (exit and exit_group counted at entry).",
        Kind::Counter,
    );
    let mut errors = Family::new(
        out,
        "palisade_syscall_errors_total",
        "Syscalls that returned an error, per container, syscall and errno.",
        Kind::Counter,
    );
    let mut duration = Family::new(
        out,
        "palisade_syscall_duration_seconds",
        "Syscall latency from sys_enter to sys_exit per container (log2 buckets), of a random sample of the calls (one in syscalls.latency_sample; exact counts are palisade_syscalls_total): syscall=\"other\" holds every syscall without a histogram of its own (metrics.syscall_latency_detail).",
        Kind::Histogram,
    );
    let step = cfg.latency_bucket_step.0;
    let hist_series = histogram::series_per_histogram(step);
    let mut detail = Detail {
        patterns: &cfg.syscall_latency_detail,
        known: BTreeMap::new(),
    };
    for (key, agg) in aggregate(inp) {
        let set = key.label_set();
        // The kernel keeps the timed calls of syscalls without a histogram of their own under
        // LATENCY_OTHER; a syscall keyed by its number but not detailed here joins them.
        let mut other = SyscallStats::ZERO;
        for (nr, stats) in &agg.latency {
            if *nr == LATENCY_OTHER || !detail.wants(*nr) {
                other.merge(stats);
            }
        }
        let mut others = 0usize;
        for (nr, n) in &agg.syscalls {
            let name = palisade_syscalls::label(*nr);
            if cfg.syscall_latency {
                if !detail.wants(*nr) {
                    others += 1;
                } else if budget.take(hist_series) {
                    let stats = agg.latency.get(nr).unwrap_or(&SyscallStats::ZERO);
                    let extra = [("syscall", name.as_ref())];
                    duration.kernel_histogram(&set, &extra, &stats.hist, stats.time_ns, step);
                }
            }
            let errnos = agg.errnos.get(nr);
            if !budget.take(1 + errnos.map_or(0, BTreeMap::len)) {
                continue;
            }
            calls.sample(&set, &[("syscall", name.as_ref())], *n);
            for (errno, n) in errnos.into_iter().flatten() {
                let e = palisade_syscalls::errno::label(*errno);
                errors.sample(
                    &set,
                    &[("syscall", name.as_ref()), ("errno", e.as_ref())],
                    *n,
                );
            }
        }
        if others > 0 && budget.take(hist_series) {
            let extra = [("syscall", OTHER)];
            duration.kernel_histogram(&set, &extra, &other.hist, other.time_ns, step);
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
                errors.sample(
                    &set,
                    &[("syscall", name.as_ref()), ("errno", e.as_ref())],
                    *n,
                );
            }
        }
    }
    let mut fams = vec![calls, errors];
    if cfg.syscall_latency {
        fams.push(duration);
    }
    fams
}
