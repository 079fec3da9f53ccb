//! `palisade run` is safe by default (issue 11, the launcher's rows): without `--rootfs` the
//! host's files are read-only, submounts included, with a private `/tmp`; `/run/palisade`,
//! the pin directories under `/sys/fs/bpf` and the filter cache are masked; writable host
//! paths come only from `--volume`; the workload inherits no descriptor; the agent's control
//! socket is out of its reach.
//!
//! Scratch files live under the build's `target/tmp` (the host's root filesystem): the host's
//! `/tmp` is a private tmpfs inside the workloads, so nothing there could show a leak.
use std::{
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use palisade_tests::{
    Agent,
    launch::{Rootfs, assert_clean, output, run, run_cmd, unique},
    palisade_bin,
    policy::{Setup, cli, status},
};

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A scratch directory on the host's root filesystem.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap_or_else(|e| panic!("scratch directory: {e}"))
}

/// A tmpfs mounted (in the host's mount namespace) on a scratch directory for the length of a
/// test: a submount of the host's tree.
struct TmpfsMount(PathBuf);

impl TmpfsMount {
    fn new(at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "palisade-test"])
            .arg(at)
            .status()
            .unwrap_or_else(|e| panic!("mount: {e}"));
        assert!(st.success(), "mount tmpfs on {}", at.display());
        Self(at.to_owned())
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Lines of `out` that report a refused `touch PATH` with `Read-only file system`.
fn refused_read_only(out: &str, path: &Path) -> bool {
    let p = path.to_string_lossy();
    out.lines()
        .any(|l| l.contains(p.as_ref()) && l.contains("Read-only file system"))
}

#[test]
fn without_a_rootfs_the_hosts_files_are_read_only_and_tmp_is_private() {
    let dir = scratch();
    let sub = dir.path().join("sub");
    let _submount = TmpfsMount::new(&sub);
    let name = unique("ro");
    // a create in /etc that must fail; removed below if it did not
    let etc = PathBuf::from(format!("/etc/.palisade-ro-test-{name}"));
    let host_tmp = PathBuf::from(format!("/tmp/.palisade-ro-test-{name}"));
    let (x, y) = (dir.path().join("x"), sub.join("y"));
    let script = format!(
        "touch {x} {y} {etc} 2>&1; echo done; touch {tmp} && echo tmp-writable; \
         grep -q ' /tmp tmpfs ' /proc/self/mounts && echo tmp-is-tmpfs",
        x = s(&x),
        y = s(&y),
        etc = s(&etc),
        tmp = s(&host_tmp),
    );
    let out = run(&["--name", &name, "--", "/bin/sh", "-c", &script]);
    let leaked: Vec<&PathBuf> = [&etc, &x, &y, &host_tmp]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    for p in &leaked {
        let _ = std::fs::remove_file(p);
    }
    assert!(leaked.is_empty(), "created on the host: {leaked:?}\n{out}");
    assert_eq!(out.code, 0, "{out}");
    for p in [&x, &y, &etc] {
        assert!(
            refused_read_only(&out.stdout, p),
            "touch {} must fail with EROFS\n{out}",
            p.display()
        );
    }
    assert!(out.stdout.contains("tmp-writable"), "{out}");
    assert!(out.stdout.contains("tmp-is-tmpfs"), "{out}");
    assert_clean(&name, None);
}

