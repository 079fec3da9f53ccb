//! Privileged end-to-end tests of `palisade agent`: real kernel, real cgroups, real promtool.
//!
//! Each test starts its own agent and its own cgroups, so the tests run in parallel.
use std::time::Duration;

use palisade_tests::{Agent, Metrics, TestCgroup, palisade_bin, promtool_check_metrics, wait_for};

/// The test configuration: removed cgroups vanish at the next collection.
const NO_GRACE: &str = "metrics:\n  series_grace_period: 0s\n";

fn syscalls(m: &Metrics, container: &str, syscall: &str) -> Option<f64> {
    m.value(
        "palisade_syscalls_total",
        &[("container", container), ("syscall", syscall)],
    )
}

#[test]
fn exact_counts_for_a_workload_in_a_fresh_cgroup() {
    // getppid gets a latency histogram of its own; the rest stay in syscall="other"; every
    // call is timed (the default times one in 8)
    let agent = Agent::start(
        "syscalls:\n  latency_sample: 1\nmetrics:\n  syscall_latency_detail: [getppid]\n",
        &[],
    );
    let cg = TestCgroup::new("exact");
    cg.run_workload(&["getppid", "10000", "close-bad", "1000"]);

    let m = agent.metrics();
    let name = cg.rel.as_str();
    assert_eq!(syscalls(&m, name, "getppid"), Some(10_000.0), "{}", m.text);
    assert_eq!(
        m.value(
            "palisade_syscall_errors_total",
            &[
                ("container", name),
                ("syscall", "close"),
                ("errno", "EBADF")
            ]
        ),
        Some(1_000.0)
    );
    // close(-1) is the only failing close; the loader's successful closes add calls, not errors
    let close_errors: f64 = m
        .find(
            "palisade_syscall_errors_total",
            &[("container", name), ("syscall", "close")],
        )
        .iter()
        .map(|s| s.value)
        .sum();
    assert_eq!(close_errors, 1_000.0);
    assert!(syscalls(&m, name, "close").unwrap_or(0.0) >= 1_000.0);
    // every getppid was timed: the histogram counts exactly the calls
    assert_eq!(
        m.value(
            "palisade_syscall_duration_seconds_count",
            &[("container", name), ("syscall", "getppid")]
        ),
        Some(10_000.0)
    );
    assert_eq!(
        m.value(
            "palisade_syscall_duration_seconds_bucket",
            &[("container", name), ("syscall", "getppid"), ("le", "+Inf")]
        ),
        Some(10_000.0)
    );
    let sum = m
        .value(
            "palisade_syscall_duration_seconds_sum",
            &[("container", name), ("syscall", "getppid")],
        )
        .unwrap_or(0.0);
    assert!(sum > 0.0 && sum < 1.0, "10k getppid took {sum} s in total");
    // every other timed call is in the container's one other histogram, getppid is not
    let other = m
        .value(
            "palisade_syscall_duration_seconds_count",
            &[("container", name), ("syscall", "other")],
        )
        .unwrap_or(0.0);
    let all: f64 = m
        .find("palisade_syscalls_total", &[("container", name)])
        .iter()
        .map(|s| s.value)
        .sum();
    assert!(
        other >= 1_000.0 && other + 10_000.0 <= all,
        "other {other}, all calls {all}"
    );
    // the process's exit_group is counted at entry
    assert_eq!(syscalls(&m, name, "exit_group"), Some(1.0));
    // the whole page is valid exposition format
    promtool_check_metrics(&m.text);
}

/// The default configuration times one call in 8, picked at random per call: the counts stay
/// exact, the latency histogram holds about an eighth of the calls, and the calls left out of
/// the sample are not taken for calls whose entry was missed.
#[test]
fn by_default_latency_is_a_random_eighth_of_the_calls_and_counts_stay_exact() {
    let agent = Agent::start("metrics:\n  syscall_latency_detail: [getppid]\n", &[]);
    let untimed = |m: &Metrics| {
        m.value(
            "palisade_kernel_lost_total",
            &[("reason", "syscall_untimed")],
        )
        .unwrap_or_else(|| panic!("no syscall_untimed loss counter:\n{}", m.text))
    };
    let before = untimed(&agent.metrics());
    let cg = TestCgroup::new("sampled");
    cg.run_workload(&["getppid", "40000"]);
    let m = agent.metrics();
    let name = cg.rel.as_str();
    assert_eq!(syscalls(&m, name, "getppid"), Some(40_000.0), "{}", m.text);
    let timed = m
        .value(
            "palisade_syscall_duration_seconds_count",
            &[("container", name), ("syscall", "getppid")],
        )
        .unwrap_or(0.0);
    // binomial(40,000, 1/8): mean 5,000, standard deviation 66; the bounds are 15 deviations
    // away, far from both "every call" and "none"
    assert!(
        (4_000.0..=6_000.0).contains(&timed),
        "{timed} of 40,000 getppid calls timed, expected about 5,000"
    );
    let inf = m.value(
        "palisade_syscall_duration_seconds_bucket",
        &[("container", name), ("syscall", "getppid"), ("le", "+Inf")],
    );
    assert_eq!(inf, Some(timed));
    // the 35,000 calls left out of the sample had their entry seen: not "untimed" losses
    let lost = untimed(&m) - before;
    assert!(
        lost < 1_000.0,
        "{lost} calls counted as untimed while the workload ran"
    );
}

