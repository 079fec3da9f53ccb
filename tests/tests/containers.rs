//! Privileged end-to-end tests of resources, process lifecycle, events and container names.
//!
//! Each test owns its agent and cgroups; cgroups that need limits get v1 controller directories
//! at the same relative path on hybrid hosts (the agent reads v1 there).
use std::{path::Path, time::Duration};

use palisade_tests::{
    Agent, Metrics, TestCgroup, promtool_check_metrics, wait_for, wait_for_explained, workload_bin,
};
use serde_json::Value;

fn in_cgroup<'a>(cg: &'a TestCgroup) -> impl Fn(&Value) -> bool + 'a {
    move |e: &Value| e["container"]["cgroup_id"].as_u64() == Some(cg.id)
}

fn of_type<'a>(t: &'a str, cg: &'a TestCgroup) -> impl Fn(&Value) -> bool + 'a {
    let c = in_cgroup(cg);
    move |e: &Value| e["type"] == t && c(e)
}

/// Resource readings are at most one collection old: the tests reading values collect often.
const COLLECT_1S: &str = "metrics:\n  collect_interval: 1s\n";

fn cadvisor(m: &Metrics, name: &str, cg: &TestCgroup) -> Option<f64> {
    m.value(name, &[("id", &cg.rel)])
}

#[test]
fn cpu_time_of_a_busy_workload_is_within_ten_percent() {
    let agent = Agent::start(COLLECT_1S, &[]);
    let cg = TestCgroup::new("cpu");
    cg.run_workload(&["burn-ms", "500"]);
    let m = fresh(&agent, &cg, std::time::SystemTime::now());
    let used = cadvisor(&m, "container_cpu_usage_seconds_total", &cg).unwrap_or(0.0);
    assert!(
        (0.45..=0.55).contains(&used),
        "500 ms burned, {used} s reported"
    );
    let user = cadvisor(&m, "container_cpu_user_seconds_total", &cg).unwrap_or(0.0);
    let system = cadvisor(&m, "container_cpu_system_seconds_total", &cg).unwrap_or(0.0);
    assert!(user > 0.3, "mostly user time: {user}");
    assert!(
        (user + system - used).abs() < 0.05,
        "{user} + {system} vs {used}"
    );
    assert_eq!(cadvisor(&m, "container_processes", &cg), Some(0.0));
    assert!(cadvisor(&m, "container_start_time_seconds", &cg).is_some_and(|t| t > 1.6e9));
    assert!(cadvisor(&m, "container_last_seen", &cg).is_some_and(|t| t > 1.6e9));
    promtool_check_metrics(&m.text);
}

/// The page once the agent has read cgroup `cg`'s files after `since` (a background
/// collection: the agents below collect every second). `container_last_seen` is stamped when
/// a pass's readings arrive; half a second later than `since` the pass began after it.
fn fresh(agent: &Agent, cg: &TestCgroup, since: std::time::SystemTime) -> Metrics {
    let since = 0.5
        + since
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_else(|e| panic!("clock: {e}"))
            .as_secs_f64();
    wait_for_explained(
        Duration::from_secs(30),
        "a cgroupfs reading after the workload",
        || {
            let m = agent.metrics();
            cadvisor(&m, "container_last_seen", cg)
                .is_some_and(|t| t >= since)
                .then_some(m)
        },
        || format!("container_last_seen of {}", cg.rel),
    )
}

