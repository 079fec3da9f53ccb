//! The process tree: `palisade run` → init (pid 1 of a new pid namespace, placed in the
//! workload cgroup by `CLONE_INTO_CGROUP`) → the workload.
//!
//! The init is forked, not exec'd: it moves itself into the v1 cgroups (hybrid hosts; see
//! [`cgroup::Cgroup::v1_tasks`]), builds the namespaces' contents (loopback, hostname, mounts,
//! pivot_root) while the agent registers its cgroup, blocking on a pipe for that (and, on
//! kernels without `CLONE_INTO_CGROUP`, for the launcher to place it in the unified cgroup)
//! right before the first step that needs it (the cgroup namespace and its mount; see
//! [`setup::container`]), then forks the workload,
//! confines itself (not dumpable, no capabilities, no_new_privs, a seccomp allow-list of the
//! calls it makes) and only then lets the workload exec. It forwards SIGHUP,
//! SIGINT, SIGQUIT, SIGTERM, SIGUSR1 and SIGUSR2, reaps every zombie, and exits with the
//! workload's status (128+signal when killed). `PR_SET_PDEATHSIG` kills it, and with it the
//! pid namespace, if the launcher dies.
//!
//! The launcher is single-threaded, so the forked children may allocate; nothing after the
//! workload's seccomp filter allocates (a strict profile may deny brk/mmap).
use std::{
    ffi::CString,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use super::{
    caps, cgroup,
    mounts::V1Mounts,
    plan::Plan,
    seccomp::{self, Compiled},
    setup, sys,
};

/// Signals the launcher and the init forward; SIGCHLD is waited for with them.
pub const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Exit codes of setup failures inside the container (as Docker uses them).
pub const EXIT_SETUP: u8 = 125;
pub const EXIT_CANNOT_EXEC: u8 = 126;
pub const EXIT_NOT_FOUND: u8 = 127;

/// The signal set the launcher blocks (and the init inherits and waits on).
pub fn wait_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        for s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&raw mut set, *s);
        }
        set
    }
}

/// Blocks the wait set (call before any child exists).
pub fn block_signals() {
    let set = wait_set();
    // SAFETY: a valid, initialised set; the old mask is not needed.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) };
}

/// Waits for one signal of the wait set; returns its number.
pub fn wait_signal() -> i32 {
    let set = wait_set();
    loop {
        // SAFETY: a valid set; no siginfo wanted.
        let s = unsafe { libc::sigwaitinfo(&raw const set, std::ptr::null_mut()) };
        if s > 0 {
            return s;
        }
    }
}

/// Exit status as a shell shows it: the code, or 128+signal.
pub fn status_code(status: i32) -> u8 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WIFSIGNALED(status) {
        (128 + libc::WTERMSIG(status)) as u8
    } else {
        EXIT_SETUP
    }
}

pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors, owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// What one replica's init needs besides the plan.
pub struct InitArgs<'a> {
    pub plan: &'a Plan,
    pub hostname: &'a str,
    pub v1_mounts: &'a V1Mounts,
    /// The v1 cgroups' `tasks` files (hybrid hosts), which the init joins first of all.
    pub v1_tasks: Vec<(std::fs::File, std::path::PathBuf)>,
    /// Read end: one byte means go, end of file means give up.
    pub go: OwnedFd,
    /// Write end for setup error reports (`CODE\tmessage`).
    pub report: OwnedFd,
    /// Descriptors that belong to the launcher (other replicas' pipes), closed in the child.
    pub close: Vec<RawFd>,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// How the child got into the unified cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// `CLONE_INTO_CGROUP`: it never ran outside.
    Clone3,
    /// The kernel lacks it: the launcher writes the pid to cgroup.procs before releasing it.
    ByPid,
}

/// Forks the init into new namespaces (and, with clone3, straight into `cgroup_dir`).
/// Returns (pid, placement) in the launcher; never returns in the child.
pub fn spawn_init(args: InitArgs<'_>, cgroup_dir: &Path) -> std::io::Result<(i32, Placement)> {
    let flags = setup::clone_flags(&args.plan.ns);
    let dir = std::fs::File::open(cgroup_dir)?;
    let mut ca = CloneArgs {
        flags: flags | CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a new stack behaves like fork: the child continues here on a copy
    // of this (single-threaded) process. `ca` is a valid clone_args of the size given.
    let mut pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut ca,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let mut placement = Placement::Clone3;
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL)
        ) {
            return Err(e);
        }
        placement = Placement::ByPid;
        // SAFETY: clone without a new stack (fork semantics), as above.
        pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                flags | libc::SIGCHLD as u64,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if pid == 0 {
        drop(dir);
        init(args);
    }
    Ok((pid as i32, placement))
}

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;