/// `syscalls.hook: fentry`. Where the kernel attaches fentry to the syscall dispatcher
/// (`palisade doctor`'s `syscall_fentry` row: Debian 6.1 and 6.12 in `cargo xtask vm-test`),
/// the agent counts on fentry/fexit exactly as on raw tracepoints: calls, errors, latency
/// samples, forks and moves. Where it cannot (this project's host), the agent refuses to start
/// with one line naming the hook, instead of counting on something else than asked.
#[test]
fn the_fentry_hook_counts_exactly_or_refuses_to_start() {
    palisade_tests::require_root();
    let doctor = std::process::Command::new(palisade_bin())
        .arg("doctor")
        .output()
        .unwrap_or_else(|e| panic!("palisade doctor: {e}"));
    let doctor = String::from_utf8_lossy(&doctor.stdout).into_owned();
    let row = doctor
        .lines()
        .find(|l| l.starts_with("syscall_fentry "))
        .unwrap_or_else(|| panic!("doctor has no syscall_fentry row:\n{doctor}"))
        .to_owned();
    println!("{row}");
    let config = "syscalls:\n  hook: fentry\n  latency_sample: 1\nmetrics:\n  syscall_latency_detail: [getppid]\n";
    if !row.contains(" yes ") {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let cfg = dir.path().join("fentry.yaml");
        std::fs::write(&cfg, format!("listen: 127.0.0.1:0\n{config}"))
            .unwrap_or_else(|e| panic!("write {}: {e}", cfg.display()));
        let (code, err) = run_palisade(&["agent", "--config", cfg.to_str().unwrap_or_default()]);
        assert_eq!(code, 1, "{err}");
        assert_one_line_error(&err, "fentry/fexit on x64_sys_call");
        return;
    }
    let agent = Agent::start(config, &[]);
    let log = agent.log();
    assert!(
        log.contains("syscall telemetry on fentry/fexit on x64_sys_call"),
        "{log}"
    );
    let cg = TestCgroup::new("fentry");
    let other = TestCgroup::new("fentry-moved");
    let other_dir = other.path.to_string_lossy().into_owned();
    cg.run_workload(&["getppid", "10000", "close-bad", "1000", "fork", "25"]);
    cg.run_workload(&["getppid", "300", "move", &other_dir, "getppid", "200"]);
    let m = agent.metrics();
    let name = cg.rel.as_str();
    assert_eq!(syscalls(&m, name, "getppid"), Some(10_300.0), "{}", m.text);
    assert_eq!(
        syscalls(&m, &other.rel, "getppid"),
        Some(200.0),
        "{}",
        m.text
    );
    assert_eq!(
        m.value(
            "palisade_syscall_errors_total",
            &[
                ("container", name),
                ("syscall", "close"),
                ("errno", "EBADF")
            ]
        ),
        Some(1_000.0),
        "{}",
        m.text
    );
    // every getppid was timed (entry and exit both seen)
    assert_eq!(
        m.value(
            "palisade_syscall_duration_seconds_count",
            &[("container", name), ("syscall", "getppid")]
        ),
        Some(10_300.0),
        "{}",
        m.text
    );
    // the children's first return is not a call: 25 forks, 25 + 1 exit_group in `cg`, the
    // moved workload's exit_group in `other`
    let forks: f64 = ["clone", "clone3", "fork", "vfork"]
        .iter()
        .filter_map(|s| syscalls(&m, name, s))
        .sum();
    assert_eq!(forks, 25.0, "{}", m.text);
    assert_eq!(syscalls(&m, name, "exit_group"), Some(26.0), "{}", m.text);
    assert_eq!(
        syscalls(&m, &other.rel, "exit_group"),
        Some(1.0),
        "{}",
        m.text
    );
}

