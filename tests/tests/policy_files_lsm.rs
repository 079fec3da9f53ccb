//! File rules refused in the kernel (BPF-LSM): on a running container a denied access fails
//! with the rule's errno before it has any effect, matched on the path the kernel resolved (a
//! symlink, a relative path or `..` reach the same rule), each refusal counted once and
//! reported once; `action: kill` kills, audit mode refuses nothing, and `palisade run
//! --policy` with refusing file rules runs its workload under them from its first program.
//!
//! Hosts without BPF-LSM (`PALISADE_HOST_LSM=none`): every test here prints why it has nothing
//! to check and the probe; the fallback (reported only, stated) is `policy_files`'s.
use palisade_tests::{
    Agent, TestCgroup,
    launch::{run, unique},
    palisade_bin,
    policy::{
        PinDir, Setup, doc, host_has_lsm, rule_violations, status, violations, wait_applied,
        wait_rule_violations,
    },
};

/// `sh -c SCRIPT` in the cgroup: (exit code, stdout, stderr).
fn sh(cg: &TestCgroup, script: &str) -> (Option<i32>, String, String) {
    let out = cg
        .command("/bin/sh")
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `script` in the cgroup and asserts it exits 0 and printed `want` (the results of the
/// attempts it made, one per line).
fn expect(cg: &TestCgroup, script: &str, want: &str) {
    let (code, out, err) = sh(cg, script);
    assert_eq!(code, Some(0), "{script}: {out}{err}");
    assert_eq!(out.trim(), want.trim(), "{script}: stderr {err}");
}

fn skip(why: &str) {
    println!("nothing to check on this host: {why}; the fallback is checked by policy_files");
}

/// `ok` or the error of a command, from `$?` and its message: `EPERM` when it said
/// "Operation not permitted".
const RESULT: &str = r#"r() { if out=$("$@" 2>&1); then echo ok; else case "$out" in *"Operation not permitted"*) echo EPERM;; *) echo "failed: $out";; esac; fi; }"#;

#[test]
fn denied_accesses_fail_with_eperm_on_the_resolved_path() {
    palisade_tests::require_root();
    if !host_has_lsm() {
        return skip("no BPF-LSM");
    }
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch.path().display().to_string();
    let w = |p: &str, s: &str| {
        std::fs::write(format!("{dir}/{p}"), s).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let md = |p: &str| {
        std::fs::create_dir_all(format!("{dir}/{p}")).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    md("sub");
    md("tree/d");
    md("bin");
    w("secret", "s\n");
    w("ro", "r\n");
    w("tree/f", "t\n");
    std::fs::copy("/bin/true", format!("{dir}/bin/true")).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(format!("{dir}/secret"), format!("{dir}/link"))
        .unwrap_or_else(|e| panic!("{e}"));
    let cg = TestCgroup::new("pol-files-lsm");
    let s = Setup::new(&doc(
        "no-secrets",
        &cg,
        "enforce",
        &format!(
            "  files:\n    action: errno\n    deny:\n      - {{name: shadow, paths: [/etc/shadow], access: [read]}}\n      - {{name: secret, paths: [\"{dir}/secret\"], access: [read]}}\n      - {{name: ro, paths: [\"{dir}/ro\"], access: [write]}}\n      - {{name: tree, paths: [\"{dir}/tree/**\"], access: [write, unlink, chmod]}}\n      - {{name: bin, paths: [\"{dir}/bin/**\"], access: [exec]}}\n"
        ),
    ));
    let agent = s.agent("  rate_limit_burst: 100\n");
    wait_applied(&agent, "no-secrets", cg.id, &["files_lsm"]);
    let st = status(&agent);
    assert_eq!(st["files"]["tier"], "lsm", "{st}");
    assert!(
        !st["hooks"]
            .as_array()
            .is_some_and(|h| h.iter().any(|x| x == "files")),
        "the audit program is not attached on the LSM tier (no double count): {st}"
    );
    assert!(
        st["files"]["rules"][0]
            .as_str()
            .is_some_and(|r| r.contains("read: refused with EPERM at file_open (resolved path)")),
        "{st}"
    );
    assert_eq!(st["unenforced"].as_array().map(Vec::len), Some(0), "{st}");

    // reads: the file, through a symlink, by a relative path with `..`; /etc/shadow
    expect(
        &cg,
        &format!(
            "{RESULT}; r cat /etc/shadow; r cat {dir}/secret; r cat {dir}/link; cd {dir}/sub && r cat ../secret; r cat ./../link"
        ),
        "EPERM\nEPERM\nEPERM\nEPERM\nEPERM",
    );
    wait_rule_violations(&agent, "no-secrets", "shadow", "errno", &cg, 1.0);
    wait_rule_violations(&agent, "no-secrets", "secret", "errno", &cg, 4.0);
    // write only denied: reading works, writing (append, truncate at open) does not
    expect(
        &cg,
        &format!("{RESULT}; r cat {dir}/ro; r sh -c 'echo x >> {dir}/ro'; r sh -c ': > {dir}/ro'"),
        "ok\nEPERM\nEPERM",
    );
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/ro")).ok().as_deref(),
        Some("r\n")
    );
    // the tree: write, create, truncate(2), unlink, rmdir, chmod
    expect(
        &cg,
        &format!(
            "{RESULT}; r cat {dir}/tree/f; r sh -c 'echo x > {dir}/tree/f'; r sh -c 'echo x > {dir}/tree/new'; r python3 -c 'import os; os.truncate(\"{dir}/tree/f\", 0)'; r rm {dir}/tree/f; r rmdir {dir}/tree/d; r chmod 600 {dir}/tree/f"
        ),
        "ok\nEPERM\nEPERM\nEPERM\nEPERM\nEPERM\nEPERM",
    );
    assert_eq!(
        std::fs::read_to_string(format!("{dir}/tree/f"))
            .ok()
            .as_deref(),
        Some("t\n")
    );
    assert!(
        !std::path::Path::new(&format!("{dir}/tree/new")).exists(),
        "nothing created"
    );
    assert!(
        std::path::Path::new(&format!("{dir}/tree/d")).is_dir(),
        "not removed"
    );
    // exec: the binary run, and mapped executable by the dynamic loader (read is allowed)
    expect(
        &cg,
        &format!(
            "{RESULT}; r {dir}/bin/true; r sh -c 'cat {dir}/bin/true > /dev/null'; /lib64/ld-linux-x86-64.so.2 {dir}/bin/true 2>/dev/null; echo $?"
        ),
        "EPERM\nok\n127",
    );
    wait_rule_violations(&agent, "no-secrets", "ro", "errno", &cg, 2.0);
    wait_rule_violations(&agent, "no-secrets", "tree", "errno", &cg, 6.0);
    wait_rule_violations(&agent, "no-secrets", "bin", "errno", &cg, 2.0);
    // exact: nothing else refused, and the events add up to the counts (no rate limit hit)
    wait_rule_violations(&agent, "no-secrets", "shadow", "errno", &cg, 1.0);
    wait_rule_violations(&agent, "no-secrets", "secret", "errno", &cg, 4.0);
    let v = violations(&agent, cg.id, 15);
    assert_eq!(v.len(), 15, "{v:?}");
    let by = |rule: &str| v.iter().filter(|e| e["violation"]["rule"] == rule).count();
    assert_eq!(
        [by("shadow"), by("secret"), by("ro"), by("tree"), by("bin")],
        [1, 4, 2, 6, 2],
        "{v:?}"
    );
    for e in &v {
        let x = &e["violation"];
        assert_eq!(x["hook"], "file", "{e}");
        assert_eq!(x["action"], "errno", "{e}");
        assert_eq!(x["file"]["match"], "resolved", "{e}");
        assert_eq!(e["container"]["cgroup_id"], cg.id, "{e}");
    }
    let secret: Vec<&serde_json::Value> = v
        .iter()
        .filter(|e| e["violation"]["rule"] == "secret")
        .collect();
    for e in &secret {
        // the symlink and `../` resolved to the file
        assert_eq!(
            e["violation"]["file"]["path"],
            format!("{dir}/secret"),
            "{e}"
        );
        assert_eq!(e["violation"]["file"]["access"], "read", "{e}");
    }
    let mut tree: Vec<&str> = v
        .iter()
        .filter(|e| e["violation"]["rule"] == "tree")
        .filter_map(|e| e["violation"]["file"]["access"].as_str())
        .collect();
    tree.sort_unstable();
    assert_eq!(
        tree,
        ["chmod", "unlink", "unlink", "write", "write", "write"],
        "{v:?}"
    );
    let bin: Vec<&str> = v
        .iter()
        .filter(|e| e["violation"]["rule"] == "bin")
        .filter_map(|e| e["violation"]["file"]["access"].as_str())
        .collect();
    assert_eq!(bin, ["exec", "exec"], "{v:?}");

    // another cgroup is not concerned
    let other = TestCgroup::new("pol-files-lsm-other");
    expect(&other, &format!("{RESULT}; r cat {dir}/secret"), "ok");
    assert_eq!(
        rule_violations(&agent, "no-secrets", "secret", "errno", &other),
        0.0
    );

    // `policy check` on this host says the same
    let f = scratch.path().join("check.yaml");
    std::fs::write(
        &f,
        std::fs::read_to_string(s.policy_file()).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&f)
        .output()
        .unwrap_or_else(|e| panic!("palisade policy check: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("read: refused with EPERM at file_open (resolved path)"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("cannot be applied on this host"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kill_kills_and_audit_mode_refuses_nothing() {
    palisade_tests::require_root();
    if !host_has_lsm() {
        return skip("no BPF-LSM");
    }
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch.path().display().to_string();
    std::fs::write(format!("{dir}/k"), "k\n").unwrap_or_else(|e| panic!("{e}"));
    let killer = TestCgroup::new("pol-files-kill");
    let watched = TestCgroup::new("pol-files-audit");
    let deny = format!("    deny: [{{name: k, paths: [\"{dir}/k\"], access: [read, write]}}]\n");
    let s = Setup::new(&format!(
        "{}---\n{}",
        doc(
            "files-kill",
            &killer,
            "enforce",
            &format!("  files:\n    action: kill\n{deny}")
        ),
        doc(
            "files-audit",
            &watched,
            "audit",
            &format!("  files:\n    action: errno\n{deny}")
        ),
    ));
    let agent = s.agent("  rate_limit_burst: 100\n");
    wait_applied(&agent, "files-kill", killer.id, &["files_lsm"]);
    wait_applied(&agent, "files-audit", watched.id, &["files_lsm"]);
    // killed (SIGKILL: 128 + 9), the file not read
    expect(&killer, &format!("cat {dir}/k; echo $?"), "137");
    expect(&killer, &format!("cat {dir}/k; echo $?"), "137");
    wait_rule_violations(&agent, "files-kill", "k", "kill", &killer, 2.0);
    // audit mode: read three times, reported as would-block each time
    expect(
        &watched,
        &format!("cat {dir}/k {dir}/k; cat {dir}/k"),
        "k\nk\nk",
    );
    wait_rule_violations(&agent, "files-audit", "k", "would_block", &watched, 3.0);
    assert_eq!(
        rule_violations(&agent, "files-audit", "k", "errno", &watched),
        0.0
    );
    let v = violations(&agent, watched.id, 3);
    assert_eq!(v.len(), 3, "{v:?}");
    for e in &v {
        assert_eq!(e["violation"]["action"], "would_block", "{e}");
        assert_eq!(e["violation"]["file"]["path"], format!("{dir}/k"), "{e}");
    }
    let st = status(&agent);
    assert_eq!(st["unenforced"].as_array().map(Vec::len), Some(0), "{st}");
}

/// `palisade run --policy` with `errno` file rules on the LSM tier: the launch goes ahead and
/// the workload's first program is refused the denied read.
#[test]
fn a_launched_workload_is_refused_from_its_first_program() {
    palisade_tests::require_root();
    if !host_has_lsm() {
        return skip("no BPF-LSM");
    }
    let pins = PinDir::new();
    let agent = Agent::with_events(
        &format!(
            "metrics:\n  collect_interval: 1s\npolicy:\n  pin_dir: {}\n",
            pins.0.display()
        ),
        &[],
    );
    let name = unique("fileslsm");
    let prefix = name.rsplit_once('-').map_or(name.as_str(), |(a, _)| a);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("run.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {{name: files-run}}\nspec:\n  selector: {{workload: \"{prefix}-*\"}}\n  files:\n    action: errno\n    deny: [{{paths: [/etc/shadow], access: [read]}}]\n"
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let socket = agent.control_socket().display().to_string();
    let policy = file.display().to_string();
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &socket,
        "--require-agent",
        "--policy",
        &policy,
        "--",
        "/bin/cat",
        "/etc/shadow",
    ]);
    assert_eq!(out.code, 1, "cat fails: {out}");
    assert!(out.stderr.contains("Operation not permitted"), "{out}");
    assert!(!out.stdout.contains("root:"), "nothing read: {out}");
    let v = agent.wait_events(1, "the workload's read", |e| {
        e["type"] == "policy_violation" && e["violation"]["policy"] == "files-run"
    });
    assert_eq!(v.len(), 1, "{v:?}");
    let x = &v[0]["violation"];
    assert_eq!(x["action"], "errno", "{x}");
    assert_eq!(x["file"]["path"], "/etc/shadow", "{x}");
    assert_eq!(x["file"]["match"], "resolved", "{x}");
    assert_eq!(v[0]["container"]["name"], name.as_str(), "{}", v[0]);
}

/// A rule matches paths, so a second name for a denied file (a hard link), the file moved
/// away, the directory above it moved away, or a file renamed onto a denied name would each
/// walk around it: all are refused, counted under the rule they would have escaped, and
/// renames and links that touch nothing denied still work.
#[test]
fn renames_and_hard_links_cannot_give_a_denied_file_another_name() {
    palisade_tests::require_root();
    if !host_has_lsm() {
        return skip("no BPF-LSM");
    }
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch.path().display().to_string();
    for d in ["tree", "free"] {
        std::fs::create_dir_all(format!("{dir}/{d}")).unwrap_or_else(|e| panic!("{e}"));
    }
    for f in ["secret", "plain", "evil", "tree/f"] {
        std::fs::write(format!("{dir}/{f}"), "x\n").unwrap_or_else(|e| panic!("{e}"));
    }
    let cg = TestCgroup::new("pol-files-names");
    let s = Setup::new(&doc(
        "no-new-names",
        &cg,
        "enforce",
        &format!(
            "  files:\n    action: errno\n    deny:\n      - {{name: secret, paths: [\"{dir}/secret\"], access: [read]}}\n      - {{name: tree, paths: [\"{dir}/tree/**\"], access: [write]}}\n"
        ),
    ));
    let agent = s.agent("  rate_limit_burst: 100\n");
    wait_applied(&agent, "no-new-names", cg.id, &["files_lsm"]);
    expect(
        &cg,
        &format!(
            "{RESULT}; cd {dir}; r ln secret other; r mv secret moved; r mv {dir} {dir}-moved; r mv tree tree2; r mv evil tree/f; r mkdir tree/d; r ln -s /x tree/s; r ln plain tree/h; r ln plain plain2; r mv free free2; r cat secret; r cat other"
        ),
        "EPERM\nEPERM\nEPERM\nEPERM\nEPERM\nEPERM\nEPERM\nEPERM\nok\nok\nEPERM\nfailed: cat: other: No such file or directory",
    );
    // secret: its link, its rename, its directory's rename, the read; tree: its directory's
    // rename, the rename onto it, mkdir, symlink and link inside it
    wait_rule_violations(&agent, "no-new-names", "secret", "errno", &cg, 4.0);
    wait_rule_violations(&agent, "no-new-names", "tree", "errno", &cg, 5.0);
    let v = violations(&agent, cg.id, 9);
    let mut seen: Vec<(String, String)> = v
        .iter()
        .map(|e| {
            let x = &e["violation"];
            (
                x["rule"].as_str().unwrap_or("").to_owned(),
                x["file"]["access"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    seen.sort();
    let want: Vec<(String, String)> = [
        ("secret", "link"),
        ("secret", "read"),
        ("secret", "rename"),
        ("secret", "rename"),
        ("tree", "link"),
        ("tree", "rename"),
        ("tree", "rename"),
        ("tree", "write"),
        ("tree", "write"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(seen, want, "{v:?}");
    assert!(
        std::path::Path::new(&format!("{dir}/secret")).exists()
            && std::path::Path::new(&format!("{dir}/tree/f")).exists()
            && std::path::Path::new(&format!("{dir}/plain2")).exists(),
        "the refused calls changed nothing, the allowed ones ran"
    );
}
