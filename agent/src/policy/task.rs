//! The policy task: the one owner of the policy object (its own `aya::Ebpf`) and the engine.
//! Other tasks send [`Cmd`]s (with a `oneshot` reply where they wait); the task also drains
//! the violation ring buffer, watches the policy files and notices launched workloads killed
//! by their seccomp filter (an exit by SIGSYS).
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
use palisade_policy::{Mode, load_paths};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::{broadcast, mpsc, oneshot, watch},
};
use tracing::{info, warn};

use super::{
    engine::{Engine, Launched, TargetInfo},
    violation,
};
use crate::events::{Event, EventType, ProcessRef, Violation};

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
}

pub enum Cmd {
    Upsert(Vec<TargetInfo>),
    Remove(u64),
    Sync(Vec<TargetInfo>),
    Register {
        target: Box<TargetInfo>,
        launched: Option<Launched>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Reload {
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    Mode {
        name: String,
        mode: Mode,
        reply: oneshot::Sender<Result<(), String>>,
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

const GONE: &str = "the policy engine has stopped";

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
            warn!("{GONE}");
        }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, String> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| GONE.to_owned())?;
        rx.await.map_err(|_| GONE.to_owned())
    }

    pub async fn register(
        &self,
        target: TargetInfo,
        launched: Option<Launched>,
    ) -> Result<(), String> {
        self.ask(|reply| Cmd::Register {
            target: Box::new(target),
            launched,
            reply,
        })
        .await?
    }

    pub async fn reload(&self) -> Result<String, String> {
        self.ask(|reply| Cmd::Reload { reply: Some(reply) }).await?
    }

    pub async fn mode(&self, name: String, mode: Mode) -> Result<(), String> {
        self.ask(|reply| Cmd::Mode { name, mode, reply }).await?
    }

    pub async fn status(&self) -> Result<serde_json::Value, String> {
        self.ask(|reply| Cmd::Status { reply }).await
    }

    /// Folds the kernel's counts into the snapshot (before a scrape).
    pub async fn sweep(&self) {
        if self.active() {
            let _ = self.ask(|reply| Cmd::Sweep { reply }).await;
        }
    }
}

/// Starts the task; `initial` is the validated policy set from the files.
pub fn spawn(
    mut engine: Engine,
    initial: palisade_policy::PolicySet,
    exits: broadcast::Receiver<Arc<Event>>,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(1024);
    let (snapshot_tx, snapshot) = watch::channel(Arc::new(Snapshot::default()));
    let pinned = engine.cfg.pin_dir.join("maps").exists();
    let active = Arc::new(AtomicBool::new(!initial.policies.is_empty() || pinned));
    engine.set = initial;
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
    let mut reloads = 0u64;
    let mut reload_errors = 0u64;
    let watch = e.cfg.watch_interval;
    let mut tick = tokio::time::interval(if watch.is_zero() {
        std::time::Duration::from_secs(3600)
    } else {
        watch
    });
    let mut seen = fingerprint(&e.cfg.paths);
    loop {
        if let Some(r) = e.new_ring.take() {
            // SAFETY: the RingBuf owns its map fd and mmap for as long as it lives and
            // `as_raw_fd` always returns that descriptor; the AsyncFd owns the RingBuf.
            match unsafe { AsyncFd::register_with_interest(r, Interest::READABLE) } {
                Ok(fd) => ring = Some(fd),
                Err(err) => warn!(error = %err, "cannot poll the violation ring buffer"),
            }
        }
        active.store(
            !e.set.policies.is_empty() || !e.launched.is_empty() || e.kernel.is_some(),
            Ordering::Relaxed,
        );
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { break };
                // Violations already queued are reported first, while the rules and cgroups
                // they name are still known: a removed cgroup (or a reload) forgets them.
                if let Some(r) = ring.as_mut() {
                    report_queued(&mut e, r.get_mut());
                }
                handle(&mut e, cmd, &mut reloads, &mut reload_errors);
            }
            guard = readable(&mut ring) => {
                let Some(mut guard) = guard else {
                    warn!("violation ring buffer poll failed");
                    ring = None;
                    continue;
                };
                report_queued(&mut e, guard.get_inner_mut());
                guard.clear_ready();
            }
            ev = exits.recv() => match ev {
                Ok(ev) => sigsys(&mut e, &ev),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    exits = e.hub.subscribe();
                }
            },
            _ = tick.tick(), if !watch.is_zero() => {
                let now = fingerprint(&e.cfg.paths);
                if now != seen {
                    seen = now;
                    info!("policy files changed: reloading");
                    handle(&mut e, Cmd::Reload { reply: None }, &mut reloads, &mut reload_errors);
                }
            }
        }
        refresh(&e, &snapshot, reloads, reload_errors);
    }
}

