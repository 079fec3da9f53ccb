//! The kernel actor: the only owner of the loaded [`aya::Ebpf`] and its maps.
//!
//! Other tasks send [`Command`]s carrying a `oneshot` reply. The actor also drains the `EVENTS`
//! ring buffer and forwards cgroup lifecycle events as [`KernelEvent`]s. When the actor stops
//! (on [`Command::Shutdown`] or when every handle is dropped) the `Ebpf` is dropped, which
//! detaches every program.
use std::collections::{HashSet, VecDeque};

use aya::Pod;
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use palisade_common::{
    ErrnoKey, ProcessCounts, SyscallKey, SyscallStats, loss, names,
    net::{FlowKey, FlowStats, NetTotals, TcpCounts},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::{KernelError, events::KernelEvent, take_map};

/// Events read from the ring buffer that may wait in the actor for the consumer; past this the
/// actor stops reading the ring buffer until the consumer catches up.
const PENDING_MAX: usize = 16_384;

/// Everything the kernel counted, summed over CPUs.
#[derive(Debug, Default, Clone)]
pub struct KernelSnapshot {
    pub syscalls: Vec<(SyscallKey, SyscallStats)>,
    pub errnos: Vec<(ErrnoKey, u64)>,
    /// Per-cgroup process counters.
    pub processes: Vec<(u64, ProcessCounts)>,
    /// Per-cgroup network totals and TCP counters.
    pub net: Vec<(u64, NetTotals)>,
    pub tcp: Vec<(u64, TcpCounts)>,
    /// The flow table, when asked for.
    pub flows: Option<Vec<(FlowKey, FlowStats)>>,
    /// Flows ever inserted into the flow table.
    pub flows_created: u64,
    /// Indexed by `palisade_common::loss`.
    pub losses: [u64; loss::COUNT as usize],
    /// Entries in the stats and errno maps before reaping.
    pub stats_entries: usize,
    pub errno_entries: usize,
    /// Cgroups whose entries were deleted by this collection (their values are included above).
    pub reaped: Vec<u64>,
}

pub enum Command {
    /// Read every map (the flow table too when `flows`); delete the entries of the cgroups in
    /// `reap` after reading them.
    Collect {
        reap: Vec<u64>,
        flows: bool,
        reply: oneshot::Sender<Result<KernelSnapshot, KernelError>>,
    },
    /// Read and delete these flows.
    TakeFlows {
        keys: Vec<FlowKey>,
        reply: oneshot::Sender<Vec<(FlowKey, FlowStats)>>,
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
    pub async fn collect(
        &self,
        reap: Vec<u64>,
        flows: bool,
    ) -> Result<KernelSnapshot, KernelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Collect { reap, flows, reply })
            .await
            .map_err(|_| KernelError::ActorGone)?;
        rx.await.map_err(|_| KernelError::ActorGone)?
    }

    pub async fn take_flows(
        &self,
        keys: Vec<FlowKey>,
    ) -> Result<Vec<(FlowKey, FlowStats)>, KernelError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::TakeFlows { keys, reply })
            .await
            .map_err(|_| KernelError::ActorGone)?;
        rx.await.map_err(|_| KernelError::ActorGone)
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
    net: PerCpuHashMap<MapData, u64, NetTotals>,
    tcp: PerCpuHashMap<MapData, u64, TcpCounts>,
    /// LRU hash; aya reads it through the hash type.
    flows: HashMap<MapData, FlowKey, FlowStats>,
    net_counters: PerCpuArray<MapData, u64>,
}

