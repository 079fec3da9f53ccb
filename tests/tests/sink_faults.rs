//! The agent's outputs failing: the event log's disk full, the OTLP collector down, slow and
//! back. Each event is delivered or counted lost by the sink that lost it, the agent keeps
//! serving, and nothing else waits for the failing sink. Also OTLP over `http/protobuf` (the
//! default), decoded with the upstream protobuf types.
use std::{path::PathBuf, time::Duration};

use palisade_tests::{
    Agent, OtlpReceiver, TestCgroup,
    load::{accounting, log_lines_and_delivered, sink_counts, sink_settled, sum},
    otlp_attr,
    policy::{Setup, violation_sums, wait_applied},
    wait_for_explained,
};

/// A tmpfs of `kib` KiB mounted on a directory this test created; unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn new(kib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        mount_tmpfs(
            &dir.path().to_path_buf(),
            &format!("size={kib}k,mode=0700"),
            false,
        );
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn grow(&self, kib: u64) {
        mount_tmpfs(&self.path(), &format!("size={kib}k"), true);
    }

    /// Takes every free block (a file of zeros written until ENOSPC).
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler"))
            .unwrap_or_else(|e| panic!("filler: {e}"));
        let block = [0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
    }
}

fn mount_tmpfs(at: &PathBuf, opts: &str, remount: bool) {
    let mut cmd = std::process::Command::new("mount");
    if remount {
        cmd.args(["-o", &format!("remount,{opts}")]).arg(at);
    } else {
        cmd.args(["-t", "tmpfs", "-o", opts, "palisade-test"])
            .arg(at);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("mount: {e}"));
    assert!(
        out.status.success(),
        "mount {opts} on {}: {}",
        at.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_under_the_event_log_counts_every_lost_event_and_the_agent_keeps_serving() {
    palisade_tests::require_root();
    let disk = SmallDisk::new(64);
    let log = disk.path().join("events.jsonl");
    let agent = Agent::with_events_file("events:\n  max_file_mib: 64\n", &[], &log);
    let cg = TestCgroup::new("disk-full");
    // ~600 events of ~400 bytes: four times what 64 KiB holds
    cg.run_workload(&["exec-true", "300"]);
    // the agent serves on; each written event is one whole line
    assert_eq!(agent.get("/healthz").0, 200);
    let (lines, delivered, _) = log_lines_and_delivered(&agent, &log);
    let m = agent.metrics();
    let dropped = sum(&m, "palisade_events_dropped_total", &[("sink", "log")]);
    let text = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    eprintln!(
        "event log on a 64 KiB disk: {delivered} written ({lines} lines, {} bytes), {dropped} lost",
        text.len()
    );
    assert!(dropped > 0, "the disk never filled");
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a cut line was left"
    );
    // every line parses (a half-written one would not)
    let _ = agent.events();
    assert!(
        agent.log().contains("event log write failed"),
        "{}",
        agent.log()
    );

    // room again: the log writes again
    disk.grow(16 << 10);
    agent.drain();
    let (_, delivered_after, _) = log_lines_and_delivered(&agent, &log);
    assert!(
        delivered_after > delivered,
        "nothing written after the disk grew"
    );
    assert!(agent.log().contains("event log writes succeed again"));

    // stopped: every event it published was written or counted lost, exactly
    let mut agent = agent;
    assert!(agent.stop_keep().success());
    let a = accounting(&agent);
    let final_lines = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count() as u64;
    eprintln!("at shutdown: {a:?}");
    assert_eq!(
        a["published"],
        a["log_delivered"] + a["log_dropped"],
        "{a:?}"
    );
    assert_eq!(final_lines, a["log_delivered"]);
}

/// A violation is recorded in the kernel as reported (for the next agent, `POLICY_REPORTED`)
/// only once the event log has written its event. The log's disk is full here, so the first
/// agent's violation events are all lost; after a SIGKILL, the next agent reports every one.
#[test]
fn violations_whose_events_the_log_could_not_write_are_reported_by_the_next_agent() {
    palisade_tests::require_root();
    let cg = TestCgroup::new("disk-full-pol");
    let s = Setup::new(&format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: full-log\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: enforce\n  syscalls:\n    action: log\n    deny: [getppid]\n",
        cg.rel
    ));
    let disk = SmallDisk::new(64);
    disk.fill();
    let log = disk.path().join("events.jsonl");
    let mut a = Agent::with_events_file(&s.config(""), &[], &log);
    wait_applied(&a, "full-log", cg.id, &["syscalls"]);
    let produced = 500u64;
    cg.run_workload(&["getppid", &produced.to_string()]);
    let counted = |m: &palisade_tests::Metrics| {
        sum(
            m,
            "palisade_policy_violations_total",
            &[("policy", "full-log"), ("container", &cg.rel)],
        )
    };
    // the first agent counted every violation, published events for them, and its log tried
    // to write each one and lost it
    wait_for_explained(
        Duration::from_secs(60),
        "the first agent's violation events, lost by its log",
        || {
            let m = sink_settled(&a, "log");
            let published = sum(&m, "palisade_events_total", &[("type", "policy_violation")]);
            let dropped = sum(&m, "palisade_events_dropped_total", &[("sink", "log")]);
            (counted(&m) == produced && published > 0 && dropped >= published).then_some(())
        },
        || format!("{:?}", sink_counts(&a.metrics(), "log")),
    );
    let written = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !written.contains("policy_violation"),
        "the full disk took a violation: {written}"
    );
    a.kill9_keep();

    let b = Agent::with_events(&s.config(""), &[]);
    let reported = |agent: &Agent| {
        let (events, suppressed) = violation_sums(&agent.events(), cg.id);
        events + suppressed
    };
    let by_b = wait_for_explained(
        Duration::from_secs(60),
        "the next agent to report the violations the first one's log lost",
        || {
            let n = reported(&b);
            (counted(&b.metrics()) == produced && n >= produced).then_some(n)
        },
        || {
            let m = b.metrics();
            let all: Vec<String> = m
                .samples
                .iter()
                .filter(|s| s.name == "palisade_policy_violations_total")
                .map(|s| format!("{:?} {}", s.labels, s.value))
                .collect();
            format!(
                "counter {}, reported {}; the next agent's violation counters: {all:?}\nits log:\n{}",
                counted(&m),
                reported(&b),
                b.log()
            )
        },
    );
    eprintln!(
        "{produced} violations; the first agent's log lost its events; the next reported {by_b}"
    );
    assert_eq!(by_b, produced, "each violation reported once");
}

