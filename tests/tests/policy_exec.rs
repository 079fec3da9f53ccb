//! Exec rules match the file actually executed (issue 11, rows 4–6): its resolved path as the
//! process sees it, not the string given to execve. Other names of a denied file (repeated
//! slashes, `..`, symlinks, a relative name, an fd), shebang scripts, fileless execs from a
//! memfd and deleted files, and the best-effort fallback when the kernel's BTF is missing.
//! Each test has its own agent, pin directory and cgroup.
use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use palisade_tests::{
    Agent, TestCgroup,
    policy::{Setup, cli, exec_workload_bin, outcome, status, violations, wait_applied},
};

const KILLED: Result<i32, i32> = Err(9);
const RAN: Result<i32, i32> = Ok(0);

fn policy(name: &str, cg: &TestCgroup, body: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: {name}\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: enforce\n{body}",
        cg.rel
    )
}

/// A scratch directory under /tmp with its canonical path (rules match resolved paths).
fn scratch() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let p = std::fs::canonicalize(d.path()).unwrap_or_else(|e| panic!("canonicalize: {e}"));
    (d, p)
}

fn text(p: &Path) -> String {
    p.display().to_string()
}

fn script(path: &Path, shebang: &str) {
    std::fs::write(path, format!("#!{shebang}\nexit 0\n")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("{e}"));
}

fn copy(from: &str, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {from}: {e}"));
}

fn symlink(target: &Path, link: &Path) {
    std::os::unix::fs::symlink(target, link).unwrap_or_else(|e| panic!("symlink: {e}"));
}

/// The violation whose `exec_given` is `given` (panics with all of them otherwise).
fn by_given<'a>(v: &'a [serde_json::Value], given: &str) -> &'a serde_json::Value {
    v.iter()
        .map(|e| &e["violation"])
        .find(|x| x["exec_given"] == given)
        .unwrap_or_else(|| panic!("no violation with exec_given {given}: {v:#?}"))
}

/// The device of the superblock `path` lives on, as the kernel has it (`i_sb->s_dev`): the
/// `major:minor` of its mount in /proc/self/mountinfo, found by the mount id statx gives.
/// That is what `exec_dev` reports; `stat`'s `st_dev` is the same on block filesystems and
/// tmpfs but is the lower layer's on overlayfs (the 6.1 VM's /usr: 0:41 against 0:39).
fn superblock_dev(path: &Path) -> String {
    let c = std::ffi::CString::new(text(path)).unwrap_or_else(|e| panic!("{e}"));
    // SAFETY: statx is plain data; all zeroes is a valid value
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statx buffer that outlives the call
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_MNT_ID, &mut stx) };
    assert_eq!(
        r,
        0,
        "statx {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    assert_ne!(
        stx.stx_mask & libc::STATX_MNT_ID,
        0,
        "statx gave no mount id"
    );
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_else(|e| panic!("{e}"));
    info.lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&stx.stx_mnt_id.to_string().as_str()))
        .and_then(|f| f.get(2).map(|d| (*d).to_owned()))
        .unwrap_or_else(|| {
            panic!(
                "mount {} of {} not in mountinfo",
                stx.stx_mnt_id,
                path.display()
            )
        })
}

fn agent(s: &Setup) -> Agent {
    s.agent("  rate_limit_burst: 100\n")
}

#[test]
fn other_names_of_a_denied_file_are_killed_too() {
    let cg = TestCgroup::new("exec-names");
    let (_d, dir) = scratch();
    let link = dir.join("my-id");
    symlink(Path::new("/usr/bin/id"), &link);
    let s = Setup::new(&policy(
        "no-id",
        &cg,
        "  exec:\n    action: kill\n    deny: [/usr/bin/id]\n",
    ));
    let agent = agent(&s);
    wait_applied(&agent, "no-id", cg.id, &["exec"]);
    let given = [
        "/usr/bin/id",        // the name in the rule
        "/usr//bin/id",       // row 4: repeated slashes
        "/usr/bin/../bin/id", // row 5: `..`
        &text(&link),         // row 6: a symlink to it
        "/bin/id",            // a symlinked directory (/bin -> usr/bin here)
    ];
    for g in given {
        assert_eq!(outcome(&mut cg.command(g)), KILLED, "{g} must be killed");
    }
    // a relative name, resolved against the working directory
    let mut rel = cg.command("./id");
    rel.current_dir("/usr/bin");
    assert_eq!(outcome(&mut rel), KILLED, "./id in /usr/bin");
    assert_eq!(outcome(&mut cg.command("/usr/bin/true")), RAN);
    let v = violations(&agent, cg.id, given.len() + 1);
    assert_eq!(v.len(), given.len() + 1, "{v:#?}");
    let meta = std::fs::metadata("/usr/bin/id").unwrap_or_else(|e| panic!("{e}"));
    let dev = superblock_dev(Path::new("/usr/bin/id"));
    for g in given.iter().copied().chain(["./id"]) {
        let x = by_given(&v, g);
        assert_eq!(x["exec"], "/usr/bin/id", "{x}");
        assert_eq!(x["exec_match"], "file", "{x}");
        assert_eq!(x["rule"], "exec.deny:/usr/bin/id", "{x}");
        assert_eq!(x["action"], "kill", "{x}");
        assert_eq!(x["exec_dev"], dev, "{x}");
        assert_eq!(x["exec_ino"], meta.ino(), "{x}");
        assert!(x.get("interpreter").is_none(), "{x}");
    }
}

