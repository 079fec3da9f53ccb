//! Faults the agent must survive: SIGKILL with enforcement on, cgroups removed while they are
//! read, workloads exiting during registration, bpffs and tracefs missing, scrapes and
//! subscribers during policy reloads. (A full disk under the event log and an OTLP collector
//! that is down or slow: `sink_faults.rs`.)
use std::{path::Path, time::Duration};

use palisade_tests::{
    Agent, TestCgroup, TestNetns,
    bpf::{Attached, attached},
    load::{Subscriber, sum},
    net_workload_bin,
    policy::{Setup, cli, violation_sums, wait_applied},
    start_server, unified_root, wait_for, wait_for_explained,
};
use serde_json::Value;

/// A child killed and reaped when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CONNECT: &[&str] = &["cgroup_inet4_connect", "cgroup_inet6_connect"];

/// The programs on the root cgroup whose ids are in `progs` (an agent's), by attach type.
fn of(attached: &[Attached], progs: &[u32]) -> Vec<Attached> {
    attached
        .iter()
        .filter(|a| progs.contains(&a.prog_id))
        .copied()
        .collect()
}

#[test]
fn sigkill_with_enforcement_on_denies_throughout_and_the_next_agent_reports_each_violation_once() {
    let cg = TestCgroup::new("kill-enf");
    let ns = TestNetns::new("kill-enf");
    let listener_cg = TestCgroup::new("kill-enf-listener");
    let _listener = Reaped(start_server(
        &listener_cg,
        &ns,
        &["serve-tcp", "127.0.0.1:7702", "1000000"],
    ));
    let s = Setup::new(&format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: no-7702\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: enforce\n  network:\n    egress:\n      default: allow\n      rules:\n        - {{name: deny-7702, action: deny, cidr: 127.0.0.0/8, ports: [7702], protocol: tcp}}\n",
        cg.rel
    ));
    let root = unified_root();
    let mut a = s.agent("");
    wait_applied(&a, "no-7702", cg.id, &["egress"]);
    let a_progs = a.bpf_objects().1;
    let before = attached(&root);
    // the enforcement programs: A's, attached for connect
    let enforcing: Vec<Attached> = of(&before, &a_progs)
        .into_iter()
        .filter(|x| CONNECT.contains(&x.attach_type))
        .collect();
    assert!(
        !enforcing.is_empty(),
        "no connect program of the agent on the root: {before:?}"
    );

    // a probe that keeps trying the denied port, before, during and after the restart
    let stop = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let stop_file = stop.path().join("stop");
    let probe = cg
        .command_in(&ns, net_workload_bin())
        .args(["connect-until", "127.0.0.1:7702"])
        .arg(&stop_file)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("probe: {e}"));
    let violations = |agent: &Agent| {
        sum(
            &agent.metrics(),
            "palisade_policy_violations_total",
            &[("policy", "no-7702"), ("container", &cg.rel)],
        )
    };
    wait_for(
        Duration::from_secs(20),
        "the probe's first violations",
        || (violations(&a) > 0).then_some(()),
    );
    a.kill9_keep();
    // nobody reads now: enforcement stays (pinned links), violations queue in the kernel
    let dead = attached(&root);
    for e in &enforcing {
        assert!(
            dead.contains(e),
            "{e:?} left the root cgroup with the agent: {dead:?}"
        );
    }
    let reported_by_a = violation_sums(&a.events(), cg.id);

    let b = s.agent("");
    wait_applied(&b, "no-7702", cg.id, &["egress"]);
    // a few more after the restart, then stop the probe
    let at_restart = violations(&b);
    wait_for(
        Duration::from_secs(20),
        "violations after the restart",
        || (violations(&b) > at_restart).then_some(()),
    );
    std::fs::write(&stop_file, "").unwrap_or_else(|e| panic!("stop file: {e}"));
    let out = probe
        .wait_with_output()
        .unwrap_or_else(|e| panic!("probe: {e}"));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let [attempts, eperm, connected, other] = nums[..] else {
        panic!("probe said {line:?}");
    };
    eprintln!("probe: {line}");
    assert_eq!(
        (eperm, connected, other),
        (attempts, 0, 0),
        "EPERM every time, through the restart"
    );

    // the new agent adopted the links: the same programs, none twice, none of its own
    let after = attached(&root);
    for e in &enforcing {
        assert!(after.contains(e), "{e:?} gone after the restart: {after:?}");
    }
    let b_connect: Vec<Attached> = of(&after, &b.bpf_objects().1)
        .into_iter()
        .filter(|x| CONNECT.contains(&x.attach_type))
        .collect();
    assert!(
        b_connect.iter().all(|x| enforcing.contains(x)),
        "the new agent attached connect programs of its own: {b_connect:?} (adopted: {enforcing:?})"
    );
    // every violation is counted, and reported exactly once: by the first agent before the
    // kill, or by the second (queued meanwhile, or after)
    let (reported_by_b, total) = wait_for_explained(
        Duration::from_secs(60),
        "the second agent's reports to complete the count",
        || {
            let n = violations(&b);
            let (p, s) = violation_sums(&b.events(), cg.id);
            (n == attempts && reported_by_a.0 + reported_by_a.1 + p + s >= attempts)
                .then_some(((p, s), n))
        },
        || {
            format!(
                "counter {}, first agent reported {reported_by_a:?}, second {:?}, attempts {attempts}",
                violations(&b),
                violation_sums(&b.events(), cg.id)
            )
        },
    );
    eprintln!(
        "violations: {attempts} attempts; first agent reported {reported_by_a:?}, second {reported_by_b:?} (events, suppressed)"
    );
    assert_eq!(total, attempts, "the counter counts every attempt");
    assert_eq!(
        reported_by_a.0 + reported_by_a.1 + reported_by_b.0 + reported_by_b.1,
        attempts,
        "each violation reported once"
    );
    assert!(reported_by_b.0 + reported_by_b.1 > 0);
}

