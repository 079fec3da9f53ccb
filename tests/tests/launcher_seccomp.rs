//! `palisade run` seccomp: Palisade's default profile, Docker's, custom OCI profiles with
//! argument comparisons and errno values, io_uring, and calls through other ABIs. The probe
//! makes each call with arguments that change nothing and prints the errno it got.
use std::collections::BTreeMap;

use palisade_tests::launch::{
    Bundle, Out, add_binary, assert_clean, data_dir, probe_bin, run, unique,
};

/// The calls Palisade's default profile denies (and the probe knows).
const DENIED: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "setns",
    "unshare-newuts",
    "unshare-newuser",
    "clone-newnet",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "clock_settime",
    "iopl",
    "ioperm",
    "open_by_handle_at",
    "quotactl_fd",
];

const EPERM: &str = "1";
const ENOSYS: &str = "38";

fn results(out: &Out) -> BTreeMap<String, String> {
    assert_eq!(out.code, 0, "{out}");
    out.lines()
        .iter()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn probe_with(seccomp: &str, what: &[&str]) -> (Out, String) {
    let name = unique("sc");
    let probe = probe_bin();
    let mut args = vec!["--name", &name, "--seccomp", seccomp, "--"];
    let p = probe.to_string_lossy().into_owned();
    args.push(&p);
    args.extend_from_slice(what);
    let out = run(&args);
    assert_clean(&name, None);
    (out, name)
}

#[test]
fn the_default_profile_denies_each_dangerous_call_with_eperm() {
    let (out, _) = probe_with("default", &["syscalls", "all"]);
    let r = results(&out);
    for call in DENIED {
        assert_eq!(
            r.get(*call).map(String::as_str),
            Some(EPERM),
            "{call}\n{out}"
        );
    }
    // clone3's flags are out of the filter's reach: ENOSYS makes C libraries use clone
    assert_eq!(r["clone3"], ENOSYS);
    // what stays allowed
    for ok in ["getpid", "unshare-files", "socket-unix", "socket-vsock"] {
        assert_eq!(r[ok], "0", "{ok}\n{out}");
    }
}

#[test]
fn without_the_filter_the_same_calls_reach_the_kernel() {
    // unconfined, with the OCI default capabilities: the kernel answers with its own errno
    // (EFAULT, EBADF, EINVAL, ENOSYS...) for these, so the EPERMs above come from the filter
    let (out, _) = probe_with("unconfined", &["syscalls", "all"]);
    let r = results(&out);
    for call in [
        "mount",
        "umount2",
        "open_tree",
        "mount_setattr",
        "setns",
        "unshare-newuser",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "keyctl",
        "add_key",
        "request_key",
        "clock_settime",
        "open_by_handle_at",
        "quotactl_fd",
        "clone3",
    ] {
        assert_ne!(r[call], EPERM, "{call} unconfined\n{out}");
    }
}

#[test]
fn dockers_default_profile_loads_and_behaves_as_in_docker() {
    let profile = data_dir().join("docker-default-seccomp.json");
    let (out, _) = probe_with(&profile.to_string_lossy(), &["syscalls", "all"]);
    let r = results(&out);
    for call in DENIED {
        assert_eq!(r[*call], EPERM, "{call}\n{out}");
    }
    // the profile's own errno for clone3, EPERM (defaultErrnoRet) for the rest
    assert_eq!(r["clone3"], ENOSYS);
    // Docker allows socket() except AF_VSOCK, and unshare only with CAP_SYS_ADMIN
    assert_eq!(r["socket-unix"], "0");
    assert_eq!(r["socket-vsock"], EPERM);
    assert_eq!(r["unshare-files"], EPERM);
    assert_eq!(r["getpid"], "0");
}

#[test]
fn a_custom_profile_applies_its_errno_values_and_argument_comparisons() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profile.json");
    std::fs::write(
        &file,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
              {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42},
              {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
               "args": [{"index": 0, "value": 40, "op": "SCMP_CMP_EQ"}]},
              {"names": ["no_such_syscall_xyz", "getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 77}
            ]}"#,
    )
    .unwrap();
    let (out, _) = probe_with(
        &file.to_string_lossy(),
        &[
            "syscalls",
            "getcwd",
            "socket-unix",
            "socket-vsock",
            "getpid",
            "io_uring_setup",
            "mount",
        ],
    );
    let r = results(&out);
    assert_eq!(r["getcwd"], "42");
    assert_eq!(r["socket-vsock"], "97", "AF_VSOCK matches the comparison");
    assert_eq!(r["socket-unix"], "0", "AF_UNIX does not");
    assert_eq!(r["getpid"], "77");
    // io_uring is denied unless the profile names it
    assert_eq!(r["io_uring_setup"], EPERM);
    // mount is allowed by this profile: the kernel answers (EFAULT for a NULL target)
    assert_eq!(r["mount"], "14");
    // an unknown name is skipped with a warning naming it, as runc does
    assert!(
        out.stderr.contains("unknown to libseccomp") && out.stderr.contains("no_such_syscall_xyz"),
        "{out}"
    );
}

