//! Making the kernel match a plan: rule descriptions, slots (identical tables shared, a new slot
//! filled before a cgroup points at it), cgroup entries, and the hook groups they need. Each
//! cgroup that cannot get what it needs keeps what it had and is recorded as a shortfall.
use std::collections::{HashMap, HashSet};

use palisade_common::policy::{CgroupPolicy, cgroup_flags};

use super::{
    Desired, Engine,
    slots::{self, SlotKeys},
    unenforced::{Reason, Shortfalls},
};
use palisade_policy::{
    Mode,
    model::{ExecAction, SysAction},
};

use crate::policy::{
    PolicyError,
    bpf::MAX_SLOTS,
    hooks::Hook,
    lsm::{self, LsmUnavailable},
    tables,
};

/// Whether a map write failed because the map is full.
fn full(e: &aya::maps::MapError) -> bool {
    matches!(
        e,
        aya::maps::MapError::SyscallError(s)
            if matches!(s.io_error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC) | Some(libc::ENOMEM))
    )
}

impl Engine {
    /// Whether policy `name` (in the plan of a cgroup) has rules of the kind `flag`.
    fn has_rules(&self, key: &super::PolicyKey, flag: u32) -> bool {
        let Some(p) = self.policy(key) else {
            return false;
        };
        match flag {
            cgroup_flags::SYSCALLS | cgroup_flags::SECCOMP => p.syscalls.is_some(),
            cgroup_flags::EXEC => p.exec.is_some(),
            cgroup_flags::EGRESS => p.network.egress.is_some(),
            cgroup_flags::INGRESS => p.network.ingress.is_some(),
            cgroup_flags::FILES => p.files.is_some(),
            _ => false,
        }
    }

