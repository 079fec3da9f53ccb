//! The owner task: its data, its loop, and the commands it answers.
use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{Cmd, StateError, StateHandle, collect::Collection};
use crate::{
    config::Config,
    events::{Clock, Hub},
    identity::{Identity, Inserted, Registry, names::Resolver},
    kernel::{KernelHandle, Output},
    metrics::{self, Info, SelfMetrics},
    model::Model,
    net::NetState,
    policy,
    procs::ProcessTable,
    resources,
};

/// What the owner is started with.
pub struct Parts {
    pub config: Config,
    pub kernel: KernelHandle,
    /// The kernel actor's output stream.
    pub kernel_out: mpsc::Receiver<Output>,
    pub policy: policy::Handle,
    pub hub: Arc<Hub>,
    pub info: Info,
    pub own: SelfMetrics,
    pub resources: resources::Reader,
    pub unified_root: PathBuf,
    /// Where every collection's metric families go (the OTLP metrics export), when it runs.
    pub published: Option<metrics::Published>,
}

/// Work done off the task (blocking reads of cgroupfs) coming back.
pub(super) enum Internal {
    /// Resource readings of the current collection.
    Resources(Vec<(u64, resources::Resources)>),
    /// A walk of the unified hierarchy that started at `started`.
    Walked {
        started: Instant,
        result: std::io::Result<Vec<(u64, String)>>,
    },
}

pub(super) struct Owner {
    pub config: Config,
    pub registry: Registry,
    pub model: Model,
    pub procs: ProcessTable,
    pub resolver: Resolver,
    pub net: NetState,
    pub kernel: KernelHandle,
    pub policy: policy::Handle,
    pub hub: Arc<Hub>,
    pub info: Info,
    pub own: SelfMetrics,
    pub resources: resources::Reader,
    pub unified_root: PathBuf,
    pub published: Option<metrics::Published>,
    /// Cgroups learned since the last flush: the kernel filter and the policy task hear of
    /// them once the current message is handled.
    pub new: Vec<Identity>,
    /// Live cgroups a full registry does not hold (id → path): not named or counted, but the
    /// policy task still knows them, so a full registry never means "not enforced".
    pub overflow: HashMap<u64, String>,
    /// Such cgroups learned since the last flush (the policy task hears of them).
    pub new_overflow: Vec<Identity>,
    /// The collection waiting for the kernel or for cgroupfs, and the one to start after it
    /// (every request joins the next one, so it sees numbers read after it asked).
    pub current: Option<Collection>,
    pub next: Option<Collection>,
    pub internal: mpsc::Sender<Internal>,
    walking: bool,
    walk_waiters: Vec<oneshot::Sender<Result<usize, StateError>>>,
    /// The first walk is done and the policy task has seen every cgroup.
    policies_synced: bool,
}

/// Starts the owner on the current runtime.
pub fn spawn(p: Parts) -> (StateHandle, tokio::task::JoinHandle<()>) {
    let (tx, cmds) = mpsc::channel(1024);
    let (internal, internal_rx) = mpsc::channel(16);
    let owner = Owner {
        registry: Registry::new(
            p.config.identity.max_cgroups,
            p.config.identity.runtime_parents.clone(),
        ),
        model: Model::default(),
        procs: ProcessTable::new(
            p.config.processes.max_per_container,
            p.config.processes.max_total,
        ),
        resolver: Resolver::new(p.config.identity.roots.clone()),
        net: NetState::default(),
        kernel: p.kernel,
        policy: p.policy,
        hub: p.hub,
        info: p.info,
        own: p.own,
        resources: p.resources,
        unified_root: p.unified_root,
        published: p.published,
        new: Vec::new(),
        overflow: HashMap::new(),
        new_overflow: Vec::new(),
        current: None,
        next: None,
        internal,
        walking: false,
        walk_waiters: Vec::new(),
        policies_synced: false,
        config: p.config,
    };
    let task = tokio::spawn(owner.run(cmds, p.kernel_out, internal_rx));
    (StateHandle { tx }, task)
}

