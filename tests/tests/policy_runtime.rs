//! Policies on running containers Palisade did not start (test cgroups): syscall and exec
//! rules through the policy raw tracepoints and `bpf_send_signal`, network rules through
//! `cgroup_sock_addr`, resources through cgroupfs, audit mode, mode switches and rate limits.
//! Each test has its own agent, pin directory, cgroups and network namespace.
use palisade_tests::{
    Agent, OtlpReceiver, TestCgroup, TestNetns, otlp_attr,
    policy::{Listener, Setup, cli, doc as policy, net, violations, wait_applied},
    start_server, wait_for, workload_bin,
};

fn violation_count(agent: &Agent, policy: &str, action: &str, cgroup: &TestCgroup) -> f64 {
    palisade_tests::policy::violation_count(agent, policy, action, &cgroup.rel)
}

const EPERM: &str = "error 1";

#[test]
fn a_running_container_is_killed_on_a_denied_syscall() {
    let cg = TestCgroup::new("pol-kill");
    let s = Setup::new(&policy(
        "no-getppid",
        &cg,
        "enforce",
        "  syscalls:\n    action: kill\n    deny: [getppid]\n",
    ));
    let agent = s.agent("");
    wait_applied(&agent, "no-getppid", cg.id, &["syscalls"]);
    let status = cg
        .command(workload_bin())
        .args(["close-bad", "3", "getppid", "1", "exit", "0"])
        .status()
        .unwrap_or_else(|e| panic!("workload: {e}"));
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
    let v = violations(&agent, cg.id, 1);
    let x = &v[0]["violation"];
    assert_eq!(x["policy"], "no-getppid");
    assert_eq!(x["action"], "kill");
    assert_eq!(x["hook"], "syscall");
    assert_eq!(x["syscall"], "getppid");
    assert_eq!(x["rule"], "syscalls.deny[0]");
    assert_eq!(v[0]["process"]["comm"], "syscall-workloa");
    // other cgroups are not touched
    let other = TestCgroup::new("pol-kill-other");
    other.run_workload(&["getppid", "5"]);
    assert_eq!(violation_count(&agent, "no-getppid", "kill", &cg), 1.0);
}

