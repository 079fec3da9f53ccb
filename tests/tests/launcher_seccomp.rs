//! `palisade run` seccomp: Palisade's default profile, Docker's, custom OCI profiles with
//! argument comparisons and errno values, io_uring, and calls through other ABIs. The probe
//! makes each call with arguments that change nothing and prints the errno it got.
use std::collections::BTreeMap;

use palisade_tests::launch::{
    Bundle, Out, add_binary, assert_clean, data_dir, probe_bin, run, unique,
};

/// The calls Palisade's default profile denies (and the probe knows): one list for the runs
/// that expect EPERM from the filter and for the control runs without it, so a call refused by
/// a capability check cannot pass for one refused by the filter.
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
    "open_tree_attr",
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
    // Docker's default profile restricts these as well
    "personality-bad",
    "socket-alg",
    "socket-vsock",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "mbind",
    "migrate_pages",
    "move_pages",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "get_mempolicy",
];

/// Denied calls that Docker's profile (and so Palisade's default) allows when the workload
/// holds the capability they need: CAP_SYS_PTRACE (kcmp, pidfd_getfd, process_madvise) or
/// CAP_SYS_NICE (the NUMA policy calls; never migrate_pages or move_pages).
const ALLOWED_WITH_THEIR_CAPABILITY: &[&str] = &[
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "mbind",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "get_mempolicy",
];

/// What every profile here lets through.
const ALLOWED: &[&str] = &[
    "getpid",
    "unshare-files",
    "socket-unix",
    "personality-query",
    "personality-uname26",
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

/// The names of every capability this launcher holds (a bundle may ask for no more).
fn held_capabilities() -> Vec<String> {
    let held = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_else(|e| panic!("/proc/self/status: {e}"))
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no CapPrm in /proc/self/status"));
    (0..=40u32)
        .filter(|c| held & (1 << c) != 0)
        .filter_map(|c| CAP_NAMES.get(c as usize).map(|n| (*n).to_owned()))
        .collect()
}

/// The probe's `syscalls all` in a bundle holding every capability this launcher holds, with
/// `seccomp` (`--seccomp` value) or none.
fn probe_with_every_capability(seccomp: Option<&str>) -> Out {
    let names = held_capabilities();
    let mut b = Bundle::new(&["/probe", "syscalls", "all"]);
    add_binary(&b.rootfs(), &probe_bin(), "/probe");
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set] = names.clone().into();
    }
    b.write();
    let name = unique("allcaps");
    let path = b.path.to_string_lossy().into_owned();
    let mut args = vec!["--bundle", &path, "--name", &name];
    if let Some(p) = seccomp {
        args.extend(["--seccomp", p]);
    }
    let out = run(&args);
    assert_clean(&name, Some(&b.rootfs()));
    out
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
    for ok in ALLOWED {
        assert_eq!(r[*ok], "0", "{ok}\n{out}");
    }
}

#[test]
fn the_default_profile_denies_them_with_every_capability_too() {
    // the capability checks pass here, so each EPERM is the filter's
    let out = probe_with_every_capability(Some("default"));
    let r = results(&out);
    for call in DENIED {
        let got = r.get(*call).map(String::as_str);
        if ALLOWED_WITH_THEIR_CAPABILITY.contains(call) {
            assert_ne!(
                got,
                Some(EPERM),
                "{call}: allowed with its capability, as Docker\n{out}"
            );
            assert!(got.is_some(), "{call} not run\n{out}");
        } else {
            assert_eq!(got, Some(EPERM), "{call}\n{out}");
        }
    }
    for ok in ALLOWED {
        assert_eq!(r[*ok], "0", "{ok}\n{out}");
    }
}

