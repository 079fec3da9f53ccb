//! Privileged tests of `palisade run`: isolation, limits, privileges, exit codes and signals,
//! cleanup, the agent handshake and replicas, with real workloads in busybox root filesystems.
//!
//! Every test uses its own workload names, so they run in parallel on one kernel.
use std::time::Duration;

use palisade_tests::{
    Agent, Metrics,
    launch::{
        CgroupMarkers, Rootfs, Running, assert_clean, assert_signals_forwarded, cgroup_dir,
        data_dir, ns_pid, probe_bin, run, unique, wait_for_pids,
    },
    wait_for, workload_bin,
};

fn s(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn isolated_pid_uts_mount_ipc_cgroup_and_network_namespaces() {
    let name = unique("iso");
    let root = Rootfs::busybox();
    let out = run(&[
        "--name",
        &name,
        "--rootfs",
        &s(&root.path),
        "--",
        "/bin/sh",
        "-c",
        "echo pid=$$; grep PPid /proc/$$/status; echo init=$(cat /proc/1/comm); \
         echo host=$(hostname); echo cg=$(grep '^0::' /proc/self/cgroup); \
         echo nets=$(ls /sys/class/net); echo loflags=$(cat /sys/class/net/lo/flags); \
         echo ipc=$(ls /dev/mqueue | wc -l); \
         cut -d' ' -f5 /proc/self/mountinfo | sed 's/^/mount=/'",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let lines = out.lines();
    assert!(
        lines.contains(&"pid=2"),
        "the init is pid 1, the command 2\n{out}"
    );
    assert!(lines.contains(&"PPid:\t1"), "{out}");
    assert!(lines.contains(&"init=palisade"), "{out}");
    assert!(lines.contains(&format!("host={name}").as_str()), "{out}");
    assert!(
        lines.contains(&"cg=0::/"),
        "cgroup namespace rooted at the workload\n{out}"
    );
    assert!(lines.contains(&"nets=lo"), "only loopback\n{out}");
    assert!(lines.contains(&"loflags=0x9"), "loopback up\n{out}");
    // only the container's own mounts: /, /proc, /dev, /sys and below
    let mounts: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("mount="))
        .collect();
    assert!(mounts.contains(&"/") && mounts.contains(&"/proc"), "{out}");
    for m in &mounts {
        assert!(
            *m == "/" || ["/proc", "/dev", "/sys"].iter().any(|p| m.starts_with(p)),
            "host mount {m} visible\n{out}"
        );
    }
    assert_clean(&name, Some(&root.path));
}

#[test]
fn hostname_and_host_network_on_request() {
    let name = unique("host");
    let root = Rootfs::busybox();
    let out = run(&[
        "--name",
        &name,
        "--rootfs",
        &s(&root.path),
        "--hostname",
        "box",
        "--net",
        "host",
        "--",
        "/bin/sh",
        "-c",
        "hostname; ls /sys/class/net | wc -l",
    ]);
    assert_eq!(out.code, 0, "{out}");
    let lines = out.lines();
    assert_eq!(lines[0], "box");
    let ifaces: u32 = lines[1].trim().parse().unwrap();
    assert!(
        ifaces > 1,
        "the host's interfaces are visible with --net host\n{out}"
    );
    assert_clean(&name, Some(&root.path));
}

#[test]
fn without_a_rootfs_the_host_files_are_seen_in_private_namespaces() {
    let name = unique("hostfs");
    let marker = data_dir().join("README.md");
    let out = run(&[
        "--name",
        &name,
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "echo $$; test -f {} && echo host-files; ls /proc | grep -c '^[0-9]'",
            s(&marker)
        ),
    ]);
    assert_eq!(out.code, 0, "{out}");
    let lines = out.lines();
    assert_eq!(lines[0], "2", "{out}");
    assert_eq!(lines[1], "host-files");
    // init, sh, ls, grep: a fresh /proc shows the pid namespace only
    let n: u32 = lines[2].parse().unwrap();
    assert!(n <= 5, "{n} processes visible\n{out}");
    assert_clean(&name, None);
}

#[test]
fn only_the_default_devices_can_be_opened() {
    let name = unique("dev");
    let disk = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|d| !d.starts_with("loop") && std::path::Path::new(&format!("/dev/{d}")).exists())
        .expect("a block device");
    let out = run(&[
        "--name",
        &name,
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "echo x > /dev/null && echo null-ok; head -c0 /dev/zero && echo zero-ok; \
             for d in /dev/{disk} /dev/tty0 /dev/loop0; do [ -e $d ] || continue; \
             head -c0 $d 2>/dev/null && echo $d-open || echo $d-denied; done"
        ),
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("null-ok") && out.stdout.contains("zero-ok"),
        "{out}"
    );
    assert!(
        !out.stdout.contains("-open"),
        "root opened a device outside the default set\n{out}"
    );
    assert!(out.stdout.contains(&format!("/dev/{disk}-denied")), "{out}");
    assert_clean(&name, None);
}

