//! The BPF-LSM enforcement tier: exec rules with `action: errno` refused with EPERM at
//! `bprm_check_security` on running containers (the program never runs), and on a host
//! without BPF-LSM the same policies loaded with their fallback stated (killed before the new
//! image runs).
//!
//! Which of the two a host must show: BPF-LSM is required unless `PALISADE_HOST_LSM=none`
//! says this host has none (`cargo xtask test` sets it on a host whose
//! /sys/kernel/security/lsm has no `bpf`; the VM run does not, so a VM kernel without
//! BPF-LSM fails these tests). A mismatch either way fails.
use palisade_tests::{
    Agent, TestCgroup,
    policy::{Setup, cli, doc, host_has_lsm, outcome, status, violations, wait_applied},
};

const KILLED: Result<i32, i32> = Err(9);
const EPERM: i32 = 1;

fn violation_count(agent: &Agent, policy: &str, action: &str, cg: &TestCgroup) -> f64 {
    agent
        .metrics()
        .find(
            "palisade_policy_violations_total",
            &[
                ("policy", policy),
                ("action", action),
                ("container", &cg.rel),
            ],
        )
        .iter()
        .map(|s| s.value)
        .sum()
}

/// The `enforcement` entry of `section` of policy `name` in `palisade policy status`.
fn enforcement(agent: &Agent, name: &str, section: &str) -> serde_json::Value {
    let st = status(agent);
    st["policies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .and_then(|p| p["enforcement"].as_array())
        .and_then(|e| e.iter().find(|e| e["section"] == section).cloned())
        .unwrap_or_else(|| panic!("no {section} enforcement for {name}: {st}"))
}

/// Spawns `program ARGS` in the cgroup: `Err(errno)` when the exec itself failed, else how
/// it ended (`Ok(Ok(code))` or `Ok(Err(signal))`).
fn spawn(cg: &TestCgroup, program: &str, args: &[&str]) -> Result<Result<i32, i32>, i32> {
    match cg
        .command(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Err(e) => Err(e.raw_os_error().unwrap_or_else(|| panic!("{program}: {e}"))),
        Ok(st) => {
            use std::os::unix::process::ExitStatusExt as _;
            Ok(match (st.code(), st.signal()) {
                (Some(c), _) => Ok(c),
                (None, Some(s)) => Err(s),
                _ => panic!("{program}: {st}"),
            })
        }
    }
}

#[test]
fn a_denied_exec_with_action_errno_fails_with_eperm_without_running() {
    let lsm = host_has_lsm();
    let cg = TestCgroup::new("lsm-exec");
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let s = Setup::new(&doc(
        "no-touch",
        &cg,
        "enforce",
        "  exec:\n    action: errno\n    deny: [/usr/bin/touch]\n",
    ));
    let agent = s.agent("  rate_limit_burst: 100\n");
    let hooks: &[&str] = if lsm {
        &["exec", "exec_lsm"]
    } else {
        &["exec"]
    };
    wait_applied(&agent, "no-touch", cg.id, hooks);
    const N: usize = 3;
    for i in 0..N {
        let marker = d.path().join(format!("ran-{i}"));
        let m = marker.display().to_string();
        let got = spawn(&cg, "/usr/bin/touch", &[&m]);
        if lsm {
            assert_eq!(got, Err(EPERM), "exec {i} must fail with EPERM");
        } else {
            assert_eq!(got, Ok(KILLED), "exec {i}: without BPF-LSM, killed");
        }
        assert!(!marker.exists(), "the denied program ran ({m} exists)");
    }
    // other programs run, and so does the denied one outside the cgroup
    assert_eq!(outcome(&mut cg.command("/usr/bin/true")), Ok(0));
    let outside = d.path().join("outside");
    let st = std::process::Command::new("/usr/bin/touch")
        .arg(&outside)
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(st.success() && outside.exists(), "outside the cgroup: {st}");

    let taken = if lsm { "errno" } else { "kill" };
    let v = violations(&agent, cg.id, N);
    assert_eq!(v.len(), N, "{v:#?}");
    for e in &v {
        let x = &e["violation"];
        assert_eq!(x["action"], taken, "{x}");
        assert_eq!(x["exec"], "/usr/bin/touch", "{x}");
        assert_eq!(x["rule"], "exec.deny:/usr/bin/touch", "{x}");
        assert_eq!(x["exec_match"], "file", "{x}");
    }
    palisade_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the violation counter",
        || (violation_count(&agent, "no-touch", taken, &cg) == N as f64).then_some(()),
    );
    let other = if lsm { "kill" } else { "errno" };
    assert_eq!(violation_count(&agent, "no-touch", other, &cg), 0.0);

    // where the user looks: the status, its text, and the log at load
    let e = enforcement(&agent, "no-touch", "exec");
    assert_eq!(e["action"], "errno", "{e}");
    let (code, text, err) = cli(&agent, &["status"]);
    assert_eq!(code, 0, "{err}");
    if lsm {
        assert_eq!(e["tier"], "refused with EPERM at exec", "{e}");
        assert_eq!(e["fallback"], "", "{e}");
        assert_eq!(status(&agent)["lsm"]["active"], true);
        assert!(
            text.contains("exec (action errno): refused with EPERM at exec"),
            "{text}"
        );
    } else {
        assert_eq!(e["tier"], "killed before the new image runs", "{e}");
        assert!(
            e["fallback"]
                .as_str()
                .is_some_and(|f| f.contains("no BPF-LSM")),
            "{e}"
        );
        assert_eq!(status(&agent)["lsm"]["active"], false);
        assert!(
            text.contains("exec (action errno): killed before the new image runs (no BPF-LSM"),
            "{text}"
        );
        let at = format!("{}:10:13", s.policy_file().display());
        let log = agent.log();
        assert!(
            log.lines().any(
                |l| l.contains(&at) && l.contains("killed (SIGKILL) before the new image runs")
            ),
            "a warning at load naming {at}: {log}"
        );
    }
}