impl Owner {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut kernel_out: mpsc::Receiver<Output>,
        mut internal: mpsc::Receiver<Internal>,
    ) {
        let mut collect_tick = tokio::time::interval(self.config.metrics.collect_interval);
        let mut rescan_tick = tokio::time::interval(self.config.identity.rescan_interval);
        // the first walk is asked for by start-up
        rescan_tick.tick().await;
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => break,
                },
                out = kernel_out.recv() => match out {
                    Some(Output::Event(ev)) => {
                        // re-anchor monotonic → wall time per event (cheap; follows clock steps)
                        self.apply_event(ev, &Clock::now()).await;
                    }
                    Some(Output::Snapshot(snap)) => self.on_snapshot(snap).await,
                    Some(Output::Taken(flows)) => self.on_taken(flows),
                    None => {
                        debug!("kernel actor gone; state owner stops");
                        break;
                    }
                },
                msg = internal.recv() => match msg {
                    Some(Internal::Resources(read)) => self.on_resources(read).await,
                    Some(Internal::Walked { started, result }) => self.on_walked(started, result).await,
                    None => break,
                },
                _ = collect_tick.tick() => self.want_collection(|c| {
                    c.flows_read = true;
                    c.flow_pass = true;
                    c.resources_all = true;
                }),
                _ = rescan_tick.tick() => self.start_walk(),
            }
            let _ = self.flush_new().await;
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Scrape { reply } => self.want_collection(|c| c.scrapes.push(reply)),
            Cmd::Learn { req, reply } => self.want_collection(|c| {
                c.flows_read |= req.flows;
                c.learns.push((req, reply));
            }),
            Cmd::Launched { ids, reply } => {
                let any = ids
                    .iter()
                    .any(|id| self.registry.get(*id).is_some_and(|i| i.registered));
                let _ = reply.send(Ok(any));
            }
            Cmd::Rescan { reply } => {
                self.walk_waiters.push(reply);
                self.start_walk();
            }
            Cmd::Register {
                name,
                cgroup_id,
                path,
                launched,
                reply,
            } => self.register(name, cgroup_id, &path, launched, reply),
        }
    }

    /// Names a launcher workload and makes sure the kernel traces it (registering opts in, even
    /// past a `--cgroup` filter); its policies are applied by the policy task. The reply goes
    /// out once both are in place, from a task of its own so this loop never waits.
    fn register(
        &mut self,
        name: String,
        cgroup_id: u64,
        path: &str,
        launched: Option<policy::Launched>,
        reply: oneshot::Sender<Result<(), StateError>>,
    ) {
        let target = if self.registry.register_workload(cgroup_id, path, &name) == Inserted::Dropped
        {
            warn!(
                cgroup_id,
                name, "identity registry full; workload not named in metrics (its policies apply)"
            );
            self.overflow.insert(cgroup_id, path.to_owned());
            let mut i = self.registry.identify(cgroup_id, path);
            i.name = name.clone();
            i.registered = true;
            Some(super::apply::target(&i))
        } else {
            self.registry.get(cgroup_id).map(super::apply::target)
        };
        let selected = if self.config.syscalls.cgroups.is_empty() {
            None
        } else {
            match self.kernel.select(vec![cgroup_id]) {
                Ok(rx) => Some(rx),
                Err(e) => {
                    let _ = reply.send(Err(StateError::Kernel(Arc::new(e))));
                    return;
                }
            }
        };
        let policy = self.policy.clone();
        tokio::spawn(async move {
            if let Some(rx) = selected
                && rx.await.is_err()
            {
                let _ = reply.send(Err(StateError::Gone));
                return;
            }
            let r = if launched.is_none() && !policy.active() {
                Ok(())
            } else {
                match target {
                    Some(t) => policy
                        .register(t, launched)
                        .await
                        .map_err(|e| StateError::Policy(Arc::new(e))),
                    None => Err(StateError::UnknownCgroup(cgroup_id)),
                }
            };
            if r.is_ok() {
                info!(container = %name, cgroup_id, "workload registered");
            }
            let _ = reply.send(r);
        });
    }

    /// Walks the unified hierarchy off the task (one walk at a time).
    fn start_walk(&mut self) {
        if self.walking {
            return;
        }
        self.walking = true;
        let root = self.unified_root.clone();
        let tx = self.internal.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            let result = palisade_cgroupfs::walk(&root);
            let _ = tx.blocking_send(Internal::Walked { started, result });
        });
    }

    async fn on_walked(&mut self, started: Instant, result: std::io::Result<Vec<(u64, String)>>) {
        self.walking = false;
        let waiters = std::mem::take(&mut self.walk_waiters);
        let walked = match result {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, root = %self.unified_root.display(), "rescan failed");
                let e = StateError::Walk {
                    root: self.unified_root.clone(),
                    source: Arc::new(e),
                };
                for w in waiters {
                    let _ = w.send(Err(e.clone()));
                }
                return;
            }
        };
        let (added, removed) = self.registry.sync(&walked, started, Instant::now());
        // what the registry cannot hold: the policy task still hears of it
        let overflow: HashMap<u64, String> = walked
            .iter()
            .filter(|(id, _)| self.registry.get(*id).is_none())
            .cloned()
            .collect();
        for (id, path) in &overflow {
            if !self.overflow.contains_key(id) {
                self.new_overflow.push(self.registry.identify(*id, path));
            }
        }
        self.overflow = overflow;
        let new: Vec<Identity> = added
            .iter()
            .filter_map(|id| self.registry.get(*id).cloned())
            .collect();
        self.new.extend(new);
        if !added.is_empty() || !removed.is_empty() {
            debug!(added = added.len(), removed = removed.len(), "rescan");
        }
        // the kernel filter and the policy task hear of the new cgroups first: policies
        // apply once every cgroup is known (adopted pinned state stays in force until then)
        let selected = self.flush_new().await;
        if !self.policies_synced {
            self.policy_sync(true).await;
            self.policies_synced = true;
        }
        // A walk's answer means its cgroups are traced: the agent's ready file is written
        // after the first, and a workload started then must be counted. The answer waits
        // for the filter, from a task of its own so this loop never waits.
        let known = self.registry.len();
        tokio::spawn(async move {
            let r = match selected {
                Some(rx) => rx.await.map(|()| known).map_err(|_| StateError::Gone),
                None => Ok(known),
            };
            for w in waiters {
                let _ = w.send(r.clone());
            }
        });
    }

    /// Tells the kernel filter and the policy task about newly known cgroups; with a
    /// `--cgroup` filter that selects some of them, returns what resolves once the kernel's
    /// filter holds them.
    pub(super) async fn flush_new(&mut self) -> Option<oneshot::Receiver<()>> {
        if self.new.is_empty() && self.new_overflow.is_empty() {
            return None;
        }
        let new = std::mem::take(&mut self.new);
        let overflow = std::mem::take(&mut self.new_overflow);
        if self.policy.active() {
            let t = new
                .iter()
                .chain(overflow.iter())
                .map(super::apply::target)
                .collect();
            self.policy.send(policy::Cmd::Upsert(t)).await;
        }
        let patterns = &self.config.syscalls.cgroups;
        if patterns.is_empty() {
            return None;
        }
        let ids: Vec<u64> = new
            .iter()
            .filter(|i| super::apply::selected(patterns, i))
            .map(|i| i.cgroup_id)
            .collect();
        if ids.is_empty() {
            return None;
        }
        self.kernel
            .select(ids)
            .inspect_err(|e| warn!(error = %e, "cannot update the cgroup filter"))
            .ok()
    }

    /// Gives the policy task every live cgroup (names may have changed since it last saw
    /// them); skipped when no policy exists unless `always` (the first sync at start-up), and
    /// before that first one, which comes once the cgroup tree is walked. A sync of a partial
    /// set (a collection that finished before the walk) made a restarted agent take the
    /// previous agent's pinned violation counts of cgroups it had not seen yet for cgroups that
    /// are gone, and drop them.
    pub(super) async fn policy_sync(&mut self, always: bool) {
        if !always && (!self.policies_synced || !self.policy.active()) {
            return;
        }
        let mut live: Vec<_> = self.registry.live().map(super::apply::target).collect();
        live.extend(
            self.overflow
                .iter()
                .map(|(id, path)| super::apply::target(&self.registry.identify(*id, path))),
        );
        self.policy.send(policy::Cmd::Sync(live)).await;
    }
}