#[test]
fn a_scrape_serves_the_last_collections_readings_unless_asked_to_read() {
    // one background collection at start: readings come from scrapes of cgroups not read yet
    let agent = Agent::start("metrics:\n  collect_interval: 1h\n", &[]);
    let cg = TestCgroup::new("stale");
    let m = agent.metrics();
    let seen = cadvisor(&m, "container_last_seen", &cg)
        .unwrap_or_else(|| panic!("a new cgroup is read by the first scrape that sees it"));
    let used = cadvisor(&m, "container_cpu_usage_seconds_total", &cg).unwrap_or(-1.0);
    cg.run_workload(&["burn-ms", "200"]);
    let m = agent.metrics();
    assert_eq!(
        cadvisor(&m, "container_last_seen", &cg),
        Some(seen),
        "a scrape read cgroupfs again"
    );
    assert_eq!(
        cadvisor(&m, "container_cpu_usage_seconds_total", &cg),
        Some(used),
        "the scrape serves the reading of the last collection"
    );
    drop(agent);
    // read_on_scrape: every scrape reads
    let agent = Agent::start(
        "metrics:\n  collect_interval: 1h\nresources:\n  read_on_scrape: true\n",
        &[],
    );
    let before = agent.metrics();
    let used = cadvisor(&before, "container_cpu_usage_seconds_total", &cg).unwrap_or(-1.0);
    cg.run_workload(&["burn-ms", "200"]);
    let after = cadvisor(&agent.metrics(), "container_cpu_usage_seconds_total", &cg).unwrap_or(0.0);
    assert!(
        after >= used + 0.15,
        "{used} s, then {after} s after 200 ms of CPU"
    );
}

#[test]
fn a_cpu_quota_shows_as_throttling() {
    let agent = Agent::start(COLLECT_1S, &[]);
    let cg = TestCgroup::with_controllers("quota", &["cpu"]);
    cg.set("cpu", "cpu.cfs_period_us", "cpu.max", "100000");
    cg.set("cpu", "cpu.cfs_quota_us", "cpu.max", "20000");
    if cg.v1.is_empty() {
        cg.set("cpu", "", "cpu.max", "20000 100000");
    }
    // 300 ms of CPU at 20 % of one CPU: at least 15 periods, most of them throttled
    cg.run_workload(&["burn-ms", "300"]);
    let m = fresh(&agent, &cg, std::time::SystemTime::now());
    assert_eq!(
        cadvisor(&m, "container_spec_cpu_quota", &cg),
        Some(20_000.0)
    );
    assert_eq!(
        cadvisor(&m, "container_spec_cpu_period", &cg),
        Some(100_000.0)
    );
    let periods = cadvisor(&m, "container_cpu_cfs_periods_total", &cg).unwrap_or(0.0);
    let throttled = cadvisor(&m, "container_cpu_cfs_throttled_periods_total", &cg).unwrap_or(0.0);
    let seconds = cadvisor(&m, "container_cpu_cfs_throttled_seconds_total", &cg).unwrap_or(0.0);
    assert!(periods >= 10.0, "periods {periods}");
    assert!(
        throttled >= 5.0 && throttled <= periods,
        "throttled {throttled} of {periods}"
    );
    assert!(seconds > 0.5, "throttled for {seconds} s");
}

#[test]
fn a_memory_hog_under_a_limit_is_one_oom_event_naming_it() {
    let agent = Agent::with_events(COLLECT_1S, &[]);
    let cg = TestCgroup::with_controllers("oom", &["memory"]);
    cg.set(
        "memory",
        "memory.limit_in_bytes",
        "memory.max",
        &(64u64 << 20).to_string(),
    );
    let status = cg
        .command(workload_bin())
        .args(["alloc-mb", "1024"])
        .status()
        .unwrap();
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "OOM-killed: {status}");

    let ooms = agent.wait_events(1, "the OOM event", of_type("oom", &cg));
    assert_eq!(ooms.len(), 1);
    let ev = &ooms[0];
    assert_eq!(ev["container"]["name"], cg.rel.as_str());
    assert_eq!(ev["process"]["comm"], "syscall-workloa");
    assert!(
        ev["process"]["exe"]
            .as_str()
            .unwrap()
            .ends_with("syscall-workload")
    );
    let exits = agent.wait_events(1, "the exit event", of_type("exit", &cg));
    assert_eq!(exits[0]["signal"], 9);
    // everything the kernel queued is in the log: count again
    agent.drain();
    assert_eq!(
        agent
            .events()
            .iter()
            .filter(|e| of_type("oom", &cg)(e))
            .count(),
        1
    );

    let m = fresh(&agent, &cg, std::time::SystemTime::now());
    assert_eq!(
        m.value("palisade_oom_kills_total", &[("container", &cg.rel)]),
        Some(1.0)
    );
    assert_eq!(cadvisor(&m, "container_oom_events_total", &cg), Some(1.0));
    assert_eq!(
        cadvisor(&m, "container_spec_memory_limit_bytes", &cg),
        Some((64u64 << 20) as f64)
    );
    assert!(cadvisor(&m, "container_memory_failcnt", &cg).unwrap_or(0.0) > 0.0);
    assert_eq!(
        m.value(
            "palisade_process_exits_total",
            &[("container", &cg.rel), ("reason", "signaled")]
        ),
        Some(1.0)
    );
}

