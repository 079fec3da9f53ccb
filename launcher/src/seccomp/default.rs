//! Palisade's default profile (`--seccomp default`): allow everything except calls that reach
//! kernel state shared with the host or widen the kernel's attack surface. Every denied call
//! fails with `EPERM` (`clone3` with `ENOSYS`, so C libraries fall back to `clone`, whose flags
//! the filter can read). Unlike Docker's allow-list it does not break programs that use new
//! syscalls, and it is small (fast to load).
//!
//! | group | calls | why |
//! |---|---|---|
//! | mounts | `mount`, `umount2`, `pivot_root`, `fsopen`, `fsconfig`, `fsmount`, `fspick`, `move_mount`, `open_tree`, `mount_setattr` | change the mount tree |
//! | namespaces | `setns`; `unshare` and `clone` with any `CLONE_NEW*` flag; `clone3` (`ENOSYS`) | leave or create namespaces (user namespaces hand out capabilities) |
//! | kernel | `bpf`, `perf_event_open`, `userfaultfd`, `io_uring_setup`, `io_uring_enter`, `io_uring_register` | large attack surface; io_uring also bypasses syscall filtering |
//! | keys | `keyctl`, `add_key`, `request_key` | the kernel keyring is not namespaced |
//! | modules, kexec | `init_module`, `finit_module`, `delete_module`, `kexec_load`, `kexec_file_load` | load kernel code |
//! | host | `reboot`, `swapon`, `swapoff`, `acct`, `syslog`, `settimeofday`, `clock_settime`, `clock_adjtime`, `iopl`, `ioperm`, `quotactl`, `quotactl_fd`, `vhangup`, `lookup_dcookie`, `open_by_handle_at`, `fanotify_init`, `uselib`, `ustat`, `sysfs`, `_sysctl`, `nfsservctl` | host-wide state, or (`open_by_handle_at`) opening files outside the container by handle |
//!
//! `ptrace` policy: allowed, as in Docker on kernels ≥ 4.8 (seccomp is re-checked after a
//! tracer changes a call, so tracing cannot bypass the filter). The pid namespace limits what
//! can be traced to the container's own processes, the OCI default capabilities lack
//! `CAP_SYS_PTRACE`, and the launcher's init is not dumpable, so the workload cannot attach
//! to it.
use super::{Action, ArgCmp, Op, Profile, Rule};

const DENIED: &[&str] = &[
    // mounts
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // namespaces
    "setns",
    // kernel attack surface
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // keys
    "keyctl",
    "add_key",
    "request_key",
    // kernel code
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    // host
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "iopl",
    "ioperm",
    "quotactl",
    "quotactl_fd",
    "vhangup",
    "lookup_dcookie",
    "open_by_handle_at",
    "fanotify_init",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "nfsservctl",
];

/// `CLONE_NEW*` flags; `CLONE_NEWTIME` (0x80) only for `unshare` (in `clone` those bits hold
/// the exit signal).
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
const CLONE_NEWTIME: u64 = 0x80;

fn eperm() -> Action {
    Action::Errno(libc::EPERM as u16)
}

fn masked(flag: u64) -> ArgCmp {
    ArgCmp {
        index: 0,
        value: flag,
        value_two: flag,
        op: Op::MaskedEq,
    }
}

pub fn palisade_default() -> Profile {
    let mut rules = vec![Rule {
        names: DENIED.iter().map(|s| (*s).to_owned()).collect(),
        action: eperm(),
        args: Vec::new(),
    }];
    for &flag in NS_FLAGS.iter().chain([&CLONE_NEWTIME]) {
        rules.push(Rule {
            names: vec!["unshare".into()],
            action: eperm(),
            args: vec![masked(flag)],
        });
    }
    for &flag in NS_FLAGS {
        rules.push(Rule {
            names: vec!["clone".into()],
            action: eperm(),
            args: vec![masked(flag)],
        });
    }
    rules.push(Rule {
        names: vec!["clone3".into()],
        action: Action::Errno(libc::ENOSYS as u16),
        args: Vec::new(),
    });
    Profile {
        source: "default".into(),
        default_action: Action::Allow,
        arches: Vec::new(),
        rules,
        log: false,
        spec_allow: false,
    }
}
