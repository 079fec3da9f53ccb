//! The agent tolerates the sandbox of `deploy/palisade.service`: started with only the unit's
//! `CapabilityBoundingSet` and with `NoNewPrivileges` (applied by `setpriv`, as systemd applies
//! them to a root service), it loads every hook group this kernel offers, enforces a policy,
//! reloads it on SIGHUP the way the unit's `ExecReload` sends it (`/bin/kill -HUP $MAINPID`),
//! keeps the old policy when the new file is invalid, attributes connections accepted by a
//! server that listened in another network namespace before it started (which takes entering
//! that namespace), and stops cleanly on SIGTERM.
//!
//! Systemd is not PID 1 on this project's machines, so `systemd-run` cannot start a transient
//! unit with the real properties; the file-system settings (`ProtectSystem`, `ProtectHome`,
//! `PrivateTmp`) are checked by `systemd-analyze verify` and the unit's own lines in
//! `tests/tests/deploy.rs`, and the writable paths they leave are the ones the agent writes.
//!
//! Privileged: root, real kernel.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use palisade_tests::{
    Metrics, TestCgroup, TestNetns, net_workload_bin, palisade_bin, policy::PinDir, require_root,
    stack::http_get, start_server, wait_for,
};

fn unit_setting(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in deploy/palisade.service"))
        .to_owned()
}

/// One capability set line of /proc/PID/status (`CapEff`, `CapBnd`, ...), as a bit mask.
fn cap_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Capability numbers (linux/capability.h) of the names the unit uses.
fn cap_number(name: &str) -> u32 {
    match name {
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_DAC_READ_SEARCH" => 2,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("{other}: add its number here"),
    }
}

fn policy(cgroup: &str, deny: &str) -> String {
    format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: unit\nspec:\n  selector:\n    cgroup: \"{cgroup}\"\n  mode: enforce\n  syscalls:\n    action: kill\n    deny: [{deny}]\n  exec:\n    action: log\n    deny: [\"**/nc\"]\n  network:\n    egress:\n      rules: [{{action: deny, ports: [9], protocol: tcp}}]\n    ingress:\n      rules: [{{action: deny, ports: [9], protocol: tcp}}]\n"
    )
}