#[test]
fn cgroups_removed_while_they_are_read_leave_nothing_and_scrapes_keep_answering() {
    let agent = Agent::start(
        "metrics:\n  series_grace_period: 0s\n  collect_interval: 1s\n",
        &[],
    );
    let parent = TestCgroup::with_controllers("rm-read", &["memory", "cpu"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // scrapes read every known cgroup's files while the cgroups come and go
    let scraper = {
        let stop = stop.clone();
        let addr = agent.addr;
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, body) = palisade_tests::http_get(addr, "/metrics");
                assert_eq!(code, 200, "scrape {n}: {body}");
                n += 1;
            }
            n
        })
    };
    let mut ids = Vec::new();
    for i in 0..150 {
        let c = parent.child(&format!("c{i}"));
        c.run_workload(&["getppid", "3"]);
        ids.push(c.id);
        c.remove();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper
        .join()
        .unwrap_or_else(|_| panic!("a scrape failed during the churn"));
    eprintln!("{scrapes} scrapes during the churn");
    assert!(scrapes > 0);
    let prefix = format!("{}/", parent.rel);
    wait_for(
        Duration::from_secs(30),
        "the removed cgroups to leave /metrics",
        || (!agent.scrape().contains(&prefix)).then_some(()),
    );
    let in_maps = agent.cgroup_ids_in_maps();
    assert!(
        ids.iter().all(|id| !in_maps.contains(id)),
        "kernel entries left"
    );
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
}

