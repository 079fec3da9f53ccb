//! The identity registry: cgroup id → who it is (path, runtime, container name).
//!
//! Fed by the initial walk of the unified hierarchy, `cgroup:cgroup_mkdir`/`rmdir` events and
//! periodic rescans. Bounded: at most `max_cgroups` entries; removed cgroups stay for the grace
//! period (so their final numbers can be scraped) and are then forgotten.
pub mod names;
pub mod rules;
pub mod stores;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

pub use rules::{PathIdentity, Runtime, classify};

use crate::config::RuntimeParents;

/// Where name resolution of a container cgroup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// Nothing to look up (not a container runtime, or a registered workload).
    NotNeeded,
    /// Not found yet; try again at `next_try`.
    Pending { next_try: Instant },
    /// Found.
    Done,
    /// Not found within the resolution window (counted once); still retried now and then, so a
    /// late name still updates the labels.
    Unresolved { next_try: Instant },
}

/// One known cgroup.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cgroup_id: u64,
    /// Path relative to the unified root (`/system.slice/foo.service`).
    pub path: String,
    pub runtime: Runtime,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// The `container` label.
    pub name: String,
    /// Set when the cgroup was removed; its kernel entries are reaped on the next collection.
    pub removed_at: Option<Instant>,
    /// True once the kernel map entries of a removed cgroup were read and deleted.
    pub reaped: bool,
    /// Named by a registration (the launcher's handshake), not by the path rules; rescans and
    /// repaired paths keep this name.
    pub registered: bool,
    /// Image, Kubernetes namespace and pod name, when the runtime's files tell.
    pub image: String,
    /// The runtime's own name for the container, when its files tell (Docker's and podman's
    /// names, CRI-O's `k8s_…` name).
    pub runtime_name: String,
    pub namespace: String,
    pub pod: String,
    pub naming: Naming,
    pub first_seen: Instant,
    /// When the cgroup was created, if the agent saw it happen (mkdir event).
    pub created_at: Option<SystemTime>,
    /// A `container_start` event was sent (at the first exec after creation).
    pub started: bool,
}

impl Identity {
    /// `path` is relative to the unified root; anything not starting with `/` is a placeholder
    /// name for a cgroup whose path is unknown (e.g. `cgroup:42`) and is used verbatim. The
    /// runtime rules apply under `parents` only.
    pub fn new(cgroup_id: u64, path: &str, parents: &RuntimeParents) -> Self {
        if !path.starts_with('/') {
            return Self {
                cgroup_id,
                path: path.to_owned(),
                runtime: Runtime::Cgroup,
                container_id: None,
                pod_uid: None,
                name: path.to_owned(),
                removed_at: None,
                reaped: false,
                registered: false,
                image: String::new(),
                runtime_name: String::new(),
                namespace: String::new(),
                pod: String::new(),
                naming: Naming::NotNeeded,
                first_seen: Instant::now(),
                created_at: None,
                started: false,
            };
        }
        let PathIdentity {
            runtime,
            container_id,
            pod_uid,
            name,
        } = classify(path, parents);
        Self {
            cgroup_id,
            path: path.to_owned(),
            runtime,
            container_id,
            pod_uid,
            naming: if matches!(
                runtime,
                Runtime::Docker
                    | Runtime::Podman
                    | Runtime::Containerd
                    | Runtime::CriO
                    | Runtime::Cri
                    | Runtime::Kubernetes
            ) {
                Naming::Pending {
                    next_try: Instant::now(),
                }
            } else {
                Naming::NotNeeded
            },
            name,
            removed_at: None,
            reaped: false,
            registered: false,
            image: String::new(),
            runtime_name: String::new(),
            namespace: String::new(),
            pod: String::new(),
            first_seen: Instant::now(),
            created_at: None,
            started: false,
        }
    }

