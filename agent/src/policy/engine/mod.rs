//! The policy engine's state and its one operation, [`Engine::reconcile`]: from the policies
//! (files, launcher registrations, mode overrides) and the cgroups the agent knows, compute what
//! holds for each cgroup (a policy holds for the subtree of what it selects: `plan`), its
//! tables, and make the kernel match (`apply`), attaching only the hooks in use. What cannot be
//! put in place is reported (`unenforced`), never skipped silently. The commands the policy
//! task receives are answered in `ops`; nothing outside this module touches the engine's
//! fields.
mod apply;
mod ops;
mod plan;
mod slots;
mod unenforced;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use aya::maps::{MapData, RingBuf};
use palisade_common::policy::{ArgKey, CgroupPolicy, ExecKey, cgroup_flags};
use palisade_policy::{
    Mode, Policy, PolicySet, Target,
    compile::{self, Shortfall, Tables},
    model::Resources,
};
use tokio::sync::oneshot;
use tracing::{info, warn};

use self::unenforced::{Reason, Shortfalls, Tracker};
use super::{
    PolicyError,
    bpf::{Kernel, MAX_RULES, Options},
    exec_match::ExecMatch,
    lsm::{LsmSupport, LsmUnavailable},
    report::Reporter,
    resources::Writer,
    tables::{Ids, Slots},
};
use crate::{
    config::PolicyConfig,
    events::{ContainerRef, Hub},
    kernel::SyscallEntry,
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

/// Policies a launcher registered for its workload's cgroup.
#[derive(Debug, Clone)]
pub struct Launched {
    pub policies: Vec<Policy>,
    /// The workload's seccomp filter carries the syscall rules (enforce mode at launch).
    pub seccomp: bool,
}

/// What the host gives the programs (found at start-up).
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// `sched:sched_process_exec` `filename` offset (tracefs): the input of exec rules on the
    /// path given (the fallback).
    pub exec_offset: Option<u32>,
    /// `syscalls:sys_enter_socket` `family` offset (tracefs).
    pub socket_offset: Option<u32>,
    /// `thread_info.status` in `task_struct` (BTF).
    pub task_status_offset: Option<u32>,
    /// The current thread's id and cgroup id in its task (BTF).
    pub task_offsets: Option<palisade_common::policy::TaskOffsets>,
    /// Compat call → x86_64 call.
    pub xlat: Vec<(u32, u32)>,
}

/// A policy as the plan names it: by name, from the files or from the launch of a cgroup.
type PolicyKey = (String, Option<u64>);

/// What holds for one cgroup, for status and the cgroups gauge.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub policies: Vec<(String, Mode)>,
    /// The path of the ancestor whose selection holds here (the cgroup selects nothing itself).
    pub inherited_from: Option<String>,
}

/// One kernel entry to be: the tables, the flags, and the policies they combine.
struct Desired {
    tables: Tables,
    flags: u32,
    policies: Vec<PolicyKey>,
}

pub struct Engine {
    cfg: PolicyConfig,
    unified_root: PathBuf,
    host: Host,
    /// How exec rules are matched on this host (see `exec_match`).
    exec: ExecMatch,
    /// Whether BPF-LSM refuses `errno` exec and syscall rules here (see `lsm`).
    lsm: LsmSupport,
    /// The kernel BTF the LSM programs are typed by.
    lsm_btf: PathBuf,
    hub: Arc<Hub>,
    kernel: Option<Kernel>,
    /// The syscall telemetry's entry while no kernel object holds it (see `Kernel::remove`).
    syscall_entry: Option<SyscallEntry>,
    /// A ring buffer loaded but not yet handed to the task loop.
    new_ring: Option<RingBuf<MapData>>,
    /// Violation records read while the event log had no room for their events: left out,
    /// like those the full ring buffer lost, so they show in the next event's `suppressed`.
    held_back: u64,
    set: PolicySet,
    overrides: HashMap<String, Mode>,
    launched: HashMap<u64, Launched>,
    targets: HashMap<u64, TargetInfo>,
    /// Whether `targets` has been filled by a full sync (before, nothing is removed for being
    /// unknown).
    synced: bool,
    /// Registrations that came before the first sync, answered after it.
    pending: Vec<(u64, oneshot::Sender<Result<(), PolicyError>>)>,
    assigned: HashMap<u64, CgroupPolicy>,
    /// Entries of launched workloads adopted from a previous agent: kept as they are.
    foreign: HashMap<u64, CgroupPolicy>,
    slots: Slots,
    slot_exec: HashMap<u32, Vec<ExecKey>>,
    slot_args: HashMap<u32, Vec<ArgKey>>,
    slot_files: HashMap<u32, Vec<ExecKey>>,
    ids: Ids,
    /// What holds for each cgroup, for status and the cgroups gauge.
    applied: HashMap<u64, Applied>,
    resources: HashMap<u64, Resources>,
    notes_seen: HashSet<String>,
    limits: Writer,
    report: Reporter,
    unenforced: Tracker,
    /// Reloads that took effect / were rejected.
    reloads: u64,
    reload_errors: u64,
}

