//! x32 syscall names, indexed by number without `__X32_SYSCALL_BIT` (0x40000000).
//!
//! From `asm/unistd_x32.h` (linux-libc-dev 6.1) plus 451..=469 (`common` in the kernel's
//! `syscall_64.tbl`; 453 is x86_64 only). Below 512 a number means what it means on x86_64
//! where x32 has the call at all: the x86_64 table less the `64` entries of `syscall_64.tbl`
//! ([`X86_64_ONLY`]), so the two tables cannot drift apart. 512 to 547 are x32's own entry
//! points of calls whose arguments differ (`rt_sigaction`, `readv`, ...: [`OWN`]).
use crate::x86_64;

/// The first of x32's own numbers.
const OWN_BASE: usize = 512;

/// The x86_64 numbers below 512 that x32 does not have (the `64` entries of
/// `syscall_64.tbl`: most have an x32 entry point of their own in [`OWN`]).
const X86_64_ONLY: &[usize] = &[
    13, 15, 16, 19, 20, 45, 46, 47, 54, 55, 59, 101, 127, 128, 129, 131, 134, 156, 174, 177, 178,
    180, 205, 206, 209, 211, 214, 215, 222, 236, 244, 246, 247, 273, 274, 278, 279, 295, 296, 297,
    299, 307, 310, 311, 322, 327, 328, 453,
];

/// x32's own entry points, 512 to 547.
const OWN: &[&str] = &[
    "rt_sigaction",      // 512
    "rt_sigreturn",      // 513
    "ioctl",             // 514
    "readv",             // 515
    "writev",            // 516
    "recvfrom",          // 517
    "sendmsg",           // 518
    "recvmsg",           // 519
    "execve",            // 520
    "ptrace",            // 521
    "rt_sigpending",     // 522
    "rt_sigtimedwait",   // 523
    "rt_sigqueueinfo",   // 524
    "sigaltstack",       // 525
    "timer_create",      // 526
    "mq_notify",         // 527
    "kexec_load",        // 528
    "waitid",            // 529
    "set_robust_list",   // 530
    "get_robust_list",   // 531
    "vmsplice",          // 532
    "move_pages",        // 533
    "preadv",            // 534
    "pwritev",           // 535
    "rt_tgsigqueueinfo", // 536
    "recvmmsg",          // 537
    "sendmmsg",          // 538
    "process_vm_readv",  // 539
    "process_vm_writev", // 540
    "setsockopt",        // 541
    "getsockopt",        // 542
    "io_setup",          // 543
    "io_submit",         // 544
    "execveat",          // 545
    "preadv2",           // 546
    "pwritev2",          // 547
];

/// `NAMES[nr]` is the name of syscall `nr` (empty where the number is unused).
pub const NAMES: &[&str] = &build();

const fn build() -> [&'static str; OWN_BASE + OWN.len()] {
    let mut t = [""; OWN_BASE + OWN.len()];
    let mut nr = 0;
    while nr < x86_64::NAMES.len() {
        t[nr] = x86_64::NAMES[nr];
        nr += 1;
    }
    let mut i = 0;
    while i < X86_64_ONLY.len() {
        t[X86_64_ONLY[i]] = "";
        i += 1;
    }
    let mut i = 0;
    while i < OWN.len() {
        t[OWN_BASE + i] = OWN[i];
        i += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_only_numbers_are_x86_64_calls() {
        for &nr in X86_64_ONLY {
            assert!(!x86_64::NAMES[nr].is_empty(), "{nr}");
        }
        assert!(X86_64_ONLY.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn known_numbers() {
        assert_eq!(NAMES[0], "read");
        assert_eq!(NAMES[13], "");
        assert_eq!(NAMES[59], "");
        assert_eq!(NAMES[435], "clone3");
        assert_eq!(NAMES[512], "rt_sigaction");
        assert_eq!(NAMES[520], "execve");
        assert_eq!(NAMES[547], "pwritev2");
        assert_eq!(NAMES.len(), 548);
    }
}
