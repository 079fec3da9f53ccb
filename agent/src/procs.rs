//! The process table: what each live process ran (from exec events), so exit and OOM events can
//! name the process and its container. Bounded per container and in total; the oldest entry of
//! a container is dropped first.
use std::collections::{HashMap, VecDeque};

/// What we know of a live process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub comm: String,
    /// Executable path as passed to exec.
    pub exe: String,
    pub args: Vec<String>,
    pub args_truncated: bool,
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC ns of the exec.
    pub exec_ktime_ns: u64,
}

#[derive(Debug)]
pub struct ProcessTable {
    by_pid: HashMap<u32, Proc>,
    /// Insertion order per cgroup, for eviction.
    order: HashMap<u64, VecDeque<u32>>,
    per_container: usize,
    total: usize,
    /// Entries dropped to stay within the bounds.
    pub evicted_total: u64,
}

impl ProcessTable {
    pub fn new(per_container: usize, total: usize) -> Self {
        Self {
            by_pid: HashMap::new(),
            order: HashMap::new(),
            per_container: per_container.max(1),
            total: total.max(1),
            evicted_total: 0,
        }
    }

    pub fn get(&self, pid: u32) -> Option<&Proc> {
        self.by_pid.get(&pid)
    }

    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    /// Records an exec (replacing what the pid ran before).
    pub fn exec(&mut self, p: Proc) {
        if let Some(old) = self.by_pid.remove(&p.pid) {
            self.unlink(old.cgroup_id, old.pid);
        }
        let cg = p.cgroup_id;
        let q = self.order.entry(cg).or_default();
        q.push_back(p.pid);
        let over = q.len() > self.per_container;
        self.by_pid.insert(p.pid, p);
        if over {
            self.evict_from(cg);
        }
        if self.by_pid.len() > self.total {
            // drop from the cgroup with the most entries
            if let Some(big) = self
                .order
                .iter()
                .max_by_key(|(_, q)| q.len())
                .map(|(cg, _)| *cg)
            {
                self.evict_from(big);
            }
        }
    }

    /// A process moved to another cgroup: its entry follows it. Returns the cgroup it was in,
    /// when the table knew it.
    pub fn moved(&mut self, pid: u32, cgroup_id: u64) -> Option<u64> {
        let mut p = self.exit(pid)?;
        let was = p.cgroup_id;
        p.cgroup_id = cgroup_id;
        self.exec(p);
        Some(was)
    }

    /// Forgets a process that exited, returning what we knew.
    pub fn exit(&mut self, pid: u32) -> Option<Proc> {
        let p = self.by_pid.remove(&pid)?;
        self.unlink(p.cgroup_id, pid);
        Some(p)
    }

    /// Processes of a cgroup, oldest first.
    #[cfg(test)]
    pub fn of_cgroup(&self, cgroup_id: u64) -> Vec<&Proc> {
        self.order
            .get(&cgroup_id)
            .into_iter()
            .flatten()
            .filter_map(|pid| self.by_pid.get(pid))
            .collect()
    }

    fn evict_from(&mut self, cg: u64) {
        if let Some(q) = self.order.get_mut(&cg)
            && let Some(pid) = q.pop_front()
        {
            self.by_pid.remove(&pid);
            self.evicted_total += 1;
            if q.is_empty() {
                self.order.remove(&cg);
            }
        }
    }

    fn unlink(&mut self, cg: u64, pid: u32) {
        if let Some(q) = self.order.get_mut(&cg) {
            q.retain(|p| *p != pid);
            if q.is_empty() {
                self.order.remove(&cg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, cg: u64) -> Proc {
        Proc {
            pid,
            ppid: Some(1),
            uid: 0,
            comm: "x".into(),
            exe: "/bin/x".into(),
            args: vec!["x".into()],
            args_truncated: false,
            cgroup_id: cg,
            exec_ktime_ns: u64::from(pid),
        }
    }

    #[test]
    fn exec_exit_and_bounds() {
        let mut t = ProcessTable::new(2, 3);
        t.exec(p(1, 10));
        t.exec(p(2, 10));
        t.exec(p(3, 10)); // over the per-container bound: pid 1 goes
        assert!(t.get(1).is_none());
        assert_eq!(
            t.of_cgroup(10).iter().map(|p| p.pid).collect::<Vec<_>>(),
            [2, 3]
        );
        t.exec(p(4, 20));
        t.exec(p(5, 20)); // total 4 > 3: the biggest cgroup loses its oldest
        assert_eq!(t.len(), 3);
        assert_eq!(t.evicted_total, 2);
        assert_eq!(t.exit(5).map(|p| p.exe), Some("/bin/x".into()));
        assert!(t.exit(5).is_none());
        // re-exec of a pid moves it
        t.exec(p(4, 10));
        assert_eq!(t.get(4).map(|p| p.cgroup_id), Some(10));
        assert!(t.of_cgroup(20).is_empty());
    }
}
