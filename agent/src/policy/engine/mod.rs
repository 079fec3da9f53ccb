//! The policy engine's state and its one operation, [`Engine::reconcile`]: from the policies
//! (files, launcher registrations, mode overrides) and the cgroups the agent knows, compute each
//! cgroup's effective tables and make the kernel match, attaching only the hooks in use. The
//! commands the policy task receives are answered in `ops`; nothing outside this module
//! touches the engine's fields.
mod ops;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use aya::maps::{MapData, RingBuf};
use palisade_common::policy::{
    ArgKey, CgroupPolicy, ExecConf, ExecKey, NetRuleSet, SyscallVerdicts, cgroup_flags,
};
use palisade_policy::{
    Mode, Policy, PolicySet, Target,
    compile::{self, Tables},
    model::Resources,
};
use tracing::{info, warn};

use super::{
    PolicyError,
    bpf::{Hook, Kernel, MAX_RULES, MAX_SLOTS, Options},
    exec_match::ExecMatch,
    report::Reporter,
    resources::Writer,
    tables::{self, Ids, Slots},
};
use crate::{
    config::PolicyConfig,
    events::{ContainerRef, Hub},
};

/// A cgroup as policies see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetInfo {
    pub cgroup_id: u64,
    pub name: String,
    pub container_id: Option<String>,
    pub runtime: String,
    pub namespace: String,
    pub pod: String,
    pub path: String,
    pub workload: bool,
    pub container: ContainerRef,
}

impl TargetInfo {
    pub fn target(&self) -> Target<'_> {
        Target {
            name: &self.name,
            container_id: self.container_id.as_deref(),
            runtime: &self.runtime,
            namespace: &self.namespace,
            pod: &self.pod,
            path: &self.path,
            workload: self.workload,
        }
    }
}

/// How exec rules are matched on this host (see `exec_match`).
pub struct Exec {
    /// Offset of `filename` in `sched:sched_process_exec` records (the fallback's input).
    pub given_offset: Option<u32>,
    pub matching: ExecMatch,
}

/// Policies a launcher registered for its workload's cgroup.
#[derive(Debug, Clone)]
pub struct Launched {
    pub policies: Vec<Policy>,
    /// The workload's seccomp filter carries the syscall rules (enforce mode at launch).
    pub seccomp: bool,
}

pub struct Engine {
    cfg: PolicyConfig,
    unified_root: PathBuf,
    exec: Exec,
    hub: Arc<Hub>,
    kernel: Option<Kernel>,
    /// A ring buffer loaded but not yet handed to the task loop.
    new_ring: Option<RingBuf<MapData>>,
    set: PolicySet,
    overrides: HashMap<String, Mode>,
    launched: HashMap<u64, Launched>,
    targets: HashMap<u64, TargetInfo>,
    /// Whether `targets` has been filled by a full sync (before, nothing is removed for being
    /// unknown).
    synced: bool,
    assigned: HashMap<u64, CgroupPolicy>,
    /// Entries of launched workloads adopted from a previous agent: kept as they are.
    foreign: HashMap<u64, CgroupPolicy>,
    slots: Slots,
    slot_exec: HashMap<u32, Vec<ExecKey>>,
    slot_args: HashMap<u32, Vec<ArgKey>>,
    ids: Ids,
    /// Policies (by name) applied to each cgroup, for status and the cgroups gauge.
    applied: HashMap<u64, Vec<(String, Mode)>>,
    resources: HashMap<u64, Resources>,
    notes_seen: HashSet<String>,
    limits: Writer,
    report: Reporter,
    /// Reloads that took effect / were rejected.
    reloads: u64,
    reload_errors: u64,
}

impl Engine {
    pub fn new(
        cfg: PolicyConfig,
        set: PolicySet,
        unified_root: PathBuf,
        exec: Exec,
        hub: Arc<Hub>,
        limits: Writer,
    ) -> Self {
        Self {
            cfg,
            unified_root,
            exec,
            hub,
            kernel: None,
            new_ring: None,
            set,
            overrides: HashMap::new(),
            launched: HashMap::new(),
            targets: HashMap::new(),
            synced: false,
            assigned: HashMap::new(),
            foreign: HashMap::new(),
            slots: Slots::default(),
            slot_exec: HashMap::new(),
            slot_args: HashMap::new(),
            ids: Ids::default(),
            applied: HashMap::new(),
            resources: HashMap::new(),
            notes_seen: HashSet::new(),
            limits,
            report: Reporter::default(),
            reloads: 0,
            reload_errors: 0,
        }
    }

    fn mode_of(&self, p: &Policy) -> Mode {
        self.overrides.get(&p.name).copied().unwrap_or(p.mode)
    }

