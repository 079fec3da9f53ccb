//! Violations to events and counts.
//!
//! The kernel counts every violation exactly (`POLICY_VIOLATIONS.total`, per cgroup, rule and
//! outcome) and sends an event only when the rate limit admits it. Each event carries the total
//! at that moment, so the number of violations since the previous event of the same key is
//! exact: it becomes the event's `suppressed`. A periodic sweep adds the totals to
//! `palisade_policy_violations_total` and sends one summary event (no `process`, just
//! `suppressed`) for violations no event reported once the key has been quiet for a window.
use std::{
    collections::{BTreeMap, HashMap},
    time::{Instant, SystemTime},
};

use palisade_common::policy::{PolicyEvent, ViolationKey, mode, what};

use super::{bpf::Kernel, engine::TargetInfo, tables::Ids, violation};
use crate::events::{Clock, ContainerRef, Event, EventType, Hub, ProcessRef, Violation, rfc3339};

/// (policy, rule, action, container)
pub type CountKey = (String, String, String, String);

/// `POLICY_REPORTED`: what `reported` holds, and each key's hook, kept in the kernel for the
/// next agent.
type Progress = aya::maps::HashMap<aya::maps::MapData, ViolationKey, [u64; 2]>;

#[derive(Default)]
pub struct Reporter {
    /// See [`Progress`]; `None` until the object is loaded.
    progress: Option<Progress>,
    /// The hook (`what`) of each key's violations.
    hooks: HashMap<ViolationKey, u32>,
    /// `palisade_policy_violations_total`.
    pub counts: BTreeMap<CountKey, u64>,
    /// Kernel totals already counted / already reported by an event, per key.
    swept: HashMap<ViolationKey, u64>,
    reported: HashMap<ViolationKey, (u64, Instant)>,
    /// What each key is about, for summary events.
    last: HashMap<ViolationKey, Violation>,
    /// Keys whose progress the kernel's copy lacks (written once per batch of records).
    dirty: std::collections::HashSet<ViolationKey>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("counts", &self.counts)
            .field("reported", &self.reported)
            .finish_non_exhaustive()
    }
}

fn container_of(targets: &HashMap<u64, TargetInfo>, cgroup_id: u64) -> ContainerRef {
    match targets.get(&cgroup_id) {
        Some(t) => t.container.clone(),
        None => ContainerRef {
            id: format!("cgroup:{cgroup_id}"),
            name: format!("cgroup:{cgroup_id}"),
            cgroup_id,
            runtime: "cgroup".into(),
            image: String::new(),
            namespace: String::new(),
            pod: String::new(),
            pod_uid: String::new(),
        },
    }
}

fn names(ids: &Ids, k: Option<&Kernel>, rule: u32) -> (String, String, String) {
    if let Some(d) = ids.desc(rule) {
        let m = if d.mode == mode::AUDIT {
            "audit"
        } else {
            "enforce"
        };
        return (d.policy.clone(), d.rule.clone(), m.into());
    }
    // an id this agent never allocated (adopted state): the kernel's own description
    if let Some(info) = k.and_then(|k| k.rules.get(&rule, 0).ok()) {
        let s = |b: &[u8]| {
            let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
            String::from_utf8_lossy(&b[..end]).into_owned()
        };
        let m = if info.mode == mode::AUDIT {
            "audit"
        } else {
            "enforce"
        };
        return (s(&info.policy), s(&info.rule), m.into());
    }
    (String::from("?"), format!("rule {rule}"), String::from("?"))
}

impl Reporter {
    /// Takes the loaded object's `POLICY_REPORTED`; with adopted state, starts from what the
    /// previous agent reported (its events are not sent again).
    pub fn keep_progress(&mut self, progress: Option<Progress>, adopted: bool) {
        if adopted && let Some(p) = &progress {
            let now = Instant::now();
            for (key, [n, what]) in p.iter().flatten() {
                self.reported.insert(key, (n, now));
                self.hooks.insert(key, what as u32);
            }
        }
        self.progress = progress;
    }

