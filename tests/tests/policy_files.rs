//! File rules: `palisade policy check` on bad input (every error at its `file:line:column`,
//! saying what the matcher can do) and on good input (what each rule does on this host, the
//! fallbacks stated); on a running container, denied accesses reported once
//! per attempt (the path as given), rate-limited events adding up to the exact count. Files
//! touched are the test's own scratch files, never the host's. Without BPF-LSM file rules are
//! on the audit tier (`sys_enter`, reported only); with it they are refused in the kernel
//! (`policy_files_lsm`), and the audit-tier tests here print that they have nothing to check.
use palisade_tests::{
    Agent, TestCgroup,
    launch::{run, unique},
    palisade_bin,
    policy::{
        PinDir, Setup, host_has_lsm, rule_violations, status, violations, wait_applied,
        wait_rule_violations,
    },
};

const SEED: &str = "apiVersion: palisade.dev/v1
kind: Policy
metadata:
  name: files-seed
spec:
  selector:
    container: web
  files:
    action: errno
    deny:
      - {paths: [\"/etc/shadow\", \"/root/**\"], access: [read, write]}
      - {paths: [\"/usr/bin/**\"], access: [write, unlink, chmod]}
";

fn check(text: &str) -> (Option<i32>, String, String) {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = d.path().join("files.yaml");
    std::fs::write(&f, text).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&f)
        .output()
        .unwrap_or_else(|e| panic!("palisade policy check: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_file_rules_are_errors_at_their_position() {
    let bad = SEED.replace(
        "[\"/usr/bin/**\"], access: [write, unlink, chmod]",
        "[\"usr/bin\", \"/usr/*/bin\", \"/usr/bin/*\"], access: [write, delete]",
    );
    let (code, out, err) = check(&bad);
    assert_eq!(code, Some(2), "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 5, "{err}");
    assert!(
        lines[0].ends_with("files.yaml:12:18: error: `usr/bin` is not an absolute path: file rules match the path the kernel resolves (with BPF-LSM) or the path as given to the call, never relative to a directory; the kernel matcher does exact paths (/etc/shadow) and trees (/root/**: anything below /root); list the files, or use the tree of their directory"),
        "{err}"
    );
    assert!(
        lines[1]
            .contains("files.yaml:12:29: error: `/usr/*/bin`: the kernel matcher does exact paths"),
        "{err}"
    );
    assert!(lines[2].contains("files.yaml:12:43: error: `/usr/bin/*`: `/dir/*` (files directly in a directory) is not supported"), "{err}");
    assert!(lines[3].contains("files.yaml:12:74: error: unknown access `delete` (any of read, write, unlink, chmod, exec)"), "{err}");
    assert!(
        lines[4].starts_with("4 error(s); nothing was applied"),
        "{err}"
    );

    let (code, _, err) = check(&SEED.replace("action: errno", "action: refuse"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("files.yaml:9:13: error: unknown file action `refuse` (errno, kill or log)"),
        "{err}"
    );
}

#[test]
fn check_says_what_each_file_rule_does_on_this_host() {
    let (code, out, err) = check(SEED);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("policy files-seed (enforce): selects container=web; files (2 deny entries)"),
        "{out}"
    );
    if host_has_lsm() {
        // refused in the kernel on the resolved path, said per rule, nothing to warn about
        assert!(
            out.contains("files.yaml:11:9: policy files-seed: rule `files.deny[0]` on /etc/shadow, /root/**: read: refused with EPERM at file_open (resolved path); write: refused with EPERM at file_open, path_mknod (create), path_mkdir, path_symlink, path_truncate, path_link and path_rename (a name made or replaced) (resolved path); rename or hard link of these files or of a directory above them: refused with EPERM at path_rename, path_link (resolved path); a file whose resolved path is longer than 255 bytes: not matched (neither refused nor reported)"),
            "{out}"
        );
        assert!(
            out.contains("files.yaml:12:9: policy files-seed: rule `files.deny[1]` on /usr/bin/**: write: refused with EPERM at file_open, path_mknod (create), path_mkdir, path_symlink, path_truncate, path_link and path_rename (a name made or replaced) (resolved path); unlink: refused with EPERM at path_unlink, path_rmdir (resolved path); chmod: refused with EPERM at path_chmod (resolved path); rename or hard link of these files or of a directory above them: refused with EPERM at path_rename, path_link (resolved path); a file whose resolved path is longer than 255 bytes: not matched (neither refused nor reported)"),
            "{out}"
        );
        assert!(!err.contains("warning"), "{err}");
        return;
    }
    // reported only (the audit tier, without BPF-LSM), said per rule, the fallback of
    // `action: errno` warned
    assert!(
        out.contains("files.yaml:11:9: policy files-seed: rule `files.deny[0]` on /etc/shadow, /root/**: read: reported only, the call runs (seen at open, openat, openat2; the path as given, relative paths and symlinks not resolved: best effort); write: reported only, the call runs (seen at open, openat, openat2, creat, truncate;"),
        "{out}"
    );
    assert!(
        out.contains("files.yaml:12:9: policy files-seed: rule `files.deny[1]` on /usr/bin/**: write: reported only"),
        "{out}"
    );
    assert!(
        err.contains("files.yaml:9:5: warning: `action: errno` cannot be applied on this host ("),
        "{err}"
    );
    assert!(err.contains("best effort"), "{err}");
    assert!(
        out.contains("ok: 1 policies in 1 file(s), 2 warning(s)"),
        "{out}"
    );
}

fn policy(name: &str, cg: &TestCgroup, body: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    cgroup: \"{}\"\n{body}",
        cg.rel
    )
}

/// `sh -c SCRIPT` in the cgroup: (exit code, stderr).
fn sh(cg: &TestCgroup, script: &str) -> (Option<i32>, String) {
    let out = cg
        .command("/bin/sh")
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("sh: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_denied_access_is_reported_once_with_the_path_given() {
    palisade_tests::require_root();
    if host_has_lsm() {
        println!(
            "nothing to check here: with BPF-LSM file rules are refused in the kernel, not reported from the path given (policy_files_lsm checks them)"
        );
        return;
    }
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = scratch.path().display().to_string();
    let secret = format!("{dir}/secret");
    std::fs::write(&secret, "s").unwrap_or_else(|e| panic!("{e}"));
    let cg = TestCgroup::new("pol-files");
    let s = Setup::new(&policy(
        "no-secrets",
        &cg,
        &format!(
            "  files:\n    action: errno\n    deny:\n      - {{paths: [\"{secret}\"], access: [read]}}\n      - {{name: scratch, paths: [\"{dir}/**\"], access: [write, unlink, chmod]}}\n"
        ),
    ));
    let agent = s.agent("  rate_limit_burst: 100\n");
    wait_applied(&agent, "no-secrets", cg.id, &["files"]);
    let st = status(&agent);
    assert_eq!(st["files"]["tier"], "audit", "{st}");
    assert!(
        st["files"]["rules"][0]
            .as_str()
            .is_some_and(|r| r.contains("read: reported only, the call runs")),
        "{st}"
    );

    // three reads, each opening the file once (`: < F`): reported, not refused (audit tier)
    let (code, err) = sh(&cg, &format!(": < {secret}; : < {secret}; : < {secret}"));
    assert_eq!(code, Some(0), "the audit tier refuses nothing: {err}");
    wait_rule_violations(&agent, "no-secrets", "files.deny[0]", "log", &cg, 3.0);
    let v = violations(&agent, cg.id, 3);
    assert_eq!(v.len(), 3, "{v:?}");
    for e in &v {
        let x = &e["violation"];
        assert_eq!(x["policy"], "no-secrets", "{e}");
        assert_eq!(x["rule"], "files.deny[0]", "{e}");
        assert_eq!(x["hook"], "file", "{e}");
        assert_eq!(x["action"], "log", "{e}");
        assert_eq!(x["file"]["path"], secret.as_str(), "{e}");
        assert_eq!(x["file"]["access"], "read", "{e}");
        assert_eq!(x["file"]["match"], "path_given", "{e}");
        assert!(
            matches!(x["syscall"].as_str(), Some("open" | "openat")),
            "{e}"
        );
        assert_eq!(e["container"]["cgroup_id"], cg.id, "{e}");
        assert_eq!(e["process"]["comm"], "sh", "{e}");
    }

    // write, chmod and unlink below the tree: one each
    let (code, err) = sh(
        &cg,
        &format!("echo x > {dir}/new && chmod 600 {dir}/new && rm {dir}/new"),
    );
    assert_eq!(code, Some(0), "{err}");
    wait_rule_violations(&agent, "no-secrets", "scratch", "log", &cg, 3.0);
    let v = violations(&agent, cg.id, 6);
    let mut kinds: Vec<&str> = v[3..]
        .iter()
        .map(|e| e["violation"]["file"]["access"].as_str().unwrap_or(""))
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["chmod", "unlink", "write"], "{v:?}");
    // two more reads of the secret (cat opens it once each); listing the directory and
    // another cgroup's accesses are not violations
    let (code, _) = sh(
        &cg,
        &format!("cat {dir}/secret {dir}/secret > /dev/null; ls {dir} > /dev/null"),
    );
    assert_eq!(code, Some(0));
    let other = TestCgroup::new("pol-files-other");
    let (code, _) = sh(&other, &format!(": < {secret}; chmod 644 {secret}"));
    assert_eq!(code, Some(0));
    wait_rule_violations(&agent, "no-secrets", "files.deny[0]", "log", &cg, 5.0);
    assert_eq!(
        rule_violations(&agent, "no-secrets", "scratch", "log", &cg),
        3.0
    );
    assert_eq!(
        rule_violations(&agent, "no-secrets", "files.deny[0]", "log", &other),
        0.0
    );
}

#[test]
fn file_violations_are_rate_limited_and_add_up() {
    palisade_tests::require_root();
    let scratch = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let secret = scratch.path().join("secret").display().to_string();
    std::fs::write(&secret, "s").unwrap_or_else(|e| panic!("{e}"));
    let cg = TestCgroup::new("pol-files-rate");
    let s = Setup::new(&policy(
        "chatty-files",
        &cg,
        &format!(
            "  files:\n    action: log\n    deny: [{{paths: [\"{secret}\"], access: [read]}}]\n"
        ),
    ));
    let agent = s.agent("  rate_limit_burst: 3\n  rate_limit_interval: 1h\n");
    let hook = if host_has_lsm() { "files_lsm" } else { "files" };
    wait_applied(&agent, "chatty-files", cg.id, &[hook]);
    let (code, err) = sh(
        &cg,
        &format!("i=0; while [ $i -lt 500 ]; do : < {secret}; i=$((i+1)); done"),
    );
    assert_eq!(code, Some(0), "{err}");
    // three events one by one, then one summary of the rest
    let v = agent.wait_events(4, "three events and a summary", |e| {
        e["type"] == "policy_violation" && e["container"]["cgroup_id"] == cg.id
    });
    assert_eq!(v.len(), 4, "{v:?}");
    assert_eq!(v[3]["violation"]["suppressed"], 497, "{v:?}");
    let total: u64 = 3 + v[3]["violation"]["suppressed"].as_u64().unwrap_or(0);
    assert_eq!(total, 500);
    wait_rule_violations(&agent, "chatty-files", "files.deny[0]", "log", &cg, 500.0);
}

/// `palisade run --policy` with file rules: `action: log` runs and reports the workload's
/// accesses from its first instruction; a policy whose file rules should refuse cannot be
/// enforced as written on the audit tier, so the launch is refused and nothing runs.
#[test]
fn a_launched_workload_runs_under_file_rules_and_refusing_ones_refuse_the_launch() {
    palisade_tests::require_root();
    let pins = PinDir::new();
    let agent = Agent::with_events(
        &format!(
            "metrics:\n  collect_interval: 1s\npolicy:\n  pin_dir: {}\n",
            pins.0.display()
        ),
        &[],
    );
    let name = unique("files");
    let prefix = name.rsplit_once('-').map_or(name.as_str(), |(a, _)| a);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("run.yaml");
    // reading /etc/passwd is reported, never refused (action log): nothing on the host changes
    let write = |action: &str| {
        std::fs::write(
            &file,
            format!(
                "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {{name: files-run}}\nspec:\n  selector: {{workload: \"{prefix}-*\"}}\n  files:\n    action: {action}\n    deny: [{{paths: [/etc/passwd], access: [read]}}]\n"
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    write("log");
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
        "/bin/sh",
        "-c",
        ": < /etc/passwd; echo ran",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("ran"), "{out}");
    let v = agent.wait_events(1, "the workload's read", |e| {
        e["type"] == "policy_violation" && e["violation"]["policy"] == "files-run"
    });
    assert_eq!(v.len(), 1, "{v:?}");
    let x = &v[0]["violation"];
    assert_eq!(x["hook"], "file", "{x}");
    assert_eq!(x["file"]["path"], "/etc/passwd", "{x}");
    assert_eq!(x["file"]["access"], "read", "{x}");
    assert_eq!(x["action"], "log", "{x}");
    assert_eq!(v[0]["container"]["name"], name.as_str(), "{}", v[0]);

    if host_has_lsm() {
        println!(
            "with BPF-LSM refusing file rules are enforced at launch (policy_files_lsm checks it)"
        );
        return;
    }
    write("errno");
    let name = unique("files");
    let out = run(&[
        "--name",
        &name,
        "--agent-socket",
        &socket,
        "--require-agent",
        "--policy",
        &policy,
        "--",
        "/bin/sh",
        "-c",
        "echo ran",
    ]);
    assert_eq!(out.code, 125, "{out}");
    assert!(
        out.stderr.contains("files_reported_only") || out.stderr.contains("reported only"),
        "says why: {out}"
    );
    assert!(!out.stdout.contains("ran"), "nothing ran: {out}");
}