#[test]
fn exec_of_a_denied_binary_is_killed_or_logged() {
    let (kill_cg, log_cg) = (
        TestCgroup::new("pol-exec-kill"),
        TestCgroup::new("pol-exec-log"),
    );
    let body = |a| format!("  exec:\n    action: {a}\n    deny: [/bin/true, /usr/bin/true]\n");
    let s = Setup::new(&format!(
        "{}---\n{}",
        policy("exec-kill", &kill_cg, "enforce", &body("kill")),
        policy("exec-log", &log_cg, "enforce", &body("log"))
    ));
    let agent = s.agent("");
    wait_applied(&agent, "exec-kill", kill_cg.id, &["exec"]);
    wait_applied(&agent, "exec-log", log_cg.id, &["exec"]);
    let run = |cg: &TestCgroup| {
        let out = cg
            .command("/bin/sh")
            .args(["-c", "/bin/true; echo status=$?; /bin/echo still-here"])
            .output()
            .unwrap_or_else(|e| panic!("sh: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let killed = run(&kill_cg);
    assert!(killed.contains("status=137"), "SIGKILL at exec: {killed}");
    assert!(
        killed.contains("still-here"),
        "other programs run: {killed}"
    );
    let logged = run(&log_cg);
    assert!(
        logged.contains("status=0"),
        "log mode lets it run: {logged}"
    );
    // drain, then count: a last logged exec (of /usr/bin/true, after both runs) comes through
    // the violation ring buffer behind everything before it
    assert!(
        log_cg
            .command("/usr/bin/true")
            .status()
            .is_ok_and(|s| s.success())
    );
    // (the marker is told apart by the path given: both resolve to /usr/bin/true here)
    agent.wait_events(1, "the marker violation", |e| {
        e["container"]["cgroup_id"] == log_cg.id && e["violation"]["exec_given"] == "/usr/bin/true"
    });
    for (cg, action) in [(&kill_cg, "kill"), (&log_cg, "log")] {
        let v: Vec<_> = violations(&agent, cg.id, 1)
            .into_iter()
            .filter(|e| e["violation"]["exec_given"] != "/usr/bin/true")
            .collect();
        assert_eq!(v.len(), 1, "only /bin/true: {v:?}");
        assert_eq!(v[0]["violation"]["action"], action);
        assert_eq!(v[0]["violation"]["hook"], "exec");
        // the file executed (/bin is a symlink to usr/bin here), and the name it was run by
        let real = std::fs::canonicalize("/bin/true").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v[0]["violation"]["exec"], real.display().to_string());
        assert_eq!(v[0]["violation"]["exec_given"], "/bin/true");
        assert_eq!(v[0]["process"]["exe"], "/bin/true");
    }
}

fn egress_policy(cg: &TestCgroup, mode: &str) -> String {
    policy(
        "egress",
        cg,
        mode,
        "  network:\n    egress:\n      default: allow\n      rules:\n        - {name: no-7302, action: deny, cidr: 127.0.0.0/8, ports: [7302], protocol: tcp}\n    ingress:\n      default: allow\n      rules:\n        - {name: no-bind-7303, action: deny, ports: [7303]}\n",
    )
}

#[test]
fn egress_to_a_denied_port_is_refused_while_an_allowed_one_works() {
    let cg = TestCgroup::new("pol-net");
    let ns = TestNetns::new("pol-net");
    let (_a, _b) = (Listener::start(&ns, 7301), Listener::start(&ns, 7302));
    let s = Setup::new(&egress_policy(&cg, "enforce"));
    let agent = s.agent("");
    wait_applied(&agent, "egress", cg.id, &["egress", "ingress"]);
    assert_eq!(
        net(&cg, &ns, &["try-connect", "127.0.0.1:7301"]),
        "connected"
    );
    assert_eq!(net(&cg, &ns, &["try-connect", "127.0.0.1:7302"]), EPERM);
    assert_eq!(net(&cg, &ns, &["try-bind", "127.0.0.1:7303"]), EPERM);
    assert_eq!(net(&cg, &ns, &["try-bind", "127.0.0.1:7304"]), "bound");
    // another cgroup reaches the denied port
    let other = TestCgroup::new("pol-net-other");
    assert_eq!(
        net(&other, &ns, &["try-connect", "127.0.0.1:7302"]),
        "connected"
    );
    let v = violations(&agent, cg.id, 2);
    let connect = v
        .iter()
        .find(|e| e["violation"]["hook"] == "connect")
        .unwrap_or_else(|| panic!("{v:?}"));
    assert_eq!(connect["violation"]["rule"], "no-7302");
    assert_eq!(connect["violation"]["action"], "errno");
    assert_eq!(connect["violation"]["network"]["remote"], "127.0.0.1:7302");
    assert_eq!(connect["violation"]["network"]["protocol"], "tcp");
    let bind = v
        .iter()
        .find(|e| e["violation"]["hook"] == "bind")
        .unwrap_or_else(|| panic!("{v:?}"));
    assert_eq!(bind["violation"]["network"]["local"], "127.0.0.1:7303");
    assert_eq!(violation_count(&agent, "egress", "errno", &cg), 2.0);
}

#[test]
fn audit_mode_blocks_nothing_and_reports_everything() {
    let cg = TestCgroup::new("pol-audit");
    let ns = TestNetns::new("pol-audit");
    let _l = Listener::start(&ns, 7302);
    let body = "  syscalls:\n    action: kill\n    deny: [getppid]\n  exec:\n    action: kill\n    deny: [/bin/true]\n  network:\n    egress:\n      rules:\n        - {action: deny, ports: [7302]}\n";
    let s = Setup::new(&policy("watch", &cg, "audit", body));
    let otlp = OtlpReceiver::start();
    let agent = s.agent(&format!(
        "otlp:\n  endpoint: {}\n  protocol: http/json\n  events: [policy_violation]\n",
        otlp.endpoint()
    ));
    wait_applied(&agent, "watch", cg.id, &["syscalls", "exec", "egress"]);
    cg.run_workload(&["getppid", "1"]);
    let st = cg
        .command("/bin/true")
        .status()
        .unwrap_or_else(|e| panic!("true: {e}"));
    assert!(st.success(), "exec ran: {st}");
    assert_eq!(
        net(&cg, &ns, &["try-connect", "127.0.0.1:7302"]),
        "connected"
    );
    let v = violations(&agent, cg.id, 3);
    let mut hooks: Vec<String> = v
        .iter()
        .map(|e| {
            assert_eq!(e["violation"]["action"], "would_block", "{e}");
            assert_eq!(e["violation"]["mode"], "audit", "{e}");
            e["violation"]["hook"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    hooks.sort();
    assert_eq!(hooks, ["connect", "exec", "syscall"]);
    assert_eq!(violation_count(&agent, "watch", "would_block", &cg), 3.0);
    // The same three as OTLP log records (WARN), with the policy as attributes.
    let records = wait_for(
        std::time::Duration::from_secs(20),
        "three OTLP violation records",
        || {
            let r: Vec<_> = otlp
                .records()
                .into_iter()
                .filter(|(_, r, _)| otlp_attr(r, "container.name") == Some(cg.rel.clone().into()))
                .collect();
            (r.len() >= 3).then_some(r)
        },
    );
    let mut hooks: Vec<String> = records
        .iter()
        .map(|(path, r, _)| {
            assert_eq!(path, "/v1/logs");
            assert_eq!(r["severityText"], "WARN", "{r}");
            assert_eq!(r["eventName"], "policy_violation", "{r}");
            assert_eq!(
                otlp_attr(r, "palisade.policy.name"),
                Some("watch".into()),
                "{r}"
            );
            assert_eq!(
                otlp_attr(r, "palisade.policy.action"),
                Some("would_block".into()),
                "{r}"
            );
            assert_eq!(
                otlp_attr(r, "palisade.policy.mode"),
                Some("audit".into()),
                "{r}"
            );
            otlp_attr(r, "palisade.policy.hook")
                .and_then(|h| h.as_str().map(str::to_owned))
                .unwrap_or_default()
        })
        .collect();
    hooks.sort();
    assert_eq!(hooks, ["connect", "exec", "syscall"]);
}

#[test]
fn the_mode_switches_without_a_restart() {
    let cg = TestCgroup::new("pol-mode");
    let ns = TestNetns::new("pol-mode");
    let _l = Listener::start(&ns, 7302);
    let s = Setup::new(&egress_policy(&cg, "enforce"));
    let agent = s.agent("");
    wait_applied(&agent, "egress", cg.id, &["egress"]);
    assert_eq!(net(&cg, &ns, &["try-connect", "127.0.0.1:7302"]), EPERM);
    let (code, out, err) = cli(&agent, &["mode", "egress", "audit"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        net(&cg, &ns, &["try-connect", "127.0.0.1:7302"]),
        "connected"
    );
    let (code, _, err) = cli(&agent, &["mode", "egress", "enforce"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(net(&cg, &ns, &["try-connect", "127.0.0.1:7302"]), EPERM);
    let actions: Vec<String> = violations(&agent, cg.id, 3)
        .iter()
        .map(|e| e["violation"]["action"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(actions, ["errno", "would_block", "errno"]);
    let (code, _, err) = cli(&agent, &["mode", "no-such-policy", "audit"]);
    assert_eq!(code, 1);
    assert!(err.contains("no policy named `no-such-policy`"), "{err}");
    let st = palisade_tests::policy::status(&agent);
    assert_eq!(st["policies"][0]["mode"], "enforce");
}

#[test]
fn violations_are_rate_limited_with_exact_suppressed_counts() {
    let cg = TestCgroup::new("pol-rate");
    let s = Setup::new(&policy(
        "chatty",
        &cg,
        "enforce",
        "  syscalls:\n    action: log\n    deny: [getppid]\n",
    ));
    let agent = s.agent("  rate_limit_burst: 3\n  rate_limit_interval: 1h\n");
    wait_applied(&agent, "chatty", cg.id, &["syscalls"]);
    cg.run_workload(&["getppid", "1000"]);
    // three events one by one, then (once the rule is quiet) one summary of the rest
    let v = agent.wait_events(4, "three events and a summary", |e| {
        e["type"] == "policy_violation" && e["container"]["cgroup_id"] == cg.id
    });
    assert_eq!(v.len(), 4, "{v:?}");
    let total: u64 = v
        .iter()
        .map(|e| 1 + e["violation"]["suppressed"].as_u64().unwrap_or(0))
        .sum::<u64>()
        - 1; // the summary event reports only suppressed ones
    assert_eq!(total, 1000, "{v:?}");
    assert!(v[3]["process"].is_null(), "a summary names no process");
    assert_eq!(v[3]["violation"]["suppressed"], 997);
    wait_for(
        std::time::Duration::from_secs(10),
        "the exact count on /metrics",
        || (violation_count(&agent, "chatty", "log", &cg) == 1000.0).then_some(()),
    );
}

#[test]
fn resources_are_applied_to_a_running_containers_cgroup() {
    let cg = TestCgroup::with_controllers("pol-res", &["memory", "pids"]);
    let s = Setup::new(&policy(
        "limits",
        &cg,
        "enforce",
        "  resources:\n    memory: 64M\n    pids: 40\n",
    ));
    let agent = s.agent("");
    wait_applied(&agent, "limits", cg.id, &[]);
    let read = |ctrl: &str, v1: &str, v2: &str| {
        let p = match cg.v1.iter().find(|(c, _)| c == ctrl) {
            Some((_, d)) => d.join(v1),
            None => cg.path.join(v2),
        };
        wait_for(
            std::time::Duration::from_secs(20),
            &format!("{}", p.display()),
            || {
                let t = std::fs::read_to_string(&p).ok()?;
                (t.trim() != "max" && t.trim() != "9223372036854771712")
                    .then(|| t.trim().to_owned())
            },
        )
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes", "memory.max"),
        "67108864"
    );
    assert_eq!(read("pids", "pids.max", "pids.max"), "40");
}

#[test]
fn argument_conditions_are_checked_at_run_time() {
    let cg = TestCgroup::new("pol-args");
    let s = Setup::new(&policy(
        "odd-fds",
        &cg,
        "enforce",
        "  syscalls:\n    action: log\n    deny:\n      - name: close-huge-fd\n        names: [close]\n        args: [{index: 0, op: gt, value: 1000000}]\n",
    ));
    let agent = s.agent("");
    wait_applied(&agent, "odd-fds", cg.id, &["syscalls"]);
    // close(-1): the register holds 2^64-1, above the bound; other closes are not reported
    cg.run_workload(&["close-bad", "5", "getppid", "1"]);
    let v = violations(&agent, cg.id, 5);
    assert!(
        v.iter().all(|e| e["violation"]["rule"] == "close-huge-fd"),
        "{v:?}"
    );
    assert!(
        v.iter().all(|e| e["violation"]["syscall"] == "close"),
        "{v:?}"
    );
    wait_for(
        std::time::Duration::from_secs(10),
        "exactly 5 on /metrics",
        || (violation_count(&agent, "odd-fds", "log", &cg) == 5.0).then_some(()),
    );
    let other = cg
        .command("/bin/sh")
        .args(["-c", "exec 3</dev/null; exec 3<&-; true"])
        .status()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    assert!(other.success());
    assert_eq!(
        violation_count(&agent, "odd-fds", "log", &cg),
        5.0,
        "closing fd 3 is allowed"
    );
}

#[test]
fn incoming_connections_a_rule_denies_are_dropped() {
    let server = TestCgroup::new("pol-in");
    let ns = TestNetns::new("pol-in");
    let s = Setup::new(&policy(
        "fenced-in",
        &server,
        "enforce",
        "  network:\n    ingress:\n      default: allow\n      rules:\n        - {name: no-local-7501, action: deny, cidr: 127.0.0.0/8, ports: [7501], protocol: tcp}\n",
    ));
    let agent = s.agent("");
    wait_applied(&agent, "fenced-in", server.id, &["ingress"]);
    // the listeners are in the policy's cgroup; binding works (other sources may connect)
    let start = |port: u16| {
        start_server(
            &server,
            &ns,
            &["serve-tcp", &format!("127.0.0.1:{port}"), "1"],
        )
    };
    let (mut denied, mut allowed) = (start(7501), start(7502));
    let client = TestCgroup::new("pol-in-client");
    // a dropped SYN never completes; the allowed port answers at once
    assert_eq!(
        net(&client, &ns, &["try-connect", "127.0.0.1:7501", "1500"]),
        "timeout"
    );
    assert_eq!(
        net(&client, &ns, &["try-connect", "127.0.0.1:7502", "5000"]),
        "connected"
    );
    let v = violations(&agent, server.id, 1);
    let x = &v[0]["violation"];
    assert_eq!(x["hook"], "ingress");
    assert_eq!(x["action"], "drop");
    assert_eq!(x["rule"], "no-local-7501");
    assert_eq!(x["network"]["local"], "127.0.0.1:7501");
    assert!(
        v[0]["process"].is_null(),
        "a packet has no process: {}",
        v[0]
    );
    let _ = denied.kill();
    let _ = denied.wait();
    let _ = allowed.wait();
}

/// `palisade_syscalls_total` and the latency histogram's count of `getppid` in `cg`.
fn getppid_counts(agent: &Agent, cg: &TestCgroup) -> (Option<f64>, Option<f64>) {
    let m = agent.metrics();
    let labels = [("container", cg.rel.as_str()), ("syscall", "getppid")];
    (
        m.value("palisade_syscalls_total", &labels),
        m.value("palisade_syscall_duration_seconds_count", &labels),
    )
}

/// Whether the `syscalls` hook group is attached (`palisade policy status`).
fn syscalls_hook(agent: &Agent) -> bool {
    palisade_tests::policy::status(agent)["hooks"]
        .as_array()
        .is_some_and(|a| a.iter().any(|h| h == "syscalls"))
}

#[test]
fn a_syscall_policy_adds_no_program_run_at_sys_enter_and_the_telemetry_stays_exact() {
    let (on, off) = (
        TestCgroup::new("pol-one-on"),
        TestCgroup::new("pol-one-off"),
    );
    let deny = |cg: &TestCgroup| {
        policy(
            "one-entry",
            cg,
            "enforce",
            "  syscalls:\n    action: kill\n    deny: [getpriority]\n",
        )
    };
    let s = Setup::new(&deny(&on));
    // every call timed: the histogram counts the calls whose entry the telemetry saw; raw
    // tracepoints on every kernel (auto picks fentry where it attaches)
    let cfg = format!(
        "syscalls:\n  hook: raw_tracepoint\n  latency_sample: 1\n{}",
        s.config("").replace(
            "metrics:\n",
            "metrics:\n  syscall_latency_detail: [getppid]\n"
        )
    );
    let agent = Agent::with_events(&cfg, &[]);
    wait_applied(&agent, "one-entry", on.id, &["syscalls"]);
    // the policy program is the only one of the agent's at sys_enter: it checks, then
    // tail-calls the telemetry's entry program
    let progs = agent.raw_tracepoint_programs("sys_enter");
    assert_eq!(
        progs.len(),
        1,
        "programs of the agent at sys_enter with a syscall policy: {progs:?}"
    );
    on.run_workload(&["getppid", "20000"]);
    assert_eq!(
        getppid_counts(&agent, &on),
        (Some(20_000.0), Some(20_000.0)),
        "every call counted once, and entered (timed) through the tail call"
    );

    // the policy gone: the telemetry's entry is attached by its own link again
    let nowhere = deny(&on).replace(&on.rel, "/palisade-test-no-such-cgroup");
    std::fs::write(s.policy_file(), nowhere).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    wait_for(
        std::time::Duration::from_secs(20),
        "the syscalls hook detached",
        || (!syscalls_hook(&agent)).then_some(()),
    );
    let progs = agent.raw_tracepoint_programs("sys_enter");
    assert_eq!(progs.len(), 1, "without a syscall policy: {progs:?}");
    off.run_workload(&["getppid", "20000"]);
    assert_eq!(
        getppid_counts(&agent, &off),
        (Some(20_000.0), Some(20_000.0))
    );

    // a SIGKILLed agent's entry stays in the tail call; the next agent swaps its own in
    std::fs::write(s.policy_file(), deny(&on)).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    wait_for(
        std::time::Duration::from_secs(20),
        "the syscalls hook attached",
        || syscalls_hook(&agent).then_some(()),
    );
    agent.kill9();
    let status = on
        .command(workload_bin())
        .args(["getpriority", "1"])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        status.signal(),
        Some(9),
        "enforced with no agent running: {status}"
    );
    let agent = Agent::with_events(&cfg, &[]);
    wait_applied(&agent, "one-entry", on.id, &["syscalls"]);
    let progs = agent.raw_tracepoint_programs("sys_enter");
    assert_eq!(progs.len(), 1, "after the restart: {progs:?}");
    on.run_workload(&["getppid", "20000"]);
    assert_eq!(
        getppid_counts(&agent, &on),
        (Some(20_000.0), Some(20_000.0)),
        "the new agent's entry program runs, once per call"
    );
}