    /// Loads the object (adopting pinned state) when not loaded yet.
    fn ensure_kernel(&mut self) -> Result<(), PolicyError> {
        if self.kernel.is_some() {
            return Ok(());
        }
        let (k, ring) = Kernel::load(Options {
            pin_dir: self.cfg.pin_dir.clone(),
            unified_root: self.unified_root.clone(),
            exec_filename_offset: self.exec.given_offset,
            exec_offsets: self.exec.matching.file_offsets(),
            burst: self.cfg.burst(),
            interval_ns: self.cfg.rate_limit_interval.as_nanos() as u64,
        })?;
        let mut k = k;
        self.report.keep_progress(k.reported.take(), k.adopted);
        if k.adopted {
            self.adopt(&k);
            info!(pin_dir = %self.cfg.pin_dir.display(), cgroups = self.assigned.len() + self.foreign.len(), "adopted pinned policy state");
        } else {
            info!(pin_dir = %self.cfg.pin_dir.display(), "policy programs loaded");
        }
        let m = &self.exec.matching;
        if m.best_effort() {
            warn!(btf = %m.btf.display(), "{}", m.describe());
        } else {
            info!("{}", m.describe());
        }
        self.kernel = Some(k);
        self.new_ring = Some(ring);
        Ok(())
    }

    /// Takes over what a previous agent left: cgroup entries, slots, exec keys, rule ids.
    fn adopt(&mut self, k: &Kernel) {
        for (cg, p) in k.cgroups.iter().flatten() {
            self.slots.used.insert(p.slot);
            if p.flags & cgroup_flags::SECCOMP != 0 {
                self.foreign.insert(cg, p);
            } else {
                self.assigned.insert(cg, p);
            }
        }
        for key in k.exec.keys().flatten() {
            self.slot_exec.entry(key.slot).or_default().push(key);
            self.slots.used.insert(key.slot);
        }
        for key in k.args.keys().flatten() {
            self.slot_args.entry(key.slot).or_default().push(key);
            self.slots.used.insert(key.slot);
        }
        for id in 1..MAX_RULES {
            if let Ok(info) = k.rules.get(&id, 0) {
                self.ids.adopt(id as u16, &info);
            }
        }
    }

    /// The policies selecting `t`, in priority order, with their effective modes.
    fn matching(&self, t: &TargetInfo) -> Vec<(&Policy, Mode)> {
        let mut out = Vec::new();
        if let Some(l) = self.launched.get(&t.cgroup_id) {
            out.extend(l.policies.iter().map(|p| (p, self.mode_of(p))));
        }
        let target = t.target();
        out.extend(
            self.set
                .policies
                .iter()
                .filter(|p| p.selector.matches(&target))
                .map(|p| (p, self.mode_of(p))),
        );
        out
    }

