//! The mount order, checked call by call on the recording fake (no root needed).
use super::*;
use crate::{
    cmdline,
    plan::Plan,
    sys::fake::Fake,
    testing::{Dir, assert_calls, assert_run, image, run_args},
};

const PURE_V2: &V1Mounts = &Vec::new();

/// What `runc spec`'s (and the command line's) mounts after /proc do to the image, on a pure
/// v2 host.
const DEFAULT_MOUNTS: &str = "
    mount tmpfs on /dev type tmpfs flags=nosuid,strictatime data=mode=755,size=65536k
    mkdir /dev/pts mode=0755
    mount devpts on /dev/pts type devpts flags=nosuid,noexec data=newinstance,ptmxmode=0666,mode=0620,gid=5
    mkdir /dev/shm mode=0755
    mount shm on /dev/shm type tmpfs flags=nosuid,nodev,noexec data=mode=1777,size=65536k
    mkdir /dev/mqueue mode=0755
    mount mqueue on /dev/mqueue type mqueue flags=nosuid,nodev,noexec
    mount sysfs on /sys type sysfs flags=ro,nosuid,nodev,noexec
    mount cgroup on /sys/fs/cgroup type cgroup2 flags=ro,nosuid,nodev,noexec,relatime
";

/// /dev in a fresh tmpfs.
const DEV_NODES: &str = "
    mknod /dev/null c 1:3 mode=0666
    chmod /dev/null 0666
    mknod /dev/zero c 1:5 mode=0666
    chmod /dev/zero 0666
    mknod /dev/full c 1:7 mode=0666
    chmod /dev/full 0666
    mknod /dev/random c 1:8 mode=0666
    chmod /dev/random 0666
    mknod /dev/urandom c 1:9 mode=0666
    chmod /dev/urandom 0666
    mknod /dev/tty c 5:0 mode=0666
    chmod /dev/tty 0666
    symlink /dev/fd -> /proc/self/fd
    symlink /dev/stdin -> /proc/self/fd/0
    symlink /dev/stdout -> /proc/self/fd/1
    symlink /dev/stderr -> /proc/self/fd/2
    symlink /dev/ptmx -> pts/ptmx
    symlink /dev/core -> /proc/kcore
";

/// runc's masked and read-only paths on the image's procfs and sysfs: directories get a
/// read-only tmpfs, files /dev/null, missing ones (asound, latency_stats, timer_stats, scsi)
/// nothing; read-only paths are bound on themselves, then remounted.
const RUNC_PROTECTED: &str = "
    mount tmpfs on /proc/acpi type tmpfs flags=ro
    mount /dev/null on /proc/kcore flags=bind
    mount /dev/null on /proc/keys flags=bind
    mount /dev/null on /proc/timer_list flags=bind
    mount /dev/null on /proc/sched_debug flags=bind
    mount tmpfs on /sys/firmware type tmpfs flags=ro
    mount /proc/bus on /proc/bus flags=bind,rec
    mount on /proc/bus flags=remount,bind,ro,nosuid,nodev,noexec
    mount /proc/fs on /proc/fs flags=bind,rec
    mount on /proc/fs flags=remount,bind,ro,nosuid,nodev,noexec
    mount /proc/irq on /proc/irq flags=bind,rec
    mount on /proc/irq flags=remount,bind,ro,nosuid,nodev,noexec
    mount /proc/sys on /proc/sys flags=bind,rec
    mount on /proc/sys flags=remount,bind,ro,nosuid,nodev,noexec
    mount /proc/sysrq-trigger on /proc/sysrq-trigger flags=bind,rec
    mount on /proc/sysrq-trigger flags=remount,bind,ro,nosuid,nodev,noexec
";

const PIVOT: &str = "
    chdir /bundle/rootfs
    pivot_root . .
    umount . detach
    chdir /
";

fn setup_on(fake: &mut Fake, plan: &Plan, v1: &V1Mounts) {
    if let Err(e) = setup(fake, plan, v1) {
        panic!(
            "setup failed: {e}\ncalls so far:\n{}",
            fake.calls().join("\n")
        );
    }
}

#[test]
fn command_line_with_rootfs() {
    let d = Dir::new();
    let plan = d.cmdline_plan();
    let mut fake = image();
    setup_on(&mut fake, &plan, PURE_V2);
    let expected = [
        "mount on / flags=private,rec",
        "mount /bundle/rootfs on /bundle/rootfs flags=bind,rec",
        "mount proc on /proc type proc flags=nosuid,nodev,noexec",
        DEFAULT_MOUNTS,
        DEV_NODES,
        RUNC_PROTECTED,
        PIVOT,
    ];
    // the command line's root stays writable: nothing after the pivot
    assert_calls(&d.calls(&fake), &expected.join("\n"));
}