#[test]
fn io_uring_works_when_a_profile_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("uring.json");
    std::fs::write(
        &file,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["io_uring_setup"], "action": "SCMP_ACT_ALLOW"}]}"#,
    )
    .unwrap();
    let (out, _) = probe_with(
        &file.to_string_lossy(),
        &["syscalls", "io_uring_setup", "io_uring_enter"],
    );
    let r = results(&out);
    // the kernel's own answer to a NULL params pointer
    assert_eq!(r["io_uring_setup"], "14", "EFAULT from the kernel\n{out}");
    assert_eq!(r["io_uring_enter"], EPERM, "not named: denied");
}

#[test]
fn calls_through_other_abis_are_denied_unless_the_profile_lists_them() {
    const SIGSYS_EXIT: i32 = 128 + libc::SIGSYS;
    // i386 getpid (20) through int 0x80, and x32 getpid (39 | 0x40000000)
    let (out, _) = probe_with("default", &["int80", "20"]);
    assert_eq!(out.code, SIGSYS_EXIT, "int 0x80 kills the process\n{out}");
    let (out, _) = probe_with("default", &["x32", "39"]);
    assert_eq!(out.code, SIGSYS_EXIT, "x32 kills the process\n{out}");
    // unconfined: int 0x80 works (pid 2 in the container), x32 is not in this kernel
    let (out, _) = probe_with("unconfined", &["int80", "20"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "2"), "{out}");
    let (out, _) = probe_with("unconfined", &["x32", "39"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "errno 38"), "{out}");
    // Docker's profile lists x86 and x32: getpid runs, mount (21) is denied with EPERM
    let docker = data_dir().join("docker-default-seccomp.json");
    let (out, _) = probe_with(&docker.to_string_lossy(), &["int80", "20"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "2"), "{out}");
    let (out, _) = probe_with(&docker.to_string_lossy(), &["int80", "21"]);
    assert_eq!((out.code, out.stdout.trim()), (0, "-1"), "{out}");
}

#[test]
fn a_bundle_with_every_capability_and_no_seccomp_reaches_the_kernel() {
    // The capability checks no longer answer EPERM either: what is left is the kernel's
    // argument checking. Capabilities this launcher does not hold are left out.
    let held = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let names: Vec<String> = (0..=40u32)
        .filter(|c| held & (1 << c) != 0)
        .filter_map(|c| CAP_NAMES.get(c as usize).map(|n| (*n).to_owned()))
        .collect();
    let mut b = Bundle::new(&["/probe", "syscalls", "all"]);
    add_binary(&b.rootfs(), &probe_bin(), "/probe");
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set] = names.clone().into();
    }
    b.write();
    let name = unique("allcaps");
    let out = run(&["--bundle", &b.path.to_string_lossy(), "--name", &name]);
    let r = results(&out);
    for call in [
        "mount",
        "umount2",
        "pivot_root",
        "fsopen",
        "fsmount",
        "fspick",
        "move_mount",
        "open_tree",
        "setns",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
        "add_key",
        "reboot",
        "swapon",
        "swapoff",
        "clock_settime",
        "iopl",
        "ioperm",
        "open_by_handle_at",
        "io_uring_setup",
    ] {
        assert_ne!(
            r[call], EPERM,
            "{call} with every capability and no filter\n{out}"
        );
    }
    assert_clean(&name, Some(&b.rootfs()));
}

const CAP_NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];