/// Marks every descriptor above stderr close-on-exec: what the caller of `palisade run` held
/// open (or the launcher itself: the agent connection, other replicas' pipes) never reaches
/// the workload. `close_range(3, ~0, CLOSE_RANGE_CLOEXEC)`, or one `fcntl` per entry of
/// /proc/self/fd on kernels without it (before 5.11).
fn cloexec_from_3() -> std::io::Result<()> {
    // SAFETY: close_range with integer arguments; it only sets flags on our descriptors.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        return Ok(());
    }
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl on a descriptor number; one that was the directory listing is gone
        // (EBADF), which is fine.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

/// Closes every descriptor above stderr except `keep` (the init keeps only its pipes).
fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|fd| u32::try_from(*fd).ok())
        .collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for k in keep.into_iter().filter(|k| *k >= 3) {
        if k > from {
            // SAFETY: close_range with integer arguments, below a descriptor we keep.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0u32) };
        }
        from = k + 1;
    }
    // SAFETY: as above, everything after the last descriptor we keep.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

/// Writes `CODE\tmessage` to the report pipe and exits with CODE.
fn die(report: RawFd, code: u8, msg: &str) -> ! {
    let line = format!("{code}\t{msg}");
    // SAFETY: writing a local buffer to an open descriptor, then exiting without unwinding.
    unsafe {
        libc::write(report, line.as_ptr().cast(), line.len());
        libc::_exit(i32::from(code))
    }
}

fn last_err() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// The init: runs in the child of `spawn_init`, never returns.
fn init(args: InitArgs<'_>) -> ! {
    let report = args.report.as_raw_fd();
    let plan = args.plan;
    // SAFETY: prctl/setsid/umask/close with plain integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        // out of the launcher's session: a terminal's ^C reaches the launcher only, which
        // forwards it once
        libc::setsid();
        libc::umask(0);
        for fd in &args.close {
            libc::close(*fd);
        }
        if !plan.ns.pid {
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        }
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        die(report, EXIT_SETUP, &format!("{what}: {e}"))
    };
    // waits for the go byte (wait_placed), once nothing more can be done before the placement
    let mut linux = sys::Linux::new(args.go);
    // into the v1 cgroups before anything else, so what the setup allocates is the workload's
    if let Err(e) = cgroup::join_self(&args.v1_tasks) {
        // the launcher may still be placing us in the unified cgroup: let it finish first
        let _ = sys::Sys::wait_placed(&mut linux);
        die(report, EXIT_SETUP, &e.to_string());
    }
    drop(args.v1_tasks);
    match setup::container(&mut linux, plan, args.hostname, args.v1_mounts) {
        Ok(()) => {}
        // SAFETY: the launcher gave up before releasing us: leave quietly.
        Err(setup::SetupError::Released) => unsafe { libc::_exit(i32::from(EXIT_SETUP)) },
        Err(e) => die(report, EXIT_SETUP, &e.to_string()),
    }
    drop(linux);
    let (ready_r, ready_w) = match pipe() {
        Ok(p) => p,
        Err(e) => fail("pipe", &e),
    };
    // SAFETY: fork in a single-threaded process; the child runs `workload` and never returns.
    let wpid = unsafe { libc::fork() };
    if wpid < 0 {
        fail("cannot fork the workload", &last_err());
    }
    if wpid == 0 {
        drop(ready_w);
        workload(plan, ready_r, report);
    }
    drop(ready_r);
    // the init holds nothing of the launcher's either (its caller's descriptors, the agent
    // connection)
    close_all_but(&[ready_w.as_raw_fd(), report]);
    if let Err(e) = confine_init(plan.init_seccomp.as_ref()) {
        // SAFETY: the workload has not exec'd yet; it dies with us.
        unsafe { libc::kill(wpid, libc::SIGKILL) };
        fail("cannot confine the init", &e);
    }
    // SAFETY: writing one byte from a local buffer.
    unsafe { libc::write(ready_w.as_raw_fd(), b"1".as_ptr().cast(), 1) };
    drop(ready_w);
    drop(args.report);
    reap(wpid)
}

/// The init keeps nothing the workload could borrow: not dumpable (no ptrace attach without
/// CAP_SYS_PTRACE), no capabilities, no_new_privs, and a seccomp filter.
fn confine_init(filter: Option<&Compiled>) -> std::io::Result<()> {
    let last = caps::last_cap();
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    caps::drop_bounding(0, last)?;
    caps::set(&caps::CapSets::default())?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(last_err());
    }
    if let Some(f) = filter {
        seccomp::load(f)?;
    }
    Ok(())
}

/// pid 1's loop: forward signals to the workload, reap zombies, exit with the workload's status.
fn reap(wpid: i32) -> ! {
    loop {
        let sig = wait_signal();
        if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                // SAFETY: wait4 with a valid status pointer and no rusage.
                let r = unsafe {
                    libc::wait4(-1, &raw mut status, libc::WNOHANG, std::ptr::null_mut())
                };
                if r <= 0 {
                    break;
                }
                if r == wpid {
                    // SAFETY: exiting pid 1 ends the namespace; nothing to unwind.
                    unsafe { libc::_exit(i32::from(status_code(status))) };
                }
            }
        } else {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(wpid, sig) };
        }
    }
}

