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
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use palisade_common::policy::{PolicyEvent, ViolationKey, mode, what};

use super::{bpf::Kernel, engine::TargetInfo, tables::Ids, violation};
use crate::events::{
    Clock, ContainerRef, Event, EventType, Hub, ProcessRef, Reported, Violation, rfc3339,
};

/// (policy, rule, action, container)
pub type CountKey = (String, String, String, String);

/// `POLICY_REPORTED`'s map: per key, the violations reported and the key's hook.
type ProgressMap = aya::maps::HashMap<aya::maps::MapData, ViolationKey, [u64; 2]>;

/// `POLICY_REPORTED`, kept in the kernel for the next agent: the violations of each key that
/// an event reported. A key moves forward only once the event log has written the event's
/// line (the log says so right after the write, through [`Hub::on_log_written`]; without a
/// log, at once). A SIGKILL between the two then cannot lose a violation: the next agent
/// reports it again in its summary.
#[derive(Clone, Default)]
struct Progress(Arc<Mutex<Recorded>>);

/// Where [`Progress`] keeps its counts: `POLICY_REPORTED` (a plain map in unit tests).
trait Store: Send {
    fn put(&mut self, key: ViolationKey, value: [u64; 2]);
    fn take(&mut self, key: &ViolationKey);
    fn all(&self) -> Vec<(ViolationKey, [u64; 2])>;
}

impl Store for ProgressMap {
    fn put(&mut self, key: ViolationKey, value: [u64; 2]) {
        if let Err(e) = self.insert(key, value, 0) {
            tracing::debug!(error = %e, "cannot record reported violations for the next agent");
        }
    }

    fn take(&mut self, key: &ViolationKey) {
        let _ = self.remove(key);
    }

    fn all(&self) -> Vec<(ViolationKey, [u64; 2])> {
        self.iter().flatten().collect()
    }
}

#[derive(Default)]
struct Recorded {
    map: Option<Box<dyn Store>>,
    /// What the map holds for each key this agent reports; a key not here (its cgroup is
    /// gone, or the object was unloaded) is not written again by a line written late.
    held: HashMap<ViolationKey, u64>,
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a loaded object's map (`None`: unloaded); returns what it holds when adopted.
    fn replace(&self, map: Option<Box<dyn Store>>, adopted: bool) -> Vec<(ViolationKey, [u64; 2])> {
        let mut r = self.lock();
        r.held.clear();
        let held: Vec<_> = match (&map, adopted) {
            (Some(m), true) => m.all(),
            _ => Vec::new(),
        };
        r.held.extend(held.iter().map(|(k, [n, _])| (*k, *n)));
        r.map = map;
        held
    }

    /// `key` (of hook `what`) is reported by this agent from now on. A new key is written at
    /// once with nothing reported, so a next agent knows its hook even if no event of it
    /// reaches the log.
    fn track(&self, key: ViolationKey, what: u32) {
        let mut r = self.lock();
        let Recorded { map, held } = &mut *r;
        if held.contains_key(&key) {
            return;
        }
        held.insert(key, 0);
        if let Some(m) = map {
            m.put(key, [0, u64::from(what)]);
        }
    }

    fn forget(&self, key: &ViolationKey) {
        let mut r = self.lock();
        r.held.remove(key);
        if let Some(m) = &mut r.map {
            m.take(key);
        }
    }

    /// Records these as reported (a key only moves forward; one map update per key).
    fn commit(&self, done: &[Reported]) {
        let mut r = self.lock();
        let Recorded { map, held } = &mut *r;
        let Some(map) = map else { return };
        let mut changed: Vec<Reported> = Vec::new();
        for d in done {
            let Some(n) = held.get_mut(&d.key) else {
                continue;
            };
            if d.total <= *n {
                continue;
            }
            *n = d.total;
            match changed.iter_mut().find(|c| c.key == d.key) {
                Some(c) => *c = *d,
                None => changed.push(*d),
            }
        }
        for d in changed {
            map.put(d.key, [d.total, u64::from(d.what)]);
        }
    }
}

