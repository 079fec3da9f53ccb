//! Per-cgroup numbers as last read from the kernel, kept past a cgroup's removal until its grace
//! period ends (so the final values can be scraped).
use std::collections::{BTreeMap, HashMap};

use palisade_common::{
    ProcessCounts, SyscallStats, loss,
    net::{NetTotals, TcpCounts},
};

use crate::{kernel::KernelSnapshot, resources::Resources};

#[derive(Debug, Default, Clone)]
pub struct CgroupStats {
    /// Syscall number → completed calls.
    pub syscalls: BTreeMap<u32, u64>,
    /// Latency of the timed calls: per syscall for those with a histogram of their own,
    /// under `LATENCY_OTHER` for the rest (`calls` unused).
    pub latency: BTreeMap<u32, SyscallStats>,
    /// (syscall number, errno) → failed calls.
    pub errnos: BTreeMap<(u32, u32), u64>,
    /// Forks, execs and exits counted in the kernel.
    pub processes: Option<ProcessCounts>,
    /// Network totals and TCP counters from the kernel.
    pub net: Option<NetTotals>,
    pub tcp: Option<TcpCounts>,
    /// OOM kills seen by `oom:mark_victim` (counted in userspace from events).
    pub oom_kills: u64,
    /// Last cgroupfs reading (live cgroups only).
    pub resources: Option<Resources>,
    /// Unix time of the last resource reading.
    pub last_seen: Option<f64>,
}

/// Records gathered per cgroup id.
type PerCgroup<K, V> = HashMap<u64, Vec<(K, V)>>;

/// `(cgroup id, key, value)` records gathered per cgroup, in snapshot order.
fn per_cgroup<K, V>(records: impl Iterator<Item = (u64, K, V)>) -> PerCgroup<K, V> {
    let mut out: PerCgroup<K, V> = HashMap::new();
    for (id, k, v) in records {
        out.entry(id).or_default().push((k, v));
    }
    out
}

/// Cgroup `id`'s records as a map built from its list at once (inserting the ~270-byte
/// latency records one by one moved them around the map's nodes several times); empty when
/// the snapshot has none.
fn take_map<K: Ord, V>(lists: &mut PerCgroup<K, V>, id: u64) -> BTreeMap<K, V> {
    lists
        .remove(&id)
        .map(BTreeMap::from_iter)
        .unwrap_or_default()
}

#[derive(Debug, Default)]
pub struct Model {
    pub by_cgroup: HashMap<u64, CgroupStats>,
    pub losses: [u64; loss::COUNT as usize],
    pub stats_entries: usize,
    /// Keys in the fullest CPU region of `SYSCALL_COUNTS`.
    pub count_entries: usize,
    pub errno_entries: usize,
    /// See `KernelSnapshot::queue_waits`.
    pub queue_waits: u64,
}

impl Model {
    /// Replaces the numbers of every cgroup present in `snap`. Cgroups absent from it keep their
    /// last numbers (they were reaped earlier and are waiting out their grace period).
    pub fn apply(&mut self, snap: &KernelSnapshot) {
        // Gathered per cgroup first, each map then built from its list (see `take_map`).
        let mut syscalls = per_cgroup(snap.syscalls.iter().map(|(k, n)| (k.cgroup_id, k.nr, *n)));
        let mut latency = per_cgroup(snap.latency.iter().map(|(k, s)| (k.cgroup_id, k.nr, *s)));
        let mut errnos = per_cgroup(
            snap.errnos
                .iter()
                .map(|(k, n)| (k.cgroup_id, (k.nr, k.errno), *n)),
        );
        // Replace the kernel-sourced parts of every cgroup present in this snapshot; keep the
        // userspace-sourced ones (OOM counts, resources).
        let mut processes: HashMap<u64, ProcessCounts> = snap.processes.iter().copied().collect();
        let mut net: HashMap<u64, NetTotals> = snap.net.iter().copied().collect();
        let mut tcp: HashMap<u64, TcpCounts> = snap.tcp.iter().copied().collect();
        let present: std::collections::HashSet<u64> = syscalls
            .keys()
            .chain(latency.keys())
            .chain(errnos.keys())
            .chain(processes.keys())
            .chain(net.keys())
            .chain(tcp.keys())
            .copied()
            .collect();
        for id in present {
            let e = self.by_cgroup.entry(id).or_default();
            e.syscalls = take_map(&mut syscalls, id);
            e.latency = take_map(&mut latency, id);
            e.errnos = take_map(&mut errnos, id);
            if let Some(p) = processes.remove(&id) {
                e.processes = Some(p);
            }
            if let Some(n) = net.remove(&id) {
                e.net = Some(n);
            }
            if let Some(t) = tcp.remove(&id) {
                e.tcp = Some(t);
            }
        }
        self.losses = snap.losses;
        self.queue_waits = snap.queue_waits;
        // Entries present after this pass's reaping (the actor counts those of the syscall maps).
        let reaped: std::collections::HashSet<u64> = snap.reaped.iter().copied().collect();
        self.stats_entries = snap.stats_entries;
        self.count_entries = snap.count_entries;
        self.errno_entries = snap
            .errnos
            .iter()
            .filter(|(k, _)| !reaped.contains(&k.cgroup_id))
            .count();
    }

    pub fn forget(&mut self, ids: &[u64]) {
        for id in ids {
            self.by_cgroup.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use palisade_common::{ErrnoKey, LATENCY_OTHER, SyscallKey};

    use super::*;

    fn timed(ns: u64) -> SyscallStats {
        SyscallStats {
            time_ns: ns,
            ..SyscallStats::ZERO
        }
    }

    #[test]
    fn apply_replaces_present_and_keeps_reaped() {
        let mut m = Model::default();
        let snap = KernelSnapshot {
            syscalls: vec![(SyscallKey::new(1, 110), 5), (SyscallKey::new(2, 3), 7)],
            latency: vec![(SyscallKey::new(1, LATENCY_OTHER), timed(40))],
            errnos: vec![(
                ErrnoKey {
                    cgroup_id: 2,
                    nr: 3,
                    errno: 9,
                },
                7,
            )],
            reaped: vec![2],
            stats_entries: 1,
            count_entries: 3,
            ..Default::default()
        };
        m.apply(&snap);
        assert_eq!(m.by_cgroup[&1].syscalls[&110], 5);
        assert_eq!(m.by_cgroup[&1].latency[&LATENCY_OTHER].time_ns, 40);
        assert_eq!(m.by_cgroup[&2].errnos[&(3, 9)], 7);
        assert_eq!((m.stats_entries, m.count_entries), (1, 3));
        assert_eq!(m.errno_entries, 0);
        // next pass: cgroup 2 was reaped, so it is absent; its final numbers stay
        let snap = KernelSnapshot {
            syscalls: vec![(SyscallKey::new(1, 110), 9)],
            latency: vec![(SyscallKey::new(1, LATENCY_OTHER), timed(90))],
            ..Default::default()
        };
        m.apply(&snap);
        assert_eq!(m.by_cgroup[&1].syscalls[&110], 9);
        assert_eq!(m.by_cgroup[&1].latency[&LATENCY_OTHER].time_ns, 90);
        assert_eq!(m.by_cgroup[&2].syscalls[&3], 7);
        m.forget(&[2]);
        assert!(!m.by_cgroup.contains_key(&2));
    }
}