    /// Makes the kernel match the policies. Errors are reported and leave the previous state.
    fn reconcile(&mut self) -> Result<(), PolicyError> {
        if self.kernel.is_none() && self.cfg.pin_dir.join("maps").exists() {
            // a previous agent's state: adopt it first (launched workloads' entries stay)
            self.ensure_kernel()?;
        }
        let needed =
            !self.set.policies.is_empty() || !self.launched.is_empty() || !self.foreign.is_empty();
        if !needed {
            if let Some(k) = self.kernel.take() {
                self.report
                    .sweep(&k, &self.ids, &self.targets, &self.hub, true);
                let removed = k.remove();
                info!(
                    removed = removed.len(),
                    "no policy left: enforcement detached and unpinned"
                );
            }
            // a later load starts from empty maps: forget every id and slot
            self.assigned.clear();
            self.applied.clear();
            self.slots = Slots::default();
            self.slot_exec.clear();
            self.slot_args.clear();
            self.ids = Ids::default();
            self.resources.clear();
            return Ok(());
        }
        self.ensure_kernel()?;
        // what each cgroup should have
        let mut desired: HashMap<u64, (Tables, u32)> = HashMap::new();
        let mut applied = HashMap::new();
        let mut ids = std::mem::take(&mut self.ids);
        let mut notes = Vec::new();
        for t in self.targets.values() {
            let matched = self.matching(t);
            if matched.is_empty() {
                continue;
            }
            let tables = compile::compile(&matched, &mut |d| ids.get(d));
            let mut flags = tables.flags;
            if self.launched.get(&t.cgroup_id).is_some_and(|l| l.seccomp) {
                flags |= cgroup_flags::SECCOMP;
            }
            for n in &tables.notes {
                notes.push(format!("{}: {n}", t.name));
            }
            applied.insert(
                t.cgroup_id,
                matched
                    .iter()
                    .map(|(p, m)| (p.name.clone(), *m))
                    .collect::<Vec<_>>(),
            );
            desired.insert(t.cgroup_id, (tables, flags));
        }
        self.ids = ids;
        for n in notes {
            if self.notes_seen.insert(n.clone()) {
                warn!(note = %n, "policy combination");
            }
        }
        let Some(k) = self.kernel.as_mut() else {
            return Err(PolicyError::NotLoaded);
        };
        let dirty: Vec<u16> = self.ids.dirty.drain(..).collect();
        for id in dirty {
            if let Some(d) = self.ids.desc(u32::from(id)) {
                k.rules
                    .set(u32::from(id), d.info(), 0)
                    .map_err(PolicyError::table("rule"))?;
            }
        }
        // slots: reuse identical tables, fill new ones before pointing cgroups at them
        let mut busy: HashSet<u32> = self
            .assigned
            .values()
            .chain(self.foreign.values())
            .map(|p| p.slot)
            .collect();
        let mut entries: HashMap<u64, CgroupPolicy> = HashMap::new();
        for (cg, (t, flags)) in &desired {
            let key = tables::key(t);
            let slot = match self.slots.by_key.get(&key) {
                Some(s) => *s,
                None => {
                    let s = self
                        .slots
                        .free(&busy)
                        .ok_or(PolicyError::SlotsFull(MAX_SLOTS))?;
                    let old = (
                        self.slot_exec.remove(&s).unwrap_or_default(),
                        self.slot_args.remove(&s).unwrap_or_default(),
                    );
                    let written = write_slot(k, s, t, &old)?;
                    self.slot_exec.insert(s, written.0);
                    self.slot_args.insert(s, written.1);
                    self.slots.by_key.insert(key, s);
                    self.slots.used.insert(s);
                    busy.insert(s);
                    s
                }
            };
            entries.insert(
                *cg,
                CgroupPolicy {
                    slot,
                    flags: *flags,
                },
            );
        }
        for (cg, e) in &entries {
            if self.assigned.get(cg) != Some(e) {
                k.cgroups
                    .insert(cg, e, 0)
                    .map_err(PolicyError::table("cgroup"))?;
            }
        }
        for cg in self.assigned.keys() {
            if !entries.contains_key(cg) {
                let _ = k.cgroups.remove(cg);
            }
        }
        self.assigned = entries;
        self.applied = applied;
        let referenced: HashSet<u32> = self
            .assigned
            .values()
            .chain(self.foreign.values())
            .map(|p| p.slot)
            .collect();
        let unused: Vec<u32> = self
            .slots
            .used
            .iter()
            .copied()
            .filter(|s| !referenced.contains(s))
            .collect();
        for s in unused {
            let old = (
                self.slot_exec.remove(&s).unwrap_or_default(),
                self.slot_args.remove(&s).unwrap_or_default(),
            );
            clear_slot(k, s, &old);
            self.slots.release(s);
        }
        let all = self.assigned.values().chain(self.foreign.values());
        let flags = all.fold(0, |f, p| f | p.flags);
        let mut want = Vec::new();
        if flags & cgroup_flags::SYSCALLS != 0 {
            want.push(Hook::Syscalls);
        }
        if flags & cgroup_flags::SECCOMP != 0 {
            want.push(Hook::Seccomp);
        }
        if flags & cgroup_flags::EXEC != 0 {
            want.push(Hook::Exec);
        }
        if flags & cgroup_flags::EGRESS != 0 {
            want.push(Hook::Egress);
        }
        if flags & cgroup_flags::INGRESS != 0 {
            want.push(Hook::Ingress);
        }
        let mut failed = k.want(&want);
        if let Some(i) = failed
            .iter()
            .position(|(h, _)| *h == Hook::Exec && k.exec_on_file())
        {
            // e.g. a kernel without bpf_loop (before 5.17): the path given, said so
            let (_, e) = failed.swap_remove(i);
            warn!(error = %e, "exec rules: the kernel refused the program that reads the file executed; they match the path given to execve instead (best effort)");
            k.exec_on_path_given();
            self.exec.matching.refused = Some(e);
            failed.extend(k.want(&want));
        }
        for (h, e) in failed {
            warn!(hook = h.as_str(), error = %e, "policy hook not attached; its rules are not enforced (see `palisade doctor`)");
        }
        self.apply_resources();
        Ok(())
    }

    /// Writes cgroupfs limits of enforce-mode policies to the cgroups they select (once per
    /// change; the stricter value when several policies set one).
    fn apply_resources(&mut self) {
        let mut want: HashMap<u64, Resources> = HashMap::new();
        for t in self.targets.values() {
            let r = self
                .matching(t)
                .iter()
                .filter(|(_, m)| *m == Mode::Enforce)
                .fold(Resources::default(), |acc, (p, _)| {
                    acc.stricter(p.resources)
                });
            if !r.is_empty() {
                want.insert(t.cgroup_id, r);
            }
        }
        for (cg, r) in &want {
            if self.resources.get(cg) == Some(r) {
                continue;
            }
            let Some(t) = self.targets.get(cg) else {
                continue;
            };
            match self.limits.apply(&t.path, r) {
                Ok(files) => {
                    info!(container = %t.name, files = %files.join(" "), "policy limits applied")
                }
                Err(e) => warn!(container = %t.name, error = %e, "policy limits not applied"),
            }
        }
        self.resources = want;
    }