#[test]
fn counts_follow_a_process_that_changes_cgroup() {
    let agent = Agent::start("", &[]);
    let a = TestCgroup::new("move-a");
    let b = TestCgroup::new("move-b");
    let b_dir = b.path.to_str().unwrap().to_owned();
    a.run_workload(&[
        "getppid",
        "300",
        "move",
        &b_dir,
        "getppid",
        "200",
        "close-bad",
        "7",
    ]);
    let m = agent.metrics();
    assert_eq!(syscalls(&m, &a.rel, "getppid"), Some(300.0), "{}", m.text);
    assert_eq!(syscalls(&m, &b.rel, "getppid"), Some(200.0));
    assert_eq!(
        m.value(
            "palisade_syscall_errors_total",
            &[
                ("container", &b.rel),
                ("syscall", "close"),
                ("errno", "EBADF")
            ]
        ),
        Some(7.0)
    );
    // in `a` only the loader's closes ran, and they succeeded: calls, no error series
    assert!(
        syscalls(&m, &a.rel, "close").is_some_and(|n| n > 0.0),
        "{}",
        m.text
    );
    let a_close_errors = m.find(
        "palisade_syscall_errors_total",
        &[("container", &a.rel), ("syscall", "close")],
    );
    assert!(a_close_errors.is_empty(), "{a_close_errors:?}");
}

#[test]
fn a_fork_is_one_call_not_two() {
    let agent = Agent::start("", &[]);
    let cg = TestCgroup::new("fork");
    cg.run_workload(&["fork", "25"]);
    let m = agent.metrics();
    let forks: f64 = ["clone", "clone3", "fork", "vfork"]
        .iter()
        .filter_map(|s| syscalls(&m, &cg.rel, s))
        .sum();
    // the children's first return from clone is not a call of their own
    assert_eq!(forks, 25.0, "{}", m.text);
    // 25 children + the workload itself each end with exit_group
    assert_eq!(syscalls(&m, &cg.rel, "exit_group"), Some(26.0));

    // A child's first return (from fork, without an entry) on a kernel stack a dead child
    // used (the kernel reuses them at once) must not be taken for that child's last call.
    let cg = TestCgroup::new("fork-getppid");
    cg.run_workload(&["fork-getppid", "25"]);
    let m = agent.metrics();
    assert_eq!(syscalls(&m, &cg.rel, "getppid"), Some(25.0), "{}", m.text);
}

#[test]
fn full_kernel_maps_are_counted_not_fatal() {
    // Tiny tables: the machine's own syscalls fill them at once (the latency table too: every
    // syscall has a histogram of its own here, instead of one per container).
    let agent = Agent::start(
        "syscalls:\n  stats_max_entries: 16\n  errno_max_entries: 2\nmetrics:\n  syscall_latency_detail: ['*']\n",
        &[],
    );
    let cg = TestCgroup::new("mapfull");
    wait_for(
        Duration::from_secs(20),
        "the tables to fill and losses to be counted",
        || {
            cg.run_workload(&["getppid", "10", "close-bad", "10"]);
            let m = agent.metrics();
            let full = |reason| {
                m.value("palisade_kernel_lost_total", &[("reason", reason)])
                    .unwrap_or(0.0)
            };
            (full("syscall_stats_map_full") > 0.0 && full("syscall_errno_map_full") > 0.0)
                .then_some(())
        },
    );
    let m = agent.metrics();
    // 16 positions per CPU region, each taken
    assert_eq!(
        m.value("palisade_bpf_map_entries", &[("map", "SYSCALL_COUNTS")]),
        Some(16.0)
    );
    assert_eq!(
        m.value("palisade_bpf_map_capacity", &[("map", "SYSCALL_COUNTS")]),
        Some(16.0)
    );
    // the latency table is a quarter of stats_max_entries
    assert_eq!(
        m.value("palisade_bpf_map_entries", &[("map", "SYSCALL_STATS")]),
        Some(4.0)
    );
    assert_eq!(
        m.value("palisade_bpf_map_capacity", &[("map", "SYSCALL_STATS")]),
        Some(4.0)
    );
    assert!(m.value("palisade_bpf_map_entries", &[("map", "SYSCALL_ERRNOS")]) <= Some(2.0));
    // the agent keeps serving, and what is in the tables keeps counting
    let total = |m: &Metrics| -> f64 {
        m.find("palisade_syscalls_total", &[])
            .iter()
            .map(|s| s.value)
            .sum()
    };
    let before = total(&m);
    cg.run_workload(&["getppid", "10"]);
    assert!(total(&agent.metrics()) > before);
    promtool_check_metrics(&m.text);
}

