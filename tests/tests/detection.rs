//! Detection, end to end, in the spirit of falcosecurity/event-generator: each suspicious
//! action, done for real against a live agent, gives the expected event or violation with the
//! right container — counted, none missing (counts are checked after a drain).
use std::{os::unix::fs::PermissionsExt as _, time::Duration};

use palisade_tests::{
    Agent, TestCgroup, TestNetns,
    launch::{Rootfs, run, unique},
    load::sum,
    net_workload_bin,
    policy::{Setup, wait_applied},
    start_server, wait_for_explained,
};
use serde_json::Value;

fn events_of(agent: &Agent, kind: &str, cg: &TestCgroup) -> Vec<Value> {
    agent
        .events()
        .into_iter()
        .filter(|e| e["type"] == kind && e["container"]["cgroup_id"] == cg.id)
        .collect()
}

fn policy(name: &str, cg: &TestCgroup, body: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: enforce\n{body}",
        cg.rel
    )
}

#[test]
fn a_dropped_binary_run_at_once_is_one_exec_of_its_new_path() {
    let agent = Agent::with_events("", &[]);
    let cg = TestCgroup::new("det-drop");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dropped = dir.path().join(format!("dropped-{}", std::process::id()));
    std::fs::copy("/bin/true", &dropped).unwrap_or_else(|e| panic!("copy: {e}"));
    std::fs::set_permissions(&dropped, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod: {e}"));
    assert!(cg.command(&dropped).status().is_ok_and(|s| s.success()));
    agent.drain();
    let execs = events_of(&agent, "exec", &cg);
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert_eq!(
        execs[0]["process"]["exe"],
        dropped.to_string_lossy().as_ref()
    );
    assert_eq!(execs[0]["container"]["name"], cg.rel.as_str());
    let m = agent.metrics();
    assert_eq!(
        sum(
            &m,
            "palisade_process_execs_total",
            &[("container", &cg.rel)]
        ),
        1
    );
}

#[test]
fn a_fileless_exec_from_a_memfd_is_an_exec_of_a_dev_fd_path() {
    let agent = Agent::with_events("", &[]);
    let cg = TestCgroup::new("det-memfd");
    cg.run_workload(&["memfd-exec", "/bin/true"]);
    agent.drain();
    let execs = events_of(&agent, "exec", &cg);
    // the workload, then the image from the memfd (execveat(fd, "", AT_EMPTY_PATH): the kernel
    // names it /dev/fd/N — no file on disk)
    assert_eq!(execs.len(), 2, "{execs:?}");
    let memfd = &execs[1]["process"];
    assert!(
        memfd["exe"]
            .as_str()
            .is_some_and(|e| e.starts_with("/dev/fd/")),
        "{memfd}"
    );
    assert_eq!(memfd["args"], serde_json::json!(["memfd", "from-memfd"]));
    assert_eq!(memfd["pid"], execs[0]["process"]["pid"], "the same process");
}

#[test]
fn a_ptrace_attach_is_one_violation_per_attach() {
    let cg = TestCgroup::new("det-ptrace");
    // PTRACE_ATTACH is request 16
    let s = Setup::new(&policy(
        "no-ptrace-attach",
        &cg,
        "  syscalls:\n    action: log\n    deny:\n      - {name: ptrace-attach, names: [ptrace], args: [{index: 0, op: eq, value: 16}]}\n",
    ));
    let agent = s.agent("");
    wait_applied(&agent, "no-ptrace-attach", cg.id, &["syscalls"]);
    cg.run_workload(&["ptrace-child", "3"]);
    let v = wait_for_explained(
        Duration::from_secs(30),
        "three violations",
        || {
            let v: Vec<Value> = events_of(&agent, "policy_violation", &cg);
            let counted = sum(
                &agent.metrics(),
                "palisade_policy_violations_total",
                &[("policy", "no-ptrace-attach"), ("container", &cg.rel)],
            );
            (counted == 3 && v.len() >= 3).then_some(v)
        },
        || format!("{:?}", events_of(&agent, "policy_violation", &cg)),
    );
    assert_eq!(v.len(), 3, "one event per attach: {v:?}");
    for e in &v {
        assert_eq!(e["violation"]["syscall"], "ptrace");
        assert_eq!(e["violation"]["rule"], "ptrace-attach");
        assert_eq!(e["violation"]["action"], "log");
        assert_eq!(e["process"]["comm"], "syscall-workloa");
        assert_eq!(e["container"]["name"], cg.rel.as_str());
    }
}

#[test]
fn a_shell_spawned_in_a_container_is_an_exec_and_a_violation() {
    let cg = TestCgroup::new("det-shell");
    let s = Setup::new(&policy(
        "no-shells",
        &cg,
        "  exec:\n    action: log\n    deny: [\"**/sh\", \"**/bash\", \"**/dash\"]\n",
    ));
    let agent = s.agent("");
    wait_applied(&agent, "no-shells", cg.id, &["exec"]);
    assert!(
        cg.command("/bin/sh")
            .args(["-c", "exit 0"])
            .status()
            .is_ok_and(|s| s.success())
    );
    let v = agent.wait_events(1, "the shell's violation", |e| {
        e["type"] == "policy_violation" && e["container"]["cgroup_id"] == cg.id
    });
    agent.drain();
    let execs = events_of(&agent, "exec", &cg);
    assert_eq!(execs.len(), 1, "{execs:?}");
    assert_eq!(execs[0]["process"]["exe"], "/bin/sh");
    assert_eq!(
        execs[0]["process"]["args"],
        serde_json::json!(["/bin/sh", "-c", "exit 0"])
    );
    assert_eq!(v[0]["violation"]["hook"], "exec");
    // the file executed (resolved: /bin/sh is a link to dash on Debian) and the path given
    let file = std::fs::canonicalize("/bin/sh").unwrap_or_else(|e| panic!("/bin/sh: {e}"));
    assert_eq!(v[0]["violation"]["exec"], file.to_string_lossy().as_ref());
    assert_eq!(v[0]["violation"]["exec_given"], "/bin/sh");
    assert_eq!(
        sum(
            &agent.metrics(),
            "palisade_policy_violations_total",
            &[("policy", "no-shells"), ("container", &cg.rel)]
        ),
        1
    );
}

#[test]
fn a_process_moving_to_another_cgroup_is_one_cgroup_move_naming_both() {
    let agent = Agent::with_events("", &[]);
    let (a, b) = (TestCgroup::new("det-from"), TestCgroup::new("det-to"));
    let b_dir = b.path.to_string_lossy().into_owned();
    a.run_workload(&["getppid", "1", "move", &b_dir, "getppid", "1"]);
    agent.drain();
    let into_b = events_of(&agent, "cgroup_move", &b);
    assert_eq!(into_b.len(), 1, "{into_b:?}");
    let m = &into_b[0];
    assert_eq!(m["container"]["name"], b.rel.as_str());
    assert_eq!(m["from_container"]["cgroup_id"], a.id);
    assert!(
        m["process"]["exe"]
            .as_str()
            .is_some_and(|e| e.ends_with("syscall-workload")),
        "{m}"
    );
    // it entered `a` before its exec (the test placed it there): a move the process table
    // could not place yet
    let into_a = events_of(&agent, "cgroup_move", &a);
    assert_eq!(into_a.len(), 1, "{into_a:?}");
    assert!(into_a[0].get("from_container").is_none(), "{}", into_a[0]);
    assert_eq!(into_a[0]["process"]["pid"], m["process"]["pid"]);
}

#[test]
fn a_connect_to_a_denied_port_is_refused_and_one_violation_each() {
    let cg = TestCgroup::new("det-net");
    let ns = TestNetns::new("det-net");
    let srv = TestCgroup::new("det-net-srv");
    let mut server = start_server(&srv, &ns, &["serve-tcp", "127.0.0.1:7803", "100"]);
    let s = Setup::new(&policy(
        "no-7803",
        &cg,
        "  network:\n    egress:\n      rules:\n        - {name: deny-7803, action: deny, ports: [7803], protocol: tcp}\n",
    ));
    let agent = s.agent("");
    wait_applied(&agent, "no-7803", cg.id, &["egress"]);
    for _ in 0..3 {
        let out = cg
            .command_in(&ns, net_workload_bin())
            .args(["try-connect", "127.0.0.1:7803"])
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "error 1",
            "EPERM"
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    let v = wait_for_explained(
        Duration::from_secs(30),
        "three violations",
        || {
            let v = events_of(&agent, "policy_violation", &cg);
            let n = sum(
                &agent.metrics(),
                "palisade_policy_violations_total",
                &[("policy", "no-7803"), ("container", &cg.rel)],
            );
            (n == 3 && v.len() >= 3).then_some(v)
        },
        || format!("{:?}", events_of(&agent, "policy_violation", &cg)),
    );
    assert_eq!(v.len(), 3, "{v:?}");
    for e in &v {
        assert_eq!(e["violation"]["hook"], "connect");
        assert_eq!(e["violation"]["rule"], "deny-7803");
        assert_eq!(e["violation"]["network"]["remote"], "127.0.0.1:7803");
    }
}

#[test]
fn a_write_below_proc_sys_in_a_sandbox_fails_and_each_attempt_is_counted() {
    let agent = Agent::with_events("", &[]);
    let sock = agent.control_socket().to_string_lossy().into_owned();
    let root = Rootfs::busybox();
    let name = unique("det-sysctl");
    let host_before = std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap_or_default();
    // the domain name is the sandbox's own (UTS namespace) and /proc/sys is read-only there
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--rootfs",
        &root.path.to_string_lossy(),
        "--",
        "/bin/sh",
        "-c",
        "for i in 1 2 3; do echo palisade > /proc/sys/kernel/domainname 2>/dev/null && echo wrote; done; exit 0",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        !out.stdout.contains("wrote"),
        "a write below /proc/sys succeeded: {out}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/domainname").unwrap_or_default(),
        host_before
    );
    // each attempt is one failed open, counted in the container: EROFS
    let m = agent.metrics();
    let erofs = sum(
        &m,
        "palisade_syscall_errors_total",
        &[("container", &name), ("errno", "EROFS")],
    );
    assert_eq!(erofs, 3, "{}", m.text);
    // and the container is the sandbox's (its exec of the shell is there under its name)
    agent.drain();
    let shells: Vec<Value> = agent
        .events()
        .into_iter()
        .filter(|e| e["type"] == "exec" && e["container"]["name"] == name.as_str())
        .collect();
    assert_eq!(shells.len(), 1, "{shells:?}");
}
