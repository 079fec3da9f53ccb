//! What the agent's tasks share, and the two things that change it: collection passes (kernel
//! maps, cgroupfs, name lookups) and kernel events (cgroups, processes, OOM kills).
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Instant, SystemTime},
};

use tracing::{debug, warn};

use palisade_cgroupfs as cgroupfs;

use crate::{
    config::{Config, Pattern},
    events::{Clock, ContainerRef, Event, EventType, Hub, ProcessRef, rfc3339},
    identity::{Identity, Inserted, Registry, names::Resolver},
    kernel::{
        CgroupChange, KernelError, KernelEvent, KernelHandle,
        events::{Exec, Exit, ExitStatus, Oom},
    },
    metrics::{Info, SelfMetrics},
    model::Model,
    procs::{Proc, ProcessTable},
    resources,
};

/// Registry, numbers and processes, behind one lock so a pass sees a consistent registry.
pub struct State {
    pub registry: Registry,
    pub model: Model,
    pub procs: ProcessTable,
    pub resolver: Resolver,
    pub net: crate::net::NetState,
}

/// What the HTTP handlers, the control socket and background tasks share.
pub struct Shared {
    pub state: tokio::sync::Mutex<State>,
    pub kernel: KernelHandle,
    pub config: Config,
    pub info: Info,
    pub own: SelfMetrics,
    pub unified_root: PathBuf,
    pub hub: Arc<Hub>,
    pub resources: resources::Reader,
    /// The policy engine (idle when no policy exists).
    pub policy: crate::policy::Handle,
}

pub fn selected(patterns: &[Pattern], identity: &Identity) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| p.is_match(&identity.name) || p.is_match(&identity.path))
}

/// The `container` object of an event.
pub(crate) fn container_ref(i: &Identity) -> ContainerRef {
    ContainerRef {
        id: i.display_id().to_owned(),
        name: i.name.clone(),
        cgroup_id: i.cgroup_id,
        runtime: i.runtime.as_str().to_owned(),
        image: i.image.clone(),
        namespace: i.namespace.clone(),
        pod: i.pod.clone(),
    }
}

fn process_ref(p: &Proc) -> ProcessRef {
    ProcessRef {
        pid: p.pid,
        ppid: p.ppid,
        uid: p.uid,
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        args: p.args.clone(),
        args_truncated: p.args_truncated,
    }
}

impl Shared {
    /// Tells the kernel to trace newly known cgroups when a filter is set and they match.
    pub(crate) async fn select_new(&self, identities: Vec<Identity>) {
        if self.policy.active() && !identities.is_empty() {
            let t = identities
                .iter()
                .map(crate::policy::TargetInfo::of)
                .collect();
            self.policy.send(crate::policy::Cmd::Upsert(t)).await;
        }
        if self.config.syscalls.cgroups.is_empty() {
            return;
        }
        for identity in identities {
            if selected(&self.config.syscalls.cgroups, &identity)
                && let Err(e) = self.kernel.select(identity.cgroup_id, true).await
            {
                warn!(error = %e, "cannot update the cgroup filter");
            }
        }
    }

    /// The identity of `cgroup_id`, learning it from the kernel by id when no event told us.
    pub(crate) fn identity_of(
        &self,
        st: &mut State,
        cgroup_id: u64,
        new: &mut Vec<Identity>,
    ) -> Option<Identity> {
        if st.registry.get(cgroup_id).is_none() {
            let path = cgroupfs::resolve_id(&self.unified_root, cgroup_id)?;
            if st.registry.insert(cgroup_id, &path) == Inserted::New {
                new.extend(st.registry.get(cgroup_id).cloned());
            }
        }
        st.registry.get(cgroup_id).cloned()
    }

