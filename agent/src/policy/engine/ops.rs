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
    policy::{Cmd, PolicyError, Snapshot, hooks::Hook, violation},
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

    /// Reads every violation record waiting in the ring buffer and reports the first `room`
    /// (what the event log can take). The others are left out as if the ring had lost them:
    /// counted in `palisade_policy_events_lost_total` and in the `suppressed` of the next
    /// event of their rule (or its summary). Publishing them would only overrun the log, and
    /// leaving them in the ring would let a command forget the rules and cgroups they name.
    pub fn report_queued(&mut self, r: &mut RingBuf<MapData>, room: usize) {
        let mut records = Vec::new();
        while let Some(item) = r.next() {
            if records.len() >= room {
                self.held_back += 1;
            } else if let Some(ev) = violation::decode(&item) {
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
        self.report.flush();
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
                // registrations that waited for the cgroups to be known
                for (id, reply) in std::mem::take(&mut self.pending) {
                    let r = self.registered(id, Ok(()));
                    if r.is_err() {
                        self.withdraw(id);
                    }
                    let _ = reply.send(r);
                }
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
                if self.synced {
                    let r = self.reconcile();
                    let r = self.registered(id, r);
                    if r.is_err() {
                        self.withdraw(id);
                    }
                    let _ = reply.send(r);
                } else {
                    // applied once every cgroup is known (the first sync), then answered
                    self.pending.push((id, reply));
                }
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

    /// The answer to a registration of `cgroup_id`: refused when anything its policies need is
    /// not in place (a full table, a hook that does not attach, ...).
    fn registered(&self, cgroup_id: u64, r: Result<(), PolicyError>) -> Result<(), PolicyError> {
        r?;
        let missing = self.unenforced.of(cgroup_id);
        if missing.is_empty() {
            return Ok(());
        }
        Err(PolicyError::NotEnforced {
            container: self
                .targets
                .get(&cgroup_id)
                .map_or_else(|| format!("cgroup {cgroup_id}"), |t| t.name.clone()),
            why: missing.join("; "),
        })
    }

    /// A refused registration leaves nothing behind: the launcher does not start its workload,
    /// so its policies and what they could not get are forgotten (no "resolved" event: nothing
    /// was ever in force).
    fn withdraw(&mut self, cgroup_id: u64) {
        if self.launched.remove(&cgroup_id).is_some() {
            self.unenforced.forget(cgroup_id);
            self.reconcile_logged();
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
        for a in self.applied.values() {
            for (name, m) in &a.policies {
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
            lost: self.kernel.as_ref().map_or(0, |k| k.lost()) + self.held_back,
            loaded: self.kernel.is_some(),
            managed: self
                .applied
                .keys()
                .chain(self.foreign.keys())
                .chain(self.launched.keys())
                .copied()
                .collect(),
            unenforced: self.unenforced.rows(&self.targets),
        }
    }

    /// What will happen instead where a policy cannot be enforced as written: the notes of
    /// `palisade policy check` for the policies in force, and what this host lacks.
    fn notes(&self) -> Vec<String> {
        let mut out: Vec<String> = palisade_policy::check::warnings(&self.set)
            .iter()
            .map(ToString::to_string)
            .collect();
        let all = self
            .set
            .policies
            .iter()
            .chain(self.launched.values().flat_map(|l| l.policies.iter()));
        let (mut syscalls, mut egress) = (false, false);
        for p in all {
            syscalls |= p.syscalls.is_some();
            egress |= p.network.egress.is_some();
        }
        if syscalls && self.host.task_status_offset.is_none() {
            out.push("this host: no kernel BTF for `thread_info.status`, so i386 (`int 0x80`) calls cannot be told from x86_64 ones: they are checked as the x86_64 call of the same number, and `syscalls.abi` holds for x32 only".into());
        }
        out.extend(
            palisade_policy::check::file_notes(
                &self.all_policies(),
                &crate::policy::files::tier(&self.lsm),
            )
            .iter()
            .map(ToString::to_string),
        );
        if egress && self.host.socket_offset.is_none() {
            out.push("this host: no `syscalls:sys_enter_socket` tracepoint (tracefs): packet sockets cannot be refused (see `unenforced`)".into());
        }
        out
    }

    /// `palisade policy status`.
    fn status(&self) -> serde_json::Value {
        let mut policies = Vec::new();
        let tiers = |p: &palisade_policy::Policy| -> Vec<serde_json::Value> {
            super::super::lsm::tiers(p, self.mode_of(p), &self.lsm)
                .iter()
                .map(|t| t.status())
                .collect()
        };
        let mut names: Vec<(String, String, String, Vec<serde_json::Value>)> = self
            .set
            .policies
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    self.mode_of(p).as_str().to_owned(),
                    p.loc.to_string(),
                    tiers(p),
                )
            })
            .collect();
        for l in self.launched.values() {
            for p in &l.policies {
                if !names.iter().any(|(n, _, _, _)| *n == p.name) {
                    names.push((
                        p.name.clone(),
                        self.mode_of(p).as_str().to_owned(),
                        "palisade run".into(),
                        tiers(p),
                    ));
                }
            }
        }
        for (name, mode, source, enforcement) in names {
            let mut cgroups: Vec<serde_json::Value> = self
                .applied
                .iter()
                .filter(|(_, a)| a.policies.iter().any(|(n, _)| *n == name))
                .map(|(id, a)| {
                    let mut c = serde_json::json!({
                        "cgroup_id": id,
                        "container": self.targets.get(id).map(|t| t.name.clone()).unwrap_or_default(),
                    });
                    if let Some(from) = &a.inherited_from {
                        c["inherited_from"] = from.clone().into();
                    }
                    c
                })
                .collect();
            cgroups.sort_by_key(|v| v["cgroup_id"].as_u64());
            policies.push(serde_json::json!({
                "name": name, "mode": mode, "source": source, "cgroups": cgroups,
                "enforcement": enforcement,
            }));
        }
        serde_json::json!({
            "pin_dir": self.cfg.pin_dir.display().to_string(),
            "loaded": self.kernel.is_some(),
            "hooks": self.kernel.as_ref().map(|k| k.attached().iter().map(|h| h.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
            "policies": policies,
            "adopted_workloads": self.foreign.keys().collect::<Vec<_>>(),
            "exec_match": self.exec.status(),
            "unenforced": self.unenforced.json(&self.targets),
            "notes": self.notes(),
            "lsm": self.lsm.status(),
            "files": self.files_status(),
        })
    }

    /// The policies in force (the file's and launched workloads'), each once.
    fn all_policies(&self) -> palisade_policy::PolicySet {
        let mut set = palisade_policy::PolicySet {
            policies: self.set.policies.clone(),
            files: self.set.files.clone(),
        };
        for l in self.launched.values() {
            for p in &l.policies {
                if !set.policies.iter().any(|q| q.name == p.name) {
                    set.policies.push(p.clone());
                }
            }
        }
        set
    }

    /// What file rules get on this host, and each rule's fate (`policy status`).
    fn files_status(&self) -> serde_json::Value {
        let tier = crate::policy::files::tier(&self.lsm);
        let (name, reason) = crate::policy::files::tier_status(&tier);
        serde_json::json!({
            "tier": name,
            "reason": reason,
            "rules": crate::policy::files::describe(&self.all_policies(), &tier),
        })
    }

    /// Enforce-mode file rules that should refuse but are reported only on this host's tier:
    /// shortfalls of each cgroup they hold for (`palisade_policy_unenforced`).
    pub(super) fn files_shortfalls(
        &self,
        desired: &std::collections::HashMap<u64, super::Desired>,
        short: &mut super::unenforced::Shortfalls,
    ) {
        use palisade_policy::files::{FileAction, FileTier};
        let FileTier::Audit { why } = crate::policy::files::tier(&self.lsm) else {
            return;
        };
        for (cg, d) in desired {
            for key in &d.policies {
                let Some(p) = self.policy(key) else {
                    continue;
                };
                let Some(f) = &p.files else {
                    continue;
                };
                if self.mode_of(p) == palisade_policy::Mode::Enforce && f.action != FileAction::Log
                {
                    short.insert(
                        (
                            *cg,
                            key.0.clone(),
                            super::unenforced::Reason::FilesReportedOnly,
                        ),
                        format!(
                            "file rules (`action: {}`) are reported only, the calls run ({why})",
                            f.action.as_str()
                        ),
                    );
                }
            }
        }
    }

    /// Says once, at load, where file rules are weaker than written here.
    pub(super) fn warn_files(&mut self) {
        let tier = crate::policy::files::tier(&self.lsm);
        let set = self.all_policies();
        for d in palisade_policy::check::file_notes(&set, &tier) {
            let line = d.to_string();
            if self.notes_seen.insert(line.clone()) {
                warn!(note = %line, "file rules");
            }
        }
    }

    /// A launched workload killed by its seccomp filter (exit by SIGSYS) broke a `kill` rule.
    /// Whether it was one (the counts changed).
    pub fn sigsys(&mut self, ev: &Event) -> bool {
        const SIGSYS: i32 = 31;
        if ev.kind != EventType::Exit || ev.signal != Some(SIGSYS) {
            return false;
        }
        let Some(l) = self.launched.get(&ev.container.cgroup_id) else {
            return false;
        };
        let Some(p) = l.policies.iter().find(|p| {
            p.syscalls
                .as_ref()
                .is_some_and(|s| s.action == SysAction::Kill)
        }) else {
            return false;
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
            abi: None,
            checked_as: None,
            errno: None,
            exec: None,
            exec_detail: Default::default(),
            network: None,
            file: None,
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
        true
    }
}