#[test]
fn a_deny_on_a_script_or_its_interpreter_holds() {
    let cg = TestCgroup::new("exec-script-deny");
    let (_d, dir) = scratch();
    std::fs::create_dir(dir.join("sub")).unwrap_or_else(|e| panic!("{e}"));
    let tool = dir.join("tool.sh");
    script(&tool, "/bin/sh");
    let link = dir.join("innocent");
    symlink(&tool, &link);
    let via_env = dir.join("via-env.sh");
    script(&via_env, "/usr/bin/env sh");
    let fine = dir.join("fine.sh");
    script(&fine, "/bin/sh");
    let s = Setup::new(&policy(
        "no-tool",
        &cg,
        &format!(
            "  exec:\n    action: kill\n    deny: [\"{}\", /usr/bin/env]\n",
            tool.display()
        ),
    ));
    let agent = agent(&s);
    wait_applied(&agent, "no-tool", cg.id, &["exec"]);
    let dotdot = format!("{}/sub/../tool.sh", dir.display());
    for g in [text(&tool), text(&link), dotdot.clone(), text(&via_env)] {
        assert_eq!(outcome(&mut cg.command(&g)), KILLED, "{g} must be killed");
    }
    assert_eq!(
        outcome(&mut cg.command(&fine)),
        RAN,
        "a script no rule names"
    );
    let v = violations(&agent, cg.id, 4);
    for g in [text(&tool), text(&link), dotdot] {
        let x = by_given(&v, &g);
        assert_eq!(x["exec"], text(&tool), "the script's own path: {x}");
        assert_eq!(x["interpreter"], "/usr/bin/dash", "{x}");
        assert_eq!(x["rule"], format!("exec.deny:{}", tool.display()), "{x}");
    }
    let x = by_given(&v, &text(&via_env));
    assert_eq!(x["exec"], text(&via_env), "{x}");
    assert_eq!(x["interpreter"], "/usr/bin/env", "{x}");
    assert_eq!(x["rule"], "exec.deny:/usr/bin/env", "{x}");
}

#[test]
fn execveat_through_an_fd_is_matched_on_the_file() {
    let cg = TestCgroup::new("exec-fd");
    let s = Setup::new(&policy(
        "no-id-fd",
        &cg,
        "  exec:\n    action: kill\n    deny: [/usr/bin/id]\n",
    ));
    let agent = agent(&s);
    wait_applied(&agent, "no-id-fd", cg.id, &["exec"]);
    let w = exec_workload_bin();
    let run = |args: &[&str]| outcome(cg.command(&w).args(args));
    assert_eq!(run(&["fd", "/usr/bin/id"]), KILLED, "fexecve");
    assert_eq!(
        run(&["at", "/usr/bin", "id"]),
        KILLED,
        "execveat(dirfd, id)"
    );
    assert_eq!(run(&["at", "/usr", "bin/../bin/id"]), KILLED);
    assert_eq!(run(&["fd", "/usr/bin/true"]), RAN);
    let v = violations(&agent, cg.id, 3);
    for e in &v {
        let x = &e["violation"];
        assert_eq!(x["exec"], "/usr/bin/id", "{x}");
        assert!(
            x["exec_given"]
                .as_str()
                .is_some_and(|g| g.starts_with("/dev/fd/")),
            "what execveat names: {x}"
        );
    }
}

