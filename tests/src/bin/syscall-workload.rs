//! A workload with exactly known syscalls, for the privileged tests.
//!
//! `syscall-workload STEP ARG [STEP ARG]...`, steps run in order:
//! - `getppid N`: exactly N raw `getppid` calls (nothing else here calls getppid);
//! - `getpriority N`: N raw `getpriority(PRIO_PROCESS, 0)` calls (shells do not make it);
//! - `close-bad N`: N `close(-1)` calls, each failing with EBADF;
//! - `fork N`: N children, one after the other, each `_exit(0)`s at once and is reaped;
//! - `fork-getppid N`: the same, each child making one `getppid` call before it exits;
//! - `exec-true N`: N children, one after the other, each execs `/bin/true` and is reaped
//!   (N execs and N exits in this cgroup, plus this process's own);
//! - `move DIR`: moves this process into the cgroup directory DIR;
//! - `memfd-exec FILE`: copies FILE into a memfd and executes it from there (`fexecve`, no
//!   path on disk), with the argument `from-memfd`; does not return;
//! - `ptrace-child N`: N times: a child that sleeps, attached with PTRACE_ATTACH, detached,
//!   killed and reaped;
//! - `burn-ms N`: spins until this process has used N ms of CPU time;
//! - `alloc-mb N`: allocates and touches N MiB (to run into a memory limit);
//! - `exit N`: exits with status N;
//! - `sleep-ms N`;
//! - `unshare FLAGS`: one `unshare(FLAGS)` call (decimal flags); when it fails, exits at once
//!   with its errno as the status;
//! - `keyrings 1`: gives this thread a thread keyring and this process a process keyring
//!   (`keyctl(KEYCTL_GET_KEYRING_ID, ..., create)`), so a search looks in three keyrings;
//! - `keyctl ID`: one `keyctl(KEYCTL_GET_KEYRING_ID, ID, 0)` (ID: a key's serial number);
//! - `add-key RING`: one `add_key("user", "palisade-test-RING", ...)` into keyring RING (a
//!   serial number);
//! - `request-key TAG`: one `request_key("user", "palisade-test-TAG", NULL, 0)`;
//!
//! The key steps exit at once with the errno as the status when a call fails.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.chunks(2);
    for step in &mut it {
        let [what, n] = step else {
            eprintln!("usage: syscall-workload STEP ARG [STEP ARG]...");
            return ExitCode::from(2);
        };
        if what == "memfd-exec" {
            let err = memfd_exec(n);
            eprintln!("syscall-workload: memfd-exec {n}: {err}");
            return ExitCode::FAILURE;
        }
        if what == "move" {
            if let Err(e) = std::fs::write(format!("{n}/cgroup.procs"), "0") {
                eprintln!("syscall-workload: move to {n}: {e}");
                return ExitCode::FAILURE;
            }
            continue;
        }
        let Ok(n) = n.parse::<u64>() else {
            eprintln!("syscall-workload: bad count {n}");
            return ExitCode::from(2);
        };
        match what.as_str() {
            "unshare" => {
                // SAFETY: unshare takes plain flags; a new namespace affects only this process.
                let r = unsafe { libc::syscall(libc::SYS_unshare, n as libc::c_long) };
                if r != 0 {
                    let e = std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(255);
                    return ExitCode::from(u8::try_from(e).unwrap_or(255));
                }
            }
            "keyrings" | "keyctl" | "add-key" | "request-key" => {
                if let Err(e) = keys(what, n) {
                    return ExitCode::from(u8::try_from(e).unwrap_or(255));
                }
            }
            "getppid" => {
                for _ in 0..n {
                    // SAFETY: getppid has no arguments and cannot fail.
                    unsafe { libc::syscall(libc::SYS_getppid) };
                }
            }
            "getpriority" => {
                for _ in 0..n {
                    // SAFETY: getpriority with integer arguments reads a value only.
                    unsafe { libc::syscall(libc::SYS_getpriority, libc::PRIO_PROCESS, 0) };
                }
            }
            "close-bad" => {
                for _ in 0..n {
                    // SAFETY: closing fd -1 touches nothing; it fails with EBADF.
                    let r = unsafe { libc::syscall(libc::SYS_close, -1) };
                    if r != -1 {
                        eprintln!("syscall-workload: close(-1) returned {r}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            "fork" | "fork-getppid" => {
                let child_calls = what == "fork-getppid";
                for _ in 0..n {
                    // SAFETY: the child only calls getppid and _exit, which are
                    // async-signal-safe.
                    let pid = unsafe { libc::fork() };
                    match pid {
                        -1 => {
                            eprintln!(
                                "syscall-workload: fork: {}",
                                std::io::Error::last_os_error()
                            );
                            return ExitCode::FAILURE;
                        }
                        // SAFETY: terminating the child without running any Rust code.
                        0 => unsafe {
                            if child_calls {
                                libc::getppid();
                            }
                            libc::_exit(0)
                        },
                        pid => {
                            let mut status = 0;
                            // SAFETY: waiting for our own child with a valid status pointer.
                            unsafe { libc::waitpid(pid, &raw mut status, 0) };
                        }
                    }
                }
            }
            "exec-true" => {
                let path = c"/bin/true";
                let argv = [path.as_ptr(), std::ptr::null()];
                for _ in 0..n {
                    // SAFETY: the child only calls execv and _exit (async-signal-safe) on
                    // memory prepared before the fork.
                    let pid = unsafe { libc::fork() };
                    match pid {
                        -1 => {
                            eprintln!(
                                "syscall-workload: fork: {}",
                                std::io::Error::last_os_error()
                            );
                            return ExitCode::FAILURE;
                        }
                        0 => {
                            // SAFETY: a NUL-terminated path and argv, see above.
                            unsafe {
                                libc::execv(path.as_ptr(), argv.as_ptr());
                                libc::_exit(127)
                            }
                        }
                        pid => {
                            let mut status = 0;
                            // SAFETY: waiting for our own child with a valid status pointer.
                            unsafe { libc::waitpid(pid, &raw mut status, 0) };
                            if status != 0 {
                                eprintln!("syscall-workload: /bin/true: status {status}");
                                return ExitCode::FAILURE;
                            }
                        }
                    }
                }
            }
            "ptrace-child" => {
                for _ in 0..n {
                    if let Err(e) = ptrace_child() {
                        eprintln!("syscall-workload: ptrace-child: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            "burn-ms" => {
                let cpu = || {
                    let mut ts = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 0,
                    };
                    // SAFETY: clock_gettime writes the timespec we pass.
                    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &raw mut ts) };
                    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
                };
                let until = cpu() + n * 1_000_000;
                let mut x = 0u64;
                while cpu() < until {
                    for i in 0..10_000u64 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                    }
                }
            }
            "alloc-mb" => {
                let mut chunks = Vec::new();
                for _ in 0..n {
                    let mut v = vec![0u8; 1 << 20];
                    for b in v.iter_mut().step_by(4096) {
                        *b = 1;
                    }
                    chunks.push(std::hint::black_box(v));
                }
                drop(chunks);
            }
            "exit" => return ExitCode::from(n as u8),
            "sleep-ms" => std::thread::sleep(std::time::Duration::from_millis(n)),
            other => {
                eprintln!("syscall-workload: unknown step {other}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

/// Executes the bytes of `file` from an anonymous memory file; returns only on failure.
fn memfd_exec(file: &str) -> std::io::Error {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return e,
    };
    // SAFETY: a NUL-terminated name; the descriptor is ours.
    let fd = unsafe { libc::memfd_create(c"palisade-memfd".as_ptr(), 0) };
    if fd < 0 {
        return std::io::Error::last_os_error();
    }
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: writing from a live buffer to our descriptor.
        let r = unsafe { libc::write(fd, bytes[done..].as_ptr().cast(), bytes.len() - done) };
        if r <= 0 {
            return std::io::Error::last_os_error();
        }
        done += r as usize;
    }
    let argv = [c"memfd".as_ptr(), c"from-memfd".as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated argv and envp arrays of C strings that outlive the call.
    unsafe { libc::fexecve(fd, argv.as_ptr(), envp.as_ptr()) };
    std::io::Error::last_os_error()
}

/// One child, attached with PTRACE_ATTACH and let go.
fn ptrace_child() -> Result<(), std::io::Error> {
    // SAFETY: the child only sleeps (pause) until killed.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        loop {
            // SAFETY: pause has no preconditions.
            unsafe { libc::pause() };
        }
    }
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: tracing our own child; arguments as PTRACE_ATTACH wants them.
    let r = unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, null, null) };
    let err = (r != 0).then(std::io::Error::last_os_error);
    let mut status = 0;
    if err.is_none() {
        // SAFETY: waiting for the stop of our own traced child.
        unsafe { libc::waitpid(pid, &raw mut status, 0) };
        // SAFETY: detaching our own stopped tracee.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, pid, null, null) };
    }
    // SAFETY: killing and reaping our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &raw mut status, 0);
    }
    err.map_or(Ok(()), Err)
}