    /// One collection pass: read the kernel maps, reap removed cgroups, name unknown ids, look up
    /// container names, read cgroupfs, expire old removals. `background` passes (not scrapes)
    /// also walk the flow table: they end idle flows and write interim flow records.
    pub async fn collect(&self, background: bool) -> Result<(), KernelError> {
        let now = Instant::now();
        let mut st = self.state.lock().await;
        let reap = st.registry.unreaped();
        let flows = background && self.config.network.enabled;
        let snap = self.kernel.collect(reap, flows).await?;
        let mut unknown: Vec<u64> = snap
            .syscalls
            .iter()
            .map(|(k, _)| k.cgroup_id)
            .chain(snap.errnos.iter().map(|(k, _)| k.cgroup_id))
            .chain(snap.processes.iter().map(|(id, _)| *id))
            .chain(snap.net.iter().map(|(id, _)| *id))
            .chain(snap.tcp.iter().map(|(id, _)| *id))
            .filter(|id| st.registry.get(*id).is_none())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        let mut new = Vec::new();
        for id in unknown {
            // An event was lost or not yet processed: ask the kernel for the path by id.
            if self.identity_of(&mut st, id, &mut new).is_none() {
                debug!(
                    cgroup_id = id,
                    "unknown cgroup not found by id: taken for removed"
                );
                st.registry.mark_removed(id, None, now);
            }
        }
        st.model.apply(&snap);
        st.registry.mark_reaped(&snap.reaped);
        let expired = st
            .registry
            .expire(now, self.config.metrics.series_grace_period);
        st.model.forget(&expired);
        st.net.forget_cgroups(&expired);

        let window = self.config.identity.name_resolution_window;
        // a fresh `now`: cgroups learned during this pass (or just before it took the lock)
        // are due at once
        let now = Instant::now();
        for identity in st.registry.due_for_naming(now) {
            let found = st.resolver.resolve(&identity);
            st.registry
                .apply_names(identity.cgroup_id, found, now, window);
        }
        let live: Vec<(u64, String)> = st
            .registry
            .live()
            .map(|i| (i.cgroup_id, i.path.clone()))
            .collect();
        drop(st);

        if self.config.resources.enabled {
            // cgroupfs reads happen without the lock.
            let reader = self.resources.clone();
            let read = tokio::task::spawn_blocking(move || {
                live.into_iter()
                    .map(|(id, path)| (id, reader.read(&path)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let unix = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let mut st = self.state.lock().await;
            for (id, mut r) in read {
                if let Some(i) = st.registry.get(id).filter(|i| i.is_live()) {
                    if let Some(created) = i.created_at {
                        r.start_time_seconds = created
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs_f64());
                    }
                    let e = st.model.by_cgroup.entry(id).or_default();
                    e.resources = Some(r);
                    e.last_seen = Some(unix);
                }
            }
        }
        self.select_new(new).await;
        self.policy_sync(false).await;
        if let Some(flows) = &snap.flows {
            self.flow_pass(flows, snap.flows_created).await?;
        }
        Ok(())
    }

    /// Gives the policy engine every live cgroup (names may have changed since it last saw
    /// them); skipped when no policy exists unless `always` (the first sync at start-up).
    pub async fn policy_sync(&self, always: bool) {
        if !always && !self.policy.active() {
            return;
        }
        let live = {
            let st = self.state.lock().await;
            st.registry
                .live()
                .map(crate::policy::TargetInfo::of)
                .collect()
        };
        self.policy.send(crate::policy::Cmd::Sync(live)).await;
    }

    /// Names a launcher workload and makes sure the kernel traces it (registering opts in, even
    /// past a `--cgroup` filter). Returns once both are done.
    pub async fn register_workload(
        &self,
        cgroup_id: u64,
        path: &str,
        name: &str,
    ) -> Result<(), KernelError> {
        let mut st = self.state.lock().await;
        if st.registry.register_workload(cgroup_id, path, name) == Inserted::Dropped {
            warn!(
                cgroup_id,
                name, "identity registry full; workload not named"
            );
        }
        drop(st);
        if !self.config.syscalls.cgroups.is_empty() {
            self.kernel.select(cgroup_id, true).await?;
        }
        Ok(())
    }

    /// Applies one kernel event and publishes what it means.
    pub async fn apply_event(&self, ev: KernelEvent, clock: &Clock) {
        let ev = match ev {
            KernelEvent::Tcp(t) => return self.on_tcp(t, clock).await,
            KernelEvent::Dns(d) => return self.on_dns(d).await,
            other => other,
        };
        let mut new = Vec::new();
        let mut st = self.state.lock().await;
        match ev {
            KernelEvent::Tcp(_) | KernelEvent::Dns(_) => {}
            KernelEvent::Cgroup(CgroupChange::Created {
                cgroup_id,
                path,
                truncated,
            }) => {
                let path = if truncated {
                    cgroupfs::resolve_id(&self.unified_root, cgroup_id).unwrap_or(path)
                } else {
                    path
                };
                if st.registry.insert(cgroup_id, &path) == Inserted::New {
                    new.extend(st.registry.get(cgroup_id).cloned());
                }
                // Taken for removed before its event arrived (a collection could not find it
                // by id): it exists, so it is live again.
                if st.registry.get(cgroup_id).is_some_and(|i| !i.is_live())
                    && cgroupfs::cgroup_id(&cgroupfs::dir(&self.unified_root, &path))
                        .is_ok_and(|id| id == cgroup_id)
                    && st.registry.revive(cgroup_id)
                {
                    debug!(cgroup_id, path, "cgroup revived by its creation event");
                    new.extend(st.registry.get(cgroup_id).cloned());
                }
                st.registry.mark_created(cgroup_id, SystemTime::now());
                debug!(cgroup_id, path, "cgroup created");
            }
            KernelEvent::Cgroup(CgroupChange::Removed { cgroup_id, path }) => {
                debug!(cgroup_id, path, "cgroup removed");
                if self.policy.active() {
                    let p = self.policy.clone();
                    tokio::spawn(
                        async move { p.send(crate::policy::Cmd::Remove(cgroup_id)).await },
                    );
                }
                st.registry
                    .mark_removed(cgroup_id, Some(&path), Instant::now());
                if let Some(i) = st.registry.get(cgroup_id).filter(|i| i.started) {
                    let lifetime = i
                        .created_at
                        .and_then(|c| SystemTime::now().duration_since(c).ok())
                        .map(|d| d.as_secs_f64());
                    let ev = Event {
                        lifetime_seconds: lifetime,
                        ..Event::new(
                            EventType::ContainerStop,
                            rfc3339(SystemTime::now()),
                            container_ref(i),
                        )
                    };
                    self.hub.publish(ev);
                }
            }
            KernelEvent::Exec(e) => self.on_exec(&mut st, *e, clock, &mut new),
            KernelEvent::Exit(e) => self.on_exit(&mut st, e, clock, &mut new),
            KernelEvent::Oom(e) => self.on_oom(&mut st, e, clock, &mut new),
        }
        drop(st);
        self.select_new(new).await;
    }

    fn on_exec(&self, st: &mut State, e: Exec, clock: &Clock, new: &mut Vec<Identity>) {
        let args = e.args.clone().unwrap_or_else(|| {
            // No BTF: best effort from /proc (the process may already be gone).
            std::fs::read(format!("/proc/{}/cmdline", e.pid))
                .map(|b| crate::kernel::events::split_args(&b))
                .unwrap_or_default()
        });
        let p = Proc {
            pid: e.pid,
            ppid: e.ppid,
            uid: e.uid,
            comm: e.comm.clone(),
            exe: e.filename.clone(),
            args,
            args_truncated: e.args_truncated,
            cgroup_id: e.cgroup_id,
            exec_ktime_ns: e.ktime_ns,
        };
        let process = process_ref(&p);
        st.procs.exec(p);
        let Some(identity) = self.identity_of(st, e.cgroup_id, new) else {
            return;
        };
        let time = rfc3339(clock.wall(e.ktime_ns));
        if st.registry.first_exec(e.cgroup_id) {
            self.hub.publish(Event {
                process: Some(process.clone()),
                ..Event::new(
                    EventType::ContainerStart,
                    time.clone(),
                    container_ref(&identity),
                )
            });
        }
        self.hub.publish(Event {
            process: Some(process),
            ..Event::new(EventType::Exec, time, container_ref(&identity))
        });
    }

    fn on_exit(&self, st: &mut State, e: Exit, clock: &Clock, new: &mut Vec<Identity>) {
        let known = st.procs.exit(e.pid);
        let Some(identity) = self.identity_of(st, e.cgroup_id, new) else {
            return;
        };
        let process = match &known {
            Some(p) => ProcessRef {
                comm: e.comm.clone(),
                ..process_ref(p)
            },
            None => ProcessRef {
                pid: e.pid,
                ppid: None,
                uid: 0,
                comm: e.comm.clone(),
                exe: String::new(),
                args: Vec::new(),
                args_truncated: false,
            },
        };
        let start = e.start_ns.or(known.as_ref().map(|p| p.exec_ktime_ns));
        let (exit_code, signal) = match e.status {
            ExitStatus::Code(c) => (Some(c), None),
            ExitStatus::Signal(s) => (None, Some(s)),
            ExitStatus::Unknown => (None, None),
        };
        self.hub.publish(Event {
            process: Some(process),
            exit_code,
            signal,
            lifetime_seconds: start.map(|s| e.ktime_ns.saturating_sub(s) as f64 / 1e9),
            ..Event::new(
                EventType::Exit,
                rfc3339(clock.wall(e.ktime_ns)),
                container_ref(&identity),
            )
        });
    }

    fn on_oom(&self, st: &mut State, e: Oom, clock: &Clock, new: &mut Vec<Identity>) {
        // The victim's own cgroup when we saw it exec; else the cgroup that hit the limit.
        let victim = st.procs.get(e.pid).cloned();
        let cgroup_id = victim.as_ref().map_or(e.cgroup_id, |p| p.cgroup_id);
        st.model.by_cgroup.entry(cgroup_id).or_default().oom_kills += 1;
        let Some(identity) = self.identity_of(st, cgroup_id, new) else {
            return;
        };
        let process = match &victim {
            Some(p) => process_ref(p),
            None => ProcessRef {
                pid: e.pid,
                ppid: None,
                uid: e.uid,
                comm: e.comm.clone(),
                exe: String::new(),
                args: Vec::new(),
                args_truncated: false,
            },
        };
        warn!(container = %identity.name, pid = e.pid, comm = %e.comm, "OOM kill");
        self.hub.publish(Event {
            process: Some(process),
            ..Event::new(
                EventType::Oom,
                rfc3339(clock.wall(e.ktime_ns)),
                container_ref(&identity),
            )
        });
    }

    /// Reconciles the registry with a walk of the unified hierarchy.
    pub async fn rescan(&self) -> std::io::Result<()> {
        let root = self.unified_root.clone();
        let started = Instant::now();
        let walked = tokio::task::spawn_blocking(move || cgroupfs::walk(&root))
            .await
            .map_err(std::io::Error::other)??;
        let mut st = self.state.lock().await;
        let (added, removed) = st.registry.sync(&walked, started, Instant::now());
        let new: Vec<Identity> = added
            .iter()
            .filter_map(|id| st.registry.get(*id).cloned())
            .collect();
        drop(st);
        if !added.is_empty() || !removed.is_empty() {
            debug!(added = added.len(), removed = removed.len(), "rescan");
        }
        self.select_new(new).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matches_names_and_paths() {
        let id = Identity::new(5, "/palisade/web-0");
        let pats = vec![Pattern::new("web-*").unwrap()];
        assert!(selected(&pats, &id));
        let pats = vec![Pattern::new("/palisade/*").unwrap()];
        assert!(selected(&pats, &id));
        let pats = vec![Pattern::new("db-*").unwrap()];
        assert!(!selected(&pats, &id));
        assert!(selected(&[], &id));
    }
}
