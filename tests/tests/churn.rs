//! Churn: containers (cgroups with a process) created and removed in waves. The agent's
//! memory settles, and everything it holds for them goes away: kernel map entries, registry
//! entries, series, file descriptors and threads return to where they were.
//!
//! `cargo xtask test` runs a bounded version (4 waves of 100); `cargo xtask soak` the long one
//! (`PALISADE_CHURN_WAVES`, `PALISADE_CHURN_PER_WAVE`: 20 × 100 = 2,000 containers by
//! default there). The test prints one `palisade-report churn {json}` line for the report.
use std::time::Duration;

use palisade_tests::{
    Agent, TestCgroup,
    load::{sum, usage},
    unified_root, wait_for_explained,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The names of a process's threads (`/proc/PID/task/*/comm`), to say which one stayed.
fn thread_names(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Cgroup directories in the unified hierarchy, the root included (what the registry should
/// hold as live).
fn hierarchy_size() -> u64 {
    fn walk(p: &std::path::Path) -> u64 {
        1 + std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| walk(&e.path()))
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&unified_root())
}

/// Waits until the registry holds exactly the live hierarchy and nothing removed: no entry
/// leaked, none missing (other tests' cgroups come and go too; a moment when both agree is
/// waited for).
fn registry_matches_hierarchy(agent: &Agent) -> u64 {
    let last = std::cell::Cell::new((0, 0, 0));
    wait_for_explained(
        Duration::from_secs(60),
        "the registry to hold exactly the live cgroups",
        || {
            let m = agent.metrics();
            let live = sum(&m, "palisade_cgroups", &[("state", "live")]);
            let removed = sum(&m, "palisade_cgroups", &[("state", "removed")]);
            let dirs = hierarchy_size();
            last.set((live, removed, dirs));
            (live == dirs && removed == 0).then_some(live)
        },
        || {
            let (l, r, d) = last.get();
            format!("registry live {l}, removed {r}; hierarchy {d}")
        },
    )
}

#[test]
fn containers_churned_in_waves_leave_nothing_behind_and_memory_settles() {
    let waves = env_or("PALISADE_CHURN_WAVES", 4);
    let per_wave = env_or("PALISADE_CHURN_PER_WAVE", 100);
    // Collections come with the test's scrapes; the periodic one is rarer than tokio's
    // blocking-pool keep-alive (10 s), so the pool's idle threads end once the scrapes stop
    // (a 1 s interval kept two of them busy in turn, and one more thread than the baseline)
    let agent = Agent::start(
        "metrics:\n  series_grace_period: 0s\n  collect_interval: 30s\n  max_series: 2000000\n",
        &[],
    );
    let pid = agent.pid();
    // settled after start-up: one collection and the first walk are done
    registry_matches_hierarchy(&agent);
    let base = usage(pid);
    let base_threads = thread_names(pid);
    let parent = TestCgroup::new("churn");
    let prefix = format!("{}/", parent.rel);
    let mut rss = vec![base.rss_kib];
    let mut churned = 0usize;
    let mut all_ids = Vec::new();
    for w in 0..waves {
        let cgs: Vec<TestCgroup> = (0..per_wave)
            .map(|i| parent.child(&format!("w{w}-c{i}")))
            .collect();
        // a process in each, alive together
        let mut procs: Vec<std::process::Child> = cgs
            .iter()
            .map(|c| {
                c.command(palisade_tests::workload_bin())
                    .args(["getppid", "5", "sleep-ms", "60000"])
                    .spawn()
                    .unwrap_or_else(|e| panic!("spawn in {}: {e}", c.rel))
            })
            .collect();
        // every one of them seen and counted
        wait_for_explained(
            Duration::from_secs(60),
            "every container of the wave on /metrics",
            || {
                let m = agent.metrics();
                let seen = m
                    .label_values("palisade_syscalls_total", "container")
                    .into_iter()
                    .filter(|c| c.starts_with(&prefix))
                    .count();
                (seen == per_wave).then_some(())
            },
            || "fewer".into(),
        );
        for p in &mut procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for c in cgs {
            all_ids.push(c.remove());
        }
        churned += per_wave;
        wait_for_explained(
            Duration::from_secs(60),
            "the wave to leave /metrics",
            || (!agent.scrape().contains(&prefix)).then_some(()),
            String::new,
        );
        rss.push(usage(pid).rss_kib);
    }
    // everything of them is gone
    registry_matches_hierarchy(&agent);
    let in_maps = agent.cgroup_ids_in_maps();
    let leaked: Vec<&u64> = all_ids.iter().filter(|id| in_maps.contains(id)).collect();
    assert!(
        leaked.is_empty(),
        "kernel entries left for {} cgroups",
        leaked.len()
    );
    let m = agent.metrics();
    assert_eq!(sum(&m, "palisade_identity_dropped_total", &[]), 0);
    // descriptors and threads back to where they were (idle blocking-pool threads end after
    // 10 s; scrapes' sockets close)
    let end = wait_for_explained(
        Duration::from_secs(60),
        "descriptors and threads back to the baseline",
        || {
            let u = usage(pid);
            (u.fds <= base.fds && u.tasks <= base.tasks).then_some(u)
        },
        || {
            format!(
                "baseline {base:?} (threads {base_threads:?}), now {:?} (threads {:?})",
                usage(pid),
                thread_names(pid)
            )
        },
    );
    // memory settles: the second half of the waves adds (almost) nothing to the first half's
    // peak (slack: 10 % of it or 4 MiB, the allocator's own granularity)
    let half = rss.len() / 2;
    let peak_first = rss[..=half.max(1)].iter().copied().max().unwrap_or(0);
    let last = rss.last().copied().unwrap_or(0);
    let slack = (peak_first / 10).max(4096);
    eprintln!(
        "palisade-report churn {}",
        serde_json::json!({
            "containers": churned,
            "waves": waves,
            "rss_kib": rss,
            "fds": [base.fds, end.fds],
            "tasks": [base.tasks, end.tasks],
        })
    );
    assert!(
        last <= peak_first + slack,
        "RSS keeps growing: {rss:?} KiB (first half's peak {peak_first}, last {last})"
    );
}
