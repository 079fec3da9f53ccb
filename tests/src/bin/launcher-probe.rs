//! Runs inside `palisade run` in the launcher tests and reports what the sandbox allowed.
//!
//! - `syscalls NAME...`: each call (with arguments that change nothing: NULL pointers, -1
//!   descriptors, invalid flags) in its own child; prints `NAME ERRNO` (0 = success) or
//!   `NAME signal N`; `all` = every call known here;
//! - `int80 NR [ARG]`: an x86 32-bit call through `int 0x80`; prints its raw result;
//! - `x32 NR`: an x32-ABI call (number | 0x40000000); prints `errno E` or the result;
//! - `fork-bomb`: forks until refused; prints the number of children, exits 0 (gives up with
//!   exit 3 at 1,000 children, so a missing limit fails the test instead of the machine);
//! - `hog`: allocates and touches memory 1 MiB at a time, printing the MiB held (gives up with
//!   exit 3 at 1 GiB);
//! - `spin`: burns CPU forever (prints `spinning` first).
use std::{io::Write as _, process::ExitCode};

/// x86_64 numbers the libc crate may lack.
const SYS_PROCESS_MADVISE: libc::c_long = 440;
const SYS_SET_MEMPOLICY_HOME_NODE: libc::c_long = 450;
const SYS_OPEN_TREE_ATTR: libc::c_long = 467;

