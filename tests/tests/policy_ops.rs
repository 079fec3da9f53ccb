//! Policy operations: hot reload (a broken file keeps the old policy), enforcement surviving
//! `kill -9` of the agent and adopted by the next one, `--cleanup`, `palisade policy check`
//! and the JSON Schema.
use std::path::Path;

use palisade_tests::{
    Agent, TestCgroup, TestNetns, net_workload_bin, palisade_bin,
    policy::{Setup, cli, violations, wait_applied},
    wait_for,
};

fn egress(name: &str, cg: &TestCgroup, port: u16) -> String {
    format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    cgroup: \"{}\"\n  network:\n    egress:\n      rules:\n        - {{action: deny, ports: [{port}], protocol: tcp}}\n",
        cg.rel
    )
}

fn connect(cg: &TestCgroup, ns: &TestNetns, port: u16) -> String {
    let out = cg
        .command_in(ns, net_workload_bin())
        .args(["try-connect", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap_or_else(|e| panic!("net-workload: {e}"));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn metric(agent: &Agent, name: &str) -> f64 {
    agent.metrics().value(name, &[]).unwrap_or(-1.0)
}

#[test]
fn a_broken_file_on_reload_keeps_the_old_policy() {
    let cg = TestCgroup::new("pol-reload");
    let ns = TestNetns::new("pol-reload");
    let s = Setup::new(&egress("fence", &cg, 7401));
    let agent = s.agent("");
    wait_applied(&agent, "fence", cg.id, &["egress"]);
    // nothing listens: refused by the kernel (ECONNREFUSED = 111) unless the policy says EPERM
    assert_eq!(connect(&cg, &ns, 7401), "error 1");
    std::fs::write(
        s.policy_file(),
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: fence}\nspec:\n  selector: {cgroup: x}\n  network:\n    egress:\n      rules: [{action: deny, ports: [99999]}]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // SIGHUP reloads
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    wait_for(
        std::time::Duration::from_secs(20),
        "the reload error",
        || (metric(&agent, "palisade_policy_reload_errors_total") == 1.0).then_some(()),
    );
    assert!(
        agent
            .log()
            .contains("policy.yaml:8:38: port 99999 is out of range"),
        "the error names its line: {}",
        agent.log()
    );
    assert_eq!(connect(&cg, &ns, 7401), "error 1", "the old policy stays");
    // the CLI reload says why
    let (code, _, err) = cli(&agent, &["reload"]);
    assert_eq!(code, 1);
    assert!(err.contains("port 99999 is out of range"), "{err}");
    // a valid file replaces it
    std::fs::write(s.policy_file(), egress("fence", &cg, 7402)).unwrap_or_else(|e| panic!("{e}"));
    let (code, out, err) = cli(&agent, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(connect(&cg, &ns, 7401), "error 111", "7401 allowed again");
    assert_eq!(connect(&cg, &ns, 7402), "error 1");
    assert_eq!(metric(&agent, "palisade_policy_reloads_total"), 1.0);
}

#[test]
fn file_changes_are_picked_up() {
    let cg = TestCgroup::new("pol-watch");
    let ns = TestNetns::new("pol-watch");
    let s = Setup::new(&egress("watched", &cg, 7411));
    let cfg = s
        .config("")
        .replace("watch_interval: 0s", "watch_interval: 200ms");
    let agent = Agent::with_events(&cfg, &[]);
    wait_applied(&agent, "watched", cg.id, &["egress"]);
    assert_eq!(connect(&cg, &ns, 7411), "error 1");
    std::fs::write(s.policy_file(), egress("watched", &cg, 7412)).unwrap_or_else(|e| panic!("{e}"));
    wait_for(std::time::Duration::from_secs(20), "the reload", || {
        (metric(&agent, "palisade_policy_reloads_total") == 1.0).then_some(())
    });
    assert_eq!(connect(&cg, &ns, 7412), "error 1");
    assert_eq!(connect(&cg, &ns, 7411), "error 111");
}

#[test]
fn kill_9_keeps_the_network_deny_and_the_next_agent_reports_on_it() {
    let cg = TestCgroup::new("pol-pin");
    let ns = TestNetns::new("pol-pin");
    let s = Setup::new(&egress("pinned", &cg, 7421));
    let agent = s.agent("");
    wait_applied(&agent, "pinned", cg.id, &["egress"]);
    assert_eq!(connect(&cg, &ns, 7421), "error 1");
    assert!(s.pins.0.join("links/policy_connect4").exists());
    agent.kill9();
    // no agent: still refused
    assert_eq!(
        connect(&cg, &ns, 7421),
        "error 1",
        "enforcement outlives the agent"
    );
    let agent = s.agent("");
    wait_for(std::time::Duration::from_secs(20), "adoption", || {
        agent
            .log()
            .contains("adopted pinned policy state")
            .then_some(())
    });
    wait_applied(&agent, "pinned", cg.id, &["egress"]);
    assert_eq!(connect(&cg, &ns, 7421), "error 1");
    let v = violations(&agent, cg.id, 1);
    assert_eq!(
        v.last().map(|e| e["violation"]["policy"].clone()),
        Some("pinned".into())
    );
    // exactly one link per program: adopted, not attached twice
    let links = std::fs::read_dir(s.pins.0.join("links"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        links, 6,
        "connect4/6, sendmsg4/6, sock_create and the socket() tracepoint"
    );
    // SIGTERM keeps enforcement too; --cleanup removes it
    assert!(agent.stop().success());
    assert_eq!(connect(&cg, &ns, 7421), "error 1");
    let cfg = s.dir.path().join("agent.yaml");
    std::fs::write(&cfg, s.config("")).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(palisade_bin())
        .args(["agent", "--cleanup", "--config"])
        .arg(&cfg)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("links/policy_connect4"), "{text}");
    assert!(text.contains("maps/POLICY_CGROUPS"), "{text}");
    assert!(!s.pins.0.exists());
    assert_eq!(connect(&cg, &ns, 7421), "error 111", "detached");
}

#[test]
fn policy_check_gives_positions_and_explains_conflicts() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/examples");
    let out = std::process::Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&examples)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok: 4 policies in 3 file(s)"), "{stdout}");
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = d.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: b}\nspec:\n  selector: {workload: w}\n  syscalls:\n    deny: [mount, mountt]\n  network:\n    egress:\n      rules:\n        - {action: deny, cidr: 10.0.0.0/8}\n        - {action: allow, cidr: 10.1.0.0/16}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.yaml:7:"), "{err}");
    assert!(
        err.contains("unknown syscall `mountt` (did you mean `mount`?)"),
        "{err}"
    );
    // a conflict is a warning that explains which rule wins
    std::fs::write(
        &bad,
        std::fs::read_to_string(&bad)
            .unwrap_or_default()
            .replace(", mountt", ""),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("bad.yaml:12:"), "{err}");
    assert!(err.contains("never applies"), "{err}");
    assert!(err.contains("the first match decides"), "{err}");
}

#[test]
fn the_json_schema_accepts_the_examples_and_rejects_a_bad_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy");
    let script = r#"
import glob, json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1] + "/schema.json"))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
n = 0
for f in sorted(glob.glob(sys.argv[1] + "/examples/*.yaml")):
    for d in yaml.safe_load_all(open(f)):
        errs = [e.message for e in v.iter_errors(d)]
        assert not errs, (f, errs)
        n += 1
bad = yaml.safe_load("apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: x}\nspec:\n  selector: {}\n  mode: strict\n  exec: {deny: ['/usr/*/nc']}\n")
errs = sorted(e.message for e in v.iter_errors(bad))
assert len(errs) >= 3, errs
print(n, "examples valid;", len(errs), "errors in the bad one")
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&root)
        .output()
        .unwrap_or_else(|e| {
            panic!("python3 ({e}); `cargo xtask setup` installs python3, python3-yaml and python3-jsonschema")
        });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("4 examples valid"), "{text}");
}
