//! `palisade run --bundle`: OCI bundles as `runc spec` writes them, and bad input of every
//! kind failing with one clear line before anything is created.
use palisade_tests::{
    bpf::{attached, pinned_id, plant_allow_all_device_program},
    launch::{Bundle, Rootfs, Running, assert_clean, cgroup_dir, data_dir, run, unique},
};

fn s(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn a_runc_spec_bundle_runs_with_its_configuration() {
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "hostname; touch /x 2>/dev/null || echo read-only-root; ulimit -n; ulimit -Hn; \
         grep CapEff /proc/self/status; cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
         cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max; \
         echo $FOO; pwd; exit 4",
    ]);
    b.config["process"]["env"] = serde_json::json!(["PATH=/bin", "FOO=bar"]);
    b.config["process"]["cwd"] = "/tmp".into();
    b.config["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 1024}]);
    b.config["linux"]["resources"]["memory"] = serde_json::json!({"limit": 67108864});
    b.config["linux"]["resources"]["pids"] = serde_json::json!({"limit": 50});
    b.write();
    let name = unique("bundle");
    let out = run(&["--bundle", &s(&b.path), "--name", &name]);
    assert_eq!(out.code, 4, "{out}");
    assert_eq!(
        out.lines(),
        [
            "runc",
            "read-only-root",
            "512",
            "1024",
            "CapEff:\t0000000020000420",
            "67108864",
            "50",
            "bar",
            "/tmp"
        ],
        "{out}"
    );
    assert_clean(&name, Some(&b.rootfs()));
}

/// The runtime spec has runtimes ignore properties it does not define: a bundle from a newer
/// spec or with a vendor's extension runs, and one warning names what was ignored; a property
/// the spec defines and palisade does not support is still refused (see the bad-input test).
#[test]
fn unknown_properties_are_ignored_with_one_warning() {
    let mut b = Bundle::new(&["/bin/sh", "-c", "echo ran"]);
    b.config["x-vendor"] = serde_json::json!({"tuning": true});
    b.config["process"]["futureProcessField"] = "x".into();
    b.config["linux"]["resources"]["memory"] =
        serde_json::json!({"limit": 67108864, "futureKnob": 1});
    b.write();
    let name = unique("unknownprops");
    let out = run(&["--bundle", &s(&b.path), "--name", &name]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.lines(), ["ran"], "{out}");
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("ignored properties the runtime spec does not define"))
        .collect();
    assert_eq!(warnings.len(), 1, "{out}");
    for path in [
        "x-vendor",
        "process.futureProcessField",
        "linux.resources.memory.futureKnob",
    ] {
        assert!(warnings[0].contains(path), "{path} not named: {out}");
    }
    assert_clean(&name, Some(&b.rootfs()));
}

#[test]
fn a_bundle_with_no_capabilities_runs_with_none() {
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "grep -E '^Cap(Eff|Bnd):' /proc/self/status",
    ]);
    b.config["process"]["capabilities"] = serde_json::json!({});
    b.write();
    let name = unique("nocaps");
    let out = run(&["--bundle", &s(&b.path), "--name", &name]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.lines(),
        ["CapEff:\t0000000000000000", "CapBnd:\t0000000000000000"]
    );
    // an explicit set: CHOWN effective, CHOWN+KILL bounding
    b.config["process"]["capabilities"] = serde_json::json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL"], "permitted": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_CHOWN"]});
    b.config["process"]["user"] = serde_json::json!({"uid": 0, "gid": 0});
    b.write();
    let out = run(&["--bundle", &s(&b.path), "--name", &name]);
    // root execs with its bounding set (no file capabilities needed)
    assert_eq!(
        out.lines(),
        ["CapEff:\t0000000000000021", "CapBnd:\t0000000000000021"],
        "{out}"
    );
    assert_clean(&name, Some(&b.rootfs()));
}

