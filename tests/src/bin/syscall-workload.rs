//! A workload with exactly known syscalls, for the privileged tests.
//!
//! `syscall-workload STEP ARG [STEP ARG]...`, steps run in order:
//! - `getppid N`: exactly N raw `getppid` calls (nothing else here calls getppid);
//! - `close-bad N`: N `close(-1)` calls, each failing with EBADF;
//! - `fork N`: N children, one after the other, each `_exit(0)`s at once and is reaped;
//! - `exec-true N`: N children, one after the other, each execs `/bin/true` and is reaped
//!   (N execs and N exits in this cgroup, plus this process's own);
//! - `move DIR`: moves this process into the cgroup directory DIR;
//! - `burn-ms N`: spins until this process has used N ms of CPU time;
//! - `alloc-mb N`: allocates and touches N MiB (to run into a memory limit);
//! - `exit N`: exits with status N;
//! - `sleep-ms N`.
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.chunks(2);
    for step in &mut it {
        let [what, n] = step else {
            eprintln!("usage: syscall-workload STEP ARG [STEP ARG]...");
            return ExitCode::from(2);
        };
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
            "getppid" => {
                for _ in 0..n {
                    // SAFETY: getppid has no arguments and cannot fail.
                    unsafe { libc::syscall(libc::SYS_getppid) };
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
            "fork" => {
                for _ in 0..n {
                    // SAFETY: the child only calls _exit, which is async-signal-safe.
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
                        0 => unsafe { libc::_exit(0) },
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
