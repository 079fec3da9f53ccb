//! Resource use per cgroup from cgroupfs, v1 (hybrid hosts) and v2, with cAdvisor's meanings.
//!
//! For each value the unified (v2) file is read first and the v1 controller's file second, so one
//! reader serves pure v2, hybrid (controllers on v1, the v2 core files such as `cpu.stat`'s
//! usage and `cgroup.procs` always present) and v1 hosts. A cgroup's v1 directory is the same
//! relative path under each controller's mount (how Docker, podman, systemd and the launcher
//! create them). A missing file or controller leaves that value out for that cgroup only.
pub mod parse;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use palisade_cgroupfs::Mounts;

/// One cgroup's resource readings. `None`: not available here (file or controller missing).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub cpu_usage_seconds: Option<f64>,
    pub cpu_user_seconds: Option<f64>,
    pub cpu_system_seconds: Option<f64>,
    pub cfs_periods: Option<u64>,
    pub cfs_throttled_periods: Option<u64>,
    pub cfs_throttled_seconds: Option<f64>,
    /// CFS quota in µs per period; `Some(None)` = unlimited.
    pub cpu_quota_us: Option<Option<u64>>,
    pub cpu_period_us: Option<u64>,
    pub memory_usage_bytes: Option<u64>,
    pub memory_working_set_bytes: Option<u64>,
    pub memory_rss_bytes: Option<u64>,
    pub memory_cache_bytes: Option<u64>,
    pub memory_failcnt: Option<u64>,
    /// Swap in use (v2 `memory.swap.current`; v1 `memsw` usage minus usage, else `total_swap`).
    pub memory_swap_bytes: Option<u64>,
    /// File-backed memory mapped into processes (`file_mapped` / `total_mapped_file`).
    pub memory_mapped_file_bytes: Option<u64>,
    /// Highest usage seen (v2 `memory.peak`, kernel 5.19+; v1 `memory.max_usage_in_bytes`).
    pub memory_max_usage_bytes: Option<u64>,
    /// CPU shares (v1 `cpu.shares`; v2 `cpu.weight` converted back as cAdvisor does).
    pub cpu_shares: Option<u64>,
    /// `Some(None)` = unlimited.
    pub memory_limit_bytes: Option<Option<u64>>,
    pub oom_kills: Option<u64>,
    pub fs_read_bytes: Option<u64>,
    pub fs_write_bytes: Option<u64>,
    pub processes: Option<u64>,
    pub threads: Option<u64>,
    /// Unix time the cgroup directory was created (its ctime).
    pub start_time_seconds: Option<f64>,
}

/// Reads resource files; holds where each v1 controller is mounted.
#[derive(Debug, Clone)]
pub struct Reader {
    unified: PathBuf,
    /// controller name → mount point
    v1: HashMap<String, PathBuf>,
    /// USER_HZ, for v1 cpuacct.stat ticks.
    clk_tck: f64,
    /// Controllers the unified hierarchy offers (its root's `cgroup.controllers`); `None` when
    /// unknown. On hybrid hosts memory, cpu and io live on v1: their v2 files exist in no cgroup,
    /// and not looking for them saves a failed path walk per file and cgroup.
    v2_controllers: Option<Vec<String>>,
}

/// A cgroupfs file in one `read`: cgroup files are seq_files, which fill the buffer until the
/// end of the file, so a short read is the end (std's `read_to_string` adds a `statx` and a
/// second `read` to every file; at 1,000 cgroups × 20 files that was most of a scrape).
fn read(p: &Path) -> Option<String> {
    use std::io::Read as _;
    let mut f = std::fs::File::open(p).ok()?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = f.read(&mut buf[len..]).ok()?;
        len += n;
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(len);
    String::from_utf8(buf).ok()
}