/// A host as the command line without --rootfs sees it: the image plus the agent's
/// directories, pinned objects, sysfs's firmware and powercap, and /dev/shm.
fn host() -> Fake {
    image().with(&[
        "/dev/shm/",
        "/sys/fs/cgroup/",
        "/run/palisade/agent.sock",
        "/run/palisade/seccomp-cache/",
        "/sys/fs/bpf/palisade/",
        "/sys/fs/bpf/palisade-test-1/",
        "/sys/firmware/",
        "/sys/devices/virtual/powercap/",
    ])
}

/// The plan of the command line without --rootfs, on a host with /dev/shm.
fn host_plan(volumes: &[String]) -> Plan {
    let mut args = run_args(None);
    args.volumes = volumes.to_vec();
    let mut plan = cmdline::from_args(&args).unwrap();
    // /dev/shm is mounted only where the host has it; this host does
    let shm = plan.mounts.iter().position(|m| m.destination == "/dev/shm");
    if shm.is_none() {
        plan.mounts.insert(2, cmdline::host_mounts(true).remove(2));
    }
    plan
}

/// The host's tree, copied and made read-only with every submount before anything is mounted
/// on it, attached over /.
const HOST_TREE: &str = "
    mount on / flags=private,rec
    open_tree / clone,rec -> tree:/
    mount_setattr tree:/ rec ro,nosuid
    move_mount tree:/ on /
";

/// /proc, then private tmpfs on /tmp and /dev/shm, and the workload's own cgroups over the
/// host's /sys/fs/cgroup.
const HOST_MOUNTS: &str = "
    mount proc on /proc type proc flags=nosuid,nodev,noexec
    mount tmpfs on /tmp type tmpfs flags=nosuid,nodev data=mode=1777
    mount shm on /dev/shm type tmpfs flags=nosuid,nodev,noexec data=mode=1777,size=65536k
    mount cgroup on /sys/fs/cgroup type cgroup2 flags=ro,nosuid,nodev,noexec,relatime
";

/// runc's masked paths on the fresh procfs and the host's sysfs (powercap included), then the
/// agent's directory (control socket and filter cache: the cache below it is gone once it is
/// masked) and every pin directory under bpffs.
const HOST_MASKS: &str = "
    mount tmpfs on /proc/acpi type tmpfs flags=ro
    mount /dev/null on /proc/kcore flags=bind
    mount /dev/null on /proc/keys flags=bind
    mount /dev/null on /proc/timer_list flags=bind
    mount /dev/null on /proc/sched_debug flags=bind
    mount tmpfs on /sys/firmware type tmpfs flags=ro
    mount tmpfs on /sys/devices/virtual/powercap type tmpfs flags=ro
    mount tmpfs on /run/palisade type tmpfs flags=ro
    mount tmpfs on /sys/fs/bpf type tmpfs flags=ro
";

const HOST_PIVOT: &str = "
    chdir tree:/
    pivot_root . .
    umount . detach
    chdir /
";

#[test]
fn command_line_without_rootfs() {
    // the host's tree, read-only with every submount, in a private mount namespace: a /proc
    // for the new pid namespace, private /tmp and /dev/shm, masks and read-only paths, then
    // the copy becomes the root; no /dev of its own
    let plan = host_plan(&[]);
    let mut fake = host();
    setup_on(&mut fake, &plan, PURE_V2);
    let expected = [
        HOST_TREE,
        HOST_MOUNTS,
        HOST_MASKS,
        &RUNC_PROTECTED[RUNC_PROTECTED.find("    mount /proc/bus").unwrap()..],
        HOST_PIVOT,
    ];
    assert_calls(fake.calls(), &expected.join("\n"));
}

#[test]
fn the_host_trees_cgroup2_is_covered_by_the_workloads_own() {
    // pure v2: the host's /sys/fs/cgroup is the one cgroup2 superblock, and the kernel refuses
    // to mount it over its own root (EBUSY): a tmpfs goes between
    let plan = host_plan(&[]);
    let mut fake = host().fail("mount cgroup on /sys/fs/cgroup type cgroup2", libc::EBUSY);
    setup_on(&mut fake, &plan, PURE_V2);
    crate::testing::assert_run(
        fake.calls(),
        "
            mount cgroup on /sys/fs/cgroup type cgroup2 flags=ro,nosuid,nodev,noexec,relatime -> errno 16
            mount tmpfs on /sys/fs/cgroup type tmpfs flags=nosuid,nodev,noexec,relatime data=mode=755
            mount cgroup on /sys/fs/cgroup type cgroup2 flags=ro,nosuid,nodev,noexec,relatime
        ",
    );
}