#[test]
fn volumes_are_the_only_writable_host_paths() {
    let dir = scratch();
    let (rw, ro, dst, dst_ro) = (
        dir.path().join("rw"),
        dir.path().join("ro"),
        dir.path().join("dst"),
        dir.path().join("dst-ro"),
    );
    for d in [&rw, &ro, &dst, &dst_ro] {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
    }
    // without a rootfs: onto directories that exist on the host (the host's tree is read-only)
    let name = unique("vol");
    let out = run(&[
        "--name",
        &name,
        "--volume",
        &format!("{}:{}", s(&rw), s(&dst)),
        "-v",
        &format!("{}:{}:ro", s(&ro), s(&dst_ro)),
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "echo hi > {d}/written && echo rw-ok; touch {r}/no 2>&1; echo done",
            d = s(&dst),
            r = s(&dst_ro)
        ),
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("rw-ok"), "{out}");
    assert_eq!(
        std::fs::read_to_string(rw.join("written")).ok().as_deref(),
        Some("hi\n"),
        "the write reached the host directory\n{out}"
    );
    assert!(refused_read_only(&out.stdout, &dst_ro.join("no")), "{out}");
    assert!(!ro.join("no").exists() && !dst.join("written").exists());
    assert_clean(&name, None);

    // with a rootfs: /data and /data-ro are made inside it; `:rw` said explicitly
    let root = Rootfs::busybox();
    let name = unique("volroot");
    let out = run(&[
        "--name",
        &name,
        "--rootfs",
        &s(&root.path),
        "--volume",
        &format!("{}:/data:rw", s(&rw)),
        "--volume",
        &format!("{}:/data-ro:ro", s(&ro)),
        "--",
        "/bin/sh",
        "-c",
        "cat /data/written; echo again > /data/second && echo rw-ok; touch /data-ro/no 2>&1; echo done",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.starts_with("hi\n"), "{out}");
    assert!(out.stdout.contains("rw-ok"), "{out}");
    assert!(rw.join("second").exists(), "{out}");
    assert!(
        refused_read_only(&out.stdout, Path::new("/data-ro/no")),
        "{out}"
    );
    assert!(!ro.join("no").exists());
    assert_clean(&name, Some(&root.path));
}

#[test]
fn a_bad_volume_is_one_line_exit_125_and_nothing_created() {
    let dir = scratch();
    let host = s(dir.path());
    let root = Rootfs::busybox();
    let missing = format!("{host}/missing");
    for (args, needle) in [
        (
            vec!["--volume".to_owned(), format!("{missing}:/data")],
            missing.clone(),
        ),
        (
            vec!["--volume".to_owned(), format!("{host}:data")],
            "`data`".to_owned(),
        ),
        (
            vec!["--volume".to_owned(), format!("{host}:/data:rx")],
            "`rx`".to_owned(),
        ),
        (
            vec!["--volume".to_owned(), host.clone()],
            "HOST:DEST".to_owned(),
        ),
        // without a rootfs the destination must exist (nothing is created on the host)
        (
            vec![
                "--volume".to_owned(),
                format!("{host}:/no-such-dir-{}", std::process::id()),
            ],
            "does not exist".to_owned(),
        ),
        (
            vec![
                "--rootfs".to_owned(),
                s(&root.path),
                "--volume".to_owned(),
                format!("{missing}:/data:ro"),
            ],
            missing.clone(),
        ),
    ] {
        let name = unique("badvol");
        let mut all = vec!["--name", &name];
        all.extend(args.iter().map(String::as_str));
        all.extend(["--", "/bin/true"]);
        let out = run(&all);
        assert_eq!(out.code, 125, "{args:?}\n{out}");
        assert_eq!(out.stderr.lines().count(), 1, "one line: {args:?}\n{out}");
        assert!(out.stderr.contains("--volume"), "{args:?}\n{out}");
        assert!(out.stderr.contains(&needle), "{needle} in: {args:?}\n{out}");
        assert_clean(&name, Some(&root.path));
    }
}

#[test]
fn the_agents_directories_and_the_filter_cache_are_masked() {
    // a pin directory of this test's own next to the agent's (bpffs allows mkdir)
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/palisade-mask-test-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&pins).unwrap_or_else(|e| panic!("mkdir {}: {e}", pins.display()));
    // the cache exists once any workload has run
    let out = run(&["--name", &unique("warm"), "--", "/bin/true"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(Path::new("/run/palisade/seccomp-cache").is_dir());
    let name = unique("mask");
    // a create that must fail; removed below if it did not
    let planted = PathBuf::from(format!("/run/palisade/.mask-test-{name}"));
    let out = run(&[
        "--name",
        &name,
        "--",
        "/bin/sh",
        "-c",
        &format!(
            "echo run=$(ls -A /run/palisade | wc -l); echo bpf=$(ls -A /sys/fs/bpf | wc -l); \
             ls /run/palisade/seccomp-cache >/dev/null 2>&1 && echo cache-visible; \
             touch {} 2>/dev/null && echo run-writable; \
             if [ -d /sys/devices/virtual/powercap ]; then echo powercap=$(ls -A /sys/devices/virtual/powercap | wc -l); fi",
            s(&planted)
        ),
    ]);
    let _ = std::fs::remove_dir(&pins);
    let _ = std::fs::remove_file(&planted);
    assert_eq!(out.code, 0, "{out}");
    let lines = out.lines();
    assert!(lines.contains(&"run=0"), "/run/palisade masked\n{out}");
    assert!(lines.contains(&"bpf=0"), "/sys/fs/bpf masked\n{out}");
    assert!(!out.stdout.contains("cache-visible"), "{out}");
    assert!(!out.stdout.contains("run-writable"), "{out}");
    if Path::new("/sys/devices/virtual/powercap").is_dir() {
        assert!(lines.contains(&"powercap=0"), "{out}");
    } else {
        eprintln!(
            "note: this host has no /sys/devices/virtual/powercap; its mask is checked by the \
             launcher's seam tests only"
        );
    }
    assert_clean(&name, None);
}

#[test]
fn the_workload_inherits_no_descriptor_beyond_stdio() {
    let name = unique("fds");
    let held = std::fs::File::open("/proc/self/status").unwrap_or_else(|e| panic!("{e}"));
    let fd = held.as_raw_fd();
    let mut cmd = run_cmd(&["--name", &name, "--", "/bin/ls", "/proc/self/fd"]);
    // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec: the launcher holds fds 7 and 1000 open
            for to in [7, 1000] {
                if libc::dup2(fd, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = output(&mut cmd);
    assert_eq!(out.code, 0, "{out}");
    // 0, 1, 2 and the directory ls is reading
    assert_eq!(out.lines(), ["0", "1", "2", "3"], "{out}");
    assert_clean(&name, None);
}

#[test]
fn a_workload_cannot_reach_the_agents_control_socket() {
    // the agent listens where the real one does, in /run/palisade (this test's own name)
    let setup = Setup::new(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: socket-test}\nspec:\n  \
         selector: {workload: \"no-such-workload-*\"}\n  syscalls:\n    deny: [mount]\n",
    );
    std::fs::create_dir_all("/run/palisade").unwrap_or_else(|e| panic!("{e}"));
    let sock = PathBuf::from(format!(
        "/run/palisade/test-agent-{}.sock",
        std::process::id()
    ));
    let agent = Agent::with_events_at(&setup.config(""), &[], &sock);
    // from the host it answers
    let (code, _, err) = cli(&agent, &["status"]);
    assert_eq!(code, 0, "{err}");
    let palisade = s(&palisade_bin());
    let sock_arg = s(&sock);
    for args in [
        vec!["policy", "status"],
        vec!["policy", "mode", "socket-test", "audit"],
    ] {
        let name = unique("sock");
        let mut all = vec!["--name", &name, "--", &palisade];
        all.extend(&args);
        all.extend(["--socket", &sock_arg]);
        let out = run(&all);
        assert_ne!(
            out.code, 0,
            "{args:?} reached the agent from a workload\n{out}"
        );
        assert_clean(&name, None);
    }
    let st = status(&agent);
    let mode = st["policies"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == "socket-test"))
        .map(|p| p["mode"].clone());
    assert_eq!(
        mode,
        Some("enforce".into()),
        "the workload switched the policy's mode\n{st}"
    );
}