#[test]
fn flags_override_the_bundle() {
    let b = Bundle::new(&["/bin/sh", "-c", "exit 9"]);
    let name = unique("override");
    let out = run(&[
        "--bundle",
        &s(&b.path),
        "--name",
        &name,
        "--hostname",
        "other",
        "--env",
        "X=1",
        "--",
        "/bin/sh",
        "-c",
        "hostname; echo $X",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.lines(), ["other", "1"]);
    assert_clean(&name, Some(&b.rootfs()));
}

/// Runs `palisade run ARGS` expecting failure `code` with `needle` in a one-line error, then
/// checks nothing of `name` exists.
fn fails(args: &[&str], name: &str, code: i32, needle: &str) {
    let out = run(args);
    assert_eq!(out.code, code, "{args:?}\n{out}");
    assert!(out.stderr.contains(needle), "{needle:?} not in:\n{out}");
    let errors: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line\n{out}");
    assert_clean(name, None);
    for which in ["unified", "memory", "cpu", "pids"] {
        assert!(!cgroup_dir(name, which).exists());
    }
}

#[test]
fn bad_input_is_one_clear_line_and_leaves_nothing_behind() {
    let name = unique("bad");
    let n = name.as_str();
    fails(
        &["--bundle", "/nonexistent/bundle", "--name", n],
        n,
        125,
        "bundle /nonexistent/bundle",
    );

    let b = Bundle::new(&["/bin/true"]);
    let bp = s(&b.path);
    // unreadable config.json (a directory)
    std::fs::remove_file(b.path.join("config.json")).unwrap();
    std::fs::create_dir(b.path.join("config.json")).unwrap();
    fails(&["--bundle", &bp, "--name", n], n, 125, "cannot read");
    std::fs::remove_dir(b.path.join("config.json")).unwrap();

    std::fs::write(
        b.path.join("config.json"),
        "{\n  \"process\": {\n    \"args\": [\"sh\",]\n}",
    )
    .unwrap();
    fails(&["--bundle", &bp, "--name", n], n, 125, "config.json:3:");

    let mut b = Bundle::new(&["/bin/true"]);
    let bp = s(&b.path);
    b.config["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
    b.write();
    fails(
        &["--bundle", &bp, "--name", n],
        n,
        125,
        "linux.sysctl: not supported",
    );
    b.config["linux"].as_object_mut().unwrap().remove("sysctl");
    b.config["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1_000_000_000u64}]);
    b.write();
    fails(&["--bundle", &bp, "--name", n], n, 125, "CAP_SYS_RESOURCE");
    b.config["process"]["rlimits"] = serde_json::json!([]);
    b.config["process"]["args"] = serde_json::json!(["/bin/nope"]);
    b.write();
    fails(
        &["--bundle", &bp, "--name", n],
        n,
        127,
        "command `/bin/nope` not found in the rootfs",
    );

    let root = Rootfs::busybox();
    let rp = s(&root.path);
    fails(
        &["--name", n, "--rootfs", &rp, "--", "nope"],
        n,
        127,
        "searched PATH=",
    );
    std::fs::write(root.path.join("bin/script"), "#!/bin/sh\n").unwrap();
    fails(
        &["--name", n, "--rootfs", &rp, "--", "/bin/script"],
        n,
        126,
        "is not executable",
    );
    fails(
        &["--name", n, "--memory", "1M", "--", "/bin/true"],
        n,
        125,
        "below the 6 MiB minimum",
    );
    fails(
        &["--name", n, "--memory", "lots", "--", "/bin/true"],
        n,
        125,
        "not a size",
    );
    fails(
        &["--name", n, "--pids", "1", "--", "/bin/true"],
        n,
        125,
        "below the minimum of 2",
    );
    fails(
        &["--name", n, "--cpus", "0.001", "--", "/bin/true"],
        n,
        125,
        "minimum of 0.01",
    );
    fails(
        &["--name", n, "--cpus", "64", "--", "/bin/true"],
        n,
        125,
        "CPUs this host has",
    );
    fails(
        &["--name", n, "--user", "nobody", "--", "/bin/true"],
        n,
        125,
        "UID:GID",
    );
    fails(
        &[
            "--name",
            n,
            "--rootfs",
            "/nonexistent/root",
            "--",
            "/bin/true",
        ],
        n,
        125,
        "--rootfs /nonexistent/root",
    );
    fails(
        &["--name", "a/b", "--", "/bin/true"],
        "a-b",
        125,
        "invalid workload name",
    );
    fails(&["--name", n, "--bogus"], n, 125, "unexpected argument");

    let dir = tempfile::tempdir().unwrap();
    let prof = dir.path().join("p.json");
    std::fs::write(
        &prof,
        "{\"defaultAction\": \"SCMP_ACT_ALLOW\",\n \"syscalls\": [}",
    )
    .unwrap();
    fails(
        &["--name", n, "--seccomp", &s(&prof), "--", "/bin/true"],
        n,
        125,
        "p.json:2:",
    );
    std::fs::write(&prof, r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}"#).unwrap();
    fails(
        &["--name", n, "--seccomp", &s(&prof), "--", "/bin/true"],
        n,
        125,
        "syscalls[0].action",
    );
}

#[test]
fn unknown_seccomp_names_are_listed_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let prof = dir.path().join("p.json");
    std::fs::write(
        &prof,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mount", "frobnicate", "fly_away"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let name = unique("unknown");
    let out = run(&["--name", &name, "--seccomp", &s(&prof), "--", "/bin/true"]);
    assert_eq!(out.code, 0, "{out}");
    let warn: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("seccomp profile"))
        .collect();
    assert_eq!(warn.len(), 1, "{out}");
    assert!(
        warn[0].contains("2 syscall name(s)") && warn[0].contains("fly_away, frobnicate"),
        "{out}"
    );
    assert_clean(&name, None);
    // and a bundle carrying Docker's profile warns the same way, and runs
    let mut b = Bundle::new(&["/bin/true"]);
    let text = std::fs::read_to_string(data_dir().join("docker-default-seccomp.json")).unwrap();
    b.config["linux"]["seccomp"] = serde_json::from_str(&text).unwrap();
    b.write();
    let out = run(&["--bundle", &s(&b.path), "--name", &name]);
    assert_eq!(out.code, 0, "{out}");
    assert_clean(&name, Some(&b.rootfs()));
}

/// `MAJOR:MINOR` of a block device of this host that no default rule allows.
fn a_host_disk() -> String {
    std::fs::read_dir("/sys/block")
        .unwrap_or_else(|e| panic!("/sys/block: {e}"))
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with("loop"))
        .find_map(|e| std::fs::read_to_string(e.path().join("dev")).ok())
        .map(|d| d.trim().to_owned())
        .unwrap_or_else(|| panic!("no block device in /sys/block"))
}

#[test]
fn device_rules_deny_what_no_rule_allows() {
    // The bundle's rules allow one device and have no leading "deny all": as with runc,
    // anything no rule allows is still denied. The workload holds CAP_MKNOD, so only the
    // device filter stands between it and the host's disk.
    let disk = a_host_disk();
    let (major, minor) = disk.split_once(':').unwrap_or_else(|| panic!("{disk}"));
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        &format!(
            "echo x > /dev/null && echo null-ok; \
             mknod /dev/xdisk b {major} {minor} 2>&1 && head -c0 /dev/xdisk 2>&1 && echo disk-opened; \
             echo done"
        ),
    ]);
    b.config["linux"]["resources"]["devices"] = serde_json::json!([
        {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}
    ]);
    let caps = [
        "CAP_MKNOD",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
        "CAP_NET_BIND_SERVICE",
    ];
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set] = serde_json::json!(caps);
    }
    b.write();
    let name = unique("devrules");
    let out = run(&["--bundle", &s(&b.path), "--name", &name]);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains("null-ok"),
        "the default devices stay allowed\n{out}"
    );
    assert!(
        !out.stdout.contains("disk-opened"),
        "the host disk {disk} was opened through a device no rule allows\n{out}"
    );
    assert!(out.stdout.contains("Operation not permitted"), "{out}");
    assert_clean(&name, Some(&b.rootfs()));
}

