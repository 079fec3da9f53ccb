//! Fail closed: what cannot be put in place is refused (registrations) or reported
//! (`palisade_policy_unenforced`, a `policy_unenforced` event), never silently skipped; a full
//! identity registry still enforces; and a delegated cgroup cannot pass for a runtime's
//! container. Each test has its own agent, pin directory, cgroups and network namespace.
use std::time::Duration;

use palisade_tests::{
    Agent, TestCgroup, TestNetns,
    launch::{probe_bin, run, unique},
    policy::{Setup, doc, net, wait_applied},
    wait_for,
};

const EPERM: &str = "error 1";

/// Series of `palisade_policy_unenforced` with `reason` (label sets as text).
fn unenforced(agent: &Agent, reason: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let m = agent.metrics();
    m.find("palisade_policy_unenforced", &[("reason", reason)])
        .into_iter()
        .filter(|s| s.value == 1.0)
        .map(|s| s.labels.clone())
        .collect()
}

#[test]
fn a_full_slot_table_is_reported_and_the_rest_stays_enforced() {
    const N: usize = 257; // one more than the kernel tables hold
    let ns = TestNetns::new("pol-full");
    let cgs: Vec<TestCgroup> = (0..N).map(|_| TestCgroup::new("pol-full")).collect();
    let docs: Vec<String> = cgs
        .iter()
        .enumerate()
        .map(|(i, cg)| {
            doc(
                &format!("fence-{i}"),
                cg,
                "enforce",
                &format!(
                    "  network:\n    egress:\n      rules:\n        - {{action: deny, ports: [{}], protocol: tcp}}\n",
                    20_000 + i
                ),
            )
        })
        .collect();
    let s = Setup::new(&docs.join("---\n"));
    let agent = s.agent("");
    let short = wait_for(
        Duration::from_secs(60),
        "one cgroup reported without a slot",
        || {
            let u = unenforced(&agent, "slots_full");
            (!u.is_empty()).then_some(u)
        },
    );
    assert_eq!(short.len(), 1, "exactly one left out: {short:?}");
    let policy = short[0]["policy"].clone();
    let i: usize = policy
        .trim_start_matches("fence-")
        .parse()
        .unwrap_or_else(|e| panic!("{policy}: {e}"));
    let ev = agent.wait_events(1, "the policy_unenforced event", |e| {
        e["type"] == "policy_unenforced" && e["unenforced"]["policy"] == policy.as_str()
    });
    assert_eq!(ev[0]["unenforced"]["reason"], "slots_full", "{ev:?}");
    assert_eq!(ev[0]["container"]["cgroup_id"], cgs[i].id, "{ev:?}");
    // the others are enforced (nothing listens: ECONNREFUSED = 111 where not)
    let other = (i + 1) % N;
    wait_applied(
        &agent,
        &format!("fence-{other}"),
        cgs[other].id,
        &["egress"],
    );
    assert_eq!(
        net(
            &cgs[other],
            &ns,
            &["try-connect", &format!("127.0.0.1:{}", 20_000 + other)]
        ),
        EPERM
    );
    // the status says the same
    let st = palisade_tests::policy::status(&agent);
    let listed = st["unenforced"]
        .as_array()
        .is_some_and(|u| u.iter().any(|x| x["policy"] == policy.as_str()));
    assert!(listed, "{st}");
    // a registration that would need another slot is refused before its workload starts
    let name = unique("polfull");
    let prefix = name.rsplit_once('-').map_or(name.as_str(), |(a, _)| a);
    let file = s.dir.path().join("run.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {{name: newcomer}}\nspec:\n  selector: {{workload: \"{prefix}-*\"}}\n  network:\n    egress:\n      rules: [{{action: deny, ports: [9], protocol: tcp}}]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &agent.control_socket().display().to_string(),
        "--require-agent",
        "--policy",
        &file.display().to_string(),
        "--",
        "/bin/echo",
        "ran",
    ]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("slot"), "{out}");
    assert!(!out.stdout.contains("ran"), "{out}");
}