#[test]
fn volumes_on_the_read_only_host() {
    // --volume binds recursively; `:ro` is read-only with every submount of the host path
    let d = Dir::new();
    for sub in ["rw", "ro", "dst", "dst-ro"] {
        std::fs::create_dir(d.path.join(sub)).unwrap();
    }
    let p = |s: &str| d.path.join(s).display().to_string();
    let plan = host_plan(&[
        format!("{}:{}", p("rw"), p("dst")),
        format!("{}:{}:ro", p("ro"), p("dst-ro")),
    ]);
    let mut fake = d
        .host(host(), &["rw/", "ro/"])
        .with(&[&format!("{}/", p("dst")), &format!("{}/", p("dst-ro"))]);
    setup_on(&mut fake, &plan, PURE_V2);
    let calls = d.calls(&fake);
    assert_run(
        &calls,
        &[
            HOST_MOUNTS,
            // the test's directory is under /tmp, the workload's private tmpfs: the mount
            // points are made in it, not on the host
            "
            mkdir /bundle mode=0755
            mkdir /bundle/dst mode=0755
            mount /bundle/rw on /bundle/dst flags=bind,rec
            mkdir /bundle/dst-ro mode=0755
            mount /bundle/ro on /bundle/dst-ro flags=bind,rec
            mount on /bundle/dst-ro flags=remount,bind,ro
            mount_setattr /bundle/dst-ro rec ro
            ",
            HOST_MASKS,
        ]
        .join("\n"),
    );
    assert_eq!(calls.last().map(String::as_str), Some("chdir /"));
}

#[test]
fn without_mount_setattr_the_launch_fails_rather_than_run_writable() {
    let plan = host_plan(&[]);
    let mut fake = host().fail("mount_setattr", libc::ENOSYS);
    let e = setup(&mut fake, &plan, PURE_V2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "make / read-only with every submount (mount_setattr): Function not implemented (os error 38)"
    );
    assert_eq!(
        fake.calls().last().map(String::as_str),
        Some("mount_setattr tree:/ rec ro,nosuid -> errno 38")
    );
}

#[test]
fn runc_bundle_pivots_last_and_makes_the_root_read_only() {
    let d = Dir::new();
    let plan = d.bundle_plan(|_| {});
    let mut fake = image();
    setup_on(&mut fake, &plan, PURE_V2);
    let expected = [
        "mount on / flags=private,rec",
        "mount /bundle/rootfs on /bundle/rootfs flags=bind,rec",
        // runc spec gives /proc no options
        "mount proc on /proc type proc",
        DEFAULT_MOUNTS,
        DEV_NODES,
        RUNC_PROTECTED,
        PIVOT,
        // root.readonly, once the old root is gone
        "mount on / flags=remount,bind,ro",
    ];
    assert_calls(&d.calls(&fake), &expected.join("\n"));
}

#[test]
fn bundle_bind_mounts() {
    let d = Dir::new();
    let mut fake = d.host(image(), &["hosts", "passwd", "data/", "data/a", "cache/"]);
    let plan = d.bundle_plan(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(serde_json::json!(
            {"destination": "/etc/hosts", "type": "bind", "source": "hosts", "options": ["rbind", "ro"]}));
        mounts.push(serde_json::json!(
            {"destination": "/etc/passwd", "type": "bind", "source": "passwd", "options": ["bind"]}));
        mounts.push(serde_json::json!(
            {"destination": "/data", "type": "none", "source": "data", "options": ["bind", "nosuid", "nodev", "rslave"]}));
        mounts.push(serde_json::json!(
            {"destination": "/opt/cache/", "source": "cache", "options": ["rbind", "rw", "private"]}));
    });
    setup_on(&mut fake, &plan, PURE_V2);
    let calls = d.calls(&fake);
    assert_run(
        &calls,
        "
        mount cgroup on /sys/fs/cgroup type cgroup2 flags=ro,nosuid,nodev,noexec,relatime
        create /etc/hosts mode=0644
        mount /bundle/hosts on /etc/hosts flags=bind,rec
        mount on /etc/hosts flags=remount,bind,ro
        mount_setattr /etc/hosts rec ro
        mount /bundle/passwd on /etc/passwd flags=bind
        mkdir /data mode=0755
        mount /bundle/data on /data flags=bind
        mount on /data flags=remount,bind,nosuid,nodev
        mount on /data flags=slave,rec
        mkdir /opt mode=0755
        mkdir /opt/cache mode=0755
        mount /bundle/cache on /opt/cache flags=bind,rec
        mount on /opt/cache flags=private
        mknod /dev/null c 1:3 mode=0666
        ",
    );
    // the bind shows the host directory's contents
    assert_eq!(fake.kind("/data/a"), Some(crate::sys::fake::Kind::File));
}