#[test]
fn the_count_table_gives_the_positions_of_removed_cgroups_to_new_ones() {
    // 16 cgroups, made before the agent starts (its first walk selects them: no race with
    // events), used one after another and removed. Each leaves some 20 (syscall) keys: 16 of
    // them need far more than the 64 positions of a CPU region, unless the positions of the
    // removed ones are taken again.
    let parent = TestCgroup::new("reuse");
    let children: Vec<TestCgroup> = (0..16).map(|i| parent.child(&format!("r{i}"))).collect();
    let glob = format!("{}/*", parent.rel);
    let agent = Agent::start(
        &format!("{NO_GRACE}syscalls:\n  stats_max_entries: 64\n"),
        &["--cgroup", &glob],
    );
    let lost = |m: &Metrics| {
        m.value(
            "palisade_kernel_lost_total",
            &[("reason", "syscall_stats_map_full")],
        )
        .unwrap_or(0.0)
    };
    for (i, c) in children.into_iter().enumerate() {
        c.run_workload(&["getppid", "77"]);
        let m = agent.metrics();
        assert_eq!(
            syscalls(&m, &c.rel, "getppid"),
            Some(77.0),
            "cgroup {i}: {}",
            m.text
        );
        assert_eq!(lost(&m), 0.0, "cgroup {i}: calls lost to a full table");
        let (rel, id) = (c.rel.clone(), c.remove());
        wait_for(
            Duration::from_secs(20),
            "the removed cgroup's keys to go",
            || {
                let m = agent.metrics();
                (syscalls(&m, &rel, "getppid").is_none()
                    && !agent.cgroup_ids_in_maps().contains(&id))
                .then_some(())
            },
        );
    }
    let m = agent.metrics();
    assert_eq!(lost(&m), 0.0);
    let fullest = m
        .value("palisade_bpf_map_entries", &[("map", "SYSCALL_COUNTS")])
        .unwrap_or(f64::MAX);
    assert!(fullest < 64.0, "{fullest} keys left in a region of 64");
}

#[test]
fn latency_is_kept_per_container_unless_a_syscall_is_detailed() {
    // 12 live cgroups, each ~24 syscalls (the workload's start-up and its getppid): ~300
    // (cgroup, syscall) keys. The counts have room (257 rounds up to 512 positions per CPU); the
    // latency table has 64 entries (a quarter), which ~300 per-syscall histograms would
    // overflow. With one histogram per container plus the detailed getppid, it holds 24.
    let parent = TestCgroup::new("latkeys");
    let children: Vec<TestCgroup> = (0..12).map(|i| parent.child(&format!("l{i}"))).collect();
    let glob = format!("{}/*", parent.rel);
    let agent = Agent::start(
        "syscalls:\n  stats_max_entries: 257\n  latency_sample: 1\nmetrics:\n  syscall_latency_detail: [getppid]\n",
        &["--cgroup", &glob],
    );
    for c in &children {
        c.run_workload(&["getppid", "50"]);
    }
    let m = agent.metrics();
    let keys = m
        .text
        .lines()
        .filter(|l| l.starts_with("palisade_syscalls_total{") && l.contains(&parent.rel))
        .count();
    assert!(
        keys > 257,
        "only {keys} (cgroup, syscall) keys: the test needs more than 257"
    );
    assert_eq!(
        m.value(
            "palisade_kernel_lost_total",
            &[("reason", "syscall_stats_map_full")]
        ),
        Some(0.0),
        "calls lost to a full table"
    );
    let timed = m
        .value("palisade_bpf_map_entries", &[("map", "SYSCALL_STATS")])
        .unwrap_or(f64::MAX);
    assert!(timed <= 24.0, "{timed} latency entries for 12 containers");
    for c in &children {
        let count = |syscall: &str| {
            m.value(
                "palisade_syscall_duration_seconds_count",
                &[("container", c.rel.as_str()), ("syscall", syscall)],
            )
        };
        assert_eq!(syscalls(&m, &c.rel, "getppid"), Some(50.0), "{}", c.rel);
        assert_eq!(count("getppid"), Some(50.0), "{}: timed getppid", c.rel);
        let other = count("other").unwrap_or(0.0);
        assert!(other >= 20.0, "{}: {other} other calls timed", c.rel);
    }
}

#[test]
fn final_counts_survive_the_cgroup_for_the_grace_period() {
    let agent = Agent::start("metrics:\n  series_grace_period: 5m\n", &[]);
    let cg = TestCgroup::new("grace");
    let name = cg.rel.clone();
    cg.run_workload(&["getppid", "4321"]);
    cg.remove();
    // removed before any scrape: the final numbers are still reported
    let m = agent.metrics();
    assert_eq!(syscalls(&m, &name, "getppid"), Some(4_321.0), "{}", m.text);
    let removed = m
        .value("palisade_cgroups", &[("state", "removed")])
        .unwrap_or(0.0);
    assert!(
        removed >= 1.0,
        "removed cgroups kept for the grace period: {removed}"
    );
}

