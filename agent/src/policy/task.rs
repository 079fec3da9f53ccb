//! The policy task: the one owner of the policy object (its own `aya::Ebpf`) and the engine.
//! Other tasks send [`Cmd`]s (with a `oneshot` reply where they wait); the task also drains
//! the violation ring buffer, watches the policy files and notices launched workloads killed
//! by their seccomp filter (an exit by SIGSYS). It never waits for another task's answer.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use aya::maps::{MapData, RingBuf};
use palisade_policy::Mode;
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{broadcast, mpsc, oneshot, watch},
};
use tracing::{info, warn};

use super::{
    PolicyError,
    engine::{Engine, Launched, TargetInfo},
};
use crate::events::Event;

/// What `/metrics` shows about policies (refreshed by the task).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub violations: BTreeMap<super::report::CountKey, u64>,
    pub reloads: u64,
    pub reload_errors: u64,
    /// (policy, mode) → cgroups it applies to
    pub cgroups: BTreeMap<(String, String), u64>,
    /// (hook, attached)
    pub hooks: Vec<(&'static str, bool)>,
    pub lost: u64,
    pub loaded: bool,
    /// Cgroups some policy applies to (their processes may not use the control socket).
    pub managed: std::collections::BTreeSet<u64>,
    /// (policy, container, reason) of what is not in place (`palisade_policy_unenforced`).
    pub unenforced: Vec<(String, String, String)>,
}

pub enum Cmd {
    Upsert(Vec<TargetInfo>),
    Remove(u64),
    Sync(Vec<TargetInfo>),
    Register {
        target: Box<TargetInfo>,
        launched: Option<Launched>,
        reply: oneshot::Sender<Result<(), PolicyError>>,
    },
    Reload {
        /// The number of policies loaded.
        reply: Option<oneshot::Sender<Result<usize, PolicyError>>>,
    },
    Mode {
        name: String,
        mode: Mode,
        reply: oneshot::Sender<Result<(), PolicyError>>,
    },
    Status {
        reply: oneshot::Sender<serde_json::Value>,
    },
    Sweep {
        reply: oneshot::Sender<()>,
    },
}

/// Cheap, cloneable way to talk to the policy task.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Cmd>,
    snapshot: watch::Receiver<Arc<Snapshot>>,
    active: Arc<AtomicBool>,
}

impl Handle {
    /// Whether any policy exists (callers skip building cgroup lists otherwise).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// What `/metrics` shows, as of the task's last turn.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    pub async fn send(&self, c: Cmd) {
        if self.tx.send(c).await.is_err() {
            warn!("{}", PolicyError::Gone);
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, PolicyError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| PolicyError::Gone)?;
        rx.await.map_err(|_| PolicyError::Gone)
    }

    pub async fn register(
        &self,
        target: TargetInfo,
        launched: Option<Launched>,
    ) -> Result<(), PolicyError> {
        self.ask(|reply| Cmd::Register {
            target: Box::new(target),
            launched,
            reply,
        })
        .await?
    }

    /// Reloads the files; the number of policies now in force.
    pub async fn reload(&self) -> Result<usize, PolicyError> {
        self.ask(|reply| Cmd::Reload { reply: Some(reply) }).await?
    }

    pub async fn mode(&self, name: String, mode: Mode) -> Result<(), PolicyError> {
        self.ask(|reply| Cmd::Mode { name, mode, reply }).await?
    }

    pub async fn status(&self) -> Result<serde_json::Value, PolicyError> {
        self.ask(|reply| Cmd::Status { reply }).await
    }

    /// Folds the kernel's counts into the snapshot (before a scrape).
    pub async fn sweep(&self) {
        if self.active() {
            let _ = self.ask(|reply| Cmd::Sweep { reply }).await;
        }
    }
}

/// Starts the task around `engine` (which holds the validated policies from the files).
pub fn spawn(
    engine: Engine,
    exits: broadcast::Receiver<Arc<Event>>,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let (snapshot_tx, snapshot) = watch::channel(Arc::new(Snapshot::default()));
    let pinned = engine.config().pin_dir.join("maps").exists();
    let active = Arc::new(AtomicBool::new(engine.active() || pinned));
    let handle = Handle {
        tx,
        snapshot,
        active: active.clone(),
    };
    let task = tokio::spawn(run(engine, rx, exits, snapshot_tx, active));
    (handle, task)
}

/// Content of the policy files, to notice changes.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    for p in paths {
        let mut files = vec![p.clone()];
        if p.is_dir() {
            files = std::fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
        }
        for f in files {
            let md = std::fs::metadata(&f).ok();
            out.push((
                f,
                md.as_ref().map_or(0, |m| m.len()),
                md.and_then(|m| m.modified().ok()),
            ));
        }
    }
    out
}

async fn readable(
    ring: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> Option<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(r) => r.readable_mut().await.ok(),
        None => std::future::pending().await,
    }
}

async fn run(
    mut e: Engine,
    mut rx: mpsc::Receiver<Cmd>,
    mut exits: broadcast::Receiver<Arc<Event>>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    active: Arc<AtomicBool>,
) {
    let mut ring: Option<AsyncFd<RingBuf<MapData>>> = None;
    let watch = e.config().watch_interval;
    let mut tick = tokio::time::interval(if watch.is_zero() {
        std::time::Duration::from_secs(3600)
    } else {
        watch
    });
    let mut seen = fingerprint(&e.config().paths);
    // the snapshot is rebuilt after every command and tick, and after violations at most every
    // SNAPSHOT_EVERY: a flood wakes the task for every batch (and for each event it publishes,
    // which comes back on `exits`), and the snapshot clones the counts and reads a kernel map
    let mut snapped = std::time::Instant::now();
    loop {
        let mut changed = true;
        if let Some(r) = e.take_ring() {
            // SAFETY: the RingBuf owns its map fd and mmap for as long as it lives and
            // `as_raw_fd` always returns that descriptor; the AsyncFd owns the RingBuf.
            match unsafe { AsyncFd::register_with_interest(r, Interest::READABLE) } {
                Ok(fd) => ring = Some(fd),
                Err(err) => warn!(error = %err, "cannot poll the violation ring buffer"),
            }
        }
        active.store(e.active(), Ordering::Relaxed);
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                // Violations already queued are reported first, while the rules and cgroups
                // they name are still known: a removed cgroup (or a reload) forgets them.
                if let Some(r) = ring.as_mut() {
                    e.report_queued(r.get_mut(), e.hub().log_room());
                }
                e.handle(cmd);
            }
            guard = readable(&mut ring) => {
                let Some(mut guard) = guard else {
                    warn!("violation ring buffer poll failed");
                    ring = None;
                    continue;
                };
                e.report_queued(guard.get_inner_mut(), e.hub().log_room());
                guard.clear_ready();
                changed = false;
            }
            ev = exits.recv() => match ev {
                Ok(ev) => changed = e.sigsys(&ev),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    exits = e.hub().subscribe();
                }
            },
            _ = tick.tick(), if !watch.is_zero() => {
                let now = fingerprint(&e.config().paths);
                if now != seen {
                    seen = now;
                    info!("policy files changed: reloading");
                    let _ = e.reload();
                }
            }
        }
        if changed || snapped.elapsed() >= SNAPSHOT_EVERY {
            snapshot.send_replace(Arc::new(e.snapshot()));
            snapped = std::time::Instant::now();
        }
    }
}

/// How stale the snapshot may get while only violations arrive (a scrape sweeps first, a
/// command that refreshes it).
const SNAPSHOT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