    /// Writes `desired` into the loaded object; records what could not be written in `short`.
    pub(super) fn apply(
        &mut self,
        desired: &HashMap<u64, Desired>,
        short: &mut Shortfalls,
    ) -> Result<(), PolicyError> {
        // the exec LSM program only while some policy in the plan has `errno` exec rules
        let exec_errno = desired.values().any(|d| {
            d.policies.iter().any(|key| {
                self.policy(key)
                    .and_then(|p| p.exec.as_ref())
                    .is_some_and(|e| e.action == ExecAction::Errno)
            })
        });
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
        let mut order: Vec<u64> = desired.keys().copied().collect();
        order.sort_unstable();
        let mut failed: HashSet<u64> = HashSet::new();
        for cg in &order {
            let d = &desired[cg];
            let mut fail = |reason: Reason, detail: String| {
                for (name, _) in &d.policies {
                    short.insert((*cg, name.clone(), reason), detail.clone());
                }
            };
            let key = tables::key(&d.tables);
            let slot = match self.slots.by_key.get(&key) {
                Some(s) => *s,
                None => {
                    let Some(s) = self.slots.free(&busy) else {
                        fail(
                            Reason::SlotsFull,
                            format!(
                                "every slot is in use ({MAX_SLOTS} distinct effective policies); the cgroup keeps what it had"
                            ),
                        );
                        failed.insert(*cg);
                        continue;
                    };
                    let old: SlotKeys = (
                        self.slot_exec.remove(&s).unwrap_or_default(),
                        self.slot_args.remove(&s).unwrap_or_default(),
                        self.slot_files.remove(&s).unwrap_or_default(),
                    );
                    match slots::write(k, s, &d.tables, &old) {
                        Ok(written) => {
                            self.slot_exec.insert(s, written.0);
                            self.slot_args.insert(s, written.1);
                            self.slot_files.insert(s, written.2);
                        }
                        Err(e) => {
                            let reason = match &e {
                                PolicyError::Table { source, .. } if full(source) => {
                                    Reason::RulesFull
                                }
                                _ => Reason::TableError,
                            };
                            fail(reason, e.to_string());
                            slots::clear(k, s, &(Vec::new(), Vec::new(), Vec::new()));
                            failed.insert(*cg);
                            continue;
                        }
                    }
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
                    flags: d.flags,
                },
            );
        }
        let mut changed = false;
        for (cg, e) in &entries {
            if self.assigned.get(cg) == Some(e) {
                continue;
            }
            match k.cgroups.insert(cg, e, 0) {
                Ok(()) => changed = true,
                Err(err) => {
                    let reason = if full(&err) {
                        Reason::CgroupsFull
                    } else {
                        Reason::TableError
                    };
                    for (name, _) in &desired[cg].policies {
                        short.insert((*cg, name.clone(), reason), format!("cgroup table: {err}"));
                    }
                    failed.insert(*cg);
                }
            }
        }
        // a cgroup whose new entry could not be written keeps its old one
        for cg in &failed {
            match self.assigned.get(cg) {
                Some(old) => {
                    entries.insert(*cg, *old);
                }
                None => {
                    entries.remove(cg);
                }
            }
        }
        for cg in self.assigned.keys() {
            if !entries.contains_key(cg) {
                let _ = k.cgroups.remove(cg);
                changed = true;
            }
        }
        self.assigned = entries;
        if changed && let Err(e) = k.bump_generation() {
            tracing::warn!(error = %e, "cannot tell the hooks the cgroup table changed");
        }
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
                self.slot_files.remove(&s).unwrap_or_default(),
            );
            slots::clear(k, s, &old);
            self.slots.release(s);
        }
        let flags = self
            .assigned
            .values()
            .chain(self.foreign.values())
            .fold(0, |f, p| f | p.flags);
        let mut want = Hook::needed(flags);
        if exec_errno && self.lsm.active() && k.exec_on_file() {
            want.push(Hook::ExecLsm);
        }
        // file rules: the BPF-LSM file hooks instead of the audit program, where they can be
        // (they walk the path with the exec offsets, from the kernel's BTF)
        let files_lsm = self.lsm.files_active() && k.has_exec_offsets();
        if !files_lsm && self.lsm.files_active() {
            self.lsm.files = Err(LsmUnavailable::Refused(
                "no kernel BTF offsets for the path walk".into(),
            ));
        }
        if files_lsm && let Some(i) = want.iter().position(|h| *h == Hook::Files) {
            want[i] = Hook::FilesLsm;
        }
        let mut failed_hooks = k.want(&want);
        if let Some(i) = failed_hooks.iter().position(|(h, _)| *h == Hook::FilesLsm) {
            // the kernel refused a file hook: back to the audit tier, said as unenforced
            let (_, e) = failed_hooks.swap_remove(i);
            tracing::warn!(error = %e, "file rules: the BPF-LSM file hooks are not attached; file rules are reported only (the path as given), and policies whose file rules should refuse are counted as unenforced");
            self.lsm.files = Err(LsmUnavailable::Refused(e.to_string()));
            for h in want.iter_mut().filter(|h| **h == Hook::FilesLsm) {
                *h = Hook::Files;
            }
            failed_hooks.extend(k.want(&want));
        }
        if let Some(i) = failed_hooks
            .iter()
            .position(|(h, _)| *h == Hook::Exec && k.exec_on_file())
        {
            // e.g. a kernel without bpf_loop (before 5.17): the path given, said so
            let (_, e) = failed_hooks.swap_remove(i);
            tracing::warn!(error = %e, "exec rules: the kernel refused the program that reads the file executed; they match the path given to execve instead (best effort)");
            k.exec_on_path_given();
            self.exec.refused = Some(e);
            failed_hooks.extend(k.want(&want));
        }
        if let Some(i) = failed_hooks.iter().position(|(h, _)| *h == Hook::ExecLsm) {
            // the exec programs kill `errno` rules (the flag stays clear without the link)
            let (_, e) = failed_hooks.swap_remove(i);
            tracing::warn!(error = %e, "exec rules with `action: errno`: the BPF-LSM program is not attached; a denied exec is killed before the new image runs instead of refused with EPERM");
            self.lsm.state = Err(LsmUnavailable::Refused(e.to_string()));
        }
        // the calls enforce-mode `errno` syscall rules deny that have LSM hooks
        let mut calls = std::collections::BTreeSet::new();
        if self.lsm.syscalls_active() {
            // launched workloads' filters refuse their `errno` rules (the hooks leave them)
            for d in desired
                .values()
                .filter(|d| d.flags & cgroup_flags::SECCOMP == 0)
            {
                for key in &d.policies {
                    let Some(p) = self.policy(key) else { continue };
                    if let (Some(s), Mode::Enforce) = (&p.syscalls, self.mode_of(p))
                        && matches!(s.action, SysAction::Errno(_))
                    {
                        calls.extend(
                            lsm::lsm_refused(s)
                                .iter()
                                .filter_map(|n| palisade_syscalls::number(n)),
                        );
                    }
                }
            }
        }
        let calls: Vec<u32> = calls.into_iter().collect();
        let Some(k) = self.kernel.as_mut() else {
            return Err(PolicyError::NotLoaded);
        };
        let lsm_failed = k.want_syscall_lsm(&calls);
        if let Some(e) = lsm_failed.first() {
            tracing::warn!(error = %e, failed = lsm_failed.len(), "syscall rules with `action: errno`: BPF-LSM hooks not attached; the calls they refuse keep their tracepoint tier (killed after the call)");
            self.lsm.syscalls = Err(LsmUnavailable::Refused(e.to_string()));
        }
        for (h, e) in &failed_hooks {
            tracing::warn!(hook = h.as_str(), error = %e, "policy hook not attached; its rules are not enforced (see `palisade doctor`)");
            for (cg, d) in desired {
                if !Hook::needed(d.flags).contains(h) {
                    continue;
                }
                for key in &d.policies {
                    if self.has_rules(key, h.flag()) {
                        short.insert((*cg, key.0.clone(), Reason::Hook(*h)), e.to_string());
                    }
                }
            }
        }
        Ok(())
    }
}