    /// Violations of `key` up to `total` are reported (here and in the kernel's copy).
    fn mark(&mut self, key: ViolationKey, total: u64, what: u32) {
        self.reported.insert(key, (total, Instant::now()));
        self.hooks.insert(key, what);
        if let Some(p) = &mut self.progress
            && let Err(e) = p.insert(key, [total, u64::from(what)], 0)
        {
            tracing::debug!(error = %e, "cannot record reported violations for the next agent");
        }
    }

    /// Violations of `key` up to `total` are reported here; the kernel's copy is written by
    /// [`Reporter::flush`] at the end of the batch (one map update per key, not per event).
    fn mark_later(&mut self, key: ViolationKey, total: u64, what: u32) {
        self.reported.insert(key, (total, Instant::now()));
        self.hooks.insert(key, what);
        self.dirty.insert(key);
    }

    /// Writes the progress of the keys marked since the last flush to the kernel's copy.
    pub fn flush(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            if let Some(p) = &mut self.progress
                && let (Some((total, _)), Some(what)) =
                    (self.reported.get(&key), self.hooks.get(&key))
                && let Err(e) = p.insert(key, [*total, u64::from(*what)], 0)
            {
                tracing::debug!(error = %e, "cannot record reported violations for the next agent");
            }
        }
    }

    /// One kernel record → one `policy_violation` event (call [`Reporter::flush`] after a
    /// batch).
    pub fn on_record(
        &mut self,
        ev: &PolicyEvent,
        ids: &Ids,
        k: Option<&Kernel>,
        targets: &HashMap<u64, TargetInfo>,
        hub: &Hub,
    ) {
        let key = ViolationKey {
            cgroup_id: ev.cgroup_id,
            rule: ev.rule,
            action: ev.action,
        };
        let (prev, _) = self
            .reported
            .get(&key)
            .copied()
            .unwrap_or((0, Instant::now()));
        let suppressed = ev.total.saturating_sub(prev).saturating_sub(1);
        self.mark_later(key, prev.max(ev.total), ev.what);
        let (policy, rule, m) = names(ids, k, ev.rule);
        let (exec, exec_detail) = violation::exec(ev).unzip();
        let exe = exec_detail
            .as_ref()
            .and_then(|d| d.exec_given.clone())
            .unwrap_or_default();
        let v = Violation {
            policy,
            rule,
            action: violation::action_name(ev.action).to_owned(),
            mode: m,
            hook: violation::hook_name(ev.what).to_owned(),
            syscall: matches!(
                ev.what,
                what::SYSCALL | what::SECCOMP | what::FILE | what::SYSCALL_LSM
            )
            .then(|| violation::syscall_name(ev.abi, ev.nr)),
            abi: violation::abi_name(ev.what, ev.abi),
            checked_as: violation::checked_as(ev),
            errno: (ev.errno != 0 && ev.what != what::FILE)
                .then(|| palisade_syscalls::errno::label(ev.errno).into_owned()),
            exec,
            exec_detail: exec_detail.unwrap_or_default(),
            network: violation::network(ev.what, &ev.net),
            file: violation::file(ev),
            suppressed,
        };
        let container = container_of(targets, ev.cgroup_id);
        // debug, not info: a flood without rate limit is 100,000s of lines a second; the event
        // log and the counter have every violation
        tracing::debug!(container = %container.name, policy = %v.policy, rule = %v.rule, action = %v.action, hook = %v.hook, pid = ev.pid, "policy violation");
        let process = (ev.pid != 0).then(|| ProcessRef {
            pid: ev.pid,
            ppid: None,
            uid: ev.uid,
            comm: violation::comm(&ev.comm),
            exe,
            args: Vec::new(),
            args_truncated: false,
        });
        self.last.insert(key, v.clone());
        hub.publish(Event {
            process,
            violation: Some(v),
            ..Event::new(
                EventType::PolicyViolation,
                rfc3339(Clock::now().wall(ev.ktime_ns)),
                container,
            )
        });
    }

    /// A violation seen in userspace (a launched workload killed by its seccomp filter).
    pub fn userspace(
        &mut self,
        v: Violation,
        container: ContainerRef,
        process: ProcessRef,
        hub: &Hub,
    ) {
        *self
            .counts
            .entry((
                v.policy.clone(),
                v.rule.clone(),
                v.action.clone(),
                container.name.clone(),
            ))
            .or_default() += 1;
        hub.publish(Event {
            process: Some(process),
            violation: Some(v),
            ..Event::new(
                EventType::PolicyViolation,
                rfc3339(SystemTime::now()),
                container,
            )
        });
    }

    /// Adds the kernel's totals to the counters; sends summaries for quiet keys with
    /// unreported violations; forgets the keys of cgroups that are gone (`all`: every key).
    pub fn sweep(
        &mut self,
        k: &Kernel,
        ids: &Ids,
        targets: &HashMap<u64, TargetInfo>,
        hub: &Hub,
        all: bool,
    ) {
        let entries: Vec<_> = k.violations.iter().flatten().collect();
        for (key, state) in entries {
            let before = self.swept.get(&key).copied().unwrap_or(0);
            let delta = if state.total >= before {
                state.total - before
            } else {
                state.total
            };
            self.swept.insert(key, state.total);
            let container = container_of(targets, key.cgroup_id);
            if delta > 0 {
                let (policy, rule, _) = names(ids, Some(k), key.rule);
                *self
                    .counts
                    .entry((
                        policy,
                        rule,
                        violation::action_name(key.action).to_owned(),
                        container.name.clone(),
                    ))
                    .or_default() += delta;
            }
            if let Some((reported, at)) = self.reported.get(&key).copied()
                && state.total > reported
                && (all || at.elapsed() >= std::time::Duration::from_secs(1))
                && let Some(what) = self.hooks.get(&key).copied()
            {
                // what the last event said; after a takeover, what the rule and hook say
                let mut v = self.last.get(&key).cloned().unwrap_or_else(|| {
                    let (policy, rule, mode) = names(ids, Some(k), key.rule);
                    Violation {
                        policy,
                        rule,
                        action: violation::action_name(key.action).to_owned(),
                        mode,
                        hook: violation::hook_name(what).to_owned(),
                        syscall: None,
                        abi: None,
                        checked_as: None,
                        errno: None,
                        exec: None,
                        exec_detail: Default::default(),
                        file: None,
                        network: None,
                        suppressed: 0,
                    }
                });
                v.suppressed = state.total - reported;
                self.mark(key, state.total, what);
                hub.publish(Event {
                    violation: Some(v),
                    ..Event::new(
                        EventType::PolicyViolation,
                        rfc3339(SystemTime::now()),
                        container,
                    )
                });
            }
        }
        if all {
            self.swept.clear();
            self.reported.clear();
            self.last.clear();
            self.hooks.clear();
            self.dirty.clear();
            self.progress = None;
        }
    }

    /// Forgets kernel keys of removed cgroups (their counts stay in `counts`).
    pub fn forget_dead(&mut self, k: &mut Kernel, targets: &HashMap<u64, TargetInfo>) {
        let dead: Vec<ViolationKey> = k
            .violations
            .keys()
            .flatten()
            .filter(|key| !targets.contains_key(&key.cgroup_id))
            .collect();
        for key in dead {
            let _ = k.violations.remove(&key);
            if let Some(p) = &mut self.progress {
                let _ = p.remove(&key);
            }
            self.swept.remove(&key);
            self.dirty.remove(&key);
            self.hooks.remove(&key);
            self.reported.remove(&key);
            self.last.remove(&key);
        }
    }
}