impl Engine {
    pub fn new(
        cfg: PolicyConfig,
        set: PolicySet,
        unified_root: PathBuf,
        host: Host,
        exec: ExecMatch,
        hub: Arc<Hub>,
        limits: Writer,
    ) -> Self {
        let report = Reporter::new(&hub);
        Self {
            cfg,
            unified_root,
            host,
            exec,
            lsm: LsmSupport {
                state: Err(LsmUnavailable::Inactive("not probed".into())),
                syscalls: Err(LsmUnavailable::Inactive("not probed".into())),
                files: Err(LsmUnavailable::Inactive("not probed".into())),
            },
            lsm_btf: PathBuf::new(),
            syscall_entry: None,
            hub,
            kernel: None,
            new_ring: None,
            held_back: 0,
            set,
            overrides: HashMap::new(),
            launched: HashMap::new(),
            targets: HashMap::new(),
            synced: false,
            pending: Vec::new(),
            assigned: HashMap::new(),
            foreign: HashMap::new(),
            slots: Slots::default(),
            slot_exec: HashMap::new(),
            slot_args: HashMap::new(),
            slot_files: HashMap::new(),
            ids: Ids::default(),
            applied: HashMap::new(),
            resources: HashMap::new(),
            notes_seen: HashSet::new(),
            limits,
            report,
            unenforced: Tracker::default(),
            reloads: 0,
            reload_errors: 0,
        }
    }

    /// The syscall telemetry's entry program, which the policy object carries while its
    /// `sys_enter` program is attached (`SyscallEntry`).
    pub fn with_syscall_entry(mut self, entry: Option<SyscallEntry>) -> Self {
        self.syscall_entry = entry;
        self
    }