/// (name, syscall number, arguments): arguments that change nothing (NULL pointers, -1
/// descriptors, invalid flags) unless noted.
const CALLS: &[(&str, libc::c_long, [i64; 6])] = &[
    ("mount", libc::SYS_mount, [0; 6]),
    ("umount2", libc::SYS_umount2, [0; 6]),
    ("pivot_root", libc::SYS_pivot_root, [0; 6]),
    ("fsopen", libc::SYS_fsopen, [0; 6]),
    ("fsmount", libc::SYS_fsmount, [-1, 0, 0, 0, 0, 0]),
    ("fspick", libc::SYS_fspick, [-1, 0, 0, 0, 0, 0]),
    ("move_mount", libc::SYS_move_mount, [-1, 0, -1, 0, 0, 0]),
    ("open_tree", libc::SYS_open_tree, [-1, 0, 0, 0, 0, 0]),
    (
        "mount_setattr",
        libc::SYS_mount_setattr,
        [-1, 0, 0, 0, 0, 0],
    ),
    ("setns", libc::SYS_setns, [-1, 0, 0, 0, 0, 0]),
    // these two succeed when allowed: the child's own, throw-away namespaces
    (
        "unshare-newuts",
        libc::SYS_unshare,
        [libc::CLONE_NEWUTS as i64, 0, 0, 0, 0, 0],
    ),
    (
        "unshare-newuser",
        libc::SYS_unshare,
        [libc::CLONE_NEWUSER as i64, 0, 0, 0, 0, 0],
    ),
    (
        "unshare-files",
        libc::SYS_unshare,
        [libc::CLONE_FILES as i64, 0, 0, 0, 0, 0],
    ),
    // a child in a new network namespace that exits at once (see `in_child`)
    (
        "clone-newnet",
        libc::SYS_clone,
        [(libc::CLONE_NEWNET | libc::SIGCHLD) as i64, 0, 0, 0, 0, 0],
    ),
    ("clone3", libc::SYS_clone3, [0; 6]),
    ("bpf", libc::SYS_bpf, [5, 0, 0, 0, 0, 0]),
    (
        "perf_event_open",
        libc::SYS_perf_event_open,
        [0, 0, -1, -1, 0, 0],
    ),
    ("userfaultfd", libc::SYS_userfaultfd, [-1, 0, 0, 0, 0, 0]),
    ("io_uring_setup", libc::SYS_io_uring_setup, [0; 6]),
    (
        "io_uring_enter",
        libc::SYS_io_uring_enter,
        [-1, 0, 0, 0, 0, 0],
    ),
    (
        "io_uring_register",
        libc::SYS_io_uring_register,
        [-1, 0, 0, 0, 0, 0],
    ),
    ("keyctl", libc::SYS_keyctl, [-1, 0, 0, 0, 0, 0]),
    ("add_key", libc::SYS_add_key, [0; 6]),
    ("request_key", libc::SYS_request_key, [0; 6]),
    ("init_module", libc::SYS_init_module, [0; 6]),
    ("finit_module", libc::SYS_finit_module, [-1, 0, 0, 0, 0, 0]),
    ("delete_module", libc::SYS_delete_module, [0; 6]),
    (
        "kexec_load",
        libc::SYS_kexec_load,
        [0, 1000, 0, 0x100, 0, 0],
    ),
    (
        "kexec_file_load",
        libc::SYS_kexec_file_load,
        [-1, -1, 0, 0, 0xffff, 0],
    ),
    // bad magic numbers: EINVAL when allowed
    ("reboot", libc::SYS_reboot, [0; 6]),
    ("swapon", libc::SYS_swapon, [0; 6]),
    ("swapoff", libc::SYS_swapoff, [0; 6]),
    (
        "clock_settime",
        libc::SYS_clock_settime,
        [libc::CLOCK_REALTIME as i64, 0, 0, 0, 0, 0],
    ),
    ("iopl", libc::SYS_iopl, [4, 0, 0, 0, 0, 0]),
    ("ioperm", libc::SYS_ioperm, [0; 6]),
    (
        "open_by_handle_at",
        libc::SYS_open_by_handle_at,
        [-1, 0, 0, 0, 0, 0],
    ),
    ("quotactl_fd", libc::SYS_quotactl_fd, [-1, 0, 0, 0, 0, 0]),
    // Docker's default profile restricts these too (personality to the values it lists,
    // socket without AF_ALG and AF_VSOCK, the ptrace-like and NUMA calls without the
    // capability, open_tree_attr everywhere); each argument set is harmless in a child
    (
        "personality-bad",
        libc::SYS_personality,
        [0x0040_0000, 0, 0, 0, 0, 0], // READ_IMPLIES_EXEC
    ),
    (
        "socket-alg",
        libc::SYS_socket,
        [libc::AF_ALG as i64, libc::SOCK_SEQPACKET as i64, 0, 0, 0, 0],
    ),
    (
        "socket-vsock",
        libc::SYS_socket,
        [libc::AF_VSOCK as i64, libc::SOCK_STREAM as i64, 0, 0, 0, 0],
    ),
    ("kcmp", libc::SYS_kcmp, [-1, -1, 0, 0, 0, 0]),
    ("pidfd_getfd", libc::SYS_pidfd_getfd, [-1, 0, 0, 0, 0, 0]),
    ("process_madvise", SYS_PROCESS_MADVISE, [-1, 0, 0, 0, 0, 0]),
    ("mbind", libc::SYS_mbind, [0; 6]),
    ("migrate_pages", libc::SYS_migrate_pages, [0; 6]),
    ("move_pages", libc::SYS_move_pages, [0; 6]),
    ("set_mempolicy", libc::SYS_set_mempolicy, [0; 6]),
    (
        "set_mempolicy_home_node",
        SYS_SET_MEMPOLICY_HOME_NODE,
        [0; 6],
    ),
    ("get_mempolicy", libc::SYS_get_mempolicy, [0; 6]),
    ("open_tree_attr", SYS_OPEN_TREE_ATTR, [-1, 0, 0, 0, 0, 0]),
    // allowed by Docker's and Palisade's profiles: the query, and the values Docker lists
    (
        "personality-query",
        libc::SYS_personality,
        [0xffff_ffff, 0, 0, 0, 0, 0],
    ),
    (
        "personality-uname26",
        libc::SYS_personality,
        [0x0002_0008, 0, 0, 0, 0, 0],
    ),
    // the traced call of the policy tests: PTRACE_PEEKDATA of no process (ESRCH when allowed)
    ("ptrace", libc::SYS_ptrace, [2, -1, 0, 0, 0, 0]),
    // allowed everywhere
    ("getpid", libc::SYS_getpid, [0; 6]),
    (
        "socket-unix",
        libc::SYS_socket,
        [libc::AF_UNIX as i64, libc::SOCK_STREAM as i64, 0, 0, 0, 0],
    ),
    ("getcwd", libc::SYS_getcwd, [0, 0, 0, 0, 0, 0]),
];