    /// The `name` label of cAdvisor families: the runtime's name for the container, else its id
    /// (as cAdvisor under containerd), else a launched workload's name; empty for cgroups that
    /// are not containers (so `name!=""` selects containers, as with cAdvisor).
    pub fn cadvisor_name(&self) -> &str {
        if !self.runtime_name.is_empty() {
            &self.runtime_name
        } else if let Some(id) = &self.container_id {
            id
        } else if self.registered {
            &self.name
        } else {
            ""
        }
    }

    /// The `id` of events and cAdvisor metrics: the runtime's container id, else the path.
    pub fn display_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or(&self.path)
    }

    pub fn is_live(&self) -> bool {
        self.removed_at.is_none()
    }
}

/// Result of [`Registry::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New,
    Known,
    /// The registry is full; the cgroup is not tracked.
    Dropped,
}

#[derive(Debug)]
pub struct Registry {
    by_id: HashMap<u64, Identity>,
    max: usize,
    parents: RuntimeParents,
    /// Cgroups not tracked because the registry was full.
    pub dropped_total: u64,
    /// Container cgroups whose name was not found within the resolution window.
    pub unresolved_total: u64,
}

impl Registry {
    pub fn new(max: usize, parents: RuntimeParents) -> Self {
        Self {
            by_id: HashMap::new(),
            max,
            parents,
            dropped_total: 0,
            unresolved_total: 0,
        }
    }

    pub fn get(&self, id: u64) -> Option<&Identity> {
        self.by_id.get(&id)
    }