#[test]
fn an_exec_with_three_args_appears_once_with_them() {
    let agent = Agent::with_events("", &[]);
    let cg = TestCgroup::new("exec");
    let status = cg
        .command("/bin/true")
        .args(["a", "b c", "d"])
        .status()
        .unwrap();
    assert!(status.success());
    let execs = agent.wait_events(1, "the exec event", of_type("exec", &cg));
    agent.drain();
    let execs_now: Vec<Value> = agent
        .events()
        .into_iter()
        .filter(of_type("exec", &cg))
        .collect();
    assert_eq!(execs_now.len(), 1, "{execs:?}");
    let p = &execs_now[0]["process"];
    assert_eq!(p["exe"], "/bin/true");
    assert_eq!(p["args"], serde_json::json!(["/bin/true", "a", "b c", "d"]));
    assert_eq!(p["comm"], "true");
    assert_eq!(p["uid"], 0);
    assert_eq!(p["ppid"], std::process::id());
    let container = &execs_now[0]["container"];
    assert_eq!(container["name"], cg.rel.as_str());
    assert_eq!(container["id"], cg.rel.as_str());
    assert_eq!(container["runtime"], "cgroup");
    // RFC 3339 UTC with nanoseconds
    let time = execs_now[0]["time"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    assert!(time.ends_with('Z') && time.len() == 30, "{time}");

    let m = agent.metrics();
    assert_eq!(
        m.value("palisade_process_execs_total", &[("container", &cg.rel)]),
        Some(1.0)
    );
}

#[test]
fn exit_codes_signals_and_lifetimes_are_right() {
    let agent = Agent::with_events("", &[]);
    let cg = TestCgroup::new("exits");
    let st = cg
        .command(workload_bin())
        .args(["sleep-ms", "200", "exit", "7"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(7));
    let st = cg
        .command("/bin/sh")
        .args(["-c", "kill -TERM $$"])
        .status()
        .unwrap();
    assert!(!st.success());
    cg.run_workload(&["getppid", "1"]);
    let exits = agent.wait_events(3, "three exit events", of_type("exit", &cg));
    let by_exe = |suffix: &str| {
        exits
            .iter()
            .filter(|e| e["process"]["exe"].as_str().unwrap_or("").ends_with(suffix))
            .collect::<Vec<_>>()
    };
    let seven: Vec<_> = by_exe("syscall-workload")
        .into_iter()
        .filter(|e| e["exit_code"] == 7)
        .collect();
    assert_eq!(seven.len(), 1, "{exits:?}");
    let life = seven[0]["lifetime_seconds"].as_f64().unwrap();
    assert!((0.2..5.0).contains(&life), "slept 200 ms, lived {life} s");
    assert!(seven[0].get("signal").is_none());
    let sh = by_exe("sh");
    assert_eq!(sh.len(), 1, "{exits:?}");
    assert_eq!(sh[0]["signal"], 15);
    assert!(sh[0].get("exit_code").is_none());
    let m = agent.metrics();
    let exits_m = |reason| {
        m.value(
            "palisade_process_exits_total",
            &[("container", &cg.rel), ("reason", reason)],
        )
    };
    assert_eq!(exits_m("failed"), Some(1.0));
    assert_eq!(exits_m("signaled"), Some(1.0));
    assert_eq!(exits_m("exited"), Some(1.0));
    assert_eq!(exits_m("unknown"), Some(0.0));
}

#[test]
fn container_start_and_stop_events() {
    let agent = Agent::with_events("", &[]);
    let cg = TestCgroup::new("startstop");
    let id = cg.id;
    let rel = cg.rel.clone();
    let st = cg.command("/bin/true").status().unwrap();
    assert!(st.success());
    cg.run_workload(&["getppid", "1"]);
    let starts = agent.wait_events(1, "container_start", of_type("container_start", &cg));
    assert_eq!(
        starts[0]["process"]["exe"], "/bin/true",
        "the first exec starts it"
    );
    cg.remove();
    let stops = agent.wait_events(1, "container_stop", |e| {
        e["type"] == "container_stop" && e["container"]["cgroup_id"] == id
    });
    assert_eq!(stops[0]["container"]["name"], rel.as_str());
    assert!(stops[0]["lifetime_seconds"].as_f64().unwrap() > 0.0);
    agent.drain();
    let all = agent.events();
    assert_eq!(
        all.iter()
            .filter(|e| e["type"] == "container_start" && e["container"]["cgroup_id"] == id)
            .count(),
        1
    );
}

#[test]
fn five_hundred_short_lived_containers_leave_no_stale_series() {
    // The grace period must outlast creating the 500 (a few seconds here).
    // 500 containers x ~18 syscalls x 19 series pass the default cardinality cap; lift it.
    let agent = Agent::start(
        "metrics:\n  series_grace_period: 15s\n  max_series: 2000000\n",
        &[],
    );
    let parent = TestCgroup::new("churn500");
    let started = std::time::Instant::now();
    let prefix = format!("{}/", parent.rel);
    let mut ids = Vec::new();
    for i in 0..500 {
        let c = parent.child(&format!("c{i}"));
        assert!(c.command("/bin/true").status().unwrap().success());
        ids.push(c.id);
        c.remove();
    }
    // every one of them was seen (their final numbers are kept for the grace period) ...
    let m = agent.metrics();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "too slow for the grace period"
    );
    let seen = m
        .label_values("palisade_process_execs_total", "container")
        .into_iter()
        .filter(|c| c.starts_with(&prefix))
        .count();
    assert_eq!(m.value("palisade_series_dropped", &[]), Some(0.0));
    assert_eq!(seen, 500, "every container on /metrics");
    // ... and after it nothing of them is left: no series, no registry entry, no map entry
    let m = wait_for(Duration::from_secs(40), "the grace period to end", || {
        let m = agent.metrics();
        (!m.text.contains(&prefix)).then_some(m)
    });
    let in_maps = agent.cgroup_ids_in_maps();
    assert!(
        ids.iter().all(|id| !in_maps.contains(id)),
        "kernel entries left for removed cgroups"
    );
    // (palisade_cgroups{state="removed"} is not checked: the agent sees the cgroups of the
    // tests running beside this one too.)
    promtool_check_metrics(&m.text);
}

fn write(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Container ids, one per test: the agents of tests running side by side see each other's
/// cgroups, so no two tests may use the same id.
const CID: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";
const K8S_CID: &str = "1b2c3d4e5f60718293a4b5c6d7e8f9011b2c3d4e5f60718293a4b5c6d7e8f901";

#[test]
fn a_docker_name_that_arrives_late_updates_the_labels() {
    let roots = tempfile::tempdir().unwrap();
    // a real cgroup laid out like Docker's cgroupfs driver: <parent>/<id>, the parent told to
    // the agent (Docker's own, `/docker`, is the default)
    let top = TestCgroup::new("docker");
    let docker = top.child("docker");
    let cfg = format!(
        "identity:\n  name_resolution_window: 1s\n  roots:\n    docker: {}\n    podman: []\n    kubernetes_logs: {}\n  runtime_parents:\n    docker: [\"{}\"]\n",
        roots.path().join("docker").display(),
        roots.path().join("log").display(),
        docker.rel
    );
    let agent = Agent::start(&cfg, &[]);
    let c = docker.child(CID);
    c.run_workload(&["getppid", "5"]);
    let short = &CID[..12];
    let m = agent.metrics();
    assert_eq!(
        m.value(
            "palisade_syscalls_total",
            &[("container", short), ("syscall", "getppid")]
        ),
        Some(5.0),
        "named by its short id until the runtime's files say more"
    );
    // past the resolution window the miss is counted, once
    let m = wait_for(Duration::from_secs(10), "the miss to be counted", || {
        let m = agent.metrics();
        (m.value("palisade_identity_unresolved_total", &[]) == Some(1.0)).then_some(m)
    });
    assert_eq!(
        m.value("palisade_containers", &[("runtime", "docker")]),
        Some(1.0)
    );
    write(
        &roots
            .path()
            .join(format!("docker/containers/{CID}/config.v2.json")),
        r#"{"Name":"/late-web","Config":{"Image":"nginx:test","Labels":{}}}"#,
    );
    let m = wait_for(Duration::from_secs(10), "the late name", || {
        let m = agent.metrics();
        m.value(
            "palisade_syscalls_total",
            &[("container", "late-web"), ("syscall", "getppid")],
        )
        .map(|_| m)
    });
    assert_eq!(
        m.value(
            "palisade_syscalls_total",
            &[("container", "late-web"), ("syscall", "getppid")]
        ),
        Some(5.0)
    );
    assert_eq!(
        m.value(
            "palisade_syscalls_total",
            &[("container", short), ("syscall", "getppid")]
        ),
        None
    );
    let s = m.find(
        "container_cpu_usage_seconds_total",
        &[("container", "late-web")],
    );
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].labels["image"], "nginx:test");
    assert_eq!(s[0].labels["id"], c.rel);
    assert_eq!(
        m.value("palisade_identity_unresolved_total", &[]),
        Some(1.0)
    );
}