#[test]
fn a_hook_that_cannot_attach_refuses_the_registration_and_is_reported() {
    // the agent runs where no tracefs can be found or mounted and no kernel BTF read (an empty
    // /sys/kernel in a private mount namespace): exec rules fall back to the path given, whose
    // classic tracepoint needs tracefs, so they have no hook
    let cg = TestCgroup::new("pol-nohook");
    let s = Setup::new(&doc(
        "no-true",
        &cg,
        "enforce",
        "  exec:\n    deny: [/bin/true]\n",
    ));
    let agent = Agent::with_events_wrapped(
        &s.config(""),
        &[],
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /sys/kernel && exec \"$0\" \"$@\"",
        ],
    );
    let u = wait_for(
        Duration::from_secs(30),
        "the exec hook reported unenforced",
        || {
            let u = unenforced(&agent, "hook_exec");
            (!u.is_empty()).then_some(u)
        },
    );
    assert_eq!(u[0]["policy"], "no-true", "{u:?}");
    assert_eq!(u[0]["container"], cg.rel, "{u:?}");
    let ev = agent.wait_events(1, "the policy_unenforced event", |e| {
        e["type"] == "policy_unenforced" && e["container"]["cgroup_id"] == cg.id
    });
    assert_eq!(ev[0]["unenforced"]["reason"], "hook_exec", "{ev:?}");
    assert!(
        ev[0]["unenforced"]["detail"]
            .as_str()
            .is_some_and(|d| d.contains("tracefs")),
        "{ev:?}"
    );
    // `palisade run` with an enforced exec rule: refused, nothing runs
    let name = unique("polnohook");
    let prefix = name.rsplit_once('-').map_or(name.as_str(), |(a, _)| a);
    let file = s.dir.path().join("run.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {{name: launched}}\nspec:\n  selector: {{workload: \"{prefix}-*\"}}\n  exec:\n    deny: [/usr/bin/nc]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &agent.control_socket().display().to_string(),
        "--require-agent",
        "--policy",
        &file.display().to_string(),
        "--",
        &probe_bin().display().to_string(),
        "syscalls",
        "getpid",
    ]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("exec"), "names the hook: {out}");
    assert!(!out.stdout.contains("getpid"), "nothing ran: {out}");
}

#[test]
fn a_full_identity_registry_still_enforces() {
    let ns = TestNetns::new("pol-reg");
    let cg = TestCgroup::new("pol-reg");
    let s = Setup::new(&doc(
        "fence",
        &cg,
        "enforce",
        "  network:\n    egress:\n      rules:\n        - {action: deny, ports: [7901], protocol: tcp}\n",
    ));
    // room for one cgroup: the test cgroups are never in the registry
    let agent = s.agent("identity:\n  max_cgroups: 1\n");
    wait_for(Duration::from_secs(20), "cgroups dropped", || {
        let m = agent.metrics();
        (m.value("palisade_identity_dropped_total", &[])
            .unwrap_or(0.0)
            > 0.0)
            .then_some(())
    });
    wait_applied(&agent, "fence", cg.id, &["egress"]);
    assert_eq!(net(&cg, &ns, &["try-connect", "127.0.0.1:7901"]), EPERM);
    // one created after the start too
    let late = TestCgroup::new("pol-reg-late");
    std::fs::write(
        s.policy_file(),
        [
            doc(
                "fence",
                &cg,
                "enforce",
                "  network:\n    egress:\n      rules:\n        - {action: deny, ports: [7901], protocol: tcp}\n",
            ),
            doc(
                "fence-late",
                &late,
                "enforce",
                "  network:\n    egress:\n      rules:\n        - {action: deny, ports: [7902], protocol: tcp}\n",
            ),
        ]
        .join("---\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (code, out, err) = palisade_tests::policy::cli(&agent, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    wait_applied(&agent, "fence-late", late.id, &["egress"]);
    assert_eq!(net(&late, &ns, &["try-connect", "127.0.0.1:7902"]), EPERM);
}

#[test]
fn a_delegated_cgroup_cannot_pass_for_a_docker_container() {
    const VICTIM: &str = "4f2a9c1b0e4d5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
    let agent = Agent::start("metrics:\n  collect_interval: 1s\n", &[]);
    let top = TestCgroup::new("spoof");
    let fake = top.child(&format!("docker-{VICTIM}.scope"));
    fake.run_workload(&["getppid", "3"]);
    let m = agent.metrics();
    assert_eq!(
        m.value(
            "palisade_syscalls_total",
            &[("container", &fake.rel), ("syscall", "getppid")]
        ),
        Some(3.0),
        "named by its path: {}",
        m.text
    );
    assert!(
        m.find("palisade_syscalls_total", &[("container", &VICTIM[..12])])
            .is_empty(),
        "not reported as the victim: {}",
        m.text
    );
}