const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
const KEY_SPEC_THREAD_KEYRING: libc::c_long = -1;
const KEY_SPEC_PROCESS_KEYRING: libc::c_long = -2;

/// The key steps (see the top); `Err(errno)` of the first call that fails.
fn keys(what: &str, n: u64) -> Result<(), i32> {
    let check = |r: libc::c_long| {
        if r < 0 {
            Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(255))
        } else {
            Ok(())
        }
    };
    let desc = std::ffi::CString::new(format!("palisade-test-{n}")).map_err(|_| 255)?;
    match what {
        "keyrings" => {
            for id in [KEY_SPEC_THREAD_KEYRING, KEY_SPEC_PROCESS_KEYRING] {
                // SAFETY: keyctl with integer arguments; creates this task's own keyring.
                check(unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_GET_KEYRING_ID, id, 1) })?;
            }
        }
        "keyctl" => {
            // SAFETY: keyctl with integer arguments looks a key up only.
            check(unsafe {
                libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_GET_KEYRING_ID,
                    n as libc::c_long,
                    0,
                )
            })?;
        }
        "add-key" => {
            // SAFETY: C strings and a one-byte payload that outlive the call.
            check(unsafe {
                libc::syscall(
                    libc::SYS_add_key,
                    c"user".as_ptr(),
                    desc.as_ptr(),
                    c"1".as_ptr(),
                    1usize,
                    n as libc::c_long,
                )
            })?;
        }
        _ => {
            // SAFETY: C strings that outlive the call; no callout, no destination keyring.
            check(unsafe {
                libc::syscall(
                    libc::SYS_request_key,
                    c"user".as_ptr(),
                    desc.as_ptr(),
                    std::ptr::null::<libc::c_char>(),
                    0,
                )
            })?;
        }
    }
    Ok(())
}