impl Reader {
    /// From the host's mounts, or from `v1_root/<controller>` when given (fixtures).
    pub fn new(unified: PathBuf, mounts: &Mounts, v1_root: Option<&Path>) -> Self {
        let mut v1 = HashMap::new();
        match v1_root {
            Some(root) => {
                for ctrl in ["cpu", "cpuacct", "memory", "blkio", "pids"] {
                    let own = root.join(ctrl);
                    let combined = root.join("cpu,cpuacct");
                    if own.is_dir() {
                        v1.insert(ctrl.to_owned(), own);
                    } else if ctrl.starts_with("cpu") && combined.is_dir() {
                        v1.insert(ctrl.to_owned(), combined);
                    }
                }
            }
            None => {
                for (mount, ctrls) in &mounts.v1 {
                    for c in ctrls {
                        v1.entry(c.clone()).or_insert_with(|| mount.clone());
                    }
                }
            }
        }
        // SAFETY: sysconf has no memory-safety preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let v2_controllers = std::fs::read_to_string(unified.join("cgroup.controllers"))
            .ok()
            .map(|s| s.split_whitespace().map(str::to_owned).collect());
        Self {
            unified,
            v1,
            clk_tck: if tck > 0 { tck as f64 } else { 100.0 },
            v2_controllers,
        }
    }

    fn v2(&self, rel: &str, file: &str) -> Option<String> {
        read(&palisade_cgroupfs::dir(&self.unified, rel).join(file))
    }

    /// A v2 controller's file, unless the unified hierarchy does not offer that controller.
    fn v2_of(&self, ctrl: &str, rel: &str, file: &str) -> Option<String> {
        if self
            .v2_controllers
            .as_ref()
            .is_some_and(|c| !c.iter().any(|c| c == ctrl))
        {
            return None;
        }
        self.v2(rel, file)
    }

    fn v1(&self, ctrl: &str, rel: &str, file: &str) -> Option<String> {
        let mount = self.v1.get(ctrl)?;
        read(&palisade_cgroupfs::dir(mount, rel).join(file))
    }

