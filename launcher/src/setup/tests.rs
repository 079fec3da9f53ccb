//! The namespace plan: clone flags for each combination, and what the init does inside the
//! namespaces before the filesystem, checked on the recording fake.
use std::path::PathBuf;

use super::*;
use crate::{
    cmdline,
    plan::{Namespaces, Net},
    sys::fake::{Fake, ns_flag_names},
    testing::{Dir, assert_calls, image},
};

fn ns(pid: bool, uts: bool, ipc: bool, cgroup: bool, net: Net) -> Namespaces {
    Namespaces {
        pid,
        mount: true,
        uts,
        ipc,
        cgroup,
        net,
    }
}

#[test]
fn clone_flags_of_each_plan() {
    let flags = |n: &Namespaces| ns_flag_names(clone_flags(n));
    // the command line: every namespace, a new network
    assert_eq!(flags(&Namespaces::default()), "mnt,uts,ipc,pid,net");
    let d = Dir::new();
    assert_eq!(flags(&d.cmdline_plan().ns), "mnt,uts,ipc,pid,net");
    // runc spec's bundle: pid, network, ipc, uts, mount
    assert_eq!(flags(&d.bundle_plan(|_| {}).ns), "mnt,uts,ipc,pid,net");
    // a bundle with a mount namespace only
    let only_mount = d.bundle_plan(|c| {
        c["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}]);
        c.as_object_mut().unwrap().remove("hostname");
    });
    assert_eq!(flags(&only_mount.ns), "mnt");
    // joining a network namespace is a setns inside, not a clone flag
    let join = d.bundle_plan(|c| {
        c["linux"]["namespaces"] = serde_json::json!(
            [{"type": "mount"}, {"type": "uts"}, {"type": "network", "path": "/var/run/netns/blue"}]);
    });
    assert_eq!(join.ns.net, Net::Join(PathBuf::from("/var/run/netns/blue")));
    assert_eq!(flags(&join.ns), "mnt,uts");
    assert_eq!(flags(&ns(true, false, false, true, Net::Host)), "mnt,pid");
}

#[test]
fn clone_flags_for_every_combination() {
    let nets = [
        Net::Host,
        Net::New,
        Net::Join(PathBuf::from("/run/netns/x")),
    ];
    for bits in 0..16u32 {
        for net in &nets {
            let n = ns(
                bits & 1 != 0,
                bits & 2 != 0,
                bits & 4 != 0,
                bits & 8 != 0,
                net.clone(),
            );
            let f = clone_flags(&n);
            let has = |flag: libc::c_int| f & flag as u64 != 0;
            assert!(has(libc::CLONE_NEWNS), "{n:?}");
            assert_eq!(has(libc::CLONE_NEWPID), n.pid, "{n:?}");
            assert_eq!(has(libc::CLONE_NEWUTS), n.uts, "{n:?}");
            assert_eq!(has(libc::CLONE_NEWIPC), n.ipc, "{n:?}");
            assert_eq!(has(libc::CLONE_NEWNET), n.net == Net::New, "{n:?}");
            // unshared by the init after its placement, never cloned
            assert!(!has(libc::CLONE_NEWCGROUP), "{n:?}");
            assert!(!has(libc::CLONE_NEWUSER), "{n:?}");
            let known = libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWNET;
            assert_eq!(f & !(known as u64), 0, "{n:?}");
        }
    }
}

/// The calls before the filesystem (the first mount call starts it).
fn before_mounts(fake: &Fake) -> Vec<String> {
    fake.calls()
        .iter()
        .take_while(|c| !c.starts_with("mount "))
        .cloned()
        .collect()
}

#[test]
fn the_command_line_plan_inside_its_namespaces() {
    let d = Dir::new();
    let plan = d.cmdline_plan();
    let mut fake = image();
    container(&mut fake, &plan, "web", &Vec::new()).unwrap();
    assert_calls(
        &before_mounts(&fake),
        "
        ip link set lo up
        sethostname web
        ",
    );
    assert_eq!(fake.calls()[2], "mount on / flags=private,rec");
    assert_eq!(fake.calls().last().map(String::as_str), Some("chdir /"));
}

/// The calls before and after the wait for the launcher's placement (which must be there once).
fn around_placement(fake: &Fake) -> (Vec<String>, Vec<String>) {
    let calls = fake.calls();
    let waits: Vec<usize> = (0..calls.len())
        .filter(|i| calls[*i] == "wait for placement")
        .collect();
    assert_eq!(waits.len(), 1, "{calls:#?}");
    (calls[..waits[0]].to_vec(), calls[waits[0] + 1..].to_vec())
}

#[test]
fn the_init_builds_its_filesystem_while_the_launcher_places_it() {
    // the rootfs plan: everything up to /sys before the wait; the cgroup namespace, then the
    // cgroup mount (which must show the workload's cgroup as its root) right after it
    let d = Dir::new();
    let plan = d.cmdline_plan();
    let mut fake = image();
    container(&mut fake, &plan, "web", &Vec::new()).unwrap();
    let (before, after) = around_placement(&fake);
    assert!(before.iter().all(|c| !c.contains("cgroup")), "{before:#?}");
    assert!(
        before.iter().any(|c| c.starts_with("mount proc on /proc")),
        "{before:#?}"
    );
    assert!(
        before.iter().any(|c| c.starts_with("mount sysfs on /sys")),
        "{before:#?}"
    );
    assert_eq!(after[0], "unshare cgroup");
    assert!(
        after[1].starts_with("mount cgroup on /sys/fs/cgroup type cgroup2"),
        "{after:#?}"
    );
    assert_eq!(after.last().map(String::as_str), Some("chdir /"));

    // v1 hierarchies too: the tmpfs holding them comes after the wait
    let v1 = vec![("memory".to_owned(), "memory".to_owned())];
    let mut fake = image();
    container(&mut fake, &plan, "web", &v1).unwrap();
    let (before, after) = around_placement(&fake);
    assert!(before.iter().all(|c| !c.contains("cgroup")), "{before:#?}");
    assert_eq!(after[0], "unshare cgroup");
    assert!(
        after[1].starts_with("mount cgroup on /sys/fs/cgroup type tmpfs"),
        "{after:#?}"
    );

    // the host's tree too: its /sys/fs/cgroup is replaced by the workload's own cgroups, so
    // the cgroup namespace and that mount come after the wait, the pivot_root last
    let mut plan = cmdline::from_args(&crate::testing::run_args(None)).unwrap();
    let mut fake = image().with(&["/sys/fs/cgroup/"]);
    container(&mut fake, &plan, "web", &Vec::new()).unwrap();
    let (before, after) = around_placement(&fake);
    assert!(before.iter().all(|c| !c.contains("cgroup")), "{before:#?}");
    assert_eq!(after[0], "unshare cgroup");
    assert!(
        after[1].starts_with("mount cgroup on /sys/fs/cgroup type cgroup2"),
        "{after:#?}"
    );
    assert_eq!(after.last().map(String::as_str), Some("chdir /"));

    // no cgroup namespace and no cgroup mount: nothing after the wait
    plan.ns.cgroup = false;
    plan.mounts
        .retain(|m| m.kind != crate::plan::MountKind::Cgroup);
    let mut fake = image();
    container(&mut fake, &plan, "web", &Vec::new()).unwrap();
    let (_, after) = around_placement(&fake);
    assert!(after.is_empty(), "{after:#?}");
}

#[test]
fn a_step_that_fails_before_the_placement_still_waits_for_it() {
    // without clone3 the launcher may be writing the init's pid to the unified cgroup.procs:
    // an init that left would turn the step's failure into a placement error
    let d = Dir::new();
    let plan = d.cmdline_plan();
    let mut fake = image().fail("mount proc", libc::EBUSY);
    let e = container(&mut fake, &plan, "web", &Vec::new()).unwrap_err();
    assert!(matches!(e, SetupError::Filesystem(_)), "{e}");
    let calls = fake.calls();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("wait for placement"),
        "{calls:#?}"
    );
    assert!(
        calls.iter().all(|c| !c.starts_with("unshare")),
        "{calls:#?}"
    );

    // a launcher that gave up: the init is told so, and leaves without a report
    let mut fake = image().fail("wait for placement", libc::EPIPE);
    let e = container(&mut fake, &plan, "web", &Vec::new()).unwrap_err();
    assert!(matches!(e, SetupError::Released), "{e}");
    assert!(
        fake.calls().iter().all(|c| !c.contains("cgroup")),
        "{:#?}",
        fake.calls()
    );
    // and one that gave up while a step was failing
    let mut fake = image()
        .fail("mount proc", libc::EBUSY)
        .fail("wait for placement", libc::EPIPE);
    let e = container(&mut fake, &plan, "web", &Vec::new()).unwrap_err();
    assert!(matches!(e, SetupError::Released), "{e}");
}