/// Makes the call in a child; returns "ERRNO" (0 = success) or "signal N".
fn in_child(nr: libc::c_long, a: [i64; 6]) -> String {
    // SAFETY: the child makes one syscall and exits without returning into Rust code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: the arguments are integers; pointer arguments are NULL (see CALLS).
        let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        if r == 0 && nr == libc::SYS_clone {
            // SAFETY: the clone child leaves at once.
            unsafe { libc::_exit(0) };
        }
        let code = if r < 0 {
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(255)
        } else {
            0
        };
        // SAFETY: leaving the child at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &raw mut status, 0) };
    if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        libc::WEXITSTATUS(status).to_string()
    }
}

/// An x86 32-bit system call through `int 0x80` (rbx is reserved by the compiler, so it is
/// swapped in and out around the call).
fn int80(nr: u32, arg: u32) -> i32 {
    let ret: i32;
    // SAFETY: `int 0x80` enters the kernel's 32-bit entry point with eax/ebx/ecx/edx; rbx is
    // restored by the second xchg. The call gets no pointers.
    unsafe {
        std::arch::asm!(
            "xchg {b}, rbx",
            "int 0x80",
            "xchg {b}, rbx",
            b = inout(reg) u64::from(arg) => _,
            inlateout("eax") nr as i32 => ret,
            in("ecx") 0u32,
            in("edx") 0u32,
        );
    }
    ret
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    match args.first().map(String::as_str) {
        Some("syscalls") => {
            let wanted: Vec<&str> = args[1..].iter().map(String::as_str).collect();
            for (name, nr, a) in CALLS {
                if wanted.contains(&"all") || wanted.contains(name) {
                    let _ = writeln!(out, "{name} {}", in_child(*nr, *a));
                }
            }
        }
        Some("int80") => {
            let nr = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20);
            let arg = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0);
            let _ = writeln!(out, "{}", int80(nr, arg));
        }
        Some("x32") => {
            let nr: i64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(39);
            // SAFETY: a raw syscall number with the x32 bit set and no arguments.
            let r = unsafe { libc::syscall(nr | 0x4000_0000) };
            if r < 0 {
                let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                let _ = writeln!(out, "errno {e}");
            } else {
                let _ = writeln!(out, "{r}");
            }
        }
        Some("fork-bomb") => {
            let mut n = 0u32;
            loop {
                // SAFETY: the child only pauses until it is killed.
                let pid = unsafe { libc::fork() };
                if pid == 0 {
                    loop {
                        // SAFETY: pause has no arguments.
                        unsafe { libc::pause() };
                    }
                }
                if pid < 0 {
                    break;
                }
                n += 1;
                if n >= 1000 {
                    let _ = writeln!(out, "no limit: {n} children");
                    return ExitCode::from(3);
                }
            }
            let _ = writeln!(out, "{n}");
        }
        Some("hog") => {
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                held.push(vec![1u8; 1 << 20]);
                let _ = writeln!(out, "{}", held.len());
                let _ = out.flush();
                if held.len() >= 1024 {
                    return ExitCode::from(3);
                }
            }
        }
        Some("spin") => {
            let _ = writeln!(out, "spinning");
            let _ = out.flush();
            let mut x = 0u64;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        _ => {
            eprintln!(
                "usage: launcher-probe syscalls NAME...|int80 NR [ARG]|x32 NR|fork-bomb|hog|spin"
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
