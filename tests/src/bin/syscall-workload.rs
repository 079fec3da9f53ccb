//! A workload with exactly known syscalls, for the privileged tests.
//!
//! `syscall-workload [getppid N] [close-bad N] [sleep-ms N]`: makes exactly N raw `getppid`
//! calls, N `close(-1)` calls (each fails with EBADF), or sleeps. Steps run in order; nothing
//! else in this program calls getppid or close(-1).
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.chunks(2);
    for step in &mut it {
        let [what, n] = step else {
            eprintln!("usage: syscall-workload [getppid N] [close-bad N] [sleep-ms N]");
            return ExitCode::from(2);
        };
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
            "sleep-ms" => std::thread::sleep(std::time::Duration::from_millis(n)),
            other => {
                eprintln!("syscall-workload: unknown step {other}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}