#[derive(Default)]
pub struct Reporter {
    /// See [`Progress`].
    progress: Progress,
    /// The hook (`what`) of each key's violations.
    hooks: HashMap<ViolationKey, u32>,
    /// `palisade_policy_violations_total`.
    pub counts: BTreeMap<CountKey, u64>,
    /// Kernel totals already counted / already reported by an event, per key.
    swept: HashMap<ViolationKey, u64>,
    reported: HashMap<ViolationKey, (u64, Instant)>,
    /// What each key is about, for summary events.
    last: HashMap<ViolationKey, Violation>,
    /// Keys the kernel counts that no record or adopted progress told of yet, and since when:
    /// their record was lost (left out while the log was behind, or taken from the ring by an
    /// agent killed before it reported it). Once quiet, a summary reports them from 0.
    unseen: HashMap<ViolationKey, Instant>,
    /// Without an event log: what the events since the last flush report, recorded by
    /// [`Reporter::flush`] (one map update per key and batch, not per event).
    unlogged: Vec<Reported>,
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
    /// A reporter whose progress the event log of `hub` moves forward.
    pub fn new(hub: &Hub) -> Self {
        let r = Self::default();
        let progress = r.progress.clone();
        hub.on_log_written(Box::new(move |done| progress.commit(done)));
        r
    }

    /// Takes the loaded object's `POLICY_REPORTED`; with adopted state, starts from what the
    /// previous agent reported (its events are not sent again).
    pub fn keep_progress(&mut self, progress: Option<ProgressMap>, adopted: bool) {
        let now = Instant::now();
        let progress = progress.map(|m| Box::new(m) as Box<dyn Store>);
        for (key, [n, what]) in self.progress.replace(progress, adopted) {
            self.reported.insert(key, (n, now));
            self.hooks.insert(key, what as u32);
        }
    }

    /// Violations of `key` up to `total` are reported by the event about to be published: its
    /// [`Reported`], recorded for the next agent once the log has the event (without a log, by
    /// the next [`Reporter::flush`]).
    fn mark(&mut self, key: ViolationKey, total: u64, what: u32, hub: &Hub) -> Reported {
        self.reported.insert(key, (total, Instant::now()));
        if self.hooks.insert(key, what).is_none() {
            // new to this agent (`hooks` and the progress know the same keys): no lock per event
            self.unseen.remove(&key);
            self.progress.track(key, what);
        }
        let r = Reported { key, total, what };
        if !hub.logs() {
            self.unlogged.push(r);
        }
        r
    }

