//! The kernel actor: the only owner of the loaded [`aya::Ebpf`] and its maps.
//!
//! Other tasks send [`Command`]s carrying a `oneshot` reply. The actor also drains the `EVENTS`
//! ring buffer and forwards cgroup lifecycle events as [`KernelEvent`]s. When the actor stops
//! (on [`Command::Shutdown`] or when every handle is dropped) the `Ebpf` is dropped, which
//! detaches every program.
use std::collections::HashSet;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use palisade_common::{ErrnoKey, ProcessCounts, SyscallKey, SyscallStats, loss, names};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::{KernelError, events::KernelEvent};

/// Everything the kernel counted, summed over CPUs.
#[derive(Debug, Default, Clone)]
pub struct KernelSnapshot {
    pub syscalls: Vec<(SyscallKey, SyscallStats)>,
    pub errnos: Vec<(ErrnoKey, u64)>,
    /// Per-cgroup process counters.
    pub processes: Vec<(u64, ProcessCounts)>,
    /// Indexed by `palisade_common::loss`.
    pub losses: [u64; loss::COUNT as usize],
    /// Entries in the stats and errno maps before reaping.
    pub stats_entries: usize,
    pub errno_entries: usize,
    /// Cgroups whose entries were deleted by this collection (their values are included above).
    pub reaped: Vec<u64>,
}

pub enum Command {
    /// Read every map; delete the entries of the cgroups in `reap` after reading them.
    Collect {
        reap: Vec<u64>,
        reply: oneshot::Sender<Result<KernelSnapshot, KernelError>>,
    },
    /// Add or remove a cgroup from the traced set (only meaningful with a filter).
    Select { cgroup_id: u64, selected: bool },
    /// Detach everything and stop; replies when done.
    Shutdown { reply: oneshot::Sender<()> },
}

/// Cheap, cloneable way to talk to the actor.
#[derive(Clone)]
pub struct KernelHandle {
    tx: mpsc::Sender<Command>,
}

impl KernelHandle {
    pub async fn collect(&self, reap: Vec<u64>) -> Result<KernelSnapshot, KernelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Collect { reap, reply })
            .await
            .map_err(|_| KernelError::ActorGone)?;
        rx.await.map_err(|_| KernelError::ActorGone)?
    }

    pub async fn select(&self, cgroup_id: u64, selected: bool) -> Result<(), KernelError> {
        self.tx
            .send(Command::Select {
                cgroup_id,
                selected,
            })
            .await
            .map_err(|_| KernelError::ActorGone)
    }

    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

struct Actor {
    /// Owns the programs and their links; dropped last.
    ebpf: Ebpf,
    stats: PerCpuHashMap<MapData, SyscallKey, SyscallStats>,
    errnos: PerCpuHashMap<MapData, ErrnoKey, u64>,
    filter: HashMap<MapData, u64, u32>,
    losses: PerCpuArray<MapData, u64>,
    processes: PerCpuHashMap<MapData, u64, ProcessCounts>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { map: name, source })
}