#[test]
fn an_allow_list_refuses_what_it_cannot_name() {
    let cg = TestCgroup::new("exec-allow");
    let (_d, dir) = scratch();
    let (ok, other) = (dir.join("allowed"), dir.join("other"));
    for d in [&ok, &other] {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
    }
    copy("/usr/bin/true", &ok.join("true"));
    copy("/usr/bin/true", &other.join("true"));
    copy("/usr/bin/true", &ok.join("gone"));
    symlink(&other.join("true"), &ok.join("link"));
    script(&ok.join("s.sh"), "/bin/sh");
    script(&other.join("s.sh"), "/bin/sh");
    let w = exec_workload_bin();
    let w = std::fs::canonicalize(&w).unwrap_or_else(|e| panic!("{e}"));
    // /bin is a symlink to usr/bin on this host: the rules name the resolved directory
    let s = Setup::new(&policy(
        "only-these",
        &cg,
        &format!(
            "  exec:\n    action: kill\n    allow: [/usr/bin/*, \"{}/*\", \"{}\"]\n",
            ok.display(),
            w.display()
        ),
    ));
    let agent = agent(&s);
    wait_applied(&agent, "only-these", cg.id, &["exec"]);
    let cases: Vec<(String, Vec<String>, Result<i32, i32>)> = vec![
        ("/usr/bin/true".into(), vec![], RAN),
        ("/bin/true".into(), vec![], RAN),
        (text(&ok.join("true")), vec![], RAN),
        (text(&other.join("true")), vec![], KILLED),
        // the name is in an allowed directory, the file is not
        (text(&ok.join("link")), vec![], KILLED),
        (text(&ok.join("s.sh")), vec![], RAN),
        // its interpreter is allowed, the script is not
        (text(&other.join("s.sh")), vec![], KILLED),
        // a script given to an allowed interpreter is the interpreter's data
        ("/bin/sh".into(), vec![text(&other.join("s.sh"))], RAN),
        (text(&w), vec!["fd".into(), text(&ok.join("true"))], RAN),
        (
            text(&w),
            vec!["fd".into(), text(&other.join("true"))],
            KILLED,
        ),
        (
            text(&w),
            vec!["memfd".into(), "payload".into(), "/usr/bin/true".into()],
            KILLED,
        ),
        (
            text(&w),
            vec!["fd-unlinked".into(), text(&ok.join("gone"))],
            KILLED,
        ),
    ];
    for (prog, args, want) in &cases {
        assert_eq!(
            outcome(cg.command(prog).args(args)),
            *want,
            "{prog} {args:?}"
        );
    }
    let killed = cases.iter().filter(|c| c.2 == KILLED).count();
    let v = violations(&agent, cg.id, killed);
    assert_eq!(v.len(), killed, "{v:#?}");
    for e in &v {
        assert_eq!(e["violation"]["rule"], "exec.allow", "{e}");
    }
    let x = by_given(&v, &text(&ok.join("link")));
    assert_eq!(x["exec"], text(&other.join("true")), "{x}");
    let x = by_given(&v, &text(&other.join("s.sh")));
    assert_eq!(x["exec"], text(&other.join("s.sh")), "{x}");
    assert_eq!(x["interpreter"], "/usr/bin/dash", "{x}");
    let memfd = v
        .iter()
        .map(|e| &e["violation"])
        .find(|x| x["exec"] == "memfd:payload")
        .unwrap_or_else(|| panic!("a memfd:payload violation: {v:#?}"));
    assert_eq!(memfd["exec_unresolved"], "detached", "{memfd}");
    let gone = v
        .iter()
        .map(|e| &e["violation"])
        .find(|x| x["exec_unresolved"] == "deleted")
        .unwrap_or_else(|| panic!("a deleted-file violation: {v:#?}"));
    assert_eq!(gone["exec"], format!("{}/gone (deleted)", ok.display()));
}

#[test]
fn without_kernel_btf_exec_rules_match_the_path_given_and_say_so() {
    let cg = TestCgroup::new("exec-nobtf");
    let s = Setup::new(&policy(
        "no-id-given",
        &cg,
        "  exec:\n    action: kill\n    deny: [/usr/bin/id]\n",
    ));
    let agent = s.agent("  kernel_btf: /nonexistent/vmlinux\n");
    wait_applied(&agent, "no-id-given", cg.id, &["exec"]);
    let st = status(&agent);
    assert_eq!(st["exec_match"]["mode"], "path_given", "{st}");
    assert!(
        st["exec_match"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("/nonexistent/vmlinux")),
        "{st}"
    );
    assert!(
        agent.log().contains("best effort"),
        "a warning at load: {}",
        agent.log()
    );
    assert_eq!(outcome(&mut cg.command("/usr/bin/id")), KILLED);
    // what the fallback cannot see (and why it is labelled best effort)
    assert_eq!(outcome(&mut cg.command("/usr//bin/id")), RAN);
    let v = violations(&agent, cg.id, 1);
    assert_eq!(v[0]["violation"]["exec"], "/usr/bin/id");
    assert_eq!(v[0]["violation"]["exec_match"], "path_given");
    let (code, out, err) = cli(&agent, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("best effort"), "{out}");
}