/// A free loopback port nothing listens on (bound, then released).
fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    l.local_addr().unwrap_or_else(|e| panic!("addr: {e}"))
}

#[test]
fn an_otlp_collector_down_slow_and_back_costs_counted_records_and_stalls_nothing() {
    let addr = free_port();
    let agent = Agent::with_events(
        &format!(
            "otlp:\n  endpoint: http://{addr}\n  protocol: http/json\n  timeout: 1s\n  max_backoff: 1s\n  queue: 64\n"
        ),
        &[],
    );
    let cg = TestCgroup::new("otlp-down");
    // down: nothing listens
    cg.run_workload(&["exec-true", "200"]);
    // the log and /metrics do not wait for the exporter
    agent.drain();
    assert_eq!(agent.get("/healthz").0, 200);
    let execs = agent
        .events()
        .iter()
        .filter(|e| e["type"] == "exec" && e["container"]["cgroup_id"] == cg.id)
        .count();
    assert_eq!(
        execs, 201,
        "the event log has every exec while the collector is down"
    );
    // nothing delivered, losses counted (what is queued waits for the next attempt)
    let (delivered, dropped) = wait_for_explained(
        Duration::from_secs(30),
        "records counted dropped",
        || {
            let (_, d, x) = sink_counts(&agent.metrics(), "otlp");
            (x > 0).then_some((d, x))
        },
        || format!("{:?}", sink_counts(&agent.metrics(), "otlp")),
    );
    eprintln!("collector down: {delivered} delivered, {dropped} dropped");
    assert_eq!(delivered, 0);
    wait_for_explained(
        Duration::from_secs(30),
        "the failed export in the log",
        || agent.log().contains("OTLP export failed").then_some(()),
        || agent.log(),
    );

    // slow: answers after 3 s, past the 1 s timeout
    let slow = OtlpReceiver::start_on(&addr.to_string(), Duration::from_secs(3));
    cg.run_workload(&["exec-true", "50"]);
    agent.drain();
    assert_eq!(agent.get("/healthz").0, 200);
    let (delivered_slow, dropped_slow) = wait_for_explained(
        Duration::from_secs(60),
        "timeouts counted dropped",
        || {
            let (_, d, x) = sink_counts(&agent.metrics(), "otlp");
            (x > dropped + 50).then_some((d, x))
        },
        || format!("{:?}", sink_counts(&agent.metrics(), "otlp")),
    );
    eprintln!("collector slow: {delivered_slow} delivered, {dropped_slow} dropped");
    slow.stop();

    // back on the same address: records flow again, each one counted
    let up = wait_for_explained(
        Duration::from_secs(30),
        "the collector's port to be free again",
        || {
            std::net::TcpListener::bind(addr)
                .ok()
                .map(drop)
                .map(|()| OtlpReceiver::start_on(&addr.to_string(), Duration::ZERO))
        },
        String::new,
    );
    cg.run_workload(&["exec-true", "20"]);
    agent.drain();
    let (delivered_up, dropped_up) = wait_for_explained(
        Duration::from_secs(60),
        "records delivered to the collector that is back, as many as it holds",
        || {
            let (_, d, x) = sink_counts(&agent.metrics(), "otlp");
            let got = up.records().len() as u64;
            (d > delivered_slow && d - delivered_slow == got).then_some((d, x))
        },
        || {
            format!(
                "{:?}, collector has {}",
                sink_counts(&agent.metrics(), "otlp"),
                up.records().len()
            )
        },
    );
    eprintln!("collector back: {delivered_up} delivered, {dropped_up} dropped in all");
    assert!(agent.log().contains("OTLP collector accepts records again"));
    // stopped: every event published was exported or counted dropped, exactly; and the
    // collector that is up holds every record counted delivered since it came back
    let mut agent = agent;
    assert!(agent.stop_keep().success());
    let a = accounting(&agent);
    eprintln!("at shutdown: {a:?}");
    assert_eq!(
        a["published"],
        a["otlp_delivered"] + a["otlp_dropped"],
        "{a:?}"
    );
    assert_eq!(
        a["published"],
        a["log_delivered"] + a["log_dropped"],
        "{a:?}"
    );
    assert_eq!(
        a["otlp_delivered"] - delivered_slow,
        up.records().len() as u64
    );
}