#[test]
fn a_script_whose_interpreter_is_denied_fails_with_eperm() {
    let lsm = host_has_lsm();
    let cg = TestCgroup::new("lsm-interp");
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let marker = d.path().join("ran");
    let script = d.path().join("job.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\n/usr/bin/touch {}\n", marker.display()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
    // the interpreter as the kernel resolves it (/bin/sh is a symlink on most hosts)
    let sh = std::fs::canonicalize("/bin/sh").unwrap_or_else(|e| panic!("{e}"));
    let s = Setup::new(&doc(
        "no-sh",
        &cg,
        "enforce",
        &format!(
            "  exec:\n    action: errno\n    deny: [\"{}\"]\n",
            sh.display()
        ),
    ));
    let agent = s.agent("  rate_limit_burst: 100\n");
    let hooks: &[&str] = if lsm {
        &["exec", "exec_lsm"]
    } else {
        &["exec"]
    };
    wait_applied(&agent, "no-sh", cg.id, hooks);
    let got = spawn(&cg, &script.display().to_string(), &[]);
    if lsm {
        assert_eq!(got, Err(EPERM), "the script's interpreter is denied");
    } else {
        assert_eq!(got, Ok(KILLED));
    }
    assert!(!marker.exists(), "the script ran");
    let v = violations(&agent, cg.id, 1);
    assert_eq!(v.len(), 1, "{v:#?}");
    let x = &v[0]["violation"];
    assert_eq!(x["interpreter"], sh.display().to_string(), "{x}");
    assert_eq!(x["action"], if lsm { "errno" } else { "kill" }, "{x}");
    palisade_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the violation counter",
        || {
            (violation_count(&agent, "no-sh", if lsm { "errno" } else { "kill" }, &cg) == 1.0)
                .then_some(())
        },
    );
}

#[test]
fn audit_mode_refuses_nothing_and_counts_each_exec_once() {
    let lsm = host_has_lsm();
    let cg = TestCgroup::new("lsm-audit");
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let s = Setup::new(&doc(
        "no-touch-audit",
        &cg,
        "audit",
        "  exec:\n    action: errno\n    deny: [/usr/bin/touch]\n",
    ));
    let agent = s.agent("  rate_limit_burst: 100\n");
    let hooks: &[&str] = if lsm {
        &["exec", "exec_lsm"]
    } else {
        &["exec"]
    };
    wait_applied(&agent, "no-touch-audit", cg.id, hooks);
    const N: usize = 2;
    for i in 0..N {
        let marker = d.path().join(format!("ran-{i}"));
        let m = marker.display().to_string();
        assert_eq!(spawn(&cg, "/usr/bin/touch", &[&m]), Ok(Ok(0)));
        assert!(marker.exists(), "audit mode: {m} ran");
    }
    let v = violations(&agent, cg.id, N);
    assert_eq!(v.len(), N, "{v:#?}");
    palisade_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the violation counter",
        || {
            (violation_count(&agent, "no-touch-audit", "would_block", &cg) == N as f64)
                .then_some(())
        },
    );
    let e = enforcement(&agent, "no-touch-audit", "exec");
    assert_eq!(e["tier"], "reported only", "{e}");
}