#[test]
fn kubernetes_namespace_pod_and_container_from_kubelet_logs() {
    let roots = tempfile::tempdir().unwrap();
    let uid = "5c3f7e2a-1b4d-4e6f-8a9b-0c1d2e3f4a5b";
    std::fs::create_dir_all(
        roots
            .path()
            .join(format!("log/pods/shop_cart-7d9f_{uid}/app")),
    )
    .unwrap();
    write(
        &roots
            .path()
            .join(format!("log/containers/cart-7d9f_shop_app-{K8S_CID}.log")),
        "",
    );
    // kubelet's cgroupfs layout: kubepods/burstable/pod<uid>/<container id>, under a root
    // told to the agent (`/kubepods` and `/kubepods.slice` are the defaults)
    let top = TestCgroup::new("k8s");
    let kubepods = top.child("kubepods");
    let cfg = format!(
        "identity:\n  roots:\n    docker: {0}/none\n    podman: []\n    kubernetes_logs: {0}/log\n  runtime_parents:\n    kubernetes: [\"{1}\"]\n",
        roots.path().display(),
        kubepods.rel
    );
    let agent = Agent::start(&cfg, &[]);
    let qos = kubepods.child("burstable");
    let pod = qos.child(&format!("pod{uid}"));
    let c = pod.child(K8S_CID);
    c.run_workload(&["getppid", "3"]);
    let m = agent.metrics();
    assert_eq!(
        m.value(
            "palisade_syscalls_total",
            &[
                ("container", "app"),
                ("namespace", "shop"),
                ("pod", "cart-7d9f"),
                ("syscall", "getppid")
            ]
        ),
        Some(3.0),
        "{}",
        m.text
    );
    // cpu.stat exists in every cgroup2 directory: this series is always there (memory files
    // are not, on a hybrid host where the test cgroup has no v1 memory directory)
    let s = m.find("container_cpu_usage_seconds_total", &[("id", &c.rel)]);
    assert_eq!(s.len(), 1, "{}", m.text);
    assert_eq!(s[0].labels["namespace"], "shop");
    assert_eq!(s[0].labels["pod"], "cart-7d9f");
    assert_eq!(s[0].labels["container"], "app");
    // the pod's cgroup ran nothing: it is known from its creation event, which the agent may
    // apply just after this scrape
    let by_runtime = |m: &Metrics| -> Vec<String> {
        m.text
            .lines()
            .filter(|l| l.starts_with("palisade_containers{"))
            .map(str::to_owned)
            .collect()
    };
    let counted = |m: &Metrics| {
        m.value("palisade_containers", &[("runtime", "cri")]) == Some(1.0)
            && m.value("palisade_containers", &[("runtime", "kubernetes")]) == Some(1.0)
    };
    if !counted(&m) {
        wait_for_explained(
            Duration::from_secs(10),
            "one cri container and one kubernetes pod",
            || counted(&agent.metrics()).then_some(()),
            || format!("{:?}", by_runtime(&agent.metrics())),
        );
    }
}