    /// Reads everything available for the cgroup at `rel` (relative to the unified root).
    pub fn read(&self, rel: &str) -> Resources {
        use std::os::unix::fs::MetadataExt as _;

        use parse::*;
        let mut r = Resources {
            start_time_seconds: std::fs::metadata(palisade_cgroupfs::dir(&self.unified, rel))
                .ok()
                .map(|m| m.ctime() as f64 + m.ctime_nsec() as f64 / 1e9),
            ..Resources::default()
        };

        // CPU usage: the v2 core cpu.stat exists in every cgroup2 directory.
        let cpu_v2 = self.v2(rel, "cpu.stat");
        if let Some(s) = &cpu_v2 {
            let sec = |k| flat_keyed(s, k).map(|us| us as f64 / 1e6);
            r.cpu_usage_seconds = sec("usage_usec");
            r.cpu_user_seconds = sec("user_usec");
            r.cpu_system_seconds = sec("system_usec");
            r.cfs_periods = flat_keyed(s, "nr_periods");
            r.cfs_throttled_periods = flat_keyed(s, "nr_throttled");
            r.cfs_throttled_seconds = flat_keyed(s, "throttled_usec").map(|us| us as f64 / 1e6);
        }
        if r.cpu_usage_seconds.is_none() {
            r.cpu_usage_seconds = self
                .v1("cpuacct", rel, "cpuacct.usage")
                .and_then(|s| single(&s))
                .map(|ns| ns as f64 / 1e9);
        }
        if r.cpu_user_seconds.is_none()
            && let Some(s) = self.v1("cpuacct", rel, "cpuacct.stat")
        {
            r.cpu_user_seconds = flat_keyed(&s, "user").map(|t| t as f64 / self.clk_tck);
            r.cpu_system_seconds = flat_keyed(&s, "system").map(|t| t as f64 / self.clk_tck);
        }
        if r.cfs_periods.is_none()
            && let Some(s) = self.v1("cpu", rel, "cpu.stat")
        {
            r.cfs_periods = flat_keyed(&s, "nr_periods");
            r.cfs_throttled_periods = flat_keyed(&s, "nr_throttled");
            r.cfs_throttled_seconds = flat_keyed(&s, "throttled_time").map(|ns| ns as f64 / 1e9);
        }
        match self.v2_of("cpu", rel, "cpu.max").and_then(|s| cpu_max(&s)) {
            Some((quota, period)) => {
                r.cpu_quota_us = Some(quota);
                r.cpu_period_us = Some(period);
            }
            None => {
                r.cpu_quota_us = self
                    .v1("cpu", rel, "cpu.cfs_quota_us")
                    .and_then(|s| cfs_quota_v1(&s));
                r.cpu_period_us = self
                    .v1("cpu", rel, "cpu.cfs_period_us")
                    .and_then(|s| single(&s));
            }
        }

        r.cpu_shares = match self
            .v2_of("cpu", rel, "cpu.weight")
            .and_then(|s| single(&s))
        {
            Some(weight) => weight_to_shares(weight),
            None => self.v1("cpu", rel, "cpu.shares").and_then(|s| single(&s)),
        };

        // Memory: v2 when the memory controller is enabled there, else v1.
        if let Some(current) = self
            .v2_of("memory", rel, "memory.current")
            .and_then(|s| single(&s))
        {
            let stat = self.v2(rel, "memory.stat").unwrap_or_default();
            let events = self.v2(rel, "memory.events").unwrap_or_default();
            r.memory_usage_bytes = Some(current);
            r.memory_rss_bytes = flat_keyed(&stat, "anon");
            r.memory_cache_bytes = flat_keyed(&stat, "file");
            r.memory_working_set_bytes =
                Some(current.saturating_sub(flat_keyed(&stat, "inactive_file").unwrap_or(0)));
            r.memory_failcnt = flat_keyed(&events, "max");
            r.oom_kills = flat_keyed(&events, "oom_kill");
            r.memory_mapped_file_bytes = flat_keyed(&stat, "file_mapped");
            r.memory_swap_bytes = self.v2(rel, "memory.swap.current").and_then(|s| single(&s));
            r.memory_max_usage_bytes = self.v2(rel, "memory.peak").and_then(|s| single(&s));
            r.memory_limit_bytes = self.v2(rel, "memory.max").and_then(|s| limit_v2(&s));
        } else if let Some(usage) = self
            .v1("memory", rel, "memory.usage_in_bytes")
            .and_then(|s| single(&s))
        {
            let stat = self.v1("memory", rel, "memory.stat").unwrap_or_default();
            let pick = |total: &str, local: &str| {
                flat_keyed(&stat, total).or_else(|| flat_keyed(&stat, local))
            };
            r.memory_usage_bytes = Some(usage);
            r.memory_rss_bytes = pick("total_rss", "rss");
            r.memory_cache_bytes = pick("total_cache", "cache");
            r.memory_working_set_bytes = Some(
                usage.saturating_sub(pick("total_inactive_file", "inactive_file").unwrap_or(0)),
            );
            r.memory_failcnt = self
                .v1("memory", rel, "memory.failcnt")
                .and_then(|s| single(&s));
            r.memory_mapped_file_bytes = pick("total_mapped_file", "mapped_file");
            r.memory_swap_bytes = self
                .v1("memory", rel, "memory.memsw.usage_in_bytes")
                .and_then(|s| single(&s))
                .map(|memsw| memsw.saturating_sub(usage))
                .or_else(|| pick("total_swap", "swap"));
            r.memory_max_usage_bytes = self
                .v1("memory", rel, "memory.max_usage_in_bytes")
                .and_then(|s| single(&s));
            r.oom_kills = self
                .v1("memory", rel, "memory.oom_control")
                .and_then(|s| flat_keyed(&s, "oom_kill"));
            r.memory_limit_bytes = self
                .v1("memory", rel, "memory.limit_in_bytes")
                .and_then(|s| limit_v1_memory(&s));
        }

        // Block I/O.
        if let Some(s) = self.v2_of("io", rel, "io.stat") {
            let (rd, wr) = io_stat_v2(&s);
            r.fs_read_bytes = Some(rd);
            r.fs_write_bytes = Some(wr);
        } else if let Some(s) = self
            .v1("blkio", rel, "blkio.throttle.io_service_bytes_recursive")
            .or_else(|| self.v1("blkio", rel, "blkio.throttle.io_service_bytes"))
        {
            let (rd, wr) = blkio_v1(&s);
            r.fs_read_bytes = Some(rd);
            r.fs_write_bytes = Some(wr);
        }

        // Processes and threads: cgroup2 core files, else v1 pids/tasks.
        r.processes = self
            .v2(rel, "cgroup.procs")
            .or_else(|| self.v1("pids", rel, "cgroup.procs"))
            .map(|s| count_lines(&s));
        r.threads = self
            .v2(rel, "cgroup.threads")
            .or_else(|| self.v1("pids", rel, "tasks"))
            .map(|s| count_lines(&s));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, file: &str, text: &str) {
        let d = root.join(rel);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(file), text).unwrap();
    }

    fn mounts() -> Mounts {
        Mounts::parse("")
    }

    #[test]
    fn pure_v2_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let u = dir.path().join("unified");
        let c = "system.slice/web.service";
        write(
            &u,
            c,
            "cpu.stat",
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 10\nnr_throttled 4\nthrottled_usec 300000\n",
        );
        write(&u, c, "cpu.max", "50000 100000\n");
        write(&u, c, "memory.current", "1000000\n");
        write(
            &u,
            c,
            "memory.stat",
            "anon 600000\nfile 300000\ninactive_file 100000\nfile_mapped 8192\n",
        );
        write(
            &u,
            c,
            "memory.events",
            "low 0\nhigh 0\nmax 2\noom 1\noom_kill 1\n",
        );
        write(&u, c, "memory.max", "268435456\n");
        write(&u, c, "memory.swap.current", "4096\n");
        write(&u, c, "memory.peak", "2000000\n");
        write(&u, c, "cpu.weight", "100\n");
        write(
            &u,
            c,
            "io.stat",
            "8:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n",
        );
        write(&u, c, "cgroup.procs", "1\n2\n");
        write(&u, c, "cgroup.threads", "1\n2\n3\n");
        let r = Reader::new(u, &mounts(), None).read("/system.slice/web.service");
        assert_eq!(r.cpu_usage_seconds, Some(2.5));
        assert_eq!(r.cpu_user_seconds, Some(2.0));
        assert_eq!(r.cfs_throttled_periods, Some(4));
        assert_eq!(r.cfs_throttled_seconds, Some(0.3));
        assert_eq!(r.cpu_quota_us, Some(Some(50_000)));
        assert_eq!(r.memory_working_set_bytes, Some(900_000));
        assert_eq!(r.memory_rss_bytes, Some(600_000));
        assert_eq!(r.memory_failcnt, Some(2));
        assert_eq!(r.oom_kills, Some(1));
        assert_eq!(r.memory_limit_bytes, Some(Some(268_435_456)));
        assert_eq!(r.memory_swap_bytes, Some(4096));
        assert_eq!(r.memory_mapped_file_bytes, Some(8192));
        assert_eq!(r.memory_max_usage_bytes, Some(2_000_000));
        // weight 100 (systemd's default) as cAdvisor reports it
        assert_eq!(r.cpu_shares, Some(2597));
        assert_eq!((r.fs_read_bytes, r.fs_write_bytes), (Some(10), Some(20)));
        assert_eq!((r.processes, r.threads), (Some(2), Some(3)));
    }

    #[test]
    fn hybrid_cgroup_reads_v1_controllers() {
        let dir = tempfile::tempdir().unwrap();
        let u = dir.path().join("unified");
        let v1 = dir.path().join("v1");
        let c = "docker/abc";
        // cgroup2 core files only (controllers live on v1)
        write(
            &u,
            c,
            "cpu.stat",
            "usage_usec 1000000\nuser_usec 700000\nsystem_usec 300000\n",
        );
        write(&u, c, "cgroup.procs", "5\n");
        write(&u, c, "cgroup.threads", "5\n6\n");
        write(
            &v1.join("cpu,cpuacct"),
            c,
            "cpu.stat",
            "nr_periods 100\nnr_throttled 30\nthrottled_time 1500000000\n",
        );
        write(&v1.join("cpu,cpuacct"), c, "cpu.cfs_quota_us", "-1\n");
        write(&v1.join("cpu,cpuacct"), c, "cpu.cfs_period_us", "100000\n");
        write(&v1.join("memory"), c, "memory.usage_in_bytes", "5000\n");
        write(
            &v1.join("memory"),
            c,
            "memory.stat",
            "total_rss 3000\ntotal_cache 1500\ntotal_inactive_file 500\ntotal_mapped_file 700\ntotal_swap 9\n",
        );
        write(
            &v1.join("memory"),
            c,
            "memory.memsw.usage_in_bytes",
            "5100\n",
        );
        write(&v1.join("memory"), c, "memory.max_usage_in_bytes", "6000\n");
        write(&v1.join("cpu,cpuacct"), c, "cpu.shares", "512\n");
        write(&v1.join("memory"), c, "memory.failcnt", "7\n");
        write(
            &v1.join("memory"),
            c,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        write(
            &v1.join("memory"),
            c,
            "memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        write(
            &v1.join("blkio"),
            c,
            "blkio.throttle.io_service_bytes",
            "8:0 Read 4096\n8:0 Write 512\nTotal 4608\n",
        );
        let r = Reader::new(u, &mounts(), Some(&v1)).read("/docker/abc");
        assert_eq!(r.cpu_usage_seconds, Some(1.0));
        assert_eq!(r.cfs_periods, Some(100));
        assert_eq!(r.cfs_throttled_seconds, Some(1.5));
        assert_eq!(r.cpu_quota_us, Some(None));
        assert_eq!(r.cpu_period_us, Some(100_000));
        assert_eq!(r.memory_usage_bytes, Some(5000));
        assert_eq!(r.memory_working_set_bytes, Some(4500));
        assert_eq!(r.memory_cache_bytes, Some(1500));
        assert_eq!(r.memory_failcnt, Some(7));
        assert_eq!(r.memory_mapped_file_bytes, Some(700));
        // memsw - usage when swap accounting is on (total_swap otherwise)
        assert_eq!(r.memory_swap_bytes, Some(100));
        assert_eq!(r.memory_max_usage_bytes, Some(6000));
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!(r.oom_kills, Some(2));
        assert_eq!(r.memory_limit_bytes, Some(None));
        assert_eq!(r.fs_read_bytes, Some(4096));
        assert_eq!((r.processes, r.threads), (Some(1), Some(2)));
    }

    #[test]
    fn v2_files_of_controllers_the_unified_root_lacks_are_not_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        let u = dir.path().join("unified");
        write(&u, "", "cgroup.controllers", "cpu hugetlb\n");
        write(&u, "web", "memory.current", "1000\n");
        write(&u, "web", "cpu.weight", "100\n");
        let r = Reader::new(u, &mounts(), None).read("/web");
        // a hybrid host: memory is on v1, whatever a v2 directory seems to hold
        assert_eq!(r.memory_usage_bytes, None);
        assert_eq!(r.cpu_shares, Some(2597));
    }

    #[test]
    fn long_files_are_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let procs: String = (0..5000).map(|p| format!("{p}\n")).collect();
        write(dir.path(), "big", "cgroup.procs", &procs);
        let r = Reader::new(dir.path().to_owned(), &mounts(), None).read("/big");
        assert_eq!(r.processes, Some(5000));
    }

    #[test]
    fn missing_files_are_left_out_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let r = Reader::new(dir.path().to_owned(), &mounts(), None).read("/gone");
        assert_eq!(r, Resources::default());
        // an empty directory has a start time and nothing else
        std::fs::create_dir(dir.path().join("empty")).unwrap();
        let r = Reader::new(dir.path().to_owned(), &mounts(), None).read("/empty");
        assert!(r.start_time_seconds.is_some_and(|t| t > 1.6e9));
        assert_eq!(r.processes, None);
    }
}
