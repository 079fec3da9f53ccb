//! The agent protects itself: its event log holds every container's command lines (0600, no
//! symlinks, a root-owned directory), its control socket answers only root processes outside
//! the containers it polices (0600 in a root-only directory, peers checked, bounded requests
//! and connections), and it adopts pinned enforcement state only from a root-only directory.
use std::{
    io::{BufRead as _, Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream},
    path::Path,
    process::Command,
    time::Duration,
};

use palisade_tests::{
    Agent, TestCgroup, palisade_bin,
    policy::{Setup, wait_applied},
    require_root,
};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `palisade agent ARGS` that must fail at start-up: (exit code, stderr). An agent still
/// running after 60 s did not refuse: it is stopped and the code is -1.
fn agent_refuses(args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut cmd = Command::new(palisade_bin());
    cmd.args(["agent", "--listen", "127.0.0.1:0"]);
    if !args.contains(&"--control-socket") {
        cmd.arg("--control-socket")
            .arg(dir.path().join("agent.sock"));
    }
    let mut child = cmd
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run palisade: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (code, err)
}

#[test]
fn the_event_log_is_readable_by_root_only() {
    let agent = Agent::with_events("", &[]);
    let log = agent.control_socket().with_file_name("events.jsonl");
    palisade_tests::wait_for(Duration::from_secs(10), "the event log", || {
        log.exists().then_some(())
    });
    assert_eq!(mode(&log), 0o600, "{}", log.display());
}

#[test]
fn an_existing_event_log_is_tightened_to_0600() {
    require_root();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let log = dir.path().join("events.jsonl");
    std::fs::write(&log, "").unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644))
        .unwrap_or_else(|e| panic!("{e}"));
    let _agent = Agent::start("", &["--events", log.to_str().unwrap_or_default()]);
    assert_eq!(mode(&log), 0o600);
}

#[test]
fn an_event_log_behind_a_symlink_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "precious\n").unwrap_or_else(|e| panic!("{e}"));
    let link = dir.path().join("events.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap_or_else(|e| panic!("{e}"));
    let (code, err) = agent_refuses(&["--events", link.to_str().unwrap_or_default()]);
    assert!(code > 0, "the agent started (exit {code}): {err}");
    assert!(err.contains("symlink"), "{err}");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
}

#[test]
fn an_event_log_in_a_directory_another_user_owns_is_refused() {
    require_root();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let sub = dir.path().join("theirs");
    std::fs::create_dir(&sub).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::chown(&sub, Some(65534), Some(65534)).unwrap_or_else(|e| panic!("{e}"));
    let log = sub.join("events.jsonl");
    let (code, err) = agent_refuses(&["--events", log.to_str().unwrap_or_default()]);
    assert!(code > 0, "the agent started (exit {code}): {err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(!log.exists());
}

#[test]
fn the_control_socket_is_root_only_from_its_creation() {
    let agent = Agent::start("", &[]);
    assert_eq!(mode(&agent.control_socket()), 0o600);
    drop(agent);
    // a directory the agent creates for it is root-only
    require_root();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let sock = dir.path().join("run/palisade-x/agent.sock");
    let mut child = Command::new(palisade_bin())
        .args(["agent", "--listen", "127.0.0.1:0", "--control-socket"])
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("run palisade: {e}"));
    palisade_tests::wait_for(Duration::from_secs(60), "the control socket", || {
        sock.exists().then_some(())
    });
    let socket_mode = mode(&sock);
    let dir_mode = mode(sock.parent().unwrap_or_else(|| panic!("no parent")));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    assert_eq!(socket_mode, 0o600);
    assert_eq!(dir_mode, 0o700);
    // a directory others can write is refused
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap_or_else(|e| panic!("{e}"));
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("{e}"));
    let path = shared.join("agent.sock");
    let (code, err) = agent_refuses(&["--control-socket", path.to_str().unwrap_or_default()]);
    assert!(code > 0, "the agent started (exit {code}): {err}");
    assert!(err.contains("writable by others"), "{err}");
}