#[test]
fn the_agent_runs_reloads_and_stops_under_the_units_capabilities_and_no_new_privileges() {
    require_root();
    let pid1 = std::fs::read_to_string("/proc/1/comm").unwrap_or_default();
    eprintln!(
        "NOTE: PID 1 is `{}`{}: the unit's capability bounding set and NoNewPrivileges are \
         applied with setpriv instead of a transient unit (systemd-run); ProtectSystem, \
         ProtectHome and PrivateTmp are checked by systemd-analyze verify only",
        pid1.trim(),
        if pid1.trim() == "systemd" {
            ""
        } else {
            ", not systemd"
        }
    );
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/palisade.service"),
    )
    .unwrap();
    let caps: Vec<String> = unit_setting(&unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert!(!caps.is_empty());
    assert_eq!(unit_setting(&unit, "NoNewPrivileges"), "yes");
    let reload = unit_setting(&unit, "ExecReload");

    let cg = TestCgroup::new("unit");
    let dir = tempfile::tempdir().unwrap();
    let pins = PinDir::new();
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy(&cg.rel, "kexec_load")).unwrap();
    let cfg = dir.path().join("palisade.yaml");
    std::fs::write(
        &cfg,
        format!(
            "metrics:\n  collect_interval: 1s\npolicy:\n  paths: [{}]\n  pin_dir: {}\n  watch_interval: 0s\n",
            file.display(),
            pins.0.display()
        ),
    )
    .unwrap();
    // A server listening in a network namespace of its own before the agent starts.
    let ns = TestNetns::new("unit");
    let srv = TestCgroup::new("unit-server");
    let server = start_server(&srv, &ns, &["serve-tcp", "127.0.0.1:7006", "1"]);
    let ready = dir.path().join("ready");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let bounding = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut agent = Command::new("setpriv")
        .arg(format!("--bounding-set={bounding}"))
        .args(["--inh-caps=-all", "--no-new-privs", "--"])
        .arg(palisade_bin())
        .arg("agent")
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .arg("--control-socket")
        .arg(dir.path().join("agent.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("setpriv (util-linux): {e}"));
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let addr: SocketAddr = wait_for(Duration::from_secs(60), "the agent to serve", || {
        if let Ok(Some(st)) = agent.try_wait() {
            panic!(
                "the agent exited ({st}) under the unit's capabilities:\n{}",
                agent_log()
            );
        }
        std::fs::read_to_string(&ready)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    });
    // setpriv exec'd the agent: its pid is the child's, with exactly the unit's capabilities.
    let pid = agent.id();
    let want: u64 = caps.iter().map(|c| 1u64 << cap_number(c)).sum();
    assert_eq!(cap_mask(pid, "CapBnd"), want, "bounding set");
    assert_eq!(cap_mask(pid, "CapEff"), want, "effective set");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    let metrics = || {
        let (code, body) = http_get(addr, "/metrics").expect("metrics");
        assert_eq!(code, 200, "{body}\n{}", agent_log());
        Metrics::parse(&body)
    };
    // Every feature the unrestricted `palisade doctor` finds here, the restricted agent has too.
    let doctor = Command::new(palisade_bin()).arg("doctor").output().unwrap();
    let doctor = String::from_utf8_lossy(&doctor.stdout).into_owned();
    let m = metrics();
    for line in doctor.lines() {
        let mut w = line.split_whitespace();
        let (Some(feature), Some(ok)) = (w.next(), w.next()) else {
            continue;
        };
        if ok != "yes" && ok != "no" {
            continue;
        }
        let have = m.value("palisade_kernel_feature", &[("feature", feature)]);
        assert_eq!(
            have,
            Some(if ok == "yes" { 1.0 } else { 0.0 }),
            "feature {feature}: doctor says {ok} without restrictions\n{}",
            agent_log()
        );
    }
    // Every hook group of the policy is in place.
    let hooks = wait_for(Duration::from_secs(20), "the policy's hook groups", || {
        let m = metrics();
        let on: Vec<String> = ["syscalls", "exec", "egress", "ingress"]
            .into_iter()
            .filter(|h| m.value("palisade_policy_hook_attached", &[("hook", h)]) == Some(1.0))
            .map(str::to_owned)
            .collect();
        (on.len() == 4).then_some(on)
    });
    eprintln!("hooks attached under the unit's capabilities: {hooks:?}");

    // The early listener's accepted connection is the server's.
    let st = cg
        .command_in(&ns, net_workload_bin())
        .args(["send-tcp", "127.0.0.1:7006", "2000"])
        .status()
        .unwrap();
    assert!(st.success(), "send-tcp: {st}");
    assert!(server.wait_with_output().unwrap().status.success());
    wait_for(
        Duration::from_secs(20),
        "the early listener's inbound connection",
        || {
            let m = metrics();
            let inbound = m.value(
                "palisade_tcp_connections_total",
                &[
                    ("container", srv.rel.as_str()),
                    ("direction", "inbound"),
                    ("result", "established"),
                ],
            );
            (inbound == Some(1.0)).then_some(())
        },
    );

    // ExecReload: `/bin/kill -HUP $MAINPID`.
    let reloads = |m: &Metrics| m.value("palisade_policy_reloads_total", &[]).unwrap_or(0.0);
    let errors = |m: &Metrics| {
        m.value("palisade_policy_reload_errors_total", &[])
            .unwrap_or(0.0)
    };
    let hup = || {
        let cmd = reload.replace("$MAINPID", &pid.to_string());
        let mut words = cmd.split_whitespace();
        let st = Command::new(words.next().unwrap())
            .args(words)
            .status()
            .unwrap();
        assert!(st.success(), "{cmd}: {st}");
    };
    let before = metrics();
    std::fs::write(&file, policy(&cg.rel, "kexec_load, unshare")).unwrap();
    hup();
    wait_for(Duration::from_secs(20), "the reload on SIGHUP", || {
        (reloads(&metrics()) == reloads(&before) + 1.0).then_some(())
    });
    // An invalid file: rejected, the policy stays in force.
    std::fs::write(
        &file,
        "apiVersion: palisade.dev/v1\nkind: Policy\nspec: [\n",
    )
    .unwrap();
    hup();
    let after = wait_for(Duration::from_secs(20), "the rejected reload", || {
        let m = metrics();
        (errors(&m) == errors(&before) + 1.0).then_some(m)
    });
    assert_eq!(
        after.value(
            "palisade_policy_cgroups",
            &[("policy", "unit"), ("mode", "enforce")]
        ),
        Some(1.0),
        "{}",
        agent_log()
    );

    // KillSignal=SIGTERM: a clean exit.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = wait_for(Duration::from_secs(30), "the agent to stop", || {
        agent.try_wait().ok().flatten()
    });
    assert!(st.success(), "exit after SIGTERM: {st}\n{}", agent_log());
}