    /// New or renamed cgroups.
    fn upsert(&mut self, targets: Vec<TargetInfo>) -> bool {
        let mut changed = false;
        for t in targets {
            if self.targets.get(&t.cgroup_id) != Some(&t) {
                self.targets.insert(t.cgroup_id, t);
                changed = true;
            }
        }
        changed
    }

    /// A cgroup is gone: its entries go too (a final sweep counts what it did).
    fn remove(&mut self, cgroup_id: u64) -> bool {
        let known = self.targets.remove(&cgroup_id).is_some();
        self.launched.remove(&cgroup_id);
        if let Some(_p) = self.foreign.remove(&cgroup_id)
            && let Some(k) = self.kernel.as_mut()
        {
            let _ = k.cgroups.remove(&cgroup_id);
        }
        known || self.assigned.contains_key(&cgroup_id)
    }

    /// Every live cgroup (replaces the known set).
    fn sync(&mut self, live: Vec<TargetInfo>) -> bool {
        let ids: HashSet<u64> = live.iter().map(|t| t.cgroup_id).collect();
        let gone: Vec<u64> = self
            .targets
            .keys()
            .chain(self.foreign.keys())
            .copied()
            .filter(|id| !ids.contains(id))
            .collect();
        let mut changed = !self.synced;
        self.synced = true;
        for id in gone {
            changed |= self.remove(id);
        }
        changed | self.upsert(live)
    }

    /// Switches `name` to `mode` (without touching the file); rewrites its rules.
    fn set_mode(&mut self, name: &str, mode: Mode) -> Result<(), PolicyError> {
        let in_use = self.set.get(name).is_some()
            || self
                .launched
                .values()
                .any(|l| l.policies.iter().any(|p| p.name == name))
            || !self.ids.of_policy(name).is_empty();
        if !in_use {
            return Err(PolicyError::Unknown(name.to_owned()));
        }
        self.overrides.insert(name.to_owned(), mode);
        // adopted rules of launched workloads change mode in place too
        for id in self.ids.of_policy(name) {
            self.ids.set_mode(id, compile::mode_number(mode));
        }
        self.reconcile()
    }
}

/// The hash keys a slot owns: exec patterns and argument checks.
type SlotKeys = (Vec<ExecKey>, Vec<ArgKey>);

/// Writes one slot's tables; returns the hash keys now in the maps for it.
fn write_slot(
    k: &mut Kernel,
    slot: u32,
    t: &Tables,
    old: &SlotKeys,
) -> Result<SlotKeys, PolicyError> {
    let e = PolicyError::table;
    k.syscalls.set(slot, *t.verdicts, 0).map_err(e("syscall"))?;
    k.exec_conf.set(slot, t.exec_conf, 0).map_err(e("exec"))?;
    for key in &old.0 {
        let _ = k.exec.remove(key);
    }
    for key in &old.1 {
        let _ = k.args.remove(key);
    }
    let mut args = Vec::new();
    for (nr, rule) in &t.args {
        let key = ArgKey { slot, nr: *nr };
        k.args.insert(key, rule, 0).map_err(e("argument"))?;
        args.push(key);
    }
    let mut keys = Vec::new();
    for (kind, hash, rule) in &t.exec {
        let key = ExecKey {
            slot,
            kind: *kind,
            hash: *hash,
        };
        k.exec.insert(key, rule, 0).map_err(e("exec"))?;
        keys.push(key);
    }
    k.net.set(slot * 2, t.egress, 0).map_err(e("network"))?;
    k.net
        .set(slot * 2 + 1, t.ingress, 0)
        .map_err(e("network"))?;
    Ok((keys, args))
}

fn clear_slot(k: &mut Kernel, slot: u32, old: &SlotKeys) {
    let _ = k.syscalls.set(slot, SyscallVerdicts::ZERO, 0);
    let _ = k.exec_conf.set(slot, ExecConf::default(), 0);
    for key in &old.0 {
        let _ = k.exec.remove(key);
    }
    for key in &old.1 {
        let _ = k.args.remove(key);
    }
    let _ = k.net.set(slot * 2, NetRuleSet::EMPTY, 0);
    let _ = k.net.set(slot * 2 + 1, NetRuleSet::EMPTY, 0);
}