    /// What the path rules say about a cgroup, whether the registry holds it or not (a full
    /// registry does not keep policies from a cgroup).
    pub fn identify(&self, id: u64, path: &str) -> Identity {
        Identity::new(id, path, &self.parents)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Live (not removed) cgroups.
    pub fn live(&self) -> impl Iterator<Item = &Identity> {
        self.by_id.values().filter(|i| i.is_live())
    }

    /// Adds a cgroup seen alive. A known id keeps its entry (a rescan racing an event is fine).
    pub fn insert(&mut self, id: u64, path: &str) -> Inserted {
        if let Some(known) = self.by_id.get_mut(&id) {
            if known.path != path && !path.is_empty() {
                // e.g. a truncated event path repaired by a rescan
                let mut fresh = Identity::new(id, path, &self.parents);
                fresh.removed_at = known.removed_at;
                fresh.reaped = known.reaped;
                if known.registered {
                    fresh.registered = true;
                    fresh.runtime = known.runtime;
                    fresh.name = std::mem::take(&mut known.name);
                    fresh.naming = Naming::NotNeeded;
                }
                fresh.first_seen = known.first_seen;
                fresh.created_at = known.created_at;
                fresh.started = known.started;
                *known = fresh;
            }
            return Inserted::Known;
        }
        if self.by_id.len() >= self.max && !self.make_room() {
            self.dropped_total += 1;
            return Inserted::Dropped;
        }
        self.by_id
            .insert(id, Identity::new(id, path, &self.parents));
        Inserted::New
    }

    /// Names cgroup `id` (at `path`) after a workload registered by the launcher; the name
    /// replaces whatever the path rules said, in every metric and event from now on.
    pub fn register_workload(&mut self, id: u64, path: &str, name: &str) -> Inserted {
        let inserted = self.insert(id, path);
        if let Some(i) = self.by_id.get_mut(&id) {
            i.name = name.to_owned();
            i.runtime = Runtime::Palisade;
            i.registered = true;
            i.naming = Naming::NotNeeded;
        }
        inserted
    }

    /// Records that the agent saw the cgroup being created.
    pub fn mark_created(&mut self, id: u64, at: SystemTime) {
        if let Some(i) = self.by_id.get_mut(&id) {
            i.created_at.get_or_insert(at);
        }
    }

    /// Marks the first exec in a cgroup created while the agent watched; true when this is it
    /// (the caller then sends `container_start`).
    pub fn first_exec(&mut self, id: u64) -> bool {
        match self.by_id.get_mut(&id) {
            Some(i) if i.created_at.is_some() && !i.started && i.is_live() => {
                i.started = true;
                true
            }
            _ => false,
        }
    }

    /// Live container cgroups whose names are due for a lookup.
    pub fn due_for_naming(&self, now: Instant) -> Vec<Identity> {
        self.by_id
            .values()
            .filter(|i| i.is_live())
            .filter(|i| match i.naming {
                Naming::Pending { next_try } | Naming::Unresolved { next_try } => next_try <= now,
                Naming::NotNeeded | Naming::Done => false,
            })
            .cloned()
            .collect()
    }

    /// Applies a lookup result. Within `window` of first sight a miss is retried on every pass;
    /// after it the cgroup is counted in `unresolved_total` once and retried every `window`.
    pub fn apply_names(
        &mut self,
        id: u64,
        found: Option<names::Resolved>,
        now: Instant,
        window: Duration,
    ) {
        let Some(i) = self.by_id.get_mut(&id) else {
            return;
        };
        match found {
            Some(r) => {
                if let Some(n) = r.name {
                    i.name = n;
                }
                i.image = r.image.unwrap_or_default();
                i.runtime_name = r.runtime_name.unwrap_or_default();
                i.namespace = r.namespace.unwrap_or_default();
                i.pod = r.pod.unwrap_or_default();
                i.naming = Naming::Done;
            }
            None => {
                let expired = now.duration_since(i.first_seen) >= window;
                i.naming = match i.naming {
                    Naming::Pending { .. } if expired => {
                        self.unresolved_total += 1;
                        Naming::Unresolved {
                            next_try: now + window,
                        }
                    }
                    Naming::Pending { .. } => Naming::Pending { next_try: now },
                    _ => Naming::Unresolved {
                        next_try: now + window,
                    },
                };
            }
        }
    }

    /// Live cgroups per runtime label.
    pub fn live_by_runtime(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for i in self.by_id.values().filter(|i| i.is_live()) {
            *m.entry(i.runtime.as_str()).or_default() += 1;
        }
        m
    }

    /// Frees the oldest already-reaped removed entry, if any.
    fn make_room(&mut self) -> bool {
        let victim = self
            .by_id
            .values()
            .filter(|i| i.reaped)
            .min_by_key(|i| i.removed_at)
            .map(|i| i.cgroup_id);
        victim.is_some_and(|v| self.by_id.remove(&v).is_some())
    }

    /// Records that `id` was removed. Unknown ids are recorded too (named by `path` or
    /// `cgroup:<id>`), so kernel entries the agent never named are still reaped.
    pub fn mark_removed(&mut self, id: u64, path: Option<&str>, now: Instant) {
        if !self.by_id.contains_key(&id) {
            let path = path.map_or_else(|| format!("cgroup:{id}"), str::to_owned);
            if self.insert(id, &path) == Inserted::Dropped {
                return;
            }
        }
        if let Some(i) = self.by_id.get_mut(&id)
            && i.removed_at.is_none()
        {
            i.removed_at = Some(now);
        }
    }

    /// Takes back a removal (the cgroup turned out to exist); true when `id` was removed.
    pub fn revive(&mut self, id: u64) -> bool {
        match self.by_id.get_mut(&id) {
            Some(i) if !i.is_live() => {
                i.removed_at = None;
                i.reaped = false;
                true
            }
            _ => false,
        }
    }

    /// Removed cgroups whose kernel entries still need reaping.
    pub fn unreaped(&self) -> Vec<u64> {
        self.by_id
            .values()
            .filter(|i| i.removed_at.is_some() && !i.reaped)
            .map(|i| i.cgroup_id)
            .collect()
    }

    pub fn mark_reaped(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(i) = self.by_id.get_mut(id) {
                i.reaped = true;
            }
        }
    }

