//! The identity registry: cgroup id → who it is (path, runtime, container name).
//!
//! Fed by the initial walk of the unified hierarchy, `cgroup:cgroup_mkdir`/`rmdir` events and
//! periodic rescans. Bounded: at most `max_cgroups` entries; removed cgroups stay for the grace
//! period (so their final numbers can be scraped) and are then forgotten.
pub mod rules;

use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

pub use rules::{PathIdentity, Runtime, classify};

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
}

impl Identity {
    /// `path` is relative to the unified root; anything not starting with `/` is a placeholder
    /// name for a cgroup whose path is unknown (e.g. `cgroup:42`) and is used verbatim.
    pub fn new(cgroup_id: u64, path: &str) -> Self {
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
            };
        }
        let PathIdentity {
            runtime,
            container_id,
            pod_uid,
            name,
        } = classify(path);
        Self {
            cgroup_id,
            path: path.to_owned(),
            runtime,
            container_id,
            pod_uid,
            name,
            removed_at: None,
            reaped: false,
            registered: false,
        }
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
    /// Cgroups not tracked because the registry was full.
    pub dropped_total: u64,
}

impl Registry {
    pub fn new(max: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            max,
            dropped_total: 0,
        }
    }

    pub fn get(&self, id: u64) -> Option<&Identity> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Adds a cgroup seen alive. A known id keeps its entry (a rescan racing an event is fine).
    pub fn insert(&mut self, id: u64, path: &str) -> Inserted {
        if let Some(known) = self.by_id.get_mut(&id) {
            if known.path != path && !path.is_empty() {
                // e.g. a truncated event path repaired by a rescan
                let mut fresh = Identity::new(id, path);
                fresh.removed_at = known.removed_at;
                fresh.reaped = known.reaped;
                if known.registered {
                    fresh.registered = true;
                    fresh.runtime = known.runtime;
                    fresh.name = std::mem::take(&mut known.name);
                }
                *known = fresh;
            }
            return Inserted::Known;
        }
        if self.by_id.len() >= self.max && !self.make_room() {
            self.dropped_total += 1;
            return Inserted::Dropped;
        }
        self.by_id.insert(id, Identity::new(id, path));
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
        }
        inserted
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

    /// Reconciles with a full walk: adds what is missing, marks removed what is gone.
    /// Returns (added ids, removed ids).
    pub fn sync(&mut self, walked: &[(u64, String)], now: Instant) -> (Vec<u64>, Vec<u64>) {
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
            .filter(|i| i.is_live() && !seen.contains(&i.cgroup_id))
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
        let mut r = Registry::new(10);
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
        let mut r = Registry::new(10);
        r.mark_removed(99, None, Instant::now());
        assert_eq!(r.get(99).unwrap().name, "cgroup:99");
        assert_eq!(r.unreaped(), vec![99]);
    }

    #[test]
    fn bounded_and_evicts_only_reaped_entries() {
        let mut r = Registry::new(2);
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
        let mut r = Registry::new(100);
        let t = Instant::now();
        r.insert(1, "/");
        r.insert(2, "/old");
        let (added, gone) = r.sync(&[(1, "/".into()), (3, "/new".into())], t);
        assert_eq!(added, vec![3]);
        assert_eq!(gone, vec![2]);
        assert!(!r.get(2).unwrap().is_live());
        assert_eq!(r.counts(), (2, 1));
    }

    #[test]
    fn registered_names_win_over_path_rules_and_survive_repairs() {
        let mut r = Registry::new(10);
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
    fn better_path_replaces_placeholder_name() {
        let mut r = Registry::new(10);
        r.insert(5, "cgroup:5");
        r.insert(5, "/system.slice/x.service");
        assert_eq!(r.get(5).unwrap().name, "x.service");
    }
}
