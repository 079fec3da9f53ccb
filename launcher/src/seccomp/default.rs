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
//! | as Docker | `personality` except the values Docker allows (0, `PER_LINUX32` 8, `UNAME26` 0x20000, both 0x20008, and the query 0xffffffff); `socket` for `AF_ALG` and `AF_VSOCK`; `migrate_pages`, `move_pages`; without `CAP_SYS_PTRACE`: `kcmp`, `pidfd_getfd`, `process_madvise`; without `CAP_SYS_NICE`: `mbind`, `set_mempolicy`, `set_mempolicy_home_node`, `get_mempolicy`; `open_tree_attr` (the mount API) | what Docker's default profile refuses: execution domains that turn off ASLR or make data executable, the kernel crypto API and host sockets, reading other processes' descriptors and memory layout, NUMA placement of the host's memory |
//!
//! Every remaining difference from Docker's default profile is listed in the README (and
//! checked call by call against Docker's profile in `tests`).
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
    // as Docker: the new mount API's attribute variant, and NUMA page migration
    "open_tree_attr",
    "migrate_pages",
    "move_pages",
];

/// Docker allows these only with `CAP_SYS_PTRACE`.
const NEED_SYS_PTRACE: &[&str] = &["kcmp", "pidfd_getfd", "process_madvise"];
/// Docker allows these only with `CAP_SYS_NICE`.
const NEED_SYS_NICE: &[&str] = &[
    "mbind",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "get_mempolicy",
];

/// Socket families Docker's profile refuses.
const DENIED_FAMILIES: &[libc::c_int] = &[libc::AF_ALG, libc::AF_VSOCK];

/// `personality` values Docker allows (bits 3 and 17: `PER_LINUX32`, `UNAME26`), besides the
/// query 0xffffffff.
const PERSONALITY_BITS: u64 = 0x0002_0008;

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

fn cmp(op: Op, value: u64, value_two: u64) -> ArgCmp {
    ArgCmp {
        index: 0,
        value,
        value_two,
        op,
    }
}

/// `personality(p)` is refused unless `p` is 0, 8, 0x20000, 0x20008 or 0xffffffff, as in
/// Docker's allow-list. A deny-list can only say "refuse when one comparison holds" (libseccomp
/// takes one comparison per argument and rule), so the refused values are covered by 33
/// comparisons, none of which holds for an allowed value:
/// - anything above 32 bits;
/// - for the 30 bits other than 3 and 17, in a ring: "this bit set and the next one clear".
///   A value with some of those bits set but not all has such a pair;
/// - "bit 0 set and bit 3 clear", "bit 0 set and bit 17 clear": the values with all 30 set
///   but not 0xffffffff.
pub(crate) fn personality_rules() -> Vec<ArgCmp> {
    let free: Vec<u64> = (0..32)
        .filter(|b| (PERSONALITY_BITS >> b) & 1 == 0)
        .collect();
    let mut c = vec![cmp(Op::Gt, 0xffff_ffff, 0)];
    for (i, b) in free.iter().enumerate() {
        let next = free[(i + 1) % free.len()];
        c.push(cmp(Op::MaskedEq, (1 << b) | (1 << next), 1 << b));
    }
    for other in [3, 17] {
        c.push(cmp(Op::MaskedEq, 1 | (1 << other), 1));
    }
    c
}

/// Palisade's default profile for a workload whose bounding set is `caps` (the calls Docker
/// allows with a capability are allowed with it here too).
pub fn palisade_default(caps: u64) -> Profile {
    let has = |name: &str| crate::caps::number(name).is_some_and(|n| caps & (1 << n) != 0);
    let mut denied: Vec<String> = DENIED.iter().map(|s| (*s).to_owned()).collect();
    if !has("CAP_SYS_PTRACE") {
        denied.extend(NEED_SYS_PTRACE.iter().map(|s| (*s).to_owned()));
    }
    if !has("CAP_SYS_NICE") {
        denied.extend(NEED_SYS_NICE.iter().map(|s| (*s).to_owned()));
    }
    let mut rules = vec![Rule {
        names: denied,
        action: eperm(),
        args: Vec::new(),
    }];
    // one comparison each: alternatives (see `compile`)
    rules.push(Rule {
        names: vec!["personality".into()],
        action: eperm(),
        args: personality_rules(),
    });
    rules.push(Rule {
        names: vec!["socket".into()],
        action: eperm(),
        args: DENIED_FAMILIES
            .iter()
            .map(|f| cmp(Op::Eq, *f as u64, 0))
            .collect(),
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether one comparison holds for `v` (as the filter evaluates it).
    fn holds(c: &ArgCmp, v: u64) -> bool {
        match c.op {
            Op::Gt => v > c.value,
            Op::Eq => v == c.value,
            Op::MaskedEq => v & c.value == c.value_two,
            _ => unreachable!("not used here"),
        }
    }

    #[test]
    fn personality_is_refused_exactly_where_docker_refuses_it() {
        let rules = personality_rules();
        assert_eq!(rules.len(), 33);
        let refused = |v: u64| rules.iter().any(|c| holds(c, v));
        let allowed = [0, 8, 0x20000, 0x20008, 0xffff_ffff];
        for v in allowed {
            assert!(!refused(v), "{v:#x} is allowed by Docker");
        }
        // every single bit, every value with one bit cleared, their neighbours, values above
        // 32 bits and a pseudo-random sweep
        let mut candidates: Vec<u64> = Vec::new();
        for b in 0..64 {
            candidates.extend([
                1 << b,
                0xffff_ffff & !(1 << b),
                (1 << b) | 8,
                (1 << b) | 0x20000,
            ]);
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            candidates.extend([x, x & 0xffff_ffff, x & 0x2_0008, (x & 0xff) | 0xffff_ff00]);
        }
        for v in candidates {
            assert_eq!(refused(v), !allowed.contains(&v), "{v:#x}");
        }
    }

    #[test]
    fn capabilities_allow_what_docker_allows_with_them() {
        let names = |caps: u64| -> Vec<String> { palisade_default(caps).rules[0].names.clone() };
        let none = names(0);
        for n in NEED_SYS_PTRACE
            .iter()
            .chain(NEED_SYS_NICE)
            .chain(["open_tree_attr", "move_pages"].iter())
        {
            assert!(none.iter().any(|x| x == n), "{n}");
        }
        let bit = |n: &str| 1u64 << crate::caps::number(n).unwrap();
        let both = names(bit("CAP_SYS_PTRACE") | bit("CAP_SYS_NICE"));
        for n in NEED_SYS_PTRACE.iter().chain(NEED_SYS_NICE) {
            assert!(!both.iter().any(|x| x == n), "{n}");
        }
        assert!(
            both.iter().any(|x| x == "migrate_pages"),
            "never allowed by Docker"
        );
    }
}