#[test]
fn a_memory_hog_is_oom_killed_at_the_limit() {
    let name = unique("oom");
    let out = run(&[
        "--name",
        &name,
        "--memory",
        "32M",
        "--",
        &s(&probe_bin()),
        "hog",
    ]);
    assert_eq!(out.code, 128 + libc::SIGKILL, "OOM-killed\n{}", out.stderr);
    let held: u64 = out.lines().last().and_then(|l| l.parse().ok()).unwrap();
    assert!(
        (16..=32).contains(&held),
        "the hog held {held} MiB under a 32 MiB limit"
    );
    assert_clean(&name, None);
}

#[test]
fn a_fork_bomb_stops_at_the_pids_limit() {
    let name = unique("pids");
    let out = run(&[
        "--name",
        &name,
        "--pids",
        "16",
        "--",
        &s(&probe_bin()),
        "fork-bomb",
    ]);
    assert_eq!(out.code, 0, "{out}");
    // 16 = the init + the bomb + 14 children
    assert_eq!(out.stdout.trim(), "14", "{out}");
    assert_clean(&name, None);
}

fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

#[test]
fn half_a_cpu_is_throttled_by_the_cfs_quota() {
    let name = unique("cpu");
    let mut w = Running::start(&[
        "--name",
        &name,
        "--cpus",
        "0.5",
        "--",
        &s(&probe_bin()),
        "spin",
    ]);
    assert_eq!(w.line(), "spinning");
    let dir = cgroup_dir(&name, "cpu");
    let v1 = dir.join("cpu.cfs_quota_us").exists();
    if v1 {
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.cfs_quota_us"))
                .unwrap()
                .trim(),
            "50000"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.cfs_period_us"))
                .unwrap()
                .trim(),
            "100000"
        );
    } else {
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap().trim(),
            "50000 100000"
        );
    }
    // a spinning process uses its 50 ms per 100 ms period and is then throttled, every period
    let stat = wait_for(Duration::from_secs(60), "three throttled periods", || {
        let text = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        (stat_value(&text, "nr_throttled ")? >= 3).then_some(text)
    });
    let throttled =
        stat_value(&stat, "throttled_time ").or_else(|| stat_value(&stat, "throttled_usec "));
    assert!(throttled.unwrap_or(0) > 0, "{stat}");
    w.signal(libc::SIGTERM);
    let out = w.wait();
    assert_eq!(
        out.code,
        128 + libc::SIGTERM,
        "SIGTERM forwarded, the spinner dies of it\n{out}"
    );
    assert_clean(&name, None);
}

#[test]
fn privileges_are_reduced() {
    let status = "grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; id -u; id -g; id -G";
    let name = unique("priv");
    let out = run(&["--name", &name, "--", "/bin/sh", "-c", status]);
    assert_eq!(out.code, 0, "{out}");
    let lines = out.lines();
    // CAP_KILL, CAP_NET_BIND_SERVICE, CAP_AUDIT_WRITE: the OCI default set
    assert!(lines.contains(&"CapEff:\t0000000020000420"), "{out}");
    assert!(lines.contains(&"CapBnd:\t0000000020000420"), "{out}");
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{out}");
    assert!(lines.contains(&"Seccomp:\t2"), "{out}");
    assert_eq!(&lines[lines.len() - 3..], ["0", "0", "0"]);
    assert_clean(&name, None);

    // the init (pid 1) keeps nothing either: no capabilities, no_new_privs, its own filter
    let name = unique("init");
    let out = run(&[
        "--name",
        &name,
        "--",
        "/bin/sh",
        "-c",
        "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status",
    ]);
    assert_eq!(
        out.lines(),
        [
            "CapEff:\t0000000000000000",
            "CapBnd:\t0000000000000000",
            "NoNewPrivs:\t1",
            "Seccomp:\t2"
        ],
        "{out}"
    );

    let name = unique("user");
    let out = run(&[
        "--name",
        &name,
        "--user",
        "1000:1001",
        "--",
        "/bin/sh",
        "-c",
        status,
    ]);
    assert_eq!(out.code, 0, "{out}");
    let lines = out.lines();
    assert!(lines.contains(&"CapEff:\t0000000000000000"), "{out}");
    assert!(lines.contains(&"CapPrm:\t0000000000000000"), "{out}");
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{out}");
    assert_eq!(&lines[lines.len() - 3..], ["1000", "1001", "1001"], "{out}");
    assert_clean(&name, None);

    let name = unique("unconf");
    let out = run(&[
        "--name",
        &name,
        "--seccomp",
        "unconfined",
        "--",
        "/bin/sh",
        "-c",
        status,
    ]);
    assert!(out.lines().contains(&"Seccomp:\t0"), "{out}");
}