/// Starts the actor on the current tokio runtime. Cgroup events go to `changes`.
pub fn spawn(
    mut ebpf: Ebpf,
    changes: mpsc::Sender<KernelEvent>,
) -> Result<(KernelHandle, tokio::task::JoinHandle<()>), KernelError> {
    let stats = take(&mut ebpf, names::MAP_SYSCALL_STATS)?;
    let errnos = take(&mut ebpf, names::MAP_SYSCALL_ERRNOS)?;
    let filter = take(&mut ebpf, names::MAP_CGROUP_FILTER)?;
    let losses = take(&mut ebpf, names::MAP_LOSS_COUNTERS)?;
    let processes = take(&mut ebpf, names::MAP_PROCESS_COUNTS)?;
    let ring: RingBuf<MapData> = take(&mut ebpf, names::MAP_EVENTS)?;
    // SAFETY: the RingBuf owns its map fd and its mmap for as long as it lives, and
    // `as_raw_fd` always returns that same descriptor; the AsyncFd owns the RingBuf.
    let events =
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(|e| {
            KernelError::Map {
                map: names::MAP_EVENTS,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "epoll_ctl",
                    io_error: std::io::Error::other(e.to_string()),
                }),
            }
        })?;
    let (tx, rx) = mpsc::channel(256);
    let actor = Actor {
        ebpf,
        stats,
        errnos,
        filter,
        losses,
        processes,
    };
    let task = tokio::spawn(actor.run(rx, events, changes));
    Ok((KernelHandle { tx }, task))
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut events: AsyncFd<RingBuf<MapData>>,
        changes: mpsc::Sender<KernelEvent>,
    ) {
        let mut shutdown_reply = None;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown { reply }) => {
                        shutdown_reply = Some(reply);
                        break;
                    }
                    Some(cmd) => self.handle(cmd),
                },
                guard = events.readable_mut() => {
                    let Ok(mut guard) = guard else {
                        warn!("ring buffer poll failed; cgroup events now come from rescans only");
                        break;
                    };
                    let ring = guard.get_inner_mut();
                    let mut batch = Vec::new();
                    while let Some(item) = ring.next() {
                        if let Some(change) = super::events::parse(&item) {
                            batch.push(change);
                        }
                    }
                    guard.clear_ready();
                    for change in batch {
                        if changes.send(change).await.is_err() {
                            debug!("cgroup change receiver gone");
                        }
                    }
                }
            }
        }
        // Drop order: maps, then the programs and links owned by `ebpf`.
        let Actor { ebpf, .. } = self;
        drop(ebpf);
        debug!("eBPF programs detached");
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Collect { reap, reply } => {
                let _ = reply.send(self.collect(&reap));
            }
            Command::Select {
                cgroup_id,
                selected,
            } => {
                let r = if selected {
                    self.filter.insert(cgroup_id, 1, 0)
                } else {
                    self.filter.remove(&cgroup_id)
                };
                if let Err(e) = r {
                    warn!(cgroup_id, selected, error = %e, "updating the cgroup filter failed");
                }
            }
            Command::Shutdown { .. } => {}
        }
    }

    fn collect(&mut self, reap: &[u64]) -> Result<KernelSnapshot, KernelError> {
        let reap: HashSet<u64> = reap.iter().copied().collect();
        let mut snap = KernelSnapshot::default();
        let map_err = |map| move |source| KernelError::Map { map, source };

        let mut dead_stats = Vec::new();
        for item in self.stats.iter() {
            let (key, values) = item.map_err(map_err(names::MAP_SYSCALL_STATS))?;
            let mut sum = SyscallStats::ZERO;
            for v in values.iter() {
                sum.calls += v.calls;
                sum.time_ns += v.time_ns;
                for (s, x) in sum.hist.iter_mut().zip(v.hist.iter()) {
                    *s += x;
                }
            }
            if reap.contains(&key.cgroup_id) {
                dead_stats.push(key);
            }
            snap.syscalls.push((key, sum));
        }
        snap.stats_entries = snap.syscalls.len();

        let mut dead_errnos = Vec::new();
        for item in self.errnos.iter() {
            let (key, values) = item.map_err(map_err(names::MAP_SYSCALL_ERRNOS))?;
            if reap.contains(&key.cgroup_id) {
                dead_errnos.push(key);
            }
            snap.errnos.push((key, values.iter().sum()));
        }
        snap.errno_entries = snap.errnos.len();

        let mut dead_processes = Vec::new();
        for item in self.processes.iter() {
            let (cgroup_id, values) = item.map_err(map_err(names::MAP_PROCESS_COUNTS))?;
            let mut sum = ProcessCounts::default();
            for v in values.iter() {
                sum.forks += v.forks;
                sum.execs += v.execs;
                sum.exits_ok += v.exits_ok;
                sum.exits_error += v.exits_error;
                sum.exits_signal += v.exits_signal;
                sum.exits_unknown += v.exits_unknown;
            }
            if reap.contains(&cgroup_id) {
                dead_processes.push(cgroup_id);
            }
            snap.processes.push((cgroup_id, sum));
        }

        for (i, slot) in snap.losses.iter_mut().enumerate() {
            let values = self
                .losses
                .get(&(i as u32), 0)
                .map_err(map_err(names::MAP_LOSS_COUNTERS))?;
            *slot = values.iter().sum();
        }

        // Delete after reading: removed cgroups get no new syscalls, so these are final.
        for key in &dead_stats {
            if let Err(e) = self.stats.remove(key) {
                warn!(cgroup_id = key.cgroup_id, error = %e, "reaping a syscall entry failed");
            }
        }
        for key in &dead_errnos {
            if let Err(e) = self.errnos.remove(key) {
                warn!(cgroup_id = key.cgroup_id, error = %e, "reaping an errno entry failed");
            }
        }
        for id in &dead_processes {
            if let Err(e) = self.processes.remove(id) {
                warn!(cgroup_id = id, error = %e, "reaping process counters failed");
            }
        }
        for id in &reap {
            // Not an error when absent (the cgroup was never selected).
            let _ = self.filter.remove(id);
        }
        snap.reaped = reap.into_iter().collect();
        Ok(snap)
    }
}