#[test]
fn otlp_over_http_protobuf_is_the_default_and_decodes_as_protobuf() {
    let collector = OtlpReceiver::start();
    // no `protocol:`: the default
    let agent = Agent::with_events(
        &format!("otlp:\n  endpoint: {}\n", collector.endpoint()),
        &[],
    );
    let cg = TestCgroup::new("otlp-proto");
    assert!(
        cg.command("/bin/true")
            .args(["proto", "buf"])
            .status()
            .is_ok_and(|s| s.success())
    );
    let want = |r: &serde_json::Value| {
        r["eventName"] == "exec"
            && otlp_attr(r, "palisade.cgroup_id") == Some(cg.id.to_string().into())
    };
    let rec = wait_for_explained(
        Duration::from_secs(30),
        "the exec as a protobuf log record",
        || collector.records().into_iter().find(|(_, r, _)| want(r)),
        || format!("{} records", collector.records().len()),
    );
    let (path, record, resource) = rec;
    assert_eq!(path, "/v1/logs");
    assert!(
        collector
            .content_types()
            .iter()
            .all(|t| t == "application/x-protobuf"),
        "{:?}",
        collector.content_types()
    );
    assert_eq!(record["eventName"], "exec");
    assert_eq!(record["severityText"], "INFO");
    assert_eq!(
        otlp_attr(&record, "container.name"),
        Some(cg.rel.as_str().into())
    );
    assert_eq!(
        otlp_attr(&record, "process.executable.path"),
        Some("/bin/true".into())
    );
    assert_eq!(
        otlp_attr(&resource, "service.name"),
        Some("palisade".into())
    );
    // the body is the event's JSON line
    let body: serde_json::Value = serde_json::from_str(
        record["body"]["stringValue"]
            .as_str()
            .unwrap_or_else(|| panic!("no string body: {record}")),
    )
    .unwrap_or_else(|e| panic!("body: {e}"));
    assert_eq!(
        body["process"]["args"],
        serde_json::json!(["/bin/true", "proto", "buf"])
    );
    // and the exporter's count is the collector's
    agent.drain();
    let m = sink_settled(&agent, "otlp");
    let (_, delivered, dropped) = sink_counts(&m, "otlp");
    assert_eq!(dropped, 0);
    wait_for_explained(
        Duration::from_secs(30),
        "the collector to hold every delivered record",
        || (collector.records().len() as u64 >= delivered).then_some(()),
        || format!("{} of {delivered}", collector.records().len()),
    );
}