/// `palisade policy status --socket S` run by `cmd`: (exit code, stderr).
fn status_from(mut cmd: Command, sock: &Path) -> (i32, String) {
    let out = cmd
        .args(["policy", "status", "--socket"])
        .arg(sock)
        .output()
        .unwrap_or_else(|e| panic!("palisade policy status: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn requests_from_a_policed_cgroup_are_refused() {
    let cg = TestCgroup::new("selfprot-policed");
    let child = cg.child("inner");
    let s = Setup::new(&format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: watched\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: audit\n  syscalls:\n    action: log\n    deny: [ptrace]\n",
        cg.rel
    ));
    let agent = s.agent("");
    wait_applied(&agent, "watched", cg.id, &["syscalls"]);
    let sock = agent.control_socket();
    // the control: from the test's own cgroup it answers
    let (code, err) = status_from(Command::new(palisade_bin()), &sock);
    assert_eq!(code, 0, "{err}");
    for c in [&cg, &child] {
        let (code, err) = status_from(c.command(palisade_bin()), &sock);
        assert_ne!(code, 0, "a process in {} reached the control socket", c.rel);
        assert!(err.contains("refused"), "{err}");
        let mode = c
            .command(palisade_bin())
            .args(["policy", "mode", "watched", "enforce", "--socket"])
            .arg(&sock)
            .output()
            .unwrap_or_else(|e| panic!("palisade policy mode: {e}"));
        assert!(!mode.status.success(), "mode switched from {}", c.rel);
    }
    let st = palisade_tests::policy::status(&agent);
    assert_eq!(st["policies"][0]["mode"], "audit", "{st}");
}

#[test]
fn requests_from_another_pid_namespace_are_refused() {
    let agent = Agent::start("", &[]);
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--"]).arg(palisade_bin());
    let (code, err) = status_from(cmd, &agent.control_socket());
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("refused"), "{err}");
}

#[test]
fn oversized_and_malformed_requests_cost_nothing() {
    let agent = Agent::start("", &[]);
    let sock = agent.control_socket();
    // 8 MiB without a newline: an error reply, then the connection is closed
    let mut s = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    let chunk = vec![b'x'; 1 << 20];
    for _ in 0..8 {
        if s.write_all(&chunk).is_err() {
            break; // the agent hung up: fine, as long as it said why first
        }
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.contains("\"ok\":false"), "{reply:.200}");
    assert!(reply.contains("longer than"), "{reply:.200}");
    // malformed: an error reply, the connection stays open
    let mut s = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    writeln!(s, "{{not json").unwrap_or_else(|e| panic!("{e}"));
    writeln!(s, "{{\"op\":\"ping\"}}").unwrap_or_else(|e| panic!("{e}"));
    let mut lines = std::io::BufReader::new(s).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("bad request"), "{first}");
    let second = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(second.contains("\"ok\":true"), "{second}");
    // and the agent still serves
    assert!(agent.scrape().contains("palisade_build_info"));
}

#[test]
fn connections_are_bounded() {
    let agent = Agent::start("", &[]);
    let sock = agent.control_socket();
    // hold the limit's worth of idle connections open
    let held: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&sock).unwrap_or_else(|e| panic!("connect: {e}")))
        .collect();
    // one more: told why and closed
    let mut extra = UnixStream::connect(&sock).unwrap_or_else(|e| panic!("{e}"));
    extra.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut reply = String::new();
    let _ = extra.read_to_string(&mut reply);
    assert!(reply.contains("too many connections"), "{reply}");
    drop(held);
    // room again once they are gone
    palisade_tests::wait_for(Duration::from_secs(10), "a free connection slot", || {
        let mut s = UnixStream::connect(&sock).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        writeln!(s, "{{\"op\":\"ping\"}}").ok()?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).ok()?;
        line.contains("\"ok\":true").then_some(())
    });
}

#[test]
fn a_pin_directory_others_can_write_is_not_adopted() {
    let cg = TestCgroup::new("selfprot-pins");
    let s = Setup::new(&format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: pinned\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: audit\n  syscalls:\n    action: log\n    deny: [ptrace]\n",
        cg.rel
    ));
    {
        let agent = s.agent("");
        wait_applied(&agent, "pinned", cg.id, &["syscalls"]);
        // created root-only
        assert_eq!(mode(&s.pins.0) & 0o077, 0, "{}", s.pins.0.display());
        agent.kill9();
    }
    std::fs::set_permissions(&s.pins.0, std::fs::Permissions::from_mode(0o777))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = dir.path().join("palisade.yaml");
    std::fs::write(&cfg, s.config("")).unwrap_or_else(|e| panic!("{e}"));
    let (code, err) = agent_refuses(&["--config", cfg.to_str().unwrap_or_default()]);
    assert!(code > 0, "the agent started (exit {code}): {err}");
    assert!(err.contains("0700"), "{err}");
    let _ = std::fs::set_permissions(&s.pins.0, std::fs::Permissions::from_mode(0o700));
}