/// Starts the actor on the current tokio runtime. Cgroup events go to `changes`.
pub fn spawn(
    mut ebpf: Ebpf,
    changes: mpsc::Sender<KernelEvent>,
) -> Result<(KernelHandle, tokio::task::JoinHandle<()>), KernelError> {
    let stats = take_map(&mut ebpf, names::MAP_SYSCALL_STATS)?;
    let errnos = take_map(&mut ebpf, names::MAP_SYSCALL_ERRNOS)?;
    let filter = take_map(&mut ebpf, names::MAP_CGROUP_FILTER)?;
    let losses = take_map(&mut ebpf, names::MAP_LOSS_COUNTERS)?;
    let processes = take_map(&mut ebpf, names::MAP_PROCESS_COUNTS)?;
    let net = take_map(&mut ebpf, names::MAP_NET_TOTALS)?;
    let tcp = take_map(&mut ebpf, names::MAP_TCP_COUNTS)?;
    let flows = take_map(&mut ebpf, names::MAP_FLOWS)?;
    let net_counters = take_map(&mut ebpf, names::MAP_NET_COUNTERS)?;
    let ring: RingBuf<MapData> = take_map(&mut ebpf, names::MAP_EVENTS)?;
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
        net,
        tcp,
        flows,
        net_counters,
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
        // Events read from the ring buffer and not yet handed on. While `changes` has room they
        // are handed on before the next command is answered (so a collection sees the cgroups
        // created before it), but the actor never waits for room while a command is waiting:
        // the consumer of `changes` may itself be waiting for a command's reply (a closed
        // connection's flow), or for the state lock a collection holds while it waits for its
        // reply. When `pending` is full the ring buffer is left to fill, and the kernel counts
        // what it cannot queue (`ringbuf_full`).
        let mut pending: VecDeque<KernelEvent> = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                permit = changes.reserve(), if !pending.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(ev) = pending.pop_front() {
                            permit.send(ev);
                        }
                        while let Some(ev) = pending.pop_front() {
                            match changes.try_send(ev) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(ev)) => {
                                    pending.push_front(ev);
                                    break;
                                }
                                Err(mpsc::error::TrySendError::Closed(_)) => pending.clear(),
                            }
                        }
                    }
                    Err(_) => {
                        debug!("kernel event receiver gone");
                        pending.clear();
                    }
                },
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown { reply }) => {
                        shutdown_reply = Some(reply);
                        break;
                    }
                    Some(cmd) => self.handle(cmd),
                },
                guard = events.readable_mut(), if pending.len() < PENDING_MAX => {
                    let Ok(mut guard) = guard else {
                        warn!("ring buffer poll failed; cgroup events now come from rescans only");
                        break;
                    };
                    let ring = guard.get_inner_mut();
                    while let Some(item) = ring.next() {
                        if let Some(change) = super::events::parse(&item) {
                            pending.push_back(change);
                        }
                    }
                    guard.clear_ready();
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
            Command::Collect { reap, flows, reply } => {
                let _ = reply.send(self.collect(&reap, flows));
            }
            Command::TakeFlows { keys, reply } => {
                let _ = reply.send(self.take_flows(&keys));
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

    fn collect(&mut self, reap: &[u64], flows: bool) -> Result<KernelSnapshot, KernelError> {
        let reap: HashSet<u64> = reap.iter().copied().collect();
        let mut snap = KernelSnapshot::default();

        snap.syscalls = read_summed(&self.stats, names::MAP_SYSCALL_STATS, SyscallStats::merge)?;
        snap.stats_entries = snap.syscalls.len();
        snap.errnos = read_summed(&self.errnos, names::MAP_SYSCALL_ERRNOS, |a, b| *a += b)?;
        snap.errno_entries = snap.errnos.len();
        snap.processes = read_summed(
            &self.processes,
            names::MAP_PROCESS_COUNTS,
            ProcessCounts::merge,
        )?;
        snap.net = read_summed(&self.net, names::MAP_NET_TOTALS, NetTotals::merge)?;
        snap.tcp = read_summed(&self.tcp, names::MAP_TCP_COUNTS, TcpCounts::merge)?;
        if flows {
            let mut all = Vec::new();
            for item in self.flows.iter() {
                all.push(item.map_err(|source| KernelError::Map {
                    map: names::MAP_FLOWS,
                    source,
                })?);
            }
            snap.flows = Some(all);
        }
        snap.flows_created = self
            .net_counters
            .get(&0, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0);
        for (i, slot) in snap.losses.iter_mut().enumerate() {
            let values = self
                .losses
                .get(&(i as u32), 0)
                .map_err(|source| KernelError::Map {
                    map: names::MAP_LOSS_COUNTERS,
                    source,
                })?;
            *slot = values.iter().sum();
        }

        // Delete after reading: removed cgroups get no new events, so these values are final.
        let dead = |id: &u64| reap.contains(id);
        remove_all(
            &mut self.stats,
            snap.syscalls
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| dead(&k.cgroup_id)),
        );
        remove_all(
            &mut self.errnos,
            snap.errnos
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| dead(&k.cgroup_id)),
        );
        remove_all(
            &mut self.processes,
            snap.processes.iter().map(|(k, _)| *k).filter(dead),
        );
        remove_all(&mut self.net, snap.net.iter().map(|(k, _)| *k).filter(dead));
        remove_all(&mut self.tcp, snap.tcp.iter().map(|(k, _)| *k).filter(dead));
        for id in &reap {
            // Not an error when absent (the cgroup was never selected).
            let _ = self.filter.remove(id);
        }
        snap.reaped = reap.into_iter().collect();
        Ok(snap)
    }

    /// Reads and deletes flows (a closed connection, an idle UDP flow).
    fn take_flows(&mut self, keys: &[FlowKey]) -> Vec<(FlowKey, FlowStats)> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Ok(v) = self.flows.get(k, 0) {
                out.push((*k, v));
                let _ = self.flows.remove(k);
            }
        }
        out
    }
}

/// Every entry of a per-CPU hash, summed over CPUs with `add`.
fn read_summed<K: Pod, V: Pod + Default>(
    map: &PerCpuHashMap<MapData, K, V>,
    name: &'static str,
    add: impl Fn(&mut V, &V),
) -> Result<Vec<(K, V)>, KernelError> {
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, values) = item.map_err(|source| KernelError::Map { map: name, source })?;
        let mut sum = V::default();
        for v in values.iter() {
            add(&mut sum, v);
        }
        out.push((key, sum));
    }
    Ok(out)
}

fn remove_all<K: Pod, V: Pod>(
    map: &mut PerCpuHashMap<MapData, K, V>,
    keys: impl Iterator<Item = K>,
) {
    for k in keys {
        if let Err(e) = map.remove(&k) {
            warn!(error = %e, "reaping a kernel map entry failed");
        }
    }
}