    /// Forgets removed, reaped cgroups older than `grace`; returns their ids.
    pub fn expire(&mut self, now: Instant, grace: std::time::Duration) -> Vec<u64> {
        let expired: Vec<u64> = self
            .by_id
            .values()
            .filter(|i| i.reaped && i.removed_at.is_some_and(|t| now.duration_since(t) >= grace))
            .map(|i| i.cgroup_id)
            .collect();
        for id in &expired {
            self.by_id.remove(id);
        }
        expired
    }

    /// Reconciles with a full walk that started at `walk_started`: adds what is missing, marks
    /// removed what is gone. Only entries known before the walk started can be gone: one that
    /// an event or a collection added meanwhile may have been created after the walk passed
    /// its parent. Returns (added ids, removed ids).
    pub fn sync(
        &mut self,
        walked: &[(u64, String)],
        walk_started: Instant,
        now: Instant,
    ) -> (Vec<u64>, Vec<u64>) {
        let seen: HashSet<u64> = walked.iter().map(|(id, _)| *id).collect();
        let mut added = Vec::new();
        for (id, path) in walked {
            if self.insert(*id, path) == Inserted::New {
                added.push(*id);
            }
        }
        let gone: Vec<u64> = self
            .by_id
            .values()
            .filter(|i| i.is_live() && i.first_seen < walk_started && !seen.contains(&i.cgroup_id))
            .map(|i| i.cgroup_id)
            .collect();
        for id in &gone {
            self.mark_removed(*id, None, now);
        }
        (added, gone)
    }