#[test]
fn a_bundle_joining_a_network_namespace() {
    let d = Dir::new();
    let mut plan = d.bundle_plan(|c| {
        c["linux"]["namespaces"] = serde_json::json!(
            [{"type": "mount"}, {"type": "uts"}, {"type": "cgroup"},
             {"type": "network", "path": "/var/run/netns/blue"}]);
        c["domainname"] = "example.org".into();
    });
    plan.hostname = None;
    let mut fake = image();
    container(&mut fake, &plan, "web-1", &Vec::new()).unwrap();
    assert_calls(
        &before_mounts(&fake),
        "
        setns /var/run/netns/blue net
        sethostname web-1
        setdomainname example.org
        ",
    );
}

#[test]
fn host_network_and_no_uts_namespace_change_nothing_before_the_mounts() {
    let d = Dir::new();
    let plan = d.bundle_plan(|c| {
        c["linux"]["namespaces"] = serde_json::json!([{"type": "mount"}, {"type": "pid"}]);
        c.as_object_mut().unwrap().remove("hostname");
    });
    assert_eq!(plan.ns.net, Net::Host);
    let mut fake = image();
    container(&mut fake, &plan, "web", &Vec::new()).unwrap();
    assert!(before_mounts(&fake).is_empty(), "{:#?}", fake.calls());
    // the bundle's own hostname wins over the workload name
    let plan = d.bundle_plan(|_| {});
    let mut fake = image();
    container(&mut fake, &plan, "web", &Vec::new()).unwrap();
    assert_calls(&before_mounts(&fake), "ip link set lo up\nsethostname runc");
}

#[test]
fn a_failed_step_stops_the_setup_and_says_what_it_was() {
    let d = Dir::new();
    let plan = d.bundle_plan(|c| {
        c["linux"]["namespaces"] = serde_json::json!(
            [{"type": "mount"}, {"type": "network", "path": "/etc/hostname"}]);
        c.as_object_mut().unwrap().remove("hostname");
    });
    let mut fake = image().fail("setns", libc::EINVAL);
    let e = container(&mut fake, &plan, "web", &Vec::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot join the network namespace /etc/hostname: Invalid argument (os error 22)"
    );
    assert_eq!(
        fake.calls(),
        ["setns /etc/hostname net -> errno 22", "wait for placement"]
    );

    let plan = d.cmdline_plan();
    let mut fake = image().fail("mount proc", libc::EBUSY);
    let e = container(&mut fake, &plan, "web", &Vec::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot set up the container's filesystem: mount Proc on /proc: Device or resource busy (os error 16)"
    );
    assert!(matches!(e, SetupError::Filesystem(MountError { .. })));

    let mut fake = image().fail("unshare", libc::EPERM);
    let e = container(&mut fake, &plan, "web", &Vec::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cannot create the cgroup namespace: Operation not permitted (os error 1)"
    );
}