#[test]
fn policy_check_states_the_exec_tier_of_this_host() {
    let lsm = host_has_lsm();
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = d.path().join("p.yaml");
    std::fs::write(
        &f,
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  selector: {workload: w}\n  exec:\n    deny: [/usr/bin/nc]\n    action: errno\n  syscalls:\n    action: kill\n    deny: [unshare]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(palisade_tests::palisade_bin())
        .args(["policy", "check"])
        .arg(&f)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("syscalls (action kill): killed after the call"),
        "{stdout}"
    );
    let at = format!("{}:8:13: warning: exec `action: errno`", f.display());
    if lsm {
        assert!(
            stdout.contains("exec (action errno): refused with EPERM at exec"),
            "{stdout}"
        );
        assert!(!stderr.contains(&at), "{stderr}");
        assert!(stdout.contains("on this host BPF-LSM active"), "{stdout}");
    } else {
        assert!(
            stdout.contains("exec (action errno): killed before the new image runs (no BPF-LSM"),
            "{stdout}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&at)
                    && l.contains("killed (SIGKILL) before the new image runs")),
            "{stderr}"
        );
    }
}

#[test]
fn doctor_names_the_enforcement_tier() {
    let lsm = host_has_lsm();
    let out = std::process::Command::new(palisade_tests::palisade_bin())
        .args(["doctor", "--output", "json"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(
        j["enforcement_tier"],
        if lsm { "bpf_lsm" } else { "tracepoints" },
        "{j}"
    );
}

const CLONE_NEWNS: i32 = 0x0002_0000;
const CLONE_NEWUSER: i32 = 0x1000_0000;
const CLONE_NEWUTS: i32 = 0x0400_0000;

#[test]
fn a_denied_unshare_fails_with_eperm_on_a_running_container() {
    let lsm = host_has_lsm();
    let cg = TestCgroup::new("lsm-unshare");
    let s = Setup::new(&doc(
        "no-unshare",
        &cg,
        "enforce",
        "  syscalls:\n    action: errno\n    errno: EPERM\n    deny: [unshare]\n",
    ));
    let agent = s.agent("  rate_limit_burst: 100\n");
    // with BPF-LSM the hooks alone refuse and report these calls
    let hooks: &[&str] = if lsm {
        &["syscalls_lsm"]
    } else {
        &["syscalls"]
    };
    wait_applied(&agent, "no-unshare", cg.id, hooks);
    // a user namespace (userns_create), a mount and a UTS namespace (their CAP_SYS_ADMIN check)
    let flags = [
        CLONE_NEWUSER,
        CLONE_NEWNS,
        CLONE_NEWUTS,
        CLONE_NEWUSER | CLONE_NEWNS,
    ];
    for f in flags {
        let got = outcome(cg.command(palisade_tests::workload_bin()).args([
            "unshare",
            &f.to_string(),
            "getppid",
            "1",
        ]));
        if lsm {
            assert_eq!(
                got,
                Ok(EPERM),
                "unshare({f:#x}) must fail with EPERM; status: {}\nagent log:\n{}",
                status(&agent),
                agent.log()
            );
        } else {
            // no BPF-LSM: a running container's errno rule kills after the call
            assert_eq!(got, Err(9), "unshare({f:#x}) without BPF-LSM");
        }
    }
    // the same workload without the denied call runs
    assert_eq!(
        outcome(
            cg.command(palisade_tests::workload_bin())
                .args(["getppid", "3"])
        ),
        Ok(0)
    );
    let n = flags.len();
    let taken = if lsm { "errno" } else { "kill" };
    let v = violations(&agent, cg.id, n);
    assert_eq!(v.len(), n, "{v:#?}");
    for e in &v {
        let x = &e["violation"];
        assert_eq!(x["syscall"], "unshare", "{x}");
        assert_eq!(x["action"], taken, "{x}");
        assert_eq!(x["hook"], if lsm { "lsm" } else { "syscall" }, "{x}");
        if lsm {
            assert_eq!(x["errno"], "EPERM", "{x}");
        }
    }
    palisade_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the violation counter",
        || (violation_count(&agent, "no-unshare", taken, &cg) == n as f64).then_some(()),
    );
    let st = status(&agent);
    let p = st["policies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "no-unshare"))
        .unwrap_or_else(|| panic!("{st}"));
    let tiers: Vec<(String, String)> = p["enforcement"]
        .as_array()
        .unwrap_or_else(|| panic!("{p}"))
        .iter()
        .map(|e| {
            (
                e["calls"].to_string(),
                e["tier"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    if lsm {
        assert!(
            tiers.contains(&(
                r#"["unshare"]"#.into(),
                "refused with EPERM by the kernel".into()
            )),
            "{tiers:?}"
        );
    } else {
        assert_eq!(
            tiers,
            [("[]".to_owned(), "killed after the call".to_owned())]
        );
    }
}

const ETXTBSY: i32 = 26;

/// `keyctl`, `add_key` (to a key that exists) and `request_key` denied with `action: errno`:
/// with BPF-LSM refused with the rule's errno at `key_permission`/`key_alloc`, each call
/// counted once (a `request_key` searching several keyrings is refused once per keyring);
/// without it killed after the call.
#[test]
fn denied_key_calls_fail_with_the_rules_errno_on_a_running_container() {
    let lsm = host_has_lsm();
    let cg = TestCgroup::new("lsm-keys");
    let wb = palisade_tests::workload_bin();
    // by serial numbers: a special id (KEY_SPEC_*) the kernel resolves first (the user
    // keyrings looked up, a session keyring installed) fails with ENOKEY when a hook refuses
    // that step (the kernel replaces the error)
    // SAFETY: keyctl with integer arguments; finds (or creates) this user's keyring.
    let ring = unsafe { libc::syscall(libc::SYS_keyctl, 0, -4, 1) };
    assert!(
        ring > 0,
        "user keyring: {}",
        std::io::Error::last_os_error()
    );
    let tag = ring.to_string();
    let desc =
        std::ffi::CString::new(format!("palisade-test-{ring}")).unwrap_or_else(|e| panic!("{e}"));
    // the key exists (added from outside the policy's cgroup): add_key would update it
    // SAFETY: C strings and a one-byte payload that outlive the call.
    let key = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            desc.as_ptr(),
            c"1".as_ptr(),
            1usize,
            ring,
        )
    };
    assert!(key > 0, "add_key: {}", std::io::Error::last_os_error());
    // the user may search it without possessing it: a refused search of the caller's
    // keyrings loses the possession, and without it the kernel's own check (EACCES) would
    // come before the hook
    // SAFETY: keyctl(KEYCTL_SETPERM) with integer arguments on our own key.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, 5, key, 0x3f3f_0000) };
    assert_eq!(r, 0, "setperm: {}", std::io::Error::last_os_error());
    let key = key.to_string();
    let s = Setup::new(&doc(
        "no-keys",
        &cg,
        "enforce",
        "  syscalls:\n    action: errno\n    errno: ETXTBSY\n    deny: [keyctl, add_key, request_key]\n",
    ));
    let agent = s.agent("  rate_limit_burst: 100\n");
    let hooks: &[&str] = if lsm {
        &["syscalls", "syscalls_lsm"]
    } else {
        &["syscalls"]
    };
    wait_applied(&agent, "no-keys", cg.id, hooks);
    let want = if lsm { Ok(ETXTBSY) } else { Err(9) };
    for args in [vec!["keyctl", &key], vec!["add-key", &tag]] {
        assert_eq!(
            outcome(cg.command(&wb).args(&args)),
            want,
            "{args:?}; status: {}\nagent log:\n{}",
            status(&agent),
            agent.log()
        );
    }
    // request_key by a caller with a thread and a process keyring (made outside the policy):
    // it asks key_permission once per keyring it searches. (A caller with no keyring of its
    // own fails with ENOKEY on 6.12: the refused lookup of its user session keyring leaves
    // nothing to search, and the kernel answers ENOKEY.)
    let dir = cg.path.display().to_string();
    assert_eq!(
        outcome(std::process::Command::new(&wb).args([
            "keyrings",
            "1",
            "move",
            &dir,
            "request-key",
            &tag
        ])),
        want,
        "request_key searching three keyrings"
    );
    assert_eq!(outcome(cg.command(&wb).args(["getppid", "3"])), Ok(0));
    const N: usize = 3;
    let taken = if lsm { "errno" } else { "kill" };
    let v = violations(&agent, cg.id, N);
    let mut calls: Vec<String> = v
        .iter()
        .map(|e| {
            let x = &e["violation"];
            assert_eq!(x["action"], taken, "{x}");
            assert_eq!(x["hook"], if lsm { "lsm" } else { "syscall" }, "{x}");
            if lsm {
                assert_eq!(x["errno"], "ETXTBSY", "{x}");
            }
            x["syscall"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    calls.sort();
    assert_eq!(calls, ["add_key", "keyctl", "request_key"], "{v:#?}");
    let count = || violation_count(&agent, "no-keys", taken, &cg);
    palisade_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the violation counter",
        || (count() >= N as f64).then_some(()),
    );
    assert_eq!(count(), N as f64, "one violation per call");
    let e = enforcement(&agent, "no-keys", "syscalls");
    if lsm {
        assert_eq!(
            e["calls"],
            serde_json::json!(["add_key", "request_key", "keyctl"]),
            "{e}"
        );
        assert_eq!(e["tier"], "refused with ETXTBSY by the kernel", "{e}");
    } else {
        assert_eq!(e["tier"], "killed after the call", "{e}");
    }
}