#[test]
fn exit_codes_are_the_workloads() {
    for (script, code) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("kill -KILL $$", 128 + libc::SIGKILL),
        ("kill -SEGV $$", 128 + libc::SIGSEGV),
    ] {
        let name = unique("exit");
        let out = run(&["--name", &name, "--", "/bin/sh", "-c", script]);
        assert_eq!(out.code, code, "{script}\n{out}");
        assert_clean(&name, None);
    }
}

#[test]
fn sigterm_sigint_and_sighup_are_forwarded_to_the_workload() {
    assert_signals_forwarded(&[
        (libc::SIGTERM, "TERM"),
        (libc::SIGINT, "INT"),
        (libc::SIGHUP, "HUP"),
    ]);
}

#[test]
fn the_init_reaps_orphaned_zombies() {
    let name = unique("zombie");
    let root = Rootfs::busybox();
    // the orphan's parent exits at once; the orphan is re-parented to pid 1, exits, and must
    // disappear from /proc (a zombie stays there until its parent reaps it)
    let out = run(&[
        "--name",
        &name,
        "--rootfs",
        &s(&root.path),
        "--",
        "/bin/sh",
        "-c",
        "sh -c 'sleep 0.1 & echo $! > /tmp/orphan'; p=$(cat /tmp/orphan); i=0; \
         while [ -e /proc/$p ]; do i=$((i+1)); if [ $i -gt 3000 ]; then grep State /proc/$p/status; exit 9; fi; sleep 0.01; done; echo reaped",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout.trim(), "reaped");
    assert_clean(&name, Some(&root.path));
}

#[test]
fn nothing_is_left_after_success_failure_or_kill_9() {
    let root = Rootfs::busybox();
    for (script, code) in [("true", 0), ("false", 1)] {
        let name = unique("clean");
        let out = run(&[
            "--name",
            &name,
            "--rootfs",
            &s(&root.path),
            "--memory",
            "64M",
            "--pids",
            "32",
            "--cpus",
            "1",
            "--",
            "/bin/sh",
            "-c",
            script,
        ]);
        assert_eq!(out.code, code, "{out}");
        assert_clean(&name, Some(&root.path));
    }
    // kill -9 of the workload, then of the init, from the host
    for victim_ns_pid in [2, 1] {
        let name = unique("kill9");
        let mut w = Running::start(&[
            "--name",
            &name,
            "--rootfs",
            &s(&root.path),
            "--memory",
            "64M",
            "--",
            "/bin/sh",
            "-c",
            "echo ready; exec sleep 1000",
        ]);
        assert_eq!(w.line(), "ready");
        let pids = wait_for_pids(&name, 2);
        let victim = pids
            .iter()
            .copied()
            .find(|p| ns_pid(*p) == Some(victim_ns_pid))
            .unwrap_or_else(|| panic!("no pid {victim_ns_pid} among {pids:?}"));
        // SAFETY: killing a process of our own test workload.
        unsafe { libc::kill(victim, libc::SIGKILL) };
        let out = w.wait();
        assert_eq!(out.code, 128 + libc::SIGKILL, "{out}");
        assert_clean(&name, Some(&root.path));
    }
}

/// `palisade run --name NAME` of a shell that sleeps, once it has started.
fn sleeper(name: &str) -> Running {
    let mut w = Running::start(&[
        "--name",
        name,
        "--",
        "/bin/sh",
        "-c",
        "echo ready; exec sleep 1000",
    ]);
    assert_eq!(w.line(), "ready");
    w
}

#[test]
fn a_killed_launcher_leaves_empty_cgroups_that_the_next_run_removes() {
    let name = unique("stale");
    let mut w = sleeper(&name);
    let _ = w.child.kill(); // SIGKILL: no cleanup runs
    let _ = w.child.wait();
    // the init dies with the launcher (PR_SET_PDEATHSIG), and the pid namespace with it
    let procs = cgroup_dir(&name, "unified").join("cgroup.procs");
    wait_for(
        Duration::from_secs(30),
        "the workload to die with its launcher",
        || {
            std::fs::read_to_string(&procs)
                .ok()
                .filter(|p| p.trim().is_empty())
        },
    );
    assert!(
        cgroup_dir(&name, "unified").exists(),
        "the empty cgroup stays (documented)"
    );
    // a cgroup made under it, holding a process that is not the workload's: the name is
    // still in use, and nothing of it is removed or killed
    let inner = cgroup_dir(&name, "unified").join("left/deeper");
    std::fs::create_dir_all(&inner).unwrap_or_else(|e| panic!("mkdir {}: {e}", inner.display()));
    let mut other = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap_or_else(|e| panic!("spawn sleep: {e}"));
    std::fs::write(inner.join("cgroup.procs"), other.id().to_string())
        .unwrap_or_else(|e| panic!("move sleep into {}: {e}", inner.display()));
    let out = run(&["--name", &name, "--", "/bin/true"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("already running"), "{out}");
    assert_eq!(
        other.try_wait().ok().flatten(),
        None,
        "the other process was killed"
    );
    let _ = other.kill();
    let _ = other.wait();
    wait_for(
        Duration::from_secs(30),
        "the sleep to leave its cgroup",
        || {
            std::fs::read_to_string(inner.join("cgroup.procs"))
                .ok()
                .filter(|p| p.trim().is_empty())
        },
    );
    // the empty tree, children first, goes before the next launch
    let out = run(&["--name", &name, "--", "/bin/true"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stderr.contains("removed the empty cgroups"), "{out}");
    assert_clean(&name, None);
}

#[test]
fn cgroups_made_under_the_workloads_cgroup_go_with_it() {
    let name = unique("nested");
    let mut w = sleeper(&name);
    // what a nested runtime or systemd leaves: cgroups of its own, two levels deep, in every
    // hierarchy, one of them holding the workload's sleep
    let pids = wait_for_pids(&name, 2);
    for h in palisade_tests::launch::hierarchies() {
        let top = h.join("palisade").join(&name);
        if top.exists() {
            let deeper = top.join("inner/deeper");
            std::fs::create_dir_all(&deeper)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", deeper.display()));
        }
    }
    let deeper = cgroup_dir(&name, "unified").join("inner/deeper");
    let sleep = pids
        .iter()
        .copied()
        .find(|p| ns_pid(*p) != Some(1))
        .unwrap_or_else(|| panic!("no sleep among {pids:?}"));
    std::fs::write(deeper.join("cgroup.procs"), sleep.to_string())
        .unwrap_or_else(|e| panic!("move {sleep} into {}: {e}", deeper.display()));
    w.signal(libc::SIGTERM);
    let out = w.wait();
    assert_eq!(out.code, 128 + libc::SIGTERM, "{out}");
    assert!(!out.stderr.contains("cannot remove"), "{out}");
    assert_clean(&name, None);
}

#[test]
fn a_running_workload_name_is_refused() {
    let name = unique("busy");
    let mut w = sleeper(&name);
    let out = run(&["--name", &name, "--", "/bin/true"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("already running"), "{out}");
    w.signal(libc::SIGTERM);
    assert_eq!(w.wait().code, 128 + libc::SIGTERM);
    assert_clean(&name, None);
}

fn syscalls(m: &Metrics, container: &str, syscall: &str) -> Option<f64> {
    m.value(
        "palisade_syscalls_total",
        &[("container", container), ("syscall", syscall)],
    )
}

#[test]
fn the_agent_names_and_counts_each_replica_from_its_first_instruction() {
    // the filter matches nothing: only registration makes the agent trace these cgroups
    let agent = Agent::start("", &["--cgroup", "no-such-workload-*"]);
    let name = unique("agent");
    let out = run(&[
        "--name",
        &name,
        "--replicas",
        "2",
        "--agent-socket",
        &s(&agent.control_socket()),
        "--require-agent",
        "--",
        &s(&workload_bin()),
        "getppid",
        "1000",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert!(!out.stderr.contains("warning"), "{out}");
    let m = agent.metrics();
    for replica in [format!("{name}-0"), format!("{name}-1")] {
        assert_eq!(
            syscalls(&m, &replica, "getppid"),
            Some(1000.0),
            "{replica}\n{}",
            m.text
        );
        // the execve that started the workload returned inside the traced cgroup
        assert!(
            syscalls(&m, &replica, "execve").unwrap_or(0.0) >= 1.0,
            "{}",
            m.text
        );
        // the workload's exit_group and its init's
        assert_eq!(
            syscalls(&m, &replica, "exit_group"),
            Some(2.0),
            "{}",
            m.text
        );
    }
    assert!(
        agent.log().contains(&format!("{name}-0")),
        "{}",
        agent.log()
    );
    assert_clean(&format!("{name}-0"), None);
    assert_clean(&format!("{name}-1"), None);
}

#[test]
fn require_agent_without_an_agent_fails_before_anything_is_created() {
    let name = unique("noagent");
    let out = run(&["--name", &name, "--require-agent", "--", "/bin/true"]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("no agent answers on"), "{out}");
    assert_eq!(out.stderr.lines().count(), 1, "one line\n{out}");
    assert_clean(&name, None);
    // without --require-agent: one warning, and the workload runs
    let out = run(&["--name", &name, "--", "/bin/true"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stderr.contains("warning: no agent answers"), "{out}");
    assert_clean(&name, None);
}

#[test]
fn replicas_run_isolated_and_the_first_failure_is_the_exit_status() {
    let name = unique("rep");
    // -1 fails at once; -2 fails only after -1's cgroup is gone (the launcher has seen it),
    // so the order of the failures is fixed without timing. The replicas see their own
    // cgroups only: the host's directory of them is shown to them read-only, as a volume.
    let parent = cgroup_dir(&format!("{name}-1"), "unified")
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let at = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let volume = format!("{}:{}:ro", s(&parent), s(at.path()));
    let script = format!(
        "echo $(hostname) $$; case $(hostname) in \
           {name}-1) exit 3;; \
           {name}-2) i=0; while [ -d {}/{name}-1 ]; do i=$((i+1)); [ $i -gt 3000 ] && exit 99; sleep 0.01; done; exit 5;; \
         esac",
        s(at.path())
    );
    let out = run(&[
        "--name",
        &name,
        "--replicas",
        "3",
        "--volume",
        &volume,
        "--",
        "/bin/sh",
        "-c",
        &script,
    ]);
    assert_eq!(out.code, 3, "{out}");
    let mut lines = out.lines();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            format!("{name}-0 2"),
            format!("{name}-1 2"),
            format!("{name}-2 2")
        ],
        "each replica has its own hostname and pid namespace\n{out}"
    );
    for i in 0..3 {
        assert_clean(&format!("{name}-{i}"), None);
    }
}

#[test]
fn help_teaches_with_examples() {
    let out = palisade_tests::launch::output(
        std::process::Command::new(palisade_tests::palisade_bin()).args(["run", "--help"]),
    );
    assert_eq!(out.code, 0);
    for needle in [
        "Examples:",
        "--bundle",
        "--replicas",
        "--seccomp",
        "Exit status",
        "/palisade/NAME",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle} missing\n{}",
            out.stdout
        );
    }
}

/// What the workload finds of `marker` under /sys/fs/cgroup (`leak: PATH` lines) and the
/// memory limit it reads there (`limit: N`).
const CGROUP_VIEW: &str = "find /sys/fs/cgroup -maxdepth 4 -name \"$1\" 2>/dev/null | sed 's/^/leak: /'; \
     (cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max) | sed 's/^/limit: /'";

#[test]
fn the_workload_sees_its_own_cgroups_and_no_other() {
    // On the host's tree and over a rootfs, /sys/fs/cgroup shows the workload's own cgroup in
    // each hierarchy: not a sibling or parent of it (other workloads' names, stats and limits),
    // and its own limits where tools such as a JVM read them.
    let markers = CgroupMarkers::new(&unique("cgmark"));
    let marker = markers.dirs[0]
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = Rootfs::busybox();
    let rootfs = root.path.to_string_lossy().into_owned();
    for tree in [None, Some(rootfs.as_str())] {
        let name = unique("cgview");
        let mut args = vec!["--name", &name, "--memory", "64M"];
        if let Some(r) = tree {
            args.extend(["--rootfs", r]);
        }
        args.extend(["--", "/bin/sh", "-c", CGROUP_VIEW, "sh", &marker]);
        let out = run(&args);
        assert_eq!(out.code, 0, "{out}");
        let leaks: Vec<&str> = out
            .lines()
            .into_iter()
            .filter(|l| l.starts_with("leak:"))
            .collect();
        assert!(
            leaks.is_empty(),
            "{tree:?}: the workload sees cgroups outside its own (markers {:?}): {leaks:?}\n{out}",
            markers.dirs
        );
        assert!(
            out.lines().contains(&"limit: 67108864"),
            "{tree:?}: the workload does not read its own memory limit\n{out}"
        );
        assert_clean(&name, tree.map(std::path::Path::new));
    }
}