    /// Without an event log: records what the events since the last flush reported.
    pub fn flush(&mut self) {
        let done = std::mem::take(&mut self.unlogged);
        self.progress.commit(&done);
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
        let prev = match self.reported.get(&key) {
            // a summary reported this one already (its record came late)
            Some((n, _)) if *n >= ev.total => return,
            Some((n, _)) => *n,
            None => 0,
        };
        let suppressed = ev.total.saturating_sub(prev).saturating_sub(1);
        let reports = self.mark(key, ev.total, ev.what, hub);
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
            reports: Some(reports),
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
            // (reported, since when, hook); a key no record told of is reported from 0 once
            // it has been counted for a quiet window (its hook unknown: 0)
            let known = match self.reported.get(&key).copied() {
                Some((n, at)) => self.hooks.get(&key).map(|w| (n, at, *w)),
                None if state.total > 0 => {
                    Some((0, *self.unseen.entry(key).or_insert_with(Instant::now), 0))
                }
                None => None,
            };
            if let Some((reported, at, what)) = known
                && state.total > reported
                && (all || at.elapsed() >= std::time::Duration::from_secs(1))
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
                let reports = self.mark(key, state.total, what, hub);
                hub.publish(Event {
                    violation: Some(v),
                    reports: Some(reports),
                    ..Event::new(
                        EventType::PolicyViolation,
                        rfc3339(SystemTime::now()),
                        container,
                    )
                });
            }
        }
        self.flush();
        if all {
            self.swept.clear();
            self.reported.clear();
            self.last.clear();
            self.hooks.clear();
            self.unseen.clear();
            self.progress.replace(None, false);
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
            self.progress.forget(&key);
            self.unlogged.retain(|r| r.key != key);
            self.swept.remove(&key);
            self.hooks.remove(&key);
            self.reported.remove(&key);
            self.unseen.remove(&key);
            self.last.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// A [`Store`] the test can read while the progress holds it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<BTreeMap<ViolationKey, [u64; 2]>>>);

    impl Store for Shared {
        fn put(&mut self, key: ViolationKey, value: [u64; 2]) {
            self.0.lock().unwrap().insert(key, value);
        }
        fn take(&mut self, key: &ViolationKey) {
            self.0.lock().unwrap().remove(key);
        }
        fn all(&self) -> Vec<(ViolationKey, [u64; 2])> {
            self.0
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect()
        }
    }

    impl Shared {
        fn get(&self, key: ViolationKey) -> Option<[u64; 2]> {
            self.0.lock().unwrap().get(&key).copied()
        }
    }

    fn key(cgroup_id: u64) -> ViolationKey {
        ViolationKey {
            cgroup_id,
            rule: 1,
            action: 2,
        }
    }

    fn reported(k: ViolationKey, total: u64) -> Reported {
        Reported {
            key: k,
            total,
            what: what::SYSCALL,
        }
    }

    #[test]
    fn progress_moves_forward_only_for_keys_it_reports() {
        let store = Shared::default();
        let p = Progress::default();
        p.replace(Some(Box::new(store.clone())), false);
        let (a, b) = (key(7), key(8));
        p.track(a, what::SYSCALL);
        // a new key is written at once, nothing reported yet, with its hook
        assert_eq!(store.get(a), Some([0, u64::from(what::SYSCALL)]));
        p.commit(&[reported(a, 3), reported(a, 5), reported(b, 9)]);
        assert_eq!(store.get(a).map(|v| v[0]), Some(5), "the last of a batch");
        assert_eq!(store.get(b), None, "a key this agent does not report");
        p.commit(&[reported(a, 4)]);
        assert_eq!(store.get(a).map(|v| v[0]), Some(5), "never backwards");
        p.forget(&a);
        p.commit(&[reported(a, 6)]);
        assert_eq!(
            store.get(a),
            None,
            "a line written late does not bring it back"
        );
    }

    #[test]
    fn adopted_progress_is_where_the_next_agent_starts() {
        let store = Shared::default();
        store.clone().put(key(7), [4, u64::from(what::EXEC)]);
        let p = Progress::default();
        let held = p.replace(Some(Box::new(store.clone())), true);
        assert_eq!(held, vec![(key(7), [4, u64::from(what::EXEC)])]);
        p.commit(&[reported(key(7), 4)]);
        p.commit(&[reported(key(7), 6)]);
        assert_eq!(store.get(key(7)).map(|v| v[0]), Some(6));
        // a fresh load (not adopted) starts from nothing
        assert!(p.replace(Some(Box::new(store)), false).is_empty());
    }

    #[test]
    fn with_an_event_log_a_violation_is_recorded_once_its_line_is_written() {
        let hub = Hub::new(64);
        let _log = hub.subscribe_log();
        let mut r = Reporter::new(&hub);
        let store = Shared::default();
        r.progress.replace(Some(Box::new(store.clone())), false);
        let done = r.mark(key(7), 5, what::SYSCALL, &hub);
        r.flush();
        assert_eq!(
            store.get(key(7)).map(|v| v[0]),
            Some(0),
            "published, not written: not reported for the next agent"
        );
        hub.log_wrote(&[done]);
        assert_eq!(store.get(key(7)).map(|v| v[0]), Some(5));
    }

    #[test]
    fn without_an_event_log_a_violation_is_recorded_at_the_flush() {
        let hub = Hub::new(64);
        let mut r = Reporter::new(&hub);
        let store = Shared::default();
        r.progress.replace(Some(Box::new(store.clone())), false);
        r.mark(key(7), 5, what::SYSCALL, &hub);
        r.flush();
        assert_eq!(store.get(key(7)).map(|v| v[0]), Some(5));
    }
}