/// Reports every violation record waiting in the ring buffer.
fn report_queued(e: &mut Engine, r: &mut RingBuf<MapData>) {
    let mut records = Vec::new();
    while let Some(item) = r.next() {
        if let Some(ev) = violation::decode(&item) {
            records.push(ev);
        }
    }
    for ev in &records {
        e.report
            .on_record(ev, &e.ids, e.kernel.as_ref(), &e.targets, &e.hub);
    }
}

fn refresh(e: &Engine, snapshot: &watch::Sender<Arc<Snapshot>>, reloads: u64, reload_errors: u64) {
    let mut cgroups: BTreeMap<(String, String), u64> = BTreeMap::new();
    for p in &e.set.policies {
        cgroups.insert((p.name.clone(), e.mode_of(p).as_str().to_owned()), 0);
    }
    for list in e.applied.values() {
        for (name, m) in list {
            *cgroups
                .entry((name.clone(), m.as_str().to_owned()))
                .or_default() += 1;
        }
    }
    let attached = e.kernel.as_ref().map(|k| k.attached()).unwrap_or_default();
    let s = Snapshot {
        violations: e.report.counts.clone(),
        reloads,
        reload_errors,
        cgroups,
        hooks: super::bpf::Hook::ALL
            .iter()
            .map(|h| (h.as_str(), attached.contains(h)))
            .collect(),
        lost: e.kernel.as_ref().map_or(0, |k| k.lost()),
        loaded: e.kernel.is_some(),
    };
    snapshot.send_replace(Arc::new(s));
}

fn reconcile(e: &mut Engine) {
    if !e.synced {
        // change nothing until the cgroups are known (adopted entries stay in force)
        return;
    }
    if let Err(err) = e.reconcile() {
        warn!(error = %err, "applying policies failed; the previous state stays");
    }
}

fn handle(e: &mut Engine, cmd: Cmd, reloads: &mut u64, reload_errors: &mut u64) {
    match cmd {
        Cmd::Upsert(t) => {
            if e.upsert(t) {
                reconcile(e);
            }
        }
        Cmd::Remove(id) => {
            if e.remove(id) {
                reconcile(e);
                if let Some(k) = e.kernel.as_mut() {
                    e.report.sweep(k, &e.ids, &e.targets, &e.hub, false);
                    e.report.forget_dead(k, &e.targets);
                }
            }
        }
        Cmd::Sync(live) => {
            if e.sync(live) {
                reconcile(e);
            }
            sweep(e);
        }
        Cmd::Register {
            target,
            launched,
            reply,
        } => {
            let id = target.cgroup_id;
            if let Some(l) = launched {
                e.launched.insert(id, l);
            }
            e.upsert(vec![*target]);
            let r = if e.synced { e.reconcile() } else { Ok(()) };
            let _ = reply.send(r);
        }
        Cmd::Reload { reply } => {
            let r = match load_paths(&e.cfg.paths) {
                Ok(set) => {
                    let n = set.policies.len();
                    e.set = set;
                    *reloads += 1;
                    reconcile(e);
                    info!(policies = n, "policies reloaded");
                    Ok(format!("{n} policies loaded"))
                }
                Err(errs) => {
                    *reload_errors += 1;
                    for d in &errs.0 {
                        warn!(error = %d, "policy reload rejected; the previous policies stay in force");
                    }
                    Err(errs.to_string())
                }
            };
            if let Some(reply) = reply {
                let _ = reply.send(r);
            }
        }
        Cmd::Mode { name, mode, reply } => {
            let r = e.set_mode(&name, mode);
            if r.is_ok() {
                info!(policy = %name, mode = mode.as_str(), "policy mode switched");
            }
            let _ = reply.send(r);
        }
        Cmd::Status { reply } => {
            let _ = reply.send(status(e));
        }
        Cmd::Sweep { reply } => {
            sweep(e);
            let _ = reply.send(());
        }
    }
}

