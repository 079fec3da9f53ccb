//! Pure parsers for cgroupfs files (v1 and v2), tested on fixtures captured from real hosts.

/// `key value` lines (cpu.stat, memory.stat, memory.events, cpuacct.stat, memory.oom_control).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        if it.next()? != key {
            return None;
        }
        it.next()?.parse().ok()
    })
}

/// A single number (memory.current, cpuacct.usage, pids.current, memory.failcnt).
pub fn single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A v2 limit: `max` (unlimited → `None`) or a number.
pub fn limit_v2(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        t => t.parse().ok().map(Some),
    }
}

/// A v1 memory limit: values at or above 2^62 mean unlimited (the kernel reports
/// PAGE_COUNTER_MAX rounded down to pages, e.g. 9223372036854771712).
pub fn limit_v1_memory(text: &str) -> Option<Option<u64>> {
    let v: u64 = text.trim().parse().ok()?;
    Some((v < 1 << 62).then_some(v))
}

/// v2 `cpu.max`: `QUOTA PERIOD` or `max PERIOD` → (quota µs or None, period µs).
pub fn cpu_max(text: &str) -> Option<(Option<u64>, u64)> {
    let mut it = text.split_whitespace();
    let q = it.next()?;
    let period = it.next()?.parse().ok()?;
    let quota = if q == "max" {
        None
    } else {
        Some(q.parse().ok()?)
    };
    Some((quota, period))
}

/// v2 `cpu.weight` (1..=10000) as v1 CPU shares: the inverse of runc's shares → weight
/// conversion (`1 + (shares - 2) * 9999 / 262142`), as cAdvisor reports it.
pub fn weight_to_shares(weight: u64) -> Option<u64> {
    (1..=10_000)
        .contains(&weight)
        .then(|| 2 + (weight - 1) * 262_142 / 9_999)
}

/// v1 `cpu.cfs_quota_us`: -1 means unlimited.
pub fn cfs_quota_v1(text: &str) -> Option<Option<u64>> {
    let v: i64 = text.trim().parse().ok()?;
    Some((v >= 0).then_some(v as u64))
}

/// v2 `io.stat`: per-device `MAJ:MIN rbytes=N wbytes=N …` → summed (read, write) bytes.
pub fn io_stat_v2(text: &str) -> (u64, u64) {
    let mut r = 0u64;
    let mut w = 0u64;
    for l in text.lines() {
        for kv in l.split_whitespace().skip(1) {
            if let Some(v) = kv
                .strip_prefix("rbytes=")
                .and_then(|v| v.parse::<u64>().ok())
            {
                r = r.saturating_add(v);
            } else if let Some(v) = kv
                .strip_prefix("wbytes=")
                .and_then(|v| v.parse::<u64>().ok())
            {
                w = w.saturating_add(v);
            }
        }
    }
    (r, w)
}

/// v1 `blkio.*io_service_bytes*`: `MAJ:MIN Read N` lines (and a `Total` line) → (read, write).
pub fn blkio_v1(text: &str) -> (u64, u64) {
    let mut r = 0u64;
    let mut w = 0u64;
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if let [_dev, op, n] = f.as_slice()
            && let Ok(n) = n.parse::<u64>()
        {
            match *op {
                "Read" => r = r.saturating_add(n),
                "Write" => w = w.saturating_add(n),
                _ => {}
            }
        }
    }
    (r, w)
}