/// Where the launcher pins device programs (`palisade_launcher::cgroup::devices::PIN_DIR`).
const DEVICE_PIN_DIR: &str = "/sys/fs/bpf/palisade-devices";

/// Removes a pin when the test ends, however it ends.
struct PinGuard(Option<std::path::PathBuf>);

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The device program attached to a workload's unified cgroup.
fn device_programs(name: &str) -> Vec<u32> {
    attached(&cgroup_dir(name, "unified"))
        .into_iter()
        .filter(|a| a.attach_type == "cgroup_device")
        .map(|a| a.prog_id)
        .collect()
}

#[test]
fn a_pinned_device_filter_is_attached_only_when_it_is_the_program_of_the_rules() {
    let disk = a_host_disk();
    let (major, minor) = disk.split_once(':').unwrap_or_else(|| panic!("{disk}"));
    // a rule set of this test alone (an allowed minor of its own), so its pin is its own
    let rules = serde_json::json!([
        {"allow": true, "type": "c", "major": 1, "minor": 5000 + std::process::id() % 100_000, "access": "r"}
    ]);
    let mut holder = Bundle::new(&["/bin/sh", "-c", "echo up; exec sleep 600"]);
    holder.config["linux"]["resources"]["devices"] = rules.clone();
    holder.write();
    let a = unique("devpin-a");
    let mut ra = Running::start(&["--bundle", &s(&holder.path), "--name", &a]);
    assert_eq!(ra.line(), "up");
    let pa = device_programs(&a);
    assert_eq!(pa.len(), 1, "{pa:?}");
    let b = unique("devpin-b");
    let mut rb = Running::start(&["--bundle", &s(&holder.path), "--name", &b]);
    assert_eq!(rb.line(), "up");
    assert_eq!(
        device_programs(&b),
        pa,
        "the second launch with the same rules loaded a program of its own instead of the pinned one"
    );
    let pin = std::fs::read_dir(DEVICE_PIN_DIR)
        .unwrap_or_else(|e| panic!("{DEVICE_PIN_DIR}: {e}"))
        .flatten()
        .map(|e| e.path())
        .find(|p| pinned_id(p) == Some(pa[0]))
        .unwrap_or_else(|| panic!("no pin in {DEVICE_PIN_DIR} holds program {}", pa[0]));
    let _guard = PinGuard(Some(pin.clone()));
    // a stale or planted program under the rules' name
    let planted = plant_allow_all_device_program(&pin);
    let mut c = Bundle::new(&[
        "/bin/sh",
        "-c",
        &format!(
            "mknod /dev/xdisk b {major} {minor} 2>&1 && head -c0 /dev/xdisk 2>&1 && echo disk-opened; \
             echo done"
        ),
    ]);
    c.config["linux"]["resources"]["devices"] = rules;
    for set in ["bounding", "effective", "permitted"] {
        c.config["process"]["capabilities"][set] = serde_json::json!(["CAP_MKNOD", "CAP_KILL"]);
    }
    c.write();
    let cn = unique("devpin-c");
    let out = run(&["--bundle", &s(&c.path), "--name", &cn]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("done"), "{out}");
    assert!(
        !out.stdout.contains("disk-opened"),
        "the host disk {disk} was opened: the planted allow-all program was attached\n{out}"
    );
    assert!(out.stdout.contains("Operation not permitted"), "{out}");
    let now = pinned_id(&pin);
    assert!(
        now.is_some() && now != Some(planted),
        "the planted pin was not replaced by the rules' program: {now:?} (planted {planted})"
    );
    for (r, name) in [(&mut ra, &a), (&mut rb, &b)] {
        r.signal(libc::SIGTERM);
        let out = r.wait();
        assert!(out.code == 143 || out.code == 0, "{out}");
        assert_clean(name, Some(&holder.rootfs()));
    }
    assert_clean(&cn, Some(&c.rootfs()));
}