#[test]
fn masked_paths_by_kind_and_missing_ones_skipped() {
    let d = Dir::new();
    let plan = d.bundle_plan(|c| {
        c["linux"]["maskedPaths"] = serde_json::json!([
            "/proc/acpi",
            "/proc/kcore",
            "/proc/nope",
            "/etc/passwd",
            "/tmp"
        ]);
        c["linux"]["readonlyPaths"] = serde_json::json!(["/proc/nope", "/proc/sys", "/etc"]);
    });
    let mut fake = image();
    setup_on(&mut fake, &plan, PURE_V2);
    let calls = d.calls(&fake);
    assert_run(
        &calls,
        "
        symlink /dev/core -> /proc/kcore
        mount tmpfs on /proc/acpi type tmpfs flags=ro
        mount /dev/null on /proc/kcore flags=bind
        mount /dev/null on /etc/passwd flags=bind
        mount tmpfs on /tmp type tmpfs flags=ro
        mount /proc/sys on /proc/sys flags=bind,rec
        mount on /proc/sys flags=remount,bind,ro,nosuid,nodev,noexec
        mount /etc on /etc flags=bind,rec
        mount on /etc flags=remount,bind,ro,nosuid,nodev,noexec
        chdir /bundle/rootfs
        ",
    );
    assert!(
        !calls.iter().any(|c| c.contains("/proc/nope")),
        "{calls:#?}"
    );
}

#[test]
fn dev_is_populated_only_in_a_fresh_tmpfs() {
    let d = Dir::new();
    let plan = d.bundle_plan(|c| {
        // the image's own /dev: no tmpfs, so no device nodes
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .retain(|m| m["destination"] != "/dev");
    });
    let mut fake = image().with(&["/dev/pts/", "/dev/shm/", "/dev/mqueue/"]);
    setup_on(&mut fake, &plan, PURE_V2);
    let calls = d.calls(&fake);
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("mknod") || c.starts_with("symlink")),
        "{calls:#?}"
    );
    // and the mount points the image has are used, not created
    assert!(!calls.iter().any(|c| c.starts_with("mkdir")), "{calls:#?}");
}

#[test]
fn hybrid_hosts_get_the_v1_hierarchies_under_a_tmpfs() {
    let d = Dir::new();
    let plan = d.cmdline_plan();
    let v1: V1Mounts = [
        ("cpu,cpuacct", "cpu,cpuacct"),
        ("memory", "memory"),
        ("pids", "pids"),
        ("systemd", "none,name=systemd"),
    ]
    .iter()
    .map(|(d, o)| ((*d).to_owned(), (*o).to_owned()))
    .collect();
    let mut fake = image();
    setup_on(&mut fake, &plan, &v1);
    let calls = d.calls(&fake);
    assert_run(
        &calls,
        "
        mount sysfs on /sys type sysfs flags=ro,nosuid,nodev,noexec
        mount cgroup on /sys/fs/cgroup type tmpfs flags=nosuid,nodev,noexec,relatime data=mode=755
        mkdir /sys/fs/cgroup/cpu,cpuacct mode=0755
        mount cgroup on /sys/fs/cgroup/cpu,cpuacct type cgroup flags=ro,nosuid,nodev,noexec,relatime data=cpu,cpuacct
        mkdir /sys/fs/cgroup/memory mode=0755
        mount cgroup on /sys/fs/cgroup/memory type cgroup flags=ro,nosuid,nodev,noexec,relatime data=memory
        mkdir /sys/fs/cgroup/pids mode=0755
        mount cgroup on /sys/fs/cgroup/pids type cgroup flags=ro,nosuid,nodev,noexec,relatime data=pids
        mkdir /sys/fs/cgroup/systemd mode=0755
        mount cgroup on /sys/fs/cgroup/systemd type cgroup flags=ro,nosuid,nodev,noexec,relatime data=none,name=systemd
        mkdir /sys/fs/cgroup/unified mode=0755
        mount cgroup2 on /sys/fs/cgroup/unified type cgroup2 flags=ro,nosuid,nodev,noexec,relatime
        mount on /sys/fs/cgroup flags=remount,ro,nosuid,nodev,noexec,relatime
        mknod /dev/null c 1:3 mode=0666
        ",
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.contains("type cgroup2") && c.contains("on /sys/fs/cgroup "))
    );
}