/// The workload: privileges, then exec. Runs in the init's child; never returns.
fn workload(plan: &Plan, ready: OwnedFd, report: RawFd) -> ! {
    let p = &plan.process;
    let fail = |code: u8, what: &str, e: &dyn std::fmt::Display| -> ! {
        die(report, code, &format!("{what}: {e}"))
    };
    // Everything exec needs, prepared before the seccomp filter may forbid allocation.
    let cs = |s: &str| CString::new(s).unwrap_or_default();
    let argv_c: Vec<CString> = p.args.iter().map(|a| cs(a)).collect();
    let envp_c: Vec<CString> = p.env.iter().map(|e| cs(e)).collect();
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = envp_c.iter().map(|c| c.as_ptr()).collect();
    envp.push(std::ptr::null());
    let prog = p.args.first().map(String::as_str).unwrap_or_default();
    let candidates: Vec<CString> = if prog.contains('/') {
        vec![cs(prog)]
    } else {
        p.env
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(super::plan::DEFAULT_PATH)
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| cs(&format!("{d}/{prog}")))
            .collect()
    };
    let cwd = cs(&p.cwd);
    let last = caps::last_cap();
    // every descriptor above stderr closes at the exec (the ready and report pipes stay
    // usable until then); done before any seccomp filter, which may deny close_range
    if let Err(e) = cloexec_from_3() {
        fail(
            EXIT_SETUP,
            "cannot mark inherited descriptors close-on-exec",
            &e,
        );
    }

    // SAFETY: resetting signal dispositions and the mask this process inherited.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
    }
    for r in &p.rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: a valid rlimit value.
        if unsafe { libc::setrlimit(r.resource, &raw const lim) } != 0 {
            fail(EXIT_SETUP, &format!("setrlimit {}", r.name), &last_err());
        }
    }
    if let Some(adj) = p.oom_score_adj
        && let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string())
    {
        fail(EXIT_SETUP, "oom_score_adj", &e);
    }
    let wait_ready = || {
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a local buffer.
        if unsafe { libc::read(ready.as_raw_fd(), b.as_mut_ptr().cast(), 1) } != 1 {
            // SAFETY: the init failed; leave quietly (it reported why).
            unsafe { libc::_exit(i32::from(EXIT_SETUP)) };
        }
    };
    // the baseline's filter, then a policy's: the kernel takes the strictest answer
    let load_filters = || {
        for f in &plan.seccomp {
            if let Err(e) = seccomp::load(f) {
                fail(EXIT_SETUP, "cannot load the seccomp filter", &e);
            }
        }
    };
    if !p.no_new_privs {
        // without no_new_privs the filter needs CAP_SYS_ADMIN: load it while still privileged
        // (the remaining setup calls must then pass it), as runc does
        wait_ready();
        load_filters();
    }
    if let Err(e) = caps::drop_bounding(p.caps.bounding, last) {
        fail(
            EXIT_SETUP,
            "cannot drop capabilities from the bounding set",
            &e,
        );
    }
    let groups: Vec<libc::gid_t> = p.additional_gids.clone();
    // SAFETY: prctl/setgroups/setgid/setuid with valid arguments; results checked.
    unsafe {
        libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
            fail(EXIT_SETUP, "setgroups", &last_err());
        }
        if libc::setgid(p.gid) != 0 {
            fail(EXIT_SETUP, &format!("setgid {}", p.gid), &last_err());
        }
        if libc::setuid(p.uid) != 0 {
            fail(EXIT_SETUP, &format!("setuid {}", p.uid), &last_err());
        }
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
    }
    if let Err(e) = caps::set(&p.caps) {
        fail(EXIT_SETUP, "cannot set capabilities", &e);
    }
    if let Err(e) =
        caps::raise_ambient(p.caps.ambient & p.caps.permitted & p.caps.inheritable, last)
    {
        fail(EXIT_SETUP, "cannot raise ambient capabilities", &e);
    }
    // SAFETY: umask/chdir with valid arguments.
    unsafe {
        libc::umask(p.umask.unwrap_or(0o022));
        if libc::chdir(cwd.as_ptr()) != 0 {
            fail(
                EXIT_SETUP,
                &format!("cannot enter the working directory {}", p.cwd),
                &last_err(),
            );
        }
    }
    if p.no_new_privs {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            fail(EXIT_SETUP, "no_new_privs", &last_err());
        }
        wait_ready();
        load_filters();
    }
    drop(ready);
    let mut denied = None;
    for c in &candidates {
        // SAFETY: NUL-terminated path and NULL-terminated argv/envp arrays that outlive the call.
        unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let e = last_err();
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => {}
            _ => denied = Some((c, e)),
        }
        if denied.is_some() {
            break;
        }
    }
    match denied {
        Some((c, e)) => fail(
            EXIT_CANNOT_EXEC,
            &format!("cannot execute {}", c.to_string_lossy()),
            &e,
        ),
        None => fail(
            EXIT_NOT_FOUND,
            &format!("command `{prog}` not found in the container"),
            &"no such file",
        ),
    }
}