#[test]
fn a_real_podman_container_is_named_with_its_image() {
    palisade_tests::require_root();
    let image = palisade_tests::busybox_image();
    let agent = Agent::with_events("", &[]);
    let name = format!("palisade-test-{}", std::process::id());
    let out = std::process::Command::new("podman")
        .args(["run", "-d", "--name", &name])
        .args(palisade_tests::PODMAN_FLAGS)
        .arg(&image)
        .args([
            "/bin/sh",
            "-c",
            "while true; do cat /proc/self/status >/dev/null; sleep 0.1; done",
        ])
        .output()
        .unwrap_or_else(|e| panic!("podman: {e} (install it with `cargo xtask setup`)"));
    let _cleanup = palisade_tests::PodmanContainer(name.clone());
    assert!(
        out.status.success(),
        "podman run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let m = wait_for(
        Duration::from_secs(20),
        "the podman container on /metrics",
        || {
            let m = agent.metrics();
            (!m.find("palisade_syscalls_total", &[("container", &name)])
                .is_empty())
            .then_some(m)
        },
    );
    let s = m.find("container_cpu_usage_seconds_total", &[("container", &name)]);
    assert_eq!(s.len(), 1, "{}", m.text);
    assert_eq!(s[0].labels["image"], image);
    assert_eq!(s[0].labels["name"], name, "cAdvisor's name: the runtime's");
    assert!(
        s[0].labels["id"].ends_with(&format!("libpod-{id}")),
        "{:?}",
        s[0].labels
    );
    assert!(
        m.value("palisade_containers", &[("runtime", "podman")])
            .unwrap_or(0.0)
            >= 1.0
    );
    // its events carry the name and the container id
    let ev = agent.wait_events(1, "an exec in the podman container", |e| {
        e["type"] == "exec" && e["container"]["name"] == name.as_str()
    });
    assert_eq!(ev[0]["container"]["id"], id.as_str());
    assert_eq!(ev[0]["container"]["runtime"], "podman");
}