#[test]
fn without_the_filter_the_same_calls_reach_the_kernel() {
    // With every capability and no filter, the kernel answers each call with its own errno
    // (EFAULT, EBADF, EINVAL, ENOSYS...), never EPERM: the EPERMs above come from the filter.
    let all = probe_with_every_capability(None);
    let all = results(&all);
    for call in DENIED {
        let got = all.get(*call).map(String::as_str);
        assert!(
            got.is_some() && got != Some(EPERM),
            "{call} with every capability and no filter: {got:?}\n{all:?}"
        );
    }
    // Unconfined with the OCI default capabilities: the same list; an EPERM here is the
    // kernel's capability check (the run above shows the call passes with the capability)
    let (out, _) = probe_with("unconfined", &["syscalls", "all"]);
    let r = results(&out);
    let mut refused_by_capability = Vec::new();
    for call in DENIED {
        match r.get(*call).map(String::as_str) {
            None => panic!("{call} not run\n{out}"),
            Some(EPERM) => refused_by_capability.push(*call),
            Some(_) => {}
        }
    }
    eprintln!("refused by a capability check without the filter: {refused_by_capability:?}");
    assert!(
        refused_by_capability.len() < DENIED.len() / 2,
        "most denied calls need no capability: {refused_by_capability:?}\n{out}"
    );
    for ok in ALLOWED {
        assert_eq!(r[*ok], "0", "{ok}\n{out}");
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
    // Docker allows socket() except AF_ALG and AF_VSOCK, and unshare only with CAP_SYS_ADMIN
    assert_eq!(r["socket-unix"], "0");
    assert_eq!(r["unshare-files"], EPERM);
    assert_eq!(r["getpid"], "0");
    assert_eq!(r["personality-query"], "0");
    assert_eq!(r["personality-uname26"], "0");
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

/// Where `palisade run` keeps compiled filters.
const CACHE: &str = "/run/palisade/seccomp-cache";

/// The cache entry whose key (stored in the clear) mentions `marker`.
fn cache_entry(marker: &str) -> std::path::PathBuf {
    std::fs::read_dir(CACHE)
        .unwrap_or_else(|e| panic!("{CACHE}: {e}"))
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::read(p).is_ok_and(|b| b.windows(marker.len()).any(|w| w == marker.as_bytes()))
        })
        .unwrap_or_else(|| panic!("no cache entry mentions {marker}"))
}

/// The entry with its key kept and its program replaced by one instruction, "allow"
/// (`BPF_RET | BPF_K`, `SECCOMP_RET_ALLOW`): what a writer of the cache would plant. Any
/// authentication tag after the program stays as it was (a forger cannot compute one).
fn forge(entry: &[u8]) -> Vec<u8> {
    let magic_end = entry
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or_else(|| panic!("no magic line"))
        + 1;
    let tag = if entry.starts_with(b"palisade-seccomp-cache v1\n") {
        0
    } else {
        32
    };
    let mut at = magic_end;
    for _ in 0..2 {
        let len = u64::from_le_bytes(
            entry[at..at + 8]
                .try_into()
                .unwrap_or_else(|_| panic!("short entry")),
        );
        at += 8 + len as usize;
    }
    at += 8; // the filter flags
    let mut out = entry[..at].to_vec();
    out.extend_from_slice(&[0x06, 0, 0, 0, 0, 0, 0xff, 0x7f]);
    out.extend_from_slice(&entry[entry.len() - tag..]);
    out
}

#[test]
fn a_planted_cache_entry_is_not_trusted() {
    // a profile of this test's own: getcwd fails with errno 42; the unknown name makes its
    // cache key (and so its entry) unique
    let marker = format!("palisade_test_marker_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("profile.json");
    std::fs::write(
        &file,
        format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                  {{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}},
                  {{"names": ["{marker}"], "action": "SCMP_ACT_ERRNO"}}]}}"#
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let profile = file.to_string_lossy().into_owned();
    let (out, _) = probe_with(&profile, &["syscalls", "getcwd"]);
    assert_eq!(results(&out)["getcwd"], "42", "{out}");
    // plant an entry with the same key and a program that allows everything
    let entry = cache_entry(&marker);
    let good = std::fs::read(&entry).unwrap_or_else(|e| panic!("{e}"));
    let forged = forge(&good);
    std::fs::write(&entry, &forged).unwrap_or_else(|e| panic!("plant {}: {e}", entry.display()));
    let (out, _) = probe_with(&profile, &["syscalls", "getcwd"]);
    assert_eq!(
        results(&out)["getcwd"],
        "42",
        "the planted filter was loaded instead of the profile's\n{out}"
    );
    // refused, compiled again and written back
    let now = std::fs::read(&entry).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(now, forged, "the planted entry is still there");
    let _ = std::fs::remove_file(&entry);
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
