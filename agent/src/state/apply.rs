//! Kernel events applied to the state: cgroups appearing and going, execs, exits and OOM kills
//! (the process table), and the events they publish.
use std::time::{Instant, SystemTime};

use palisade_cgroupfs as cgroupfs;
use tracing::{debug, warn};

use super::owner::Owner;
use crate::{
    config::Pattern,
    events::{Clock, ContainerRef, Event, EventType, ProcessRef, rfc3339},
    identity::{Identity, Inserted},
    kernel::{
        CgroupChange, KernelEvent,
        events::{Exec, Exit, ExitStatus, Moved, Oom},
    },
    policy::{self, TargetInfo},
    procs::Proc,
};

/// Whether the `--cgroup` filter selects a cgroup (by name or path; no patterns: all).
pub fn selected(patterns: &[Pattern], identity: &Identity) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| p.is_match(&identity.name) || p.is_match(&identity.path))
}

/// The `container` object of an event.
pub fn container_ref(i: &Identity) -> ContainerRef {
    ContainerRef {
        id: i.display_id().to_owned(),
        name: i.name.clone(),
        cgroup_id: i.cgroup_id,
        runtime: i.runtime.as_str().to_owned(),
        image: i.image.clone(),
        namespace: i.namespace.clone(),
        pod: i.pod.clone(),
        pod_uid: i.pod_uid.clone().unwrap_or_default(),
    }
}

/// A cgroup as policies see it.
pub fn target(i: &Identity) -> TargetInfo {
    TargetInfo {
        cgroup_id: i.cgroup_id,
        name: i.name.clone(),
        container_id: i.container_id.clone(),
        runtime: i.runtime.as_str().to_owned(),
        namespace: i.namespace.clone(),
        pod: i.pod.clone(),
        path: i.path.clone(),
        workload: i.registered,
        container: container_ref(i),
    }
}