#[test]
fn two_hundred_cgroups_appear_and_disappear_without_leaks() {
    let agent = Agent::start(NO_GRACE, &[]);
    let parent = TestCgroup::new("churn");
    let children: Vec<TestCgroup> = (0..200).map(|i| parent.child(&format!("c{i}"))).collect();
    for c in &children {
        c.run_workload(&["getppid", "7"]);
    }
    let m = agent.metrics();
    for c in &children {
        assert_eq!(
            syscalls(&m, &c.rel, "getppid"),
            Some(7.0),
            "{} missing",
            c.rel
        );
    }
    let ids: Vec<u64> = children.iter().map(|c| c.id).collect();
    let in_maps = agent.cgroup_ids_in_maps();
    assert!(
        ids.iter().all(|id| in_maps.contains(id)),
        "kernel maps hold entries of all 200 cgroups"
    );

    for c in children {
        c.remove();
    }
    // the next collection reaps them: names gone from /metrics, no kernel entries left
    let m = wait_for(
        Duration::from_secs(20),
        "removed cgroups to leave /metrics",
        || {
            let m = agent.metrics();
            let left = m
                .label_values("palisade_syscalls_total", "container")
                .into_iter()
                .filter(|c| c.starts_with(&format!("{}/", parent.rel)))
                .count();
            (left == 0).then_some(m)
        },
    );
    let in_maps = agent.cgroup_ids_in_maps();
    let leaked: Vec<&u64> = ids.iter().filter(|id| in_maps.contains(id)).collect();
    assert!(
        leaked.is_empty(),
        "kernel entries leaked for {} cgroups",
        leaked.len()
    );
    assert_eq!(m.value("palisade_identity_dropped_total", &[]), Some(0.0));
    promtool_check_metrics(&m.text);
}

#[test]
fn cgroup_filter_traces_only_the_selected_cgroups() {
    // Created before the agent starts: the initial walk selects them, no race with events.
    let selected = TestCgroup::new("filter-in");
    let other = TestCgroup::new("filter-out");
    let glob = format!("{}*", selected.rel);
    let agent = Agent::start("", &["--cgroup", &glob]);
    selected.run_workload(&["getppid", "123"]);
    other.run_workload(&["getppid", "456"]);
    let m = agent.metrics();
    assert_eq!(syscalls(&m, &selected.rel, "getppid"), Some(123.0));
    // the agent knows the other cgroup (its exec is counted by the process tracepoints, which
    // the filter does not apply to) but counts none of its syscalls
    assert_eq!(
        m.value("palisade_process_execs_total", &[("container", &other.rel)]),
        Some(1.0),
        "{}",
        m.text
    );
    let traced = m.label_values("palisade_syscalls_total", "container");
    assert!(traced.contains(&selected.rel), "{traced:?}");
    assert!(
        !traced.contains(&other.rel),
        "unselected cgroup traced: {traced:?}"
    );
    // a matching cgroup created while the agent runs is selected from its mkdir event
    let pattern = format!("/palisade-test-{}-filter-late-*", std::process::id());
    let agent2 = Agent::start("", &["--cgroup", &pattern]);
    let late = TestCgroup::new("filter-late");
    wait_for(
        Duration::from_secs(10),
        "the new cgroup to be selected",
        || {
            late.run_workload(&["getppid", "1"]);
            syscalls(&agent2.metrics(), &late.rel, "getppid")
        },
    );
    let before = syscalls(&agent2.metrics(), &late.rel, "getppid").unwrap_or(0.0);
    late.run_workload(&["getppid", "50"]);
    let after = syscalls(&agent2.metrics(), &late.rel, "getppid").unwrap_or(0.0);
    assert_eq!(after - before, 50.0);
}

#[test]
fn sigterm_detaches_everything_and_pins_nothing() {
    let agent = Agent::start("", &[]);
    let (maps, progs) = agent.bpf_objects();
    assert!(
        maps.iter().any(|(_, n)| n == "SYSCALL_STATS"),
        "agent holds its maps: {maps:?}"
    );
    assert!(progs.len() >= 2, "sys_enter and sys_exit loaded: {progs:?}");
    let status = agent.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    // The kernel frees programs asynchronously (RCU) once the last reference is gone.
    wait_for(
        Duration::from_secs(10),
        "the agent's programs to be freed",
        || {
            let alive: Vec<(u32, String)> = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .filter(|p| progs.contains(&p.id()))
                .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_owned()))
                .collect();
            eprintln!("still loaded: {alive:?}");
            alive.is_empty().then_some(())
        },
    );
    assert!(
        !std::path::Path::new("/sys/fs/bpf/palisade").exists(),
        "nothing pinned unless configured"
    );
}