    /// (live, removed) counts.
    pub fn counts(&self) -> (usize, usize) {
        let live = self.by_id.values().filter(|i| i.is_live()).count();
        (live, self.by_id.len() - live)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn insert_remove_reap_expire() {
        let mut r = Registry::new(10, RuntimeParents::default());
        let t0 = Instant::now();
        assert_eq!(r.insert(7, "/system.slice/foo.service"), Inserted::New);
        assert_eq!(r.insert(7, "/system.slice/foo.service"), Inserted::Known);
        assert_eq!(r.get(7).unwrap().name, "foo.service");
        r.mark_removed(7, None, t0);
        assert_eq!(r.unreaped(), vec![7]);
        // not reaped yet: never expires
        assert!(
            r.expire(t0 + Duration::from_secs(100), Duration::ZERO)
                .is_empty()
        );
        r.mark_reaped(&[7]);
        assert!(r.unreaped().is_empty());
        assert!(
            r.expire(t0 + Duration::from_secs(5), Duration::from_secs(10))
                .is_empty()
        );
        assert_eq!(
            r.expire(t0 + Duration::from_secs(10), Duration::from_secs(10)),
            vec![7]
        );
        assert!(r.get(7).is_none());
    }

    #[test]
    fn unknown_removed_ids_are_tracked_for_reaping() {
        let mut r = Registry::new(10, RuntimeParents::default());
        r.mark_removed(99, None, Instant::now());
        assert_eq!(r.get(99).unwrap().name, "cgroup:99");
        assert_eq!(r.unreaped(), vec![99]);
    }

    #[test]
    fn bounded_and_evicts_only_reaped_entries() {
        let mut r = Registry::new(2, RuntimeParents::default());
        let t = Instant::now();
        assert_eq!(r.insert(1, "/a"), Inserted::New);
        assert_eq!(r.insert(2, "/b"), Inserted::New);
        assert_eq!(r.insert(3, "/c"), Inserted::Dropped);
        assert_eq!(r.dropped_total, 1);
        r.mark_removed(1, None, t);
        // removed but not reaped: its final numbers are still owed, keep it
        assert_eq!(r.insert(3, "/c"), Inserted::Dropped);
        r.mark_reaped(&[1]);
        assert_eq!(r.insert(3, "/c"), Inserted::New);
        assert!(r.get(1).is_none());
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn sync_adds_and_removes() {
        let mut r = Registry::new(100, RuntimeParents::default());
        r.insert(1, "/");
        r.insert(2, "/old");
        let walk_started = Instant::now();
        // added by an event while the walk ran: not in the walk, but not gone either
        r.insert(4, "/during");
        let (added, gone) = r.sync(
            &[(1, "/".into()), (3, "/new".into())],
            walk_started,
            Instant::now(),
        );
        assert_eq!(added, vec![3]);
        assert_eq!(gone, vec![2]);
        assert!(!r.get(2).unwrap().is_live());
        assert!(r.get(4).unwrap().is_live());
        assert_eq!(r.counts(), (3, 1));
    }

    #[test]
    fn registered_names_win_over_path_rules_and_survive_repairs() {
        let mut r = Registry::new(10, RuntimeParents::default());
        assert_eq!(r.insert(8, "/palisade/x-1"), Inserted::New);
        assert_eq!(
            r.register_workload(8, "/palisade/x-1", "web-0"),
            Inserted::Known
        );
        assert_eq!(r.get(8).unwrap().name, "web-0");
        r.insert(8, "/palisade/x-1/");
        assert_eq!(r.get(8).unwrap().name, "web-0");
        assert_eq!(r.get(8).unwrap().runtime, Runtime::Palisade);
        // registration before any event or walk
        assert_eq!(r.register_workload(9, "/palisade/y", "db"), Inserted::New);
        assert_eq!(r.get(9).unwrap().name, "db");
    }

    #[test]
    fn naming_window_counts_unresolved_once_and_late_names_win() {
        let id64 = "3f2a9c1b0e4d5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
        let mut r = Registry::new(10, RuntimeParents::default());
        r.insert(3, &format!("/docker/{id64}"));
        r.insert(4, "/system.slice/x.service");
        let t0 = r.get(3).unwrap().first_seen;
        let w = Duration::from_secs(30);
        assert_eq!(
            r.due_for_naming(t0).len(),
            1,
            "only the container needs a name"
        );
        r.apply_names(3, None, t0 + Duration::from_secs(1), w);
        assert!(matches!(r.get(3).unwrap().naming, Naming::Pending { .. }));
        assert_eq!(r.unresolved_total, 0);
        r.apply_names(3, None, t0 + w, w);
        assert_eq!(r.unresolved_total, 1);
        assert!(
            r.due_for_naming(t0 + w).is_empty(),
            "backs off after the window"
        );
        r.apply_names(3, None, t0 + w * 2, w);
        assert_eq!(r.unresolved_total, 1, "counted once");
        assert_eq!(r.due_for_naming(t0 + w * 3).len(), 1);
        let late = names::Resolved {
            name: Some("web".into()),
            image: Some("nginx".into()),
            namespace: None,
            pod: None,
            runtime_name: None,
        };
        r.apply_names(3, Some(late), t0 + w * 3, w);
        let i = r.get(3).unwrap();
        assert_eq!((i.name.as_str(), i.image.as_str()), ("web", "nginx"));
        assert_eq!(i.naming, Naming::Done);
        assert_eq!(r.live_by_runtime().get("docker"), Some(&1));
    }

    #[test]
    fn first_exec_only_for_cgroups_created_while_watching() {
        let mut r = Registry::new(10, RuntimeParents::default());
        r.insert(1, "/old");
        r.insert(2, "/new");
        r.mark_created(2, SystemTime::now());
        assert!(!r.first_exec(1));
        assert!(r.first_exec(2));
        assert!(!r.first_exec(2));
    }

    #[test]
    fn better_path_replaces_placeholder_name() {
        let mut r = Registry::new(10, RuntimeParents::default());
        r.insert(5, "cgroup:5");
        r.insert(5, "/system.slice/x.service");
        assert_eq!(r.get(5).unwrap().name, "x.service");
    }
}
