//! Execs that do not go through a path string, for the exec-rule tests. Each form ends in an
//! exec; a failure before it prints the reason and exits with status 120.
//!
//! - `exec-workload fd PATH [ARG]...`: opens PATH and runs the open file with
//!   `execveat(fd, "", AT_EMPTY_PATH)` (what `fexecve` does);
//! - `exec-workload fd-unlinked PATH [ARG]...`: the same, after unlinking PATH (a deleted file);
//! - `exec-workload at DIR NAME [ARG]...`: `execveat(dirfd, NAME, 0)`, NAME relative to DIR;
//! - `exec-workload memfd NAME SRC [ARG]...`: copies SRC into `memfd_create(NAME)` and runs it
//!   from there (a fileless exec).
//!
//! The program gets ARGs as `argv[1..]`; `argv[0]` is the last path element given.
use std::{
    ffi::{CString, OsStr},
    os::unix::ffi::OsStrExt as _,
    process::ExitCode,
};

fn cstr(s: &str) -> CString {
    CString::new(OsStr::new(s).as_bytes()).unwrap_or_default()
}

fn fail(what: &str) -> ExitCode {
    eprintln!("exec-workload: {what}: {}", std::io::Error::last_os_error());
    ExitCode::from(120)
}

/// `execveat(dirfd, path, argv, environ, flags)`; returns only on failure.
fn execveat(dirfd: i32, path: &str, argv0: &str, args: &[String], flags: i32) -> ExitCode {
    let path = cstr(path);
    let owned: Vec<CString> = std::iter::once(argv0)
        .chain(args.iter().map(String::as_str))
        .map(cstr)
        .collect();
    let mut argv: Vec<*const libc::c_char> = owned.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: every pointer is a NUL-terminated string or a NULL-terminated array kept alive
    // above; execveat only returns on failure.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            dirfd,
            path.as_ptr(),
            argv.as_ptr(),
            env.as_ptr(),
            flags,
        )
    };
    fail("execveat")
}

fn open(path: &str, flags: i32) -> Option<i32> {
    let p = cstr(path);
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), flags) };
    (fd >= 0).then_some(fd)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let last = |p: &str| p.rsplit('/').next().unwrap_or(p).to_owned();
    match args.as_slice() {
        [form, path, rest @ ..] if form == "fd" || form == "fd-unlinked" => {
            let Some(fd) = open(path, libc::O_RDONLY) else {
                return fail("open");
            };
            if form == "fd-unlinked" && std::fs::remove_file(path).is_err() {
                return fail("unlink");
            }
            execveat(fd, "", &last(path), rest, libc::AT_EMPTY_PATH)
        }
        [form, dir, name, rest @ ..] if form == "at" => {
            let Some(fd) = open(dir, libc::O_RDONLY | libc::O_DIRECTORY) else {
                return fail("open dir");
            };
            execveat(fd, name, &last(name), rest, 0)
        }
        [form, name, src, rest @ ..] if form == "memfd" => {
            let Ok(bytes) = std::fs::read(src) else {
                return fail("read");
            };
            let n = cstr(name);
            // SAFETY: a NUL-terminated name; no flags (the fd stays open across the exec).
            let fd = unsafe { libc::memfd_create(n.as_ptr(), 0) };
            if fd < 0 {
                return fail("memfd_create");
            }
            // SAFETY: writes `bytes` to the fd we own.
            let w = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            if w != bytes.len() as isize {
                return fail("write");
            }
            execveat(fd, "", name, rest, libc::AT_EMPTY_PATH)
        }
        _ => {
            eprintln!(
                "usage: exec-workload fd|fd-unlinked PATH [ARG]... | at DIR NAME [ARG]... | memfd NAME SRC [ARG]..."
            );
            ExitCode::from(2)
        }
    }
}
