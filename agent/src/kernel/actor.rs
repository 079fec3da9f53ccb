//! The kernel actor: the only owner of the loaded [`aya::Ebpf`] and its maps.
//!
//! It takes [`Command`]s and produces one ordered stream of [`Output`]s: the ring buffer's
//! events, and the answers to commands (map snapshots, flows taken out of the table), each
//! after every event read before it. The state owner consumes that stream and never waits for
//! the actor: it sends commands and goes on, so the actor may wait for room in the stream
//! without any cycle of waits (a full stream leaves the ring buffer to fill, and the kernel
//! counts what it cannot queue as `ringbuf_full`). When the actor stops (on
//! [`Command::Shutdown`] or when every handle is dropped) the `Ebpf` is dropped, which detaches
//! every program.
use std::collections::HashSet;

use aya::Pod;
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
};
use palisade_common::{
    ErrnoKey, ProcessCounts, SyscallKey, SyscallStats, loss, names,
    net::{FlowKey, FlowStats, NetTotals, TcpCounts, tcp_what},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::{
    KernelError,
    events::{KernelEvent, Tcp},
    take_map,
};

/// Ring-buffer records handed on before the actor looks at its commands again.
const BATCH: usize = 256;

/// Everything the kernel counted, summed over CPUs.
#[derive(Debug, Default, Clone)]
pub struct KernelSnapshot {
    /// Completed calls per (cgroup, syscall) (`SYSCALL_COUNTS`).
    pub syscalls: Vec<(SyscallKey, u64)>,
    /// Latencies of the timed calls per (cgroup, syscall), or per cgroup under
    /// `LATENCY_OTHER` for syscalls without a histogram of their own (`SYSCALL_STATS`; `calls`
    /// is 0).
    pub latency: Vec<(SyscallKey, SyscallStats)>,
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
    /// Entries in the stats map after reaping, keys in the fullest CPU region of the count
    /// table after reaping, entries in the errno map before reaping.
    pub stats_entries: usize,
    pub count_entries: usize,
    pub errno_entries: usize,
    /// Cgroups whose entries were deleted by this collection (their values are included above).
    pub reaped: Vec<u64>,
    /// Times the actor found the stream to the state owner full and waited (events meanwhile
    /// wait in the ring buffer, which may fill).
    pub queue_waits: u64,
}

pub enum Command {
    /// Read every map (the flow table too when `flows`); delete the entries of the cgroups in
    /// `reap` after reading them. Answered by [`Output::Snapshot`].
    Collect { reap: Vec<u64>, flows: bool },
    /// Read and delete these flows. Answered by [`Output::Taken`].
    TakeFlows(Vec<FlowKey>),
    /// Add cgroups to the traced set (only meaningful with a filter); `done` once they are in.
    Select {
        ids: Vec<u64>,
        done: Option<oneshot::Sender<()>>,
    },
    /// Detach everything and stop; replies when done.
    Shutdown { reply: oneshot::Sender<()> },
}

/// What the actor hands on, in the order it happened.
#[derive(Debug)]
pub enum Output {
    Event(KernelEvent),
    Snapshot(Result<KernelSnapshot, KernelError>),
    Taken(Vec<(FlowKey, FlowStats)>),
}

/// Cheap, cloneable way to talk to the actor. Sending never waits: the channel is unbounded
/// because its only regular sender, the state owner, must never block on the actor (which may
/// be blocked handing it output). It stays short: the owner sends at most one command per
/// message it consumes, and the actor reads its commands before every batch of events.
#[derive(Clone)]
pub struct KernelHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl KernelHandle {
    fn send(&self, cmd: Command) -> Result<(), KernelError> {
        self.tx.send(cmd).map_err(|_| KernelError::ActorGone)
    }

    pub fn collect(&self, reap: Vec<u64>, flows: bool) -> Result<(), KernelError> {
        self.send(Command::Collect { reap, flows })
    }

    pub fn take_flows(&self, keys: Vec<FlowKey>) -> Result<(), KernelError> {
        self.send(Command::TakeFlows(keys))
    }

    /// Selects `ids`; the receiver resolves once the filter holds them.
    pub fn select(&self, ids: Vec<u64>) -> Result<oneshot::Receiver<()>, KernelError> {
        let (done, rx) = oneshot::channel();
        self.send(Command::Select {
            ids,
            done: Some(done),
        })?;
        Ok(rx)
    }

    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Shutdown { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Actor {
    /// Owns the programs and their links; dropped last.
    ebpf: Ebpf,
    /// The exact counts, mapped (`SYSCALL_COUNTS`).
    counts: super::counts::Counts,
    /// The timed calls' latencies.
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
    /// See [`KernelSnapshot::queue_waits`].
    queue_waits: u64,
}

/// Hands `o` on; counts a wait when the stream is full. `Err` when the owner is gone.
async fn hand_on(
    out: &mpsc::Sender<Output>,
    o: Output,
    waits: &mut u64,
) -> Result<(), mpsc::error::SendError<Output>> {
    match out.try_send(o) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(o)) => {
            *waits += 1;
            out.send(o).await
        }
        Err(mpsc::error::TrySendError::Closed(o)) => Err(mpsc::error::SendError(o)),
    }
}

/// Starts the actor on the current tokio runtime; its output goes to `out`.
pub fn spawn(
    mut ebpf: Ebpf,
    layout: super::CountLayout,
    out: mpsc::Sender<Output>,
) -> Result<(KernelHandle, tokio::task::JoinHandle<()>), KernelError> {
    let counts = match ebpf.take_map(names::MAP_SYSCALL_COUNTS) {
        Some(aya::maps::Map::Array(data)) => {
            super::counts::Counts::open(data, layout).map_err(KernelError::CountsMap)?
        }
        _ => return Err(KernelError::MissingMap(names::MAP_SYSCALL_COUNTS)),
    };
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
    let (tx, rx) = mpsc::unbounded_channel();
    let actor = Actor {
        ebpf,
        counts,
        stats,
        errnos,
        filter,
        losses,
        processes,
        net,
        tcp,
        flows,
        net_counters,
        queue_waits: 0,
    };
    let task = tokio::spawn(actor.run(rx, events, out));
    Ok((KernelHandle { tx }, task))
}

impl Actor {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Command>,
        mut events: AsyncFd<RingBuf<MapData>>,
        out: mpsc::Sender<Output>,
    ) {
        let mut shutdown_reply = None;
        'run: loop {
            tokio::select! {
                biased;
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown { reply }) => {
                        shutdown_reply = Some(reply);
                        break;
                    }
                    Some(cmd) => {
                        if let Some(o) = self.handle(cmd)
                            && hand_on(&out, o, &mut self.queue_waits).await.is_err()
                        {
                            break;
                        }
                    }
                },
                guard = events.readable_mut() => {
                    let Ok(mut guard) = guard else {
                        warn!("ring buffer poll failed; cgroup events now come from rescans only");
                        break;
                    };
                    let mut batch = Vec::with_capacity(BATCH);
                    let ring = guard.get_inner_mut();
                    let mut drained = true;
                    while batch.len() < BATCH {
                        let Some(item) = ring.next() else { break };
                        if let Some(ev) = super::events::parse(&item) {
                            batch.push(ev);
                        }
                        if batch.len() == BATCH {
                            drained = false;
                        }
                    }
                    if drained {
                        guard.clear_ready();
                    }
                    drop(guard);
                    for ev in batch {
                        let ev = self.complete(ev);
                        if hand_on(&out, Output::Event(ev), &mut self.queue_waits).await.is_err() {
                            debug!("kernel output receiver gone");
                            break 'run;
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

    fn handle(&mut self, cmd: Command) -> Option<Output> {
        match cmd {
            Command::Collect { reap, flows } => Some(Output::Snapshot(self.collect(&reap, flows))),
            Command::TakeFlows(keys) => Some(Output::Taken(self.take_flows(&keys))),
            Command::Select { ids, done } => {
                for cgroup_id in ids {
                    if let Err(e) = self.filter.insert(cgroup_id, 1, 0) {
                        warn!(cgroup_id, error = %e, "updating the cgroup filter failed");
                    }
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
                None
            }
            Command::Shutdown { .. } => None,
        }
    }

    /// A connection that ended without `sock_ops` taking its flow: take it here, so the record
    /// has its final counts.
    fn complete(&mut self, ev: KernelEvent) -> KernelEvent {
        match ev {
            KernelEvent::Tcp(t) if t.flow.is_none() && t.what != tcp_what::ESTABLISHED => {
                let flow = self.take_flows(&[t.key]).into_iter().next().map(|(_, f)| f);
                KernelEvent::Tcp(Tcp { flow, ..t })
            }
            other => other,
        }
    }

    fn collect(&mut self, reap: &[u64], flows: bool) -> Result<KernelSnapshot, KernelError> {
        let reap: HashSet<u64> = reap.iter().copied().collect();
        let mut snap = KernelSnapshot::default();

        // The counts, then the latencies (a call timed in between has its latency in this
        // snapshot and its count in the next).
        let counts = self.counts.read(&reap);
        let timed = read_summed(&self.stats, names::MAP_SYSCALL_STATS, SyscallStats::merge)?;
        snap.stats_entries = timed
            .iter()
            .filter(|(k, _)| !reap.contains(&k.cgroup_id))
            .count();
        snap.count_entries = counts.fullest;
        let dead_timed: Vec<SyscallKey> = timed
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| reap.contains(&k.cgroup_id))
            .collect();
        snap.syscalls = counts
            .calls
            .into_iter()
            .map(|((cgroup_id, nr), n)| (SyscallKey::new(cgroup_id, nr), n))
            .collect();
        snap.latency = timed;
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
        self.counts.retire(&reap);
        let dead = |id: &u64| reap.contains(id);
        remove_all(&mut self.stats, dead_timed.into_iter());
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
        snap.queue_waits = self.queue_waits;
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
    match super::batch::read_summed(map, &add) {
        Ok(Some(all)) => return Ok(all),
        Ok(None) => {}
        Err(e) => {
            return Err(KernelError::Map {
                map: name,
                source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error: e,
                }),
            });
        }
    }
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
