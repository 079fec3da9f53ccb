//! Policies at launch: `palisade run --policy` turns syscall rules into the seccomp filter
//! (denials reported as violations), network rules are in force before the first
//! instruction, and `palisade policy learn` writes a policy the workload runs under, which
//! refuses one extra syscall.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use palisade_tests::{
    Agent,
    launch::{probe_bin, run, unique},
    net_workload_bin, palisade_bin,
    policy::PinDir,
    scaled, wait_for,
};

fn agent(pins: &PinDir) -> Agent {
    Agent::with_events(
        &format!(
            "metrics:\n  collect_interval: 1s\npolicy:\n  pin_dir: {}\n",
            pins.0.display()
        ),
        &[],
    )
}

fn s(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn a_launched_workload_is_denied_mount_and_unshare_by_seccomp_and_each_denial_is_reported() {
    let pins = PinDir::new();
    let agent = agent(&pins);
    let sock = s(&agent.control_socket());
    let (name, net_name) = (unique("polrun"), unique("polrun"));
    let prefix = name.rsplit_once('-').map_or(name.as_str(), |(a, _)| a);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("run.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {{name: confined}}\nspec:\n  selector: {{workload: \"{prefix}-*\"}}\n  syscalls:\n    action: errno\n    errno: EPERM\n    deny: [mount, unshare]\n  network:\n    egress:\n      rules: [{{action: deny, ports: [9], protocol: tcp}}]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let probe = s(&probe_bin());
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--policy",
        &s(&file),
        "--",
        &probe,
        "syscalls",
        "mount",
        "unshare-newuts",
        "getpid",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let lines = out.lines();
    assert!(lines.contains(&"mount 1"), "{out}");
    assert!(lines.contains(&"unshare-newuts 1"), "{out}");
    assert!(lines.contains(&"getpid 0"), "{out}");
    let v = agent.wait_events(2, "the seccomp denials", |e| {
        e["type"] == "policy_violation" && e["container"]["name"] == name.as_str()
    });
    let mut calls: Vec<&str> = v
        .iter()
        .map(|e| {
            let x = &e["violation"];
            assert_eq!(x["hook"], "seccomp", "{e}");
            assert_eq!(x["action"], "errno", "{e}");
            assert_eq!(x["errno"], "EPERM", "{e}");
            assert_eq!(x["policy"], "confined", "{e}");
            x["syscall"].as_str().unwrap_or("")
        })
        .collect();
    calls.sort();
    assert_eq!(calls, ["mount", "unshare"]);
    // the network rule is in force from the first instruction (nothing listens: 111 without it)
    let out = run(&[
        "--name",
        &net_name,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--policy",
        &s(&file),
        "--",
        &s(&net_workload_bin()),
        "try-connect",
        "127.0.0.1:9",
    ]);
    assert_eq!(out.stdout.trim(), "error 1", "{out}");
    let out = run(&[
        "--name",
        &unique("free"),
        "--",
        &s(&net_workload_bin()),
        "try-connect",
        "127.0.0.1:9",
    ]);
    assert_eq!(out.stdout.trim(), "error 111", "{out}");
    // network rules need the agent: without one the launch is refused, nothing runs
    let lonely = unique("polrun");
    let out = run(&["--name", &lonely, "--policy", &s(&file), "--", "/bin/true"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("enforced by the agent"), "{out}");
    palisade_tests::launch::assert_clean(&lonely, None);
    // --seccomp names the baseline the policy's rules are added to: both apply
    let profile = dir.path().join("baseline.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}]}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--seccomp",
        &s(&profile),
        "--policy",
        &s(&file),
        "--",
        &probe,
        "syscalls",
        "getcwd",
        "mount",
        "getpid",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.lines(), ["mount 1", "getpid 0", "getcwd 42"], "{out}");
}

#[test]
fn a_policys_syscall_rules_are_added_to_the_baseline_profile_never_instead_of_it() {
    // issue 11, row 2: a policy that denies only ptrace; the default profile still refuses
    // user namespaces, and the policy's own rule refuses ptrace and is reported
    let pins = PinDir::new();
    let agent = agent(&pins);
    let sock = s(&agent.control_socket());
    let name = unique("baseline");
    let prefix = name.rsplit_once('-').map_or(name.as_str(), |(a, _)| a);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("noptrace.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {{name: noptrace}}\nspec:\n  selector: {{workload: \"{prefix}-*\"}}\n  syscalls:\n    action: errno\n    errno: EPERM\n    deny: [ptrace]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let probe = s(&probe_bin());
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--policy",
        &s(&file),
        "--",
        &probe,
        "syscalls",
        "unshare-newuser",
        "getpid",
        "ptrace",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.lines(),
        ["unshare-newuser 1", "ptrace 1", "getpid 0"],
        "EPERM from the baseline and from the policy\n{out}"
    );
    let v = agent.wait_events(1, "the refused ptrace", |e| {
        e["type"] == "policy_violation" && e["container"]["name"] == name.as_str()
    });
    assert_eq!(v[0]["violation"]["syscall"], "ptrace", "{}", v[0]);
    assert_eq!(v[0]["violation"]["policy"], "noptrace", "{}", v[0]);
    assert_eq!(v[0]["violation"]["hook"], "seccomp", "{}", v[0]);
    // the row as a user would try it
    let other = unique("baseline");
    let out = run(&[
        "--name",
        &other,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--policy",
        &s(&file),
        "--",
        "unshare",
        "-U",
        "true",
    ]);
    assert_ne!(out.code, 0, "a user namespace was created\n{out}");
    assert!(out.stderr.contains("Operation not permitted"), "{out}");
    palisade_tests::launch::assert_clean(&name, None);
    palisade_tests::launch::assert_clean(&other, None);
}

#[test]
fn a_learned_policy_lets_the_workload_run_and_refuses_one_extra_syscall() {
    let pins = PinDir::new();
    let agent = agent(&pins);
    let sock = s(&agent.control_socket());
    let name = unique("learn");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let learned = dir.path().join("learned.yaml");
    let oci = dir.path().join("learned.json");
    // an upper bound: the test ends both windows (Ctrl-C) once the launch below is in the
    // event log
    let window = format!("{}s", scaled(Duration::from_secs(30)).as_secs());
    let learn = |out: &std::path::Path, format: &str| {
        Command::new(palisade_bin())
            .args([
                "policy",
                "learn",
                "--container",
                &name,
                "--duration",
                &window,
            ])
            .args(["--format", format, "-o"])
            .arg(out)
            .args(["--socket", &sock])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("learn: {e}"))
    };
    let (l1, l2) = (learn(&learned, "policy"), learn(&oci, "oci-seccomp"));
    wait_for(
        std::time::Duration::from_secs(20),
        "both learning windows",
        || (agent.log().matches("learning started").count() == 2).then_some(()),
    );
    let probe = s(&probe_bin());
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--",
        &probe,
        "syscalls",
        "getpid",
    ]);
    assert_eq!(out.lines(), ["getpid 0"], "{out}");
    // its exec published: a window ended now has seen it
    agent.wait_events(1, "the probe's exec", |e| {
        e["type"] == "exec" && e["container"]["name"] == name.as_str()
    });
    for l in [&l1, &l2] {
        interrupt(l);
    }
    for l in [l1, l2] {
        let o = l.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(
            err.contains("SIGINT: ending the learning window now"),
            "{err}"
        );
    }
    assert_eq!(
        agent.log().matches("learning ended early").count(),
        2,
        "{}",
        agent.log()
    );
    let text = std::fs::read_to_string(&learned).unwrap_or_else(|e| panic!("{e}"));
    for must in ["- getpid", "- execve", "- exit_group", &probe] {
        assert!(text.contains(must), "learned policy lacks {must}:\n{text}");
    }
    assert!(!text.contains("- getcwd"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&oci).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("OCI profile: {e}"));
    assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
    assert!(
        json["syscalls"][0]["names"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == "getpid"))
    );
    let check = Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&learned)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // under its learned policy the workload works...
    let pol = s(&learned);
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--policy",
        &pol,
        "--",
        &probe,
        "syscalls",
        "getpid",
    ]);
    assert_eq!((out.code, out.lines()), (0, vec!["getpid 0"]), "{out}");
    // ...and one extra syscall is refused (EPERM) and reported
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &sock,
        "--require-agent",
        "--policy",
        &pol,
        "--",
        &probe,
        "syscalls",
        "getpid",
        "getcwd",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.lines(), ["getpid 0", "getcwd 1"], "{out}");
    let v = agent.wait_events(1, "the refused getcwd", |e| {
        e["type"] == "policy_violation" && e["violation"]["syscall"] == "getcwd"
    });
    assert_eq!(v[0]["violation"]["hook"], "seccomp");
    assert_eq!(v[0]["violation"]["rule"], "syscalls.allow");
    assert_eq!(v[0]["container"]["name"], name.as_str());
}

