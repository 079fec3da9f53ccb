//! What the engine could not put in place, per (cgroup, policy, reason): the
//! `palisade_policy_unenforced` gauge, `policy_unenforced` events when a shortfall starts and
//! when it is over, the log, `palisade policy status`, and the refusal of a registration.
use std::{
    collections::{BTreeMap, HashMap},
    time::SystemTime,
};

use tracing::{info, warn};

use super::TargetInfo;
use crate::{
    events::{ContainerRef, Event, EventType, Hub, Unenforced, rfc3339},
    policy::hooks::Hook,
};

/// Why a selected cgroup's policy is not (fully) in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Every slot (distinct effective policy) is in use.
    SlotsFull,
    /// The cgroup table is full.
    CgroupsFull,
    /// The rule id table is full.
    RulesFull,
    /// More policies with network rules for one direction than a cgroup can combine.
    NetworkPolicies,
    /// A table write failed for another reason.
    TableError,
    /// The policy object could not be loaded.
    NotLoaded,
    /// A hook group the rules need does not attach.
    Hook(Hook),
    /// File rules whose action refuses (`errno`, `kill`) are reported only (no BPF-LSM tier).
    FilesReportedOnly,
}

impl Reason {
    /// The `reason` label and event field.
    pub fn label(self) -> String {
        match self {
            Reason::SlotsFull => "slots_full".into(),
            Reason::CgroupsFull => "cgroups_full".into(),
            Reason::RulesFull => "rules_full".into(),
            Reason::NetworkPolicies => "network_policies".into(),
            Reason::TableError => "table_error".into(),
            Reason::NotLoaded => "not_loaded".into(),
            Reason::Hook(h) => format!("hook_{}", h.as_str()),
            Reason::FilesReportedOnly => "files_reported_only".into(),
        }
    }
}

/// (cgroup id, policy, reason) → what failed.
pub type Shortfalls = BTreeMap<(u64, String, Reason), String>;

fn container_of(targets: &HashMap<u64, TargetInfo>, id: u64) -> ContainerRef {
    match targets.get(&id) {
        Some(t) => t.container.clone(),
        None => ContainerRef {
            id: format!("cgroup:{id}"),
            name: format!("cgroup:{id}"),
            cgroup_id: id,
            runtime: "cgroup".into(),
            image: String::new(),
            namespace: String::new(),
            pod: String::new(),
            pod_uid: String::new(),
        },
    }
}

/// The shortfalls in force now.
#[derive(Debug, Default)]
pub struct Tracker {
    current: Shortfalls,
}

impl Tracker {
    /// Replaces the current shortfalls with `next`: an event for each that starts, one
    /// (`resolved`) for each that is over.
    pub fn update(&mut self, next: Shortfalls, targets: &HashMap<u64, TargetInfo>, hub: &Hub) {
        let publish = |(id, policy, reason): &(u64, String, Reason), detail: &str, resolved| {
            let container = container_of(targets, *id);
            if resolved {
                info!(container = %container.name, policy = %policy, reason = %reason.label(), "policy enforced again");
            } else {
                warn!(container = %container.name, policy = %policy, reason = %reason.label(), detail = %detail, "policy not enforced");
            }
            hub.publish(Event {
                unenforced: Some(Unenforced {
                    policy: policy.clone(),
                    reason: reason.label(),
                    detail: detail.to_owned(),
                    resolved,
                }),
                ..Event::new(
                    EventType::PolicyUnenforced,
                    rfc3339(SystemTime::now()),
                    container,
                )
            });
        };
        for (k, d) in &next {
            if !self.current.contains_key(k) {
                publish(k, d, false);
            }
        }
        for (k, d) in &self.current {
            // a removed cgroup's shortfall ends without news
            if !next.contains_key(k) && targets.contains_key(&k.0) {
                publish(k, d, true);
            }
        }
        self.current = next;
    }

    /// Drops `cgroup_id`'s shortfalls without news (a registration withdrawn).
    pub fn forget(&mut self, cgroup_id: u64) {
        self.current.retain(|(id, _, _), _| *id != cgroup_id);
    }

    /// What keeps `cgroup_id`'s policies from being in place (`reason: detail`).
    pub fn of(&self, cgroup_id: u64) -> Vec<String> {
        self.current
            .iter()
            .filter(|((id, _, _), _)| *id == cgroup_id)
            .map(|((_, p, r), d)| format!("{p}: {}: {d}", r.label()))
            .collect()
    }

    /// (policy, container, reason) of every shortfall, for `/metrics`.
    pub fn rows(&self, targets: &HashMap<u64, TargetInfo>) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self
            .current
            .keys()
            .map(|(id, p, r)| (p.clone(), container_of(targets, *id).name, r.label()))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// For `palisade policy status`.
    pub fn json(&self, targets: &HashMap<u64, TargetInfo>) -> Vec<serde_json::Value> {
        self.current
            .iter()
            .map(|((id, p, r), d)| {
                serde_json::json!({
                    "policy": p, "cgroup_id": id, "container": container_of(targets, *id).name,
                    "reason": r.label(), "detail": d,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_when_a_shortfall_starts_and_when_it_is_over() {
        let hub = Hub::new(16);
        let mut rx = hub.subscribe();
        let targets: HashMap<u64, TargetInfo> = HashMap::new();
        let mut t = Tracker::default();
        let key = (7u64, "fence".to_owned(), Reason::Hook(Hook::Exec));
        let mut next = Shortfalls::new();
        next.insert(key.clone(), "tracefs is not available".into());
        t.update(next.clone(), &targets, &hub);
        let ev = rx.try_recv().unwrap_or_else(|e| panic!("{e}"));
        let u = ev.unenforced.clone().unwrap_or_else(|| panic!("{ev:?}"));
        assert_eq!((u.reason.as_str(), u.resolved), ("hook_exec", false));
        assert_eq!(ev.container.name, "cgroup:7");
        assert_eq!(
            t.rows(&targets),
            [("fence".into(), "cgroup:7".into(), "hook_exec".into())]
        );
        assert_eq!(t.of(7).len(), 1);
        // the same again: no news
        t.update(next, &targets, &hub);
        assert!(rx.try_recv().is_err());
        // over, for a cgroup that still exists: resolved
        let mut live = HashMap::new();
        live.insert(
            7,
            TargetInfo {
                cgroup_id: 7,
                name: "web".into(),
                container_id: None,
                runtime: "cgroup".into(),
                namespace: String::new(),
                pod: String::new(),
                path: "/web".into(),
                workload: false,
                container: container_of(&targets, 7),
            },
        );
        t.update(Shortfalls::new(), &live, &hub);
        let ev = rx.try_recv().unwrap_or_else(|e| panic!("{e}"));
        assert!(ev.unenforced.as_ref().is_some_and(|u| u.resolved));
        assert!(t.rows(&live).is_empty());
        assert_eq!(Reason::SlotsFull.label(), "slots_full");
    }
}