#[test]
fn policy_check_says_how_exec_rules_match_on_this_host() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = d.path().join("p.yaml");
    std::fs::write(
        &f,
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  selector: {workload: w}\n  exec:\n    allow: [/bin/*, /usr/sbin/*]\n",
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
        stdout.contains("exec rules match the file executed"),
        "{stdout}"
    );
    // this host has a merged /usr: /bin is a symlink, and rules see the resolved path
    assert!(stderr.contains("p.yaml:7:"), "{stderr}");
    assert!(
        stderr.contains("/bin is a symlink to usr/bin on this host"),
        "{stderr}"
    );
    assert!(stderr.contains("/usr/bin/*"), "{stderr}");
    assert!(!stderr.contains("/usr/sbin"), "{stderr}");
    // a pattern that is not a canonical path could never match: an error
    std::fs::write(
        &f,
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  selector: {workload: w}\n  exec:\n    deny: [/usr//bin/id, /usr/bin/../bin/id]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(palisade_tests::palisade_bin())
        .args(["policy", "check"])
        .arg(&f)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.matches("not a canonical path").count(),
        2,
        "{stderr}"
    );
}

#[test]
fn pinned_state_of_the_previous_layout_is_refused_and_keeps_enforcing() {
    use aya::maps::{Array, Map, MapData};
    use palisade_common::{names, policy};
    let cg = TestCgroup::new("exec-abi");
    let s = Setup::new(&policy(
        "abi",
        &cg,
        "  exec:\n    action: kill\n    deny: [/usr/bin/id]\n",
    ));
    let agent = s.agent("");
    wait_applied(&agent, "abi", cg.id, &["exec"]);
    assert!(agent.stop().success());
    // what an agent of the previous layout left (its exec events carried the path given only)
    let pin = s.pins.0.join("maps").join(names::MAP_POLICY_CONFIG);
    let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    let mut cfg: Array<_, u64> =
        Array::try_from(Map::Array(data)).unwrap_or_else(|e| panic!("{e}"));
    cfg.set(policy::config::ABI, u64::from(policy::POLICY_ABI - 1), 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let agent = s.agent("");
    let want = format!(
        "from another Palisade version (table layout {}, this agent uses {})",
        policy::POLICY_ABI - 1,
        policy::POLICY_ABI
    );
    palisade_tests::wait_for(std::time::Duration::from_secs(20), &want, || {
        agent.log().contains(&want).then_some(())
    });
    assert!(
        agent.log().contains("palisade agent --cleanup"),
        "{}",
        agent.log()
    );
    // refusing it changes nothing: the pinned rules still hold
    assert_eq!(outcome(&mut cg.command("/usr/bin/id")), KILLED);
}

/// Audit mode, a script whose own path and interpreter are both denied: each exec is one
/// violation (one event, one counter increment), on the tracepoint tier and with BPF-LSM
/// (whose `bprm_check_security` sees a script twice: its own file, then its interpreter).
#[test]
fn audit_mode_counts_a_script_exec_once_when_script_and_interpreter_are_denied() {
    let cg = TestCgroup::new("exec-audit-script");
    let (_d, dir) = scratch();
    let tool = dir.join("tool.sh");
    script(&tool, "/bin/sh");
    let name = "audit-script";
    let s = Setup::new(&palisade_tests::policy::doc(
        name,
        &cg,
        "audit",
        &format!(
            "  exec:\n    action: errno\n    deny: [\"{}\", /usr/bin/dash]\n",
            tool.display()
        ),
    ));
    let agent = agent(&s);
    wait_applied(&agent, name, cg.id, &["exec"]);
    const N: usize = 3;
    for _ in 0..N {
        assert_eq!(outcome(&mut cg.command(&tool)), RAN, "audit mode runs it");
    }
    // a last exec no rule names: every violation of the script is in by the time it is
    assert_eq!(outcome(&mut cg.command("/usr/bin/true")), RAN);
    let count =
        || palisade_tests::policy::violation_count(&agent, name, "would_block", &cg.rel) as usize;
    palisade_tests::wait_for(
        std::time::Duration::from_secs(20),
        "the violation counter",
        || (count() >= N).then_some(()),
    );
    assert_eq!(count(), N, "{N} execs, one violation each");
    let v = violations(&agent, cg.id, N);
    assert_eq!(v.len(), N, "{v:#?}");
    for e in &v {
        let x = &e["violation"];
        assert_eq!(x["exec"], text(&tool), "{x}");
        assert_eq!(x["action"], "would_block", "{x}");
    }
}