#[test]
fn a_learned_policy_lists_the_files_written_and_denies_writes_to_system_trees() {
    // a running container (its cgroup, known to the agent from its start): `palisade run`
    // would give the workload a /tmp of its own
    let cg = palisade_tests::TestCgroup::new("learnfiles");
    let pins = PinDir::new();
    let agent = agent(&pins);
    let sock = s(&agent.control_socket());
    let name = cg.rel.clone();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let work = std::fs::canonicalize(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let w = s(&work);
    let learned = work.join("learned.yaml");
    // an upper bound: the test ends the window (Ctrl-C) once the shell below is done
    let window = format!("{}s", scaled(Duration::from_secs(30)).as_secs());
    let learn = Command::new(palisade_bin())
        .args([
            "policy",
            "learn",
            "--container",
            &name,
            "--duration",
            &window,
            "-o",
        ])
        .arg(&learned)
        .args(["--socket", &sock])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("learn: {e}"));
    wait_for(
        std::time::Duration::from_secs(20),
        "file writes watched",
        || {
            agent
                .log()
                .contains("learning: file writes watched")
                .then_some(())
        },
    );
    // the shell writes one file by a relative name and stays a second (relative names are
    // resolved against its directory); it reads /etc/hostname, which is no write
    let script = format!(
        "cd {w} && echo a > {w}/written && echo b > relative && chmod 600 {w}/written && : > {w}/gone && unlink {w}/gone && cat /etc/hostname > /dev/null && sleep 1"
    );
    let out = cg
        .command("/bin/sh")
        .args(["-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the writes are in the program's buffer, read when the window ends
    interrupt(&learn);
    let o = learn.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(agent.log().contains("learning ended early"), "{err}");
    assert!(!err.contains("not learned"), "{err}");
    let text = std::fs::read_to_string(&learned).unwrap_or_else(|e| panic!("{e}"));
    for line in [
        format!("  #   {w}/written: chmod, write\n"),
        format!("  #   {w}/relative: write\n"),
        format!("  #   {w}/gone: unlink, write\n"),
    ] {
        assert!(
            text.contains(&line),
            "no `{}` in:\n{text}\nagent log:\n{}",
            line.trim_end(),
            agent.log()
        );
    }
    assert!(
        !text.contains("/etc/hostname"),
        "a read is no write:\n{text}"
    );
    // `errno` where this Palisade refuses file rules; else `log` (a launch would refuse
    // `errno` rules it can only report), and the policy says why
    let refused = text.contains("  files:\n    action: errno\n    deny:\n      - {paths: [");
    let logged = text.contains("  files:\n    action: log\n    deny:\n      - {paths: [")
        && text.contains("file rules are reported only");
    assert!(refused || logged, "{text}");
    for tree in ["\"/etc/**\"", "\"/usr/**\"", "\"/boot/**\""] {
        assert!(text.contains(tree), "{tree} not denied:\n{text}");
    }
    let check = Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&learned)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Ctrl-C to a `palisade policy learn`: it ends the window now and writes what it learned.
fn interrupt(learn: &std::process::Child) {
    let pid = libc::pid_t::try_from(learn.id()).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: kill has no memory-safety preconditions; the child is ours and not yet reaped.
    let r = unsafe { libc::kill(pid, libc::SIGINT) };
    assert_eq!(r, 0, "kill: {}", std::io::Error::last_os_error());
}