/// Lines of cgroup.procs / cgroup.threads / tasks.
pub fn count_lines(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a 6.x host (cgroup v2, cpu and memory controllers enabled).
    const CPU_STAT_V2: &str = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n\
nice_usec 0\ncore_sched.force_idle_usec 0\nnr_periods 250\nnr_throttled 40\n\
throttled_usec 2000000\nnr_bursts 0\nburst_usec 0\n";
    const MEMORY_STAT_V2: &str = "anon 10485760\nfile 4194304\nkernel 1048576\nkernel_stack 65536\n\
pagetables 131072\nshmem 0\nfile_mapped 2097152\nactive_anon 8388608\ninactive_anon 2097152\n\
active_file 1048576\ninactive_file 3145728\n";
    const MEMORY_EVENTS_V2: &str = "low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\noom_group_kill 0\n";
    const IO_STAT_V2: &str = "253:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n\
8:0 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n";
    // Captured from this project's hybrid host (kernel 6.18, cgroup v1 controllers).
    const CPUACCT_STAT_V1: &str = "user 150\nsystem 25\n";
    const CPU_STAT_V1: &str = "nr_periods 100\nnr_throttled 30\nthrottled_time 1500000000\n";
    const MEMORY_STAT_V1: &str = "cache 4096\nrss 8192\nrss_huge 0\nshmem 0\nmapped_file 0\n\
inactive_file 1024\ntotal_cache 40960\ntotal_rss 81920\ntotal_inactive_file 10240\n";
    const OOM_CONTROL_V1: &str = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
    const BLKIO_V1: &str = "8:0 Read 4096\n8:0 Write 512\n8:0 Sync 4608\n8:0 Async 0\n\
8:0 Discard 0\n8:0 Total 4608\n8:16 Read 100\n8:16 Write 0\nTotal 4708\n";

    #[test]
    fn cpu_weight_as_shares() {
        // runc writes weight 39 for Docker's default 1024 shares: back to 998 (the round trip
        // loses a little, in cAdvisor too)
        assert_eq!(weight_to_shares(39), Some(998));
        assert_eq!(weight_to_shares(1), Some(2));
        assert_eq!(weight_to_shares(10_000), Some(262_144));
        assert_eq!(weight_to_shares(0), None);
    }

    #[test]
    fn v2_files() {
        assert_eq!(flat_keyed(CPU_STAT_V2, "usage_usec"), Some(1_234_567));
        assert_eq!(flat_keyed(CPU_STAT_V2, "nr_throttled"), Some(40));
        assert_eq!(flat_keyed(CPU_STAT_V2, "throttled_usec"), Some(2_000_000));
        assert_eq!(flat_keyed(CPU_STAT_V2, "nope"), None);
        assert_eq!(flat_keyed(MEMORY_STAT_V2, "inactive_file"), Some(3_145_728));
        assert_eq!(flat_keyed(MEMORY_STAT_V2, "anon"), Some(10_485_760));
        assert_eq!(flat_keyed(MEMORY_EVENTS_V2, "oom_kill"), Some(1));
        assert_eq!(flat_keyed(MEMORY_EVENTS_V2, "max"), Some(17));
        assert_eq!(limit_v2("max\n"), Some(None));
        assert_eq!(limit_v2("268435456\n"), Some(Some(268_435_456)));
        assert_eq!(limit_v2("bogus"), None);
        assert_eq!(cpu_max("max 100000\n"), Some((None, 100_000)));
        assert_eq!(cpu_max("50000 100000\n"), Some((Some(50_000), 100_000)));
        assert_eq!(io_stat_v2(IO_STAT_V2), (4196, 8192));
        assert_eq!(count_lines("1\n2\n3\n"), 3);
        assert_eq!(count_lines(""), 0);
    }

    #[test]
    fn v1_files() {
        assert_eq!(flat_keyed(CPUACCT_STAT_V1, "user"), Some(150));
        assert_eq!(
            flat_keyed(CPU_STAT_V1, "throttled_time"),
            Some(1_500_000_000)
        );
        assert_eq!(flat_keyed(MEMORY_STAT_V1, "total_rss"), Some(81_920));
        assert_eq!(
            flat_keyed(MEMORY_STAT_V1, "total_inactive_file"),
            Some(10_240)
        );
        assert_eq!(flat_keyed(OOM_CONTROL_V1, "oom_kill"), Some(3));
        assert_eq!(limit_v1_memory("9223372036854771712\n"), Some(None));
        assert_eq!(limit_v1_memory("268435456\n"), Some(Some(268_435_456)));
        assert_eq!(cfs_quota_v1("-1\n"), Some(None));
        assert_eq!(cfs_quota_v1("50000\n"), Some(Some(50_000)));
        assert_eq!(blkio_v1(BLKIO_V1), (4196, 512));
        assert_eq!(single("123\n"), Some(123));
    }
}
