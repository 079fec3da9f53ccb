//! The policy task's commands, answered by the engine: cgroups coming and going,
//! registrations, reloads, mode switches, status, and the violations to report.
use std::collections::BTreeMap;

use aya::maps::{MapData, RingBuf};
use palisade_policy::{
    load_paths,
    model::{ListKind, SysAction},
};
use tracing::{info, warn};

use super::Engine;
use crate::{
    events::{Event, EventType, ProcessRef, Violation},
    policy::{Cmd, PolicyError, Snapshot, bpf::Hook, violation},
};

impl Engine {
    /// Whether anything is (or may be) enforced: callers skip building cgroup lists otherwise.
    pub fn active(&self) -> bool {
        !self.set.policies.is_empty() || !self.launched.is_empty() || self.kernel.is_some()
    }

    pub fn config(&self) -> &crate::config::PolicyConfig {
        &self.cfg
    }

    pub fn hub(&self) -> &crate::events::Hub {
        &self.hub
    }

    /// A violation ring buffer the task has not polled yet (after a load).
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.new_ring.take()
    }

    /// Reports every violation record waiting in the ring buffer.
    pub fn report_queued(&mut self, r: &mut RingBuf<MapData>) {
        let mut records = Vec::new();
        while let Some(item) = r.next() {
            if let Some(ev) = violation::decode(&item) {
                records.push(ev);
            }
        }
        for ev in &records {
            self.report.on_record(
                ev,
                &self.ids,
                self.kernel.as_ref(),
                &self.targets,
                &self.hub,
            );
        }
    }

    /// Changes nothing until the cgroups are known (adopted entries stay in force).
    fn reconcile_logged(&mut self) {
        if !self.synced {
            return;
        }
        if let Err(err) = self.reconcile() {
            warn!(error = %err, "applying policies failed; the previous state stays");
        }
    }

    pub fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Upsert(t) => {
                if self.upsert(t) {
                    self.reconcile_logged();
                }
            }
            Cmd::Remove(id) => {
                if self.remove(id) {
                    self.reconcile_logged();
                    self.sweep();
                }
            }
            Cmd::Sync(live) => {
                if self.sync(live) {
                    self.reconcile_logged();
                }
                self.sweep();
            }
            Cmd::Register {
                target,
                launched,
                reply,
            } => {
                let id = target.cgroup_id;
                if let Some(l) = launched {
                    self.launched.insert(id, l);
                }
                self.upsert(vec![*target]);
                let r = if self.synced {
                    self.reconcile()
                } else {
                    Ok(())
                };
                let _ = reply.send(r);
            }
            Cmd::Reload { reply } => {
                let r = self.reload();
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Cmd::Mode { name, mode, reply } => {
                let r = self.set_mode(&name, mode);
                if r.is_ok() {
                    info!(policy = %name, mode = mode.as_str(), "policy mode switched");
                }
                let _ = reply.send(r);
            }
            Cmd::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Cmd::Sweep { reply } => {
                self.sweep();
                let _ = reply.send(());
            }
        }
    }

    /// Reads the files again; an invalid file leaves the previous policies in force.
    pub fn reload(&mut self) -> Result<usize, PolicyError> {
        match load_paths(&self.cfg.paths) {
            Ok(set) => {
                let n = set.policies.len();
                self.set = set;
                self.reloads += 1;
                self.reconcile_logged();
                info!(policies = n, "policies reloaded");
                Ok(n)
            }
            Err(errs) => {
                self.reload_errors += 1;
                for d in &errs.0 {
                    warn!(error = %d, "policy reload rejected; the previous policies stay in force");
                }
                Err(errs.into())
            }
        }
    }

    /// Folds the kernel's counts into the counters; forgets what removed cgroups left.
    fn sweep(&mut self) {
        if let Some(k) = self.kernel.as_mut() {
            self.report
                .sweep(k, &self.ids, &self.targets, &self.hub, false);
            self.report.forget_dead(k, &self.targets);
        }
    }

    /// What `/metrics` shows.
    pub fn snapshot(&self) -> Snapshot {
        let mut cgroups: BTreeMap<(String, String), u64> = BTreeMap::new();
        for p in &self.set.policies {
            cgroups.insert((p.name.clone(), self.mode_of(p).as_str().to_owned()), 0);
        }
        for list in self.applied.values() {
            for (name, m) in list {
                *cgroups
                    .entry((name.clone(), m.as_str().to_owned()))
                    .or_default() += 1;
            }
        }
        let attached = self
            .kernel
            .as_ref()
            .map(|k| k.attached())
            .unwrap_or_default();
        Snapshot {
            violations: self.report.counts.clone(),
            reloads: self.reloads,
            reload_errors: self.reload_errors,
            cgroups,
            hooks: Hook::ALL
                .iter()
                .map(|h| (h.as_str(), attached.contains(h)))
                .collect(),
            lost: self.kernel.as_ref().map_or(0, |k| k.lost()),
            loaded: self.kernel.is_some(),
            managed: self
                .applied
                .keys()
                .chain(self.foreign.keys())
                .chain(self.launched.keys())
                .copied()
                .collect(),
        }
    }

    /// `palisade policy status`.
    fn status(&self) -> serde_json::Value {
        let mut policies = Vec::new();
        let mut names: Vec<(String, String, String)> = self
            .set
            .policies
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    self.mode_of(p).as_str().to_owned(),
                    p.loc.to_string(),
                )
            })
            .collect();
        for l in self.launched.values() {
            for p in &l.policies {
                if !names.iter().any(|(n, _, _)| *n == p.name) {
                    names.push((
                        p.name.clone(),
                        self.mode_of(p).as_str().to_owned(),
                        "palisade run".into(),
                    ));
                }
            }
        }
        for (name, mode, source) in names {
            let mut cgroups: Vec<serde_json::Value> = self
                .applied
                .iter()
                .filter(|(_, l)| l.iter().any(|(n, _)| *n == name))
                .map(|(id, _)| {
                    serde_json::json!({
                        "cgroup_id": id,
                        "container": self.targets.get(id).map(|t| t.name.clone()).unwrap_or_default(),
                    })
                })
                .collect();
            cgroups.sort_by_key(|v| v["cgroup_id"].as_u64());
            policies.push(serde_json::json!({
                "name": name, "mode": mode, "source": source, "cgroups": cgroups,
            }));
        }
        serde_json::json!({
            "pin_dir": self.cfg.pin_dir.display().to_string(),
            "loaded": self.kernel.is_some(),
            "hooks": self.kernel.as_ref().map(|k| k.attached().iter().map(|h| h.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
            "policies": policies,
            "adopted_workloads": self.foreign.keys().collect::<Vec<_>>(),
            "exec_match": self.exec.matching.status(),
        })
    }

    /// A launched workload killed by its seccomp filter (exit by SIGSYS) broke a `kill` rule.
    pub fn sigsys(&mut self, ev: &Event) {
        const SIGSYS: i32 = 31;
        if ev.kind != EventType::Exit || ev.signal != Some(SIGSYS) {
            return;
        }
        let Some(l) = self.launched.get(&ev.container.cgroup_id) else {
            return;
        };
        let Some(p) = l.policies.iter().find(|p| {
            p.syscalls
                .as_ref()
                .is_some_and(|s| s.action == SysAction::Kill)
        }) else {
            return;
        };
        let rule = match p.syscalls.as_ref().map(|s| s.list) {
            Some(ListKind::Allow) => "syscalls.allow",
            _ => "syscalls.deny",
        };
        let v = Violation {
            policy: p.name.clone(),
            rule: rule.into(),
            action: "kill".into(),
            mode: self.mode_of(p).as_str().into(),
            hook: "seccomp".into(),
            syscall: None,
            errno: None,
            exec: None,
            exec_detail: Default::default(),
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
        self.report
            .userspace(v, ev.container.clone(), process, &self.hub);
    }
}