#[test]
fn palisade_events_follows_the_stream_with_filters() {
    use std::io::BufRead as _;
    let agent = Agent::start("", &[]);
    let cg = TestCgroup::new("tail");
    let mut tail = std::process::Command::new(palisade_tests::palisade_bin())
        .args(["events", "--type", "exec", "--container"])
        .arg(&cg.rel)
        .arg("--socket")
        .arg(agent.control_socket())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = tail.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // the subscription is live once the agent has a subscriber; retry the exec until one shows
    let line = wait_for(
        Duration::from_secs(10),
        "an event on `palisade events`",
        || {
            assert!(cg.command("/bin/true").arg("x").status().unwrap().success());
            rx.recv_timeout(Duration::from_millis(200)).ok()
        },
    );
    let ev: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["type"], "exec");
    assert_eq!(ev["container"]["name"], cg.rel.as_str());
    // filtered out: exits and other containers
    let other = TestCgroup::new("tail-other");
    assert!(other.command("/bin/true").status().unwrap().success());
    assert!(cg.command("/bin/true").arg("y").status().unwrap().success());
    let next: Value =
        serde_json::from_str(&rx.recv_timeout(Duration::from_secs(10)).unwrap()).unwrap();
    assert_eq!(next["type"], "exec");
    assert_eq!(next["container"]["name"], cg.rel.as_str());
    let _ = tail.kill();
    let _ = tail.wait();
}