fn sweep(e: &mut Engine) {
    if let Some(k) = e.kernel.as_mut() {
        e.report.sweep(k, &e.ids, &e.targets, &e.hub, false);
        e.report.forget_dead(k, &e.targets);
    }
}

fn status(e: &Engine) -> serde_json::Value {
    let mut policies = Vec::new();
    let mut names: Vec<(String, String, String)> = e
        .set
        .policies
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                e.mode_of(p).as_str().to_owned(),
                p.loc.to_string(),
            )
        })
        .collect();
    for l in e.launched.values() {
        for p in &l.policies {
            if !names.iter().any(|(n, _, _)| *n == p.name) {
                names.push((
                    p.name.clone(),
                    e.mode_of(p).as_str().to_owned(),
                    "palisade run".into(),
                ));
            }
        }
    }
    for (name, mode, source) in names {
        let mut cgroups: Vec<serde_json::Value> = e
            .applied
            .iter()
            .filter(|(_, l)| l.iter().any(|(n, _)| *n == name))
            .map(|(id, _)| {
                serde_json::json!({
                    "cgroup_id": id,
                    "container": e.targets.get(id).map(|t| t.name.clone()).unwrap_or_default(),
                })
            })
            .collect();
        cgroups.sort_by_key(|v| v["cgroup_id"].as_u64());
        policies.push(serde_json::json!({
            "name": name, "mode": mode, "source": source, "cgroups": cgroups,
        }));
    }
    serde_json::json!({
        "pin_dir": e.cfg.pin_dir.display().to_string(),
        "loaded": e.kernel.is_some(),
        "hooks": e.kernel.as_ref().map(|k| k.attached().iter().map(|h| h.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
        "policies": policies,
        "adopted_workloads": e.foreign.keys().collect::<Vec<_>>(),
    })
}

/// A launched workload killed by its seccomp filter (exit by SIGSYS) broke a `kill` rule.
fn sigsys(e: &mut Engine, ev: &Event) {
    const SIGSYS: i32 = 31;
    if ev.kind != EventType::Exit || ev.signal != Some(SIGSYS) {
        return;
    }
    let Some(l) = e.launched.get(&ev.container.cgroup_id) else {
        return;
    };
    let Some(p) = l.policies.iter().find(|p| {
        p.syscalls
            .as_ref()
            .is_some_and(|s| s.action == palisade_policy::model::SysAction::Kill)
    }) else {
        return;
    };
    let rule = match p.syscalls.as_ref().map(|s| s.list) {
        Some(palisade_policy::model::ListKind::Allow) => "syscalls.allow",
        _ => "syscalls.deny",
    };
    let v = Violation {
        policy: p.name.clone(),
        rule: rule.into(),
        action: "kill".into(),
        mode: e.mode_of(p).as_str().into(),
        hook: "seccomp".into(),
        syscall: None,
        errno: None,
        exec: None,
        network: None,
        suppressed: 0,
    };
    let process = ev.process.clone().unwrap_or(ProcessRef {
        pid: 0,
        ppid: None,
        uid: 0,
        comm: String::new(),
        exe: String::new(),
        args: Vec::new(),
        args_truncated: false,
    });
    e.report
        .userspace(v, ev.container.clone(), process, &e.hub.clone());
}