#[test]
fn registered_workloads_are_named_and_traced_past_the_filter() {
    use std::os::unix::fs::PermissionsExt as _;
    // a filter that selects nothing: registration must still trace the workload
    let agent = Agent::start("", &["--cgroup", "nothing-matches-this"]);
    let mode = std::fs::metadata(agent.control_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket is root-only");
    assert!(
        agent
            .control(r#"{"op":"ping"}"#)
            .starts_with(r#"{"ok":true"#)
    );

    let cg = TestCgroup::new("registered");
    let req = format!(
        r#"{{"op":"register","name":"web-0","cgroup_id":{},"cgroup_path":"{}"}}"#,
        cg.id, cg.rel
    );
    assert_eq!(agent.control(&req), r#"{"ok":true}"#);
    // acked before the workload starts: its very first calls are counted, under its name
    cg.run_workload(&["getppid", "77"]);
    let m = agent.metrics();
    assert_eq!(syscalls(&m, "web-0", "getppid"), Some(77.0), "{}", m.text);
    // named from before its first call: no series under its path at all
    let named = m.label_values("palisade_syscalls_total", "container");
    assert!(!named.contains(&cg.rel), "{named:?}");
    assert_eq!(syscalls(&m, "web-0", "execve"), Some(1.0));

    let bad = agent.control(r#"{"op":"register","name":"a/b","cgroup_id":1,"cgroup_path":"/x"}"#);
    assert!(
        bad.contains(r#""ok":false"#) && bad.contains("invalid workload name"),
        "{bad}"
    );
    let bad = agent.control(r#"{"op":"launch"}"#);
    assert!(bad.contains("bad request"), "{bad}");
}

#[test]
fn a_second_agent_on_the_same_control_socket_is_refused() {
    let agent = Agent::start("", &[]);
    let socket = agent.control_socket();
    let out = std::process::Command::new(palisade_bin())
        .args(["agent", "--listen", "127.0.0.1:0", "--control-socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another agent answers on the control socket"),
        "{err}"
    );
    // the first agent still answers
    assert!(
        agent
            .control(r#"{"op":"ping"}"#)
            .starts_with(r#"{"ok":true"#)
    );
}

#[test]
fn healthz_and_unknown_paths() {
    let agent = Agent::start("", &[]);
    assert_eq!(agent.get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(agent.get("/nope").0, 404);
}

/// Runs `palisade ARGS` to completion; returns (exit code, stderr).
/// A control socket path no other agent uses (tests must not touch /run/palisade).
fn scratch_socket() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = dir.path().join("agent.sock").to_string_lossy().into_owned();
    (dir, path)
}

fn run_palisade(args: &[&str]) -> (i32, String) {
    let (_dir, socket) = scratch_socket();
    let out = std::process::Command::new(palisade_bin())
        .args(args)
        .args(["--control-socket", &socket])
        .output()
        .unwrap_or_else(|e| panic!("run palisade {args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{stderr}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {}", lines[0]);
}

#[test]
fn bad_input_fails_fast_with_one_line_and_loads_nothing() {
    use std::os::unix::process::CommandExt as _;
    palisade_tests::require_root();
    let dir = tempfile::tempdir().unwrap();

    // port in use: fails before any program is loaded
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, err) = run_palisade(&["agent", "--listen", &addr]);
    assert_eq!(code, 1, "{err}");
    assert_one_line_error(&err, "address already in use");
    assert!(err.contains("--listen"), "names the fix: {err}");
    // with bpf() failing it is still the port error: nothing was loaded (nor tried) before the
    // bind (a count of the host's programs would race with the tests running alongside)
    let out = without_bpf(&["agent", "--listen", &addr]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_one_line_error(&err, "address already in use");

    // unknown key, with file:line:column
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        "listen: 127.0.0.1:0\nsyscalls:\n  thread_slot: 4096\n",
    )
    .unwrap();
    let (code, err) = run_palisade(&["agent", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert_one_line_error(
        &err,
        &format!("{}:3:3: unknown field `thread_slot`", cfg.display()),
    );

    // unreadable config
    let (code, err) = run_palisade(&["agent", "--config", "/nonexistent/p.yaml"]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "cannot read config /nonexistent/p.yaml");

    // unknown flag
    let (code, err) = run_palisade(&["agent", "--no-such-flag"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unexpected argument '--no-such-flag'"),
        "{err}"
    );

    // invalid glob
    let (code, err) = run_palisade(&["agent", "--cgroup", "web-["]);
    assert_eq!(code, 2);
    assert_one_line_error(&err, "--cgroup: invalid glob `web-[`");

    // not root (from a copy the unprivileged user can reach: the checkout may sit in a 0700 dir)
    use std::os::unix::fs::PermissionsExt as _;
    let open_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = open_dir.path().join("palisade");
    std::fs::copy(palisade_bin(), &copy).unwrap();
    let (_sock_dir, socket) = scratch_socket();
    let out = std::process::Command::new(&copy)
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--control-socket",
            &socket,
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let (code, err) = (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(code, 1);
    assert_one_line_error(&err, "must run as root");
}

/// A command whose `bpf(2)` calls fail with EPERM (a seccomp filter installed in the child only),
/// as on a host or container where the kernel refuses BPF.
fn without_bpf(args: &[&str]) -> std::process::Output {
    use std::os::unix::process::CommandExt as _;
    let (_dir, socket) = scratch_socket();
    let mut cmd = std::process::Command::new(palisade_bin());
    cmd.args(args);
    if args.first() == Some(&"agent") {
        cmd.args(["--control-socket", &socket]);
    }
    // SAFETY: between fork and exec the closure only calls prctl with a filter built in this
    // stack frame (async-signal-safe, no allocation).
    unsafe {
        cmd.pre_exec(|| {
            let filter = [
                // A = seccomp_data.nr
                libc::sock_filter {
                    code: 0x20,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // if A == __NR_bpf fall through to EPERM, else skip to ALLOW
                libc::sock_filter {
                    code: 0x15,
                    jt: 0,
                    jf: 1,
                    k: libc::SYS_bpf as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
                },
                libc::sock_filter {
                    code: 0x06,
                    jt: 0,
                    jf: 0,
                    k: libc::SECCOMP_RET_ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &raw const prog,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("run palisade {args:?}: {e}"))
}

#[test]
fn a_kernel_that_refuses_bpf_gets_one_line_and_a_doctor_verdict() {
    palisade_tests::require_root();
    let out = without_bpf(&["agent", "--listen", "127.0.0.1:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("palisade: error: "), "{err}");
    assert!(
        last.contains("palisade doctor"),
        "names the next step: {last}"
    );
    assert_eq!(
        err.lines().filter(|l| l.contains("error")).count(),
        1,
        "{err}"
    );

    let out = without_bpf(&["doctor"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "doctor must say the agent cannot run:\n{text}"
    );
    assert!(
        text.contains("agent: cannot run here; missing required features: raw_tracepoint"),
        "{text}"
    );
}

#[test]
fn print_and_check_config() {
    let out = std::process::Command::new(palisade_bin())
        .args(["agent", "--print-config"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("listen: 127.0.0.1:9477"));
    // what --print-config prints is a valid config
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("p.yaml");
    std::fs::write(&cfg, text).unwrap();
    let out = std::process::Command::new(palisade_bin())
        .args(["agent", "--check-config", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_benchmarks_empty_hooks_attach_where_they_say() {
    palisade_tests::require_root();
    for (hook, want) in [
        ("raw_tracepoint", vec!["sys_enter", "sys_exit"]),
        ("raw_tracepoint_exit", vec!["sys_exit"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready");
        let mut child = std::process::Command::new(palisade_bin())
            .args(["debug", "empty-hooks", "--hook", hook, "--ready-file"])
            .arg(&ready)
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(30), "the ready file", || {
            std::fs::metadata(&ready).ok().filter(|m| m.len() > 0)
        });
        // the raw tracepoint links the process holds, by tracepoint
        let mut attached: Vec<String> = std::fs::read_dir(format!("/proc/{}/fdinfo", child.id()))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter(|info| info.contains("link_type:\traw_tracepoint"))
            .filter_map(|info| {
                info.lines()
                    .find_map(|l| l.strip_prefix("tp_name:"))
                    .map(|t| t.trim().to_owned())
            })
            .collect();
        attached.sort();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        assert_eq!(attached, want, "--hook {hook}");
        assert!(status.success(), "--hook {hook}: {status}");
    }
}

#[test]
fn a_probe_cgroup_left_by_a_killed_probe_is_removed_by_the_next() {
    palisade_tests::require_root();
    let root = palisade_tests::unified_root();
    // two pids that are gone, and one that lives
    let gone = || {
        let mut p = std::process::Command::new("true").spawn().unwrap();
        let _ = p.wait();
        p.id()
    };
    let mut live = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let made = |pid: u32, old: bool| {
        // the name a probing process gives its scratch cgroup
        let dir = root.join(format!("palisade-probe-{pid}"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        if old {
            let two_minutes_ago = std::time::SystemTime::now() - Duration::from_secs(120);
            std::fs::File::open(&dir)
                .and_then(|f| f.set_modified(two_minutes_ago))
                .unwrap_or_else(|e| panic!("age {}: {e}", dir.display()));
        }
        dir
    };
    let stale = made(gone(), true);
    let fresh = made(gone(), false);
    let living = made(live.id(), true);
    let out = std::process::Command::new(palisade_bin())
        .arg("doctor")
        .output()
        .unwrap();
    let (fresh_left, living_left) = (fresh.exists(), living.exists());
    let _ = live.kill();
    let _ = live.wait();
    let _ = std::fs::remove_dir(&fresh);
    let _ = std::fs::remove_dir(&living);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stale.exists(), "{} left behind", stale.display());
    assert!(fresh_left, "a scratch cgroup made a moment ago was removed");
    assert!(living_left, "a live process's scratch cgroup was removed");
}

#[test]
fn doctor_reports_what_the_kernel_allows() {
    palisade_tests::require_root();
    let out = std::process::Command::new(palisade_bin())
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    for feature in [
        "raw_tracepoint",
        "tracepoint",
        "cgroup_skb",
        "cgroup_sock_addr",
        "sock_ops",
        "ring_buffer",
        "send_signal",
        "cgroup_ancestors",
        "fentry",
        "syscall_fentry",
        "bpf_lsm",
        "kprobe",
        "btf",
        "cgroup_v1",
        "cgroup_v2",
        "seccomp",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{feature} "))),
            "doctor has no row for {feature}"
        );
    }
    // the agent's required hooks are present on any host that runs these tests
    assert!(
        out.status.success(),
        "doctor says the agent cannot run:\n{text}"
    );
    let row = |f: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{f} ")))
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        row("raw_tracepoint").contains(" yes "),
        "{}",
        row("raw_tracepoint")
    );

    // the agent exports the same answers
    let agent = Agent::start("", &[]);
    let m = agent.metrics();
    for line in text.lines().skip(3) {
        let mut cols = line.split_whitespace();
        let (Some(feature), Some(ok)) = (cols.next(), cols.next()) else {
            break;
        };
        let want = if ok == "yes" { 1.0 } else { 0.0 };
        assert_eq!(
            m.value("palisade_kernel_feature", &[("feature", feature)]),
            Some(want),
            "palisade_kernel_feature{{feature={feature}}}"
        );
    }
}

/// One raw HTTP/1.0 GET of /metrics with `Accept-Encoding: gzip`: (head, body bytes).
/// Connects and sends a `/metrics` request that accepts gzip (the reply is read later).
fn ask_gzip(addr: std::net::SocketAddr) -> std::net::TcpStream {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept-Encoding: gzip\r\n\r\n"
    )
    .unwrap_or_else(|e| panic!("send: {e}"));
    s
}

/// The reply to `ask_gzip`: (head, lower case; body).
fn gzip_reply(mut s: std::net::TcpStream) -> (String, Vec<u8>) {
    use std::io::Read as _;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("read: {e}"));
    let at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end"));
    (
        String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase(),
        buf[at + 4..].to_vec(),
    )
}

fn gunzip(data: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("gzip: {e}"));
    child
        .stdin
        .take()
        .unwrap_or_else(|| panic!("gzip stdin"))
        .write_all(data)
        .unwrap_or_else(|e| panic!("write to gzip: {e}"));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("gzip: {e}"));
    assert!(out.status.success(), "not gzip");
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("not UTF-8: {e}"))
}

#[test]
fn concurrent_scrapes_share_one_page_and_its_gzip() {
    let agent = Agent::start("resources:\n  read_on_scrape: true\n", &[]);
    let renders = |m: &Metrics| {
        m.value("palisade_scrape_duration_seconds_count", &[])
            .unwrap_or_else(|| panic!("no scrape count"))
    };
    let before = renders(&agent.metrics());
    let n = 8;
    // Sent while the agent is stopped, the n requests wait in its sockets together and reach
    // it at once when it resumes, however busy the machine is (threads started behind a
    // barrier could still arrive one after the other's page); each collection reads cgroupfs
    // (`read_on_scrape`), so it lasts the milliseconds the others need to arrive and join.
    let asked: Vec<_> = {
        let _stopped = palisade_tests::load::pause(&agent);
        (0..n).map(|_| ask_gzip(agent.addr)).collect()
    };
    let replies: Vec<(String, Vec<u8>)> = asked.into_iter().map(gzip_reply).collect();
    for (head, body) in &replies {
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert!(head.contains("content-encoding: gzip"), "{head}");
        assert!(head.contains("vary: accept-encoding"), "{head}");
        let text = gunzip(body);
        assert!(text.contains("palisade_build_info{"), "{text}");
    }
    promtool_check_metrics(&gunzip(&replies[0].1));
    // the page rendered before these counts itself only in the next one
    let after = renders(&agent.metrics()) - before - 1.0;
    let mut bodies: Vec<&Vec<u8>> = replies.iter().map(|(_, b)| b).collect();
    bodies.sort();
    bodies.dedup();
    eprintln!("{n} scrapes: {after} pages, {} gzip bodies", bodies.len());
    // scrapes that arrive while a collection runs join the next one and share its page, gzip
    // included (byte for byte): n scrapes, fewer pages
    assert!(
        after < n as f64 && bodies.len() as f64 <= after,
        "{n} scrapes made {after} pages, {} distinct gzip bodies",
        bodies.len()
    );
    // without Accept-Encoding: plain text
    let (code, plain) = agent.get("/metrics");
    assert_eq!(code, 200);
    assert!(plain.starts_with("# HELP "), "{plain}");
}