#[test]
fn a_refused_sysfs_becomes_a_read_only_bind_of_the_hosts() {
    let d = Dir::new();
    let plan = d.cmdline_plan();
    let mut fake = image().fail("mount sysfs on /sys", libc::EPERM);
    setup_on(&mut fake, &plan, PURE_V2);
    assert_run(
        &d.calls(&fake),
        "
        mount mqueue on /dev/mqueue type mqueue flags=nosuid,nodev,noexec
        mount sysfs on /sys type sysfs flags=ro,nosuid,nodev,noexec -> errno 1
        mount /sys on /sys flags=bind,rec
        mount_setattr /sys rec ro,nosuid,nodev,noexec
        mkdir /sys/fs mode=0755
        mkdir /sys/fs/cgroup mode=0755
        mount cgroup on /sys/fs/cgroup type cgroup2 flags=ro,nosuid,nodev,noexec,relatime
        ",
    );
}

#[test]
fn the_bundles_rootfs_propagation_comes_first() {
    let d = Dir::new();
    let plan = d.bundle_plan(|c| c["linux"]["rootfsPropagation"] = "rslave".into());
    let mut fake = image();
    setup_on(&mut fake, &plan, PURE_V2);
    assert_eq!(fake.calls()[0], "mount on / flags=slave,rec");
}

#[test]
fn errors_name_the_step_and_the_path() {
    let d = Dir::new();
    // a mount point below a file (the message the kernel gives is the same)
    let plan = d.bundle_plan(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/bin/busybox/x", "type": "tmpfs", "source": "tmpfs"}));
    });
    let e = setup(&mut image(), &plan, PURE_V2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "open /bin/busybox/x: Not a directory (os error 20)"
    );
    assert_eq!((e.op, e.target.as_str()), (MountOp::Open, "/bin/busybox/x"));

    // a filesystem the kernel refuses; nothing is tried after it
    let plan = d.bundle_plan(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/mnt", "type": "tmpfs", "source": "tmpfs", "options": ["size=-5"]}));
    });
    let mut fake = image().fail("mount tmpfs on /mnt", libc::EINVAL);
    let e = setup(&mut fake, &plan, PURE_V2).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mount Tmpfs on /mnt: Invalid argument (os error 22)"
    );
    assert_eq!(e.op, MountOp::Mount(MountKind::Tmpfs));
    assert_eq!(
        fake.calls().last().map(String::as_str),
        Some("mount tmpfs on /mnt type tmpfs data=size=-5 -> errno 22")
    );

    let plan = d.cmdline_plan();
    let mut fake = image().fail("pivot_root", libc::EINVAL);
    let e = setup(&mut fake, &plan, PURE_V2).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "pivot_root into {}: Invalid argument (os error 22)",
            d.path.join("rootfs").display()
        )
    );
}

#[test]
fn on_the_hosts_tree_the_agents_places_are_masked() {
    let m = cmdline::host_masked_paths(None);
    assert_eq!(
        m,
        [
            "/run/palisade",
            "/sys/fs/bpf",
            "/run/palisade/seccomp-cache"
        ]
    );
    // a socket elsewhere is masked too; one under a masked directory adds nothing
    let m = cmdline::host_masked_paths(Some(std::path::Path::new("/var/lib/palisade/agent.sock")));
    assert_eq!(
        m.last().map(String::as_str),
        Some("/var/lib/palisade/agent.sock")
    );
    assert_eq!(
        cmdline::host_masked_paths(Some(std::path::Path::new("/run/palisade/b.sock"))).len(),
        3
    );
    // the plan: runc's masked paths (powercap included), then these; /tmp is a tmpfs
    let plan = cmdline::from_args(&run_args(None)).unwrap();
    assert!(
        plan.masked_paths
            .iter()
            .any(|p| p == "/sys/devices/virtual/powercap")
    );
    assert!(
        plan.masked_paths
            .ends_with(&cmdline::host_masked_paths(None))
    );
    assert!(
        plan.mounts
            .iter()
            .any(|m| m.destination == "/tmp" && m.kind == MountKind::Tmpfs)
    );
}