    /// The BPF-LSM tier this host offers (`LsmSupport::probe`), its programs typed by `btf`.
    pub fn with_lsm(mut self, lsm: LsmSupport, btf: PathBuf) -> Self {
        self.lsm = lsm;
        self.lsm_btf = btf;
        self
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
            exec_filename_offset: self.host.exec_offset,
            exec_offsets: self.exec.file_offsets(),
            socket_family_offset: self.host.socket_offset,
            task_status_offset: self.host.task_status_offset,
            task_offsets: self.host.task_offsets,
            xlat: self.host.xlat.clone(),
            lsm_btf: self.lsm.active().then(|| self.lsm_btf.clone()),
            burst: self.cfg.burst(),
            interval_ns: self.cfg.rate_limit_interval.as_nanos() as u64,
            events_bytes: self.cfg.events_buffer_kib << 10,
        })?;
        let mut k = k;
        k.set_syscall_entry(self.syscall_entry.take());
        self.report.keep_progress(k.reported.take(), k.adopted);
        if k.adopted {
            self.adopt(&k);
            info!(pin_dir = %self.cfg.pin_dir.display(), cgroups = self.assigned.len() + self.foreign.len(), "adopted pinned policy state");
        } else {
            info!(pin_dir = %self.cfg.pin_dir.display(), "policy programs loaded");
        }
        for d in super::lsm::host_notes(&self.set, &self.lsm) {
            warn!(at = %d.loc, "{}", d.message);
        }
        let m = &self.exec;
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
        for key in k.files.keys().flatten() {
            self.slot_files.entry(key.slot).or_default().push(key);
            self.slots.used.insert(key.slot);
        }
        for id in 1..MAX_RULES {
            if let Ok(info) = k.rules.get(&id, 0) {
                self.ids.adopt(id as u16, &info);
            }
        }
    }

    /// The policies selecting `t` itself, in priority order, with their effective modes.
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

    /// The policy a plan key names.
    fn policy(&self, key: &PolicyKey) -> Option<&Policy> {
        match key.1 {
            Some(cg) => self
                .launched
                .get(&cg)?
                .policies
                .iter()
                .find(|p| p.name == key.0),
            None => self.set.get(&key.0),
        }
    }

    /// What should hold for every known cgroup: the kernel entries to write (compiled), what
    /// applies where (status), and what the tables cannot hold.
    fn plan(&mut self) -> (HashMap<u64, Desired>, HashMap<u64, Applied>, Shortfalls) {
        let mut own: HashMap<u64, Vec<PolicyKey>> = HashMap::new();
        for t in self.targets.values() {
            let mut keys: Vec<PolicyKey> = Vec::new();
            if let Some(l) = self.launched.get(&t.cgroup_id) {
                keys.extend(
                    l.policies
                        .iter()
                        .map(|p| (p.name.clone(), Some(t.cgroup_id))),
                );
            }
            let target = t.target();
            keys.extend(
                self.set
                    .policies
                    .iter()
                    .filter(|p| p.selector.matches(&target))
                    .map(|p| (p.name.clone(), None)),
            );
            if !keys.is_empty() {
                own.insert(t.cgroup_id, keys);
            }
        }
        let paths: HashMap<u64, String> = self
            .targets
            .values()
            .map(|t| (t.cgroup_id, t.path.clone()))
            .collect();
        let holdings = plan::holdings(&paths, &own);
        let mut desired = HashMap::new();
        let mut applied = HashMap::new();
        let mut short = Shortfalls::new();
        let mut ids = std::mem::take(&mut self.ids);
        let mut notes = Vec::new();
        for (id, h) in &holdings {
            let list: Vec<(&Policy, Mode)> = h
                .policies
                .iter()
                .filter_map(|k| self.policy(k))
                .map(|p| (p, self.mode_of(p)))
                .collect();
            applied.insert(
                *id,
                Applied {
                    policies: list.iter().map(|(p, m)| (p.name.clone(), *m)).collect(),
                    inherited_from: h.inherited_from.clone(),
                },
            );
            if !h.entry {
                continue;
            }
            let tables = compile::compile(&list, &mut |d| ids.get(d));
            let mut flags = tables.flags;
            let seccomp = std::iter::once(id)
                .chain(h.ancestors.iter())
                .any(|c| self.launched.get(c).is_some_and(|l| l.seccomp));
            if seccomp {
                flags |= cgroup_flags::SECCOMP;
            }
            let name = self.targets.get(id).map_or("?", |t| t.name.as_str());
            for n in &tables.notes {
                notes.push(format!("{name}: {n}"));
            }
            for lo in &tables.left_out {
                let reason = match lo.reason {
                    Shortfall::RulesFull => Reason::RulesFull,
                    Shortfall::NetworkSets => Reason::NetworkPolicies,
                };
                short.insert((*id, lo.policy.clone(), reason), lo.detail.clone());
            }
            desired.insert(
                *id,
                Desired {
                    tables,
                    flags,
                    policies: h.policies.clone(),
                },
            );
        }
        self.ids = ids;
        for n in notes {
            if self.notes_seen.insert(n.clone()) {
                warn!(note = %n, "policy combination");
            }
        }
        (desired, applied, short)
    }

    /// Makes the kernel match the policies. What cannot be put in place is reported
    /// (`palisade_policy_unenforced`, events) and the rest still applied; an error is returned
    /// only when nothing could be.
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
                let (removed, entry) = k.remove();
                self.syscall_entry = entry;
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
            self.slot_files.clear();
            self.ids = Ids::default();
            self.resources.clear();
            self.unenforced
                .update(Shortfalls::new(), &self.targets, &self.hub);
            return Ok(());
        }
        let (desired, applied, mut short) = self.plan();
        self.applied = applied;
        if let Err(e) = self.ensure_kernel() {
            for (id, d) in &desired {
                for (name, _) in &d.policies {
                    short.insert((*id, name.clone(), Reason::NotLoaded), e.to_string());
                }
            }
            self.unenforced.update(short, &self.targets, &self.hub);
            return Err(e);
        }
        let r = self.apply(&desired, &mut short);
        // after the hooks: the file tier is known once the LSM file hooks attached (or not)
        self.files_shortfalls(&desired, &mut short);
        self.warn_files();
        self.unenforced.update(short, &self.targets, &self.hub);
        r?;
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