#[test]
fn workloads_that_exit_during_registration_leave_nothing_behind() {
    let agent = Agent::start(
        "metrics:\n  series_grace_period: 0s\n  collect_interval: 1s\n",
        &[],
    );
    let parent = TestCgroup::new("reg-exit");
    for i in 0..40 {
        let c = parent.child(&format!("w{i}"));
        let mut child = c
            .command(palisade_tests::workload_bin())
            .args(["sleep-ms", "5"])
            .spawn()
            .unwrap_or_else(|e| panic!("workload: {e}"));
        let req = format!(
            r#"{{"op":"register","name":"fault-reg-{i}","cgroup_id":{},"cgroup_path":"{}"}}"#,
            c.id, c.rel
        );
        // the registration races the workload's end and its cgroup's removal
        let sock = agent.control_socket();
        let reg = std::thread::spawn(move || control_line(&sock, &req));
        let _ = child.wait();
        c.remove();
        let reply = reg
            .join()
            .unwrap_or_else(|_| panic!("registration {i} panicked"));
        let v: Value =
            serde_json::from_str(&reply).unwrap_or_else(|e| panic!("reply {reply:?}: {e}"));
        assert!(v["ok"].is_boolean(), "{reply}");
    }
    // gone from the registry and from /metrics once collected
    wait_for(
        Duration::from_secs(30),
        "the registered names to go",
        || (!agent.scrape().contains("fault-reg-")).then_some(()),
    );
    assert!(
        agent
            .control(r#"{"op":"ping"}"#)
            .starts_with(r#"{"ok":true"#),
        "the agent still answers"
    );
}

/// One request line on a control socket, its reply line.
fn control_line(sock: &Path, req: &str) -> String {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect {}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    writeln!(s, "{req}").unwrap_or_else(|e| panic!("send: {e}"));
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("reply: {e}"));
    line.trim_end().to_owned()
}

/// The bpffs and tracefs mounts of this (the host's) mount namespace.
fn host_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - bpf ") || l.contains(" - tracefs ") || l.contains(" - debugfs "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn without_bpffs_and_tracefs_the_agent_mounts_its_own_and_the_host_is_untouched() {
    let host_before = host_mounts();
    let cg = TestCgroup::new("no-mounts");
    let s = Setup::new(&format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: nm\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: enforce\n  exec:\n    action: log\n    deny: [/bin/true]\n",
        cg.rel
    ));
    let agent = Agent::with_events_without_mounts(
        &s.config(""),
        &[],
        &[
            "/sys/fs/bpf",
            "/sys/kernel/tracing",
            "/sys/kernel/debug/tracing",
            "/sys/kernel/debug",
        ],
    );
    let log = agent.log();
    assert!(log.contains("tracefs was not mounted; mounted it"), "{log}");
    wait_applied(&agent, "nm", cg.id, &["exec"]);
    // classic tracepoints (tracefs) and pinning (bpffs) both work
    assert!(cg.command("/bin/true").status().is_ok_and(|s| s.success()));
    agent.wait_events(1, "the exec event", |e| {
        e["type"] == "exec" && e["container"]["cgroup_id"] == cg.id
    });
    agent.wait_events(1, "the logged violation", |e| {
        e["type"] == "policy_violation" && e["container"]["cgroup_id"] == cg.id
    });
    assert!(agent.log().contains("bpffs"), "{}", agent.log());
    drop(agent);
    assert_eq!(host_mounts(), host_before, "the host's mounts changed");
}

#[test]
fn scrapes_and_subscribers_keep_working_through_policy_reloads() {
    let cg = TestCgroup::new("reload-load");
    let policy = |action: &str| {
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: rl\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: enforce\n  syscalls:\n    action: {action}\n    deny: [getppid]\n",
            cg.rel
        )
    };
    let s = Setup::new(&policy("log"));
    let agent = s.agent("");
    wait_applied(&agent, "rl", cg.id, &["syscalls"]);
    let stream = Subscriber::new(&agent, &[&cg.rel], &[]).start();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        let addr = agent.addr;
        std::thread::spawn(move || {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, body) = palisade_tests::http_get(addr, "/metrics");
                assert_eq!(code, 200, "scrape {n}: {body}");
                assert!(body.contains("palisade_policy_reloads_total"));
                n += 1;
            }
            n
        })
    };
    let reloads = 20;
    for i in 0..reloads {
        std::fs::write(
            s.policy_file(),
            policy(if i % 2 == 0 { "kill" } else { "log" }),
        )
        .unwrap_or_else(|e| panic!("write policy: {e}"));
        let (code, out, err) = cli(&agent, &["reload"]);
        assert_eq!(code, 0, "reload {i}: {out}{err}");
    }
    // the last file says log: the workload runs and its violations stream to the subscriber
    std::fs::write(s.policy_file(), policy("log")).unwrap_or_else(|e| panic!("{e}"));
    let (code, out, err) = cli(&agent, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper
        .join()
        .unwrap_or_else(|_| panic!("a scrape failed during the reloads"));
    cg.run_workload(&["getppid", "3"]);
    let mut lines = Vec::new();
    stream
        .until(&mut lines, Duration::from_secs(30), |e| {
            e["type"] == "policy_violation" && e["violation"]["action"] == "log"
        })
        .unwrap_or_else(|| panic!("the subscriber got nothing after the reloads: {lines:?}"));
    let m = agent.metrics();
    eprintln!("{scrapes} scrapes during {} reloads", reloads + 1);
    assert_eq!(
        sum(&m, "palisade_policy_reloads_total", &[]),
        reloads + 1,
        "{}",
        agent.log()
    );
    assert_eq!(sum(&m, "palisade_policy_reload_errors_total", &[]), 0);
    assert_eq!(
        sum(
            &m,
            "palisade_events_dropped_total",
            &[("sink", "subscriber")]
        ),
        0
    );
}