/// The `container` of an event whose cgroup is gone and was never seen (created and removed
/// between two reads of the ring buffer, its creation event lost): the event is published
/// with the id alone rather than dropped.
fn unknown_container(cgroup_id: u64) -> ContainerRef {
    ContainerRef {
        id: format!("cgroup:{cgroup_id}"),
        name: format!("cgroup:{cgroup_id}"),
        cgroup_id,
        runtime: "cgroup".into(),
        image: String::new(),
        namespace: String::new(),
        pod: String::new(),
        pod_uid: String::new(),
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

impl Owner {
    /// Applies one kernel event and publishes what it means.
    pub(super) async fn apply_event(&mut self, ev: KernelEvent, clock: &Clock) {
        match ev {
            KernelEvent::Tcp(t) => self.on_tcp(t, clock),
            KernelEvent::Dns(d) => self.on_dns(d),
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
                match self.registry.insert(cgroup_id, &path) {
                    Inserted::New => self.new.extend(self.registry.get(cgroup_id).cloned()),
                    Inserted::Dropped => {
                        self.overflow.insert(cgroup_id, path.clone());
                        self.new_overflow
                            .push(self.registry.identify(cgroup_id, &path));
                    }
                    Inserted::Known => {}
                }
                // Taken for removed before its event arrived (a collection could not find it
                // by id): it exists, so it is live again.
                if self.registry.get(cgroup_id).is_some_and(|i| !i.is_live())
                    && cgroupfs::cgroup_id(&cgroupfs::dir(&self.unified_root, &path))
                        .is_ok_and(|id| id == cgroup_id)
                    && self.registry.revive(cgroup_id)
                {
                    debug!(cgroup_id, path, "cgroup revived by its creation event");
                    self.new.extend(self.registry.get(cgroup_id).cloned());
                }
                self.registry.mark_created(cgroup_id, SystemTime::now());
                debug!(cgroup_id, path, "cgroup created");
            }
            KernelEvent::Cgroup(CgroupChange::Removed { cgroup_id, path }) => {
                debug!(cgroup_id, path, "cgroup removed");
                self.overflow.remove(&cgroup_id);
                if self.policy.active() {
                    self.policy.send(policy::Cmd::Remove(cgroup_id)).await;
                }
                self.registry
                    .mark_removed(cgroup_id, Some(&path), Instant::now());
                if let Some(i) = self.registry.get(cgroup_id).filter(|i| i.started) {
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
            KernelEvent::Moved(m) => self.on_moved(m, clock),
            KernelEvent::Exec(e) => self.on_exec(*e, clock),
            KernelEvent::Exit(e) => self.on_exit(e, clock),
            KernelEvent::Oom(e) => self.on_oom(e, clock),
        }
    }

    fn on_exec(&mut self, e: Exec, clock: &Clock) {
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
        self.procs.exec(p);
        let time = rfc3339(clock.wall(e.ktime_ns));
        let Some(identity) = self.identity_of(e.cgroup_id) else {
            self.hub.publish(Event {
                process: Some(process),
                ..Event::new(EventType::Exec, time, unknown_container(e.cgroup_id))
            });
            return;
        };
        if self.registry.first_exec(e.cgroup_id) {
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

    /// A task moved into another cgroup: one `cgroup_move` event, naming where it came from
    /// when the process table knew (the table follows the process).
    fn on_moved(&mut self, m: Moved, clock: &Clock) {
        let from = self
            .procs
            .moved(m.pid, m.cgroup_id)
            .filter(|was| *was != m.cgroup_id);
        let process = match self.procs.get(m.pid) {
            Some(p) => ProcessRef {
                comm: m.comm.clone(),
                ..process_ref(p)
            },
            None => ProcessRef {
                pid: m.pid,
                ppid: None,
                uid: 0,
                comm: m.comm.clone(),
                exe: String::new(),
                args: Vec::new(),
                args_truncated: false,
            },
        };
        let container = match self.identity_of(m.cgroup_id) {
            Some(i) => container_ref(&i),
            None => unknown_container(m.cgroup_id),
        };
        let from_container = from.map(|id| match self.identity_of(id) {
            Some(i) => container_ref(&i),
            None => unknown_container(id),
        });
        self.hub.publish(Event {
            process: Some(process),
            from_container,
            ..Event::new(
                EventType::CgroupMove,
                rfc3339(clock.wall(m.ktime_ns)),
                container,
            )
        });
    }

    fn on_exit(&mut self, e: Exit, clock: &Clock) {
        let known = self.procs.exit(e.pid);
        let container = match self.identity_of(e.cgroup_id) {
            Some(i) => container_ref(&i),
            None => unknown_container(e.cgroup_id),
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
            ..Event::new(EventType::Exit, rfc3339(clock.wall(e.ktime_ns)), container)
        });
    }

    fn on_oom(&mut self, e: Oom, clock: &Clock) {
        // The victim's own cgroup when we saw it exec; else the cgroup that hit the limit.
        let victim = self.procs.get(e.pid).cloned();
        let cgroup_id = victim.as_ref().map_or(e.cgroup_id, |p| p.cgroup_id);
        self.model.by_cgroup.entry(cgroup_id).or_default().oom_kills += 1;
        let container = match self.identity_of(cgroup_id) {
            Some(i) => container_ref(&i),
            None => unknown_container(cgroup_id),
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
        warn!(container = %container.name, pid = e.pid, comm = %e.comm, "OOM kill");
        self.hub.publish(Event {
            process: Some(process),
            ..Event::new(EventType::Oom, rfc3339(clock.wall(e.ktime_ns)), container)
        });
    }

    /// The identity of `cgroup_id`, learning it from the kernel by id when no event told us.
    pub(super) fn identity_of(&mut self, cgroup_id: u64) -> Option<Identity> {
        if self.registry.get(cgroup_id).is_none() {
            let path = cgroupfs::resolve_id(&self.unified_root, cgroup_id)?;
            if self.registry.insert(cgroup_id, &path) == Inserted::New {
                self.new.extend(self.registry.get(cgroup_id).cloned());
            }
        }
        self.registry.get(cgroup_id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matches_names_and_paths() {
        let id = Identity::new(5, "/palisade/web-0", &Default::default());
        let pats = vec![Pattern::new("web-*").unwrap()];
        assert!(selected(&pats, &id));
        let pats = vec![Pattern::new("/palisade/*").unwrap()];
        assert!(selected(&pats, &id));
        let pats = vec![Pattern::new("db-*").unwrap()];
        assert!(!selected(&pats, &id));
        assert!(selected(&[], &id));
    }
}
