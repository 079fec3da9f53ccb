//! The container's filesystem, built by the init inside its new mount namespace: propagation
//! made private (or what the bundle asks) before anything is mounted, the bundle's mounts
//! resolved inside the rootfs with `openat2(RESOLVE_IN_ROOT)` (a symlink in the image cannot
//! point a mount outside it), /dev populated, masked and read-only paths, then `pivot_root`.
//! Without a rootfs the host's tree stays, with a fresh /proc for the new pid namespace.
//!
//! Runs in the forked init only: errors are strings for the launcher to print.
use std::{
    ffi::{CStr, CString},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use super::plan::{Mount, MountKind, Plan};

type Result<T> = std::result::Result<T, String>;

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn cstr(s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| "path with a NUL byte".to_owned())
}

fn sys_mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> std::io::Result<()> {
    let p = |c: Option<&CStr>| c.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
    let r = unsafe { libc::mount(p(source), target.as_ptr(), p(fstype), flags, p(data).cast()) };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// `/proc/self/fd/N`: mounting on it mounts on what the descriptor resolved to.
fn fd_path(fd: &OwnedFd) -> Result<CString> {
    cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// Opens `path` (container view) beneath `root` as an `O_PATH` descriptor.
fn open_in_root(root: RawFd, path: &str) -> std::io::Result<OwnedFd> {
    let rel = cstr(path.trim_start_matches('/').as_bytes()).map_err(std::io::Error::other)?;
    let rel = if rel.as_bytes().is_empty() {
        c".".to_owned()
    } else {
        rel
    };
    // struct open_how (openat2(2)); libc marks its own definition non-exhaustive
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `rel` and `how` are valid for the call; the size is open_how's.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            rel.as_ptr(),
            &raw const how,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a fresh descriptor, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Opens `path` beneath `root`, creating missing directories (and the last component as an
/// empty file when `file`).
fn ensure_in_root(root: RawFd, path: &str, file: bool) -> Result<OwnedFd> {
    if let Ok(fd) = open_in_root(root, path) {
        return Ok(fd);
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut sofar = String::new();
    for (i, part) in parts.iter().enumerate() {
        let parent = open_in_root(root, &sofar).map_err(|e| format!("open {sofar}/: {e}"))?;
        sofar.push('/');
        sofar.push_str(part);
        if open_in_root(root, &sofar).is_ok() {
            continue;
        }
        // O_PATH descriptors cannot be used with mkdirat; reopen the parent as a directory
        let dir = reopen_dir(&parent).map_err(|e| format!("open {sofar}: {e}"))?;
        let name = cstr(part.as_bytes())?;
        let last = i + 1 == parts.len();
        // SAFETY: valid directory descriptor and NUL-terminated name.
        let r = unsafe {
            if last && file {
                let fd = libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                    0
                } else {
                    -1
                }
            } else {
                libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755)
            }
        };
        if r != 0 && errno().raw_os_error() != Some(libc::EEXIST) {
            return Err(format!("create mount point {sofar}: {}", errno()));
        }
    }
    open_in_root(root, path).map_err(|e| format!("open {path}: {e}"))
}

fn reopen_dir(fd: &OwnedFd) -> std::io::Result<OwnedFd> {
    let p =
        CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path; result checked.
    let d = unsafe {
        libc::open(
            p.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if d < 0 {
        return Err(errno());
    }
    // SAFETY: fresh descriptor, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

fn is_dir(fd: &OwnedFd) -> bool {
    // SAFETY: fstat on an open descriptor into a zeroed stat buffer.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &raw mut st) == 0
            && (st.st_mode & libc::S_IFMT) == libc::S_IFDIR
    }
}

fn fstype(kind: MountKind) -> &'static CStr {
    match kind {
        MountKind::Proc => c"proc",
        MountKind::Sysfs => c"sysfs",
        MountKind::Tmpfs => c"tmpfs",
        MountKind::Devpts => c"devpts",
        MountKind::Mqueue => c"mqueue",
        MountKind::Cgroup => c"cgroup2",
        MountKind::Bind => c"none",
    }
}

/// The v1 hierarchies to show under /sys/fs/cgroup on hybrid hosts: (directory name, options).
pub type V1Mounts = Vec<(String, String)>;

fn do_mount(root: RawFd, m: &Mount, v1: &V1Mounts) -> Result<()> {
    let src_is_file = m.kind == MountKind::Bind && m.source.is_file();
    let target = ensure_in_root(root, &m.destination, src_is_file)?;
    let t = fd_path(&target)?;
    let data = cstr(m.data.as_bytes())?;
    let data = (!m.data.is_empty()).then_some(data.as_c_str());
    let what = |e: std::io::Error| format!("mount {:?} on {}: {e}", m.kind, m.destination);
    match m.kind {
        MountKind::Bind => {
            let src = cstr(m.source.as_os_str().as_bytes())?;
            let rec = m.flags & libc::MS_REC;
            sys_mount(Some(&src), &t, None, libc::MS_BIND | rec, None).map_err(what)?;
            let rest = m.flags & !(libc::MS_BIND | libc::MS_REC);
            if rest != 0 {
                sys_mount(
                    None,
                    &t,
                    None,
                    libc::MS_REMOUNT | libc::MS_BIND | rest,
                    None,
                )
                .map_err(what)?;
            }
        }
        MountKind::Cgroup if !v1.is_empty() => {
            // hybrid: a tmpfs holding each v1 hierarchy and the unified one, like the host
            sys_mount(
                Some(c"cgroup"),
                &t,
                Some(c"tmpfs"),
                m.flags & !libc::MS_RDONLY,
                Some(c"mode=755"),
            )
            .map_err(what)?;
            let base = m.destination.trim_end_matches('/');
            for (dir, opts) in v1 {
                let sub = ensure_in_root(root, &format!("{base}/{dir}"), false)?;
                let o = cstr(opts.as_bytes())?;
                sys_mount(
                    Some(c"cgroup"),
                    &fd_path(&sub)?,
                    Some(c"cgroup"),
                    m.flags,
                    Some(&o),
                )
                .map_err(|e| format!("mount cgroup {opts} on {base}/{dir}: {e}"))?;
            }
            let uni = ensure_in_root(root, &format!("{base}/unified"), false)?;
            sys_mount(
                Some(c"cgroup2"),
                &fd_path(&uni)?,
                Some(c"cgroup2"),
                m.flags,
                None,
            )
            .map_err(|e| format!("mount cgroup2 on {base}/unified: {e}"))?;
            if m.flags & libc::MS_RDONLY != 0 {
                let again = open_in_root(root, &m.destination).map_err(what)?;
                sys_mount(
                    None,
                    &fd_path(&again)?,
                    None,
                    libc::MS_REMOUNT | libc::MS_RDONLY | (m.flags & !libc::MS_RDONLY),
                    None,
                )
                .map_err(what)?;
            }
        }
        MountKind::Sysfs => {
            let src = cstr(m.source.as_os_str().as_bytes())?;
            if let Err(e) = sys_mount(Some(&src), &t, Some(c"sysfs"), m.flags, data) {
                // sysfs of the host's network namespace may be refused; show the host's, read-only
                if e.raw_os_error() != Some(libc::EPERM) {
                    return Err(what(e));
                }
                sys_mount(Some(c"/sys"), &t, None, libc::MS_BIND | libc::MS_REC, None)
                    .map_err(what)?;
                sys_mount(
                    None,
                    &t,
                    None,
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | m.flags,
                    None,
                )
                .map_err(what)?;
            }
        }
        kind => {
            let src = cstr(m.source.as_os_str().as_bytes())?;
            sys_mount(Some(&src), &t, Some(fstype(kind)), m.flags, data).map_err(what)?;
        }
    }
    if m.propagation != 0 {
        let again = open_in_root(root, &m.destination).map_err(what)?;
        sys_mount(None, &fd_path(&again)?, None, m.propagation, None).map_err(what)?;
    }
    Ok(())
}

/// Device nodes in a fresh /dev tmpfs (the same set the device filter allows).
fn populate_dev(root: RawFd) -> Result<()> {
    let dev = open_in_root(root, "/dev").map_err(|e| format!("open /dev: {e}"))?;
    let dev = reopen_dir(&dev).map_err(|e| format!("open /dev: {e}"))?;
    let nodes: [(&CStr, u32, u32); 6] = [
        (c"null", 1, 3),
        (c"zero", 1, 5),
        (c"full", 1, 7),
        (c"random", 1, 8),
        (c"urandom", 1, 9),
        (c"tty", 5, 0),
    ];
    for (name, major, minor) in nodes {
        // SAFETY: directory descriptor and NUL-terminated names; results checked.
        unsafe {
            if libc::mknodat(
                dev.as_raw_fd(),
                name.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            ) != 0
                && errno().raw_os_error() != Some(libc::EEXIST)
            {
                return Err(format!(
                    "mknod /dev/{}: {}",
                    name.to_string_lossy(),
                    errno()
                ));
            }
            libc::fchmodat(dev.as_raw_fd(), name.as_ptr(), 0o666, 0);
        }
    }
    let links: [(&CStr, &CStr); 6] = [
        (c"/proc/self/fd", c"fd"),
        (c"/proc/self/fd/0", c"stdin"),
        (c"/proc/self/fd/1", c"stdout"),
        (c"/proc/self/fd/2", c"stderr"),
        (c"pts/ptmx", c"ptmx"),
        (c"/proc/kcore", c"core"),
    ];
    for (target, name) in links {
        // SAFETY: NUL-terminated strings and a directory descriptor.
        unsafe { libc::symlinkat(target.as_ptr(), dev.as_raw_fd(), name.as_ptr()) };
    }
    Ok(())
}

/// Masks (tmpfs or /dev/null over it) and read-only remounts, on paths inside `root`.
fn protect_paths(root: RawFd, plan: &Plan) -> Result<()> {
    for p in &plan.masked_paths {
        let Ok(fd) = open_in_root(root, p) else {
            continue;
        };
        let t = fd_path(&fd)?;
        let r = if is_dir(&fd) {
            sys_mount(Some(c"tmpfs"), &t, Some(c"tmpfs"), libc::MS_RDONLY, None)
        } else {
            sys_mount(Some(c"/dev/null"), &t, None, libc::MS_BIND, None)
        };
        r.map_err(|e| format!("mask {p}: {e}"))?;
    }
    for p in &plan.readonly_paths {
        let Ok(fd) = open_in_root(root, p) else {
            continue;
        };
        let t = fd_path(&fd)?;
        sys_mount(Some(&t), &t, None, libc::MS_BIND | libc::MS_REC, None)
            .map_err(|e| format!("bind {p}: {e}"))?;
        let again = open_in_root(root, p).map_err(|e| format!("{p}: {e}"))?;
        sys_mount(
            None,
            &fd_path(&again)?,
            None,
            libc::MS_REMOUNT
                | libc::MS_BIND
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            None,
        )
        .map_err(|e| format!("make {p} read-only: {e}"))?;
    }
    Ok(())
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    // SAFETY: NUL-terminated path; result checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!("open {}: {}", path.display(), errno()));
    }
    // SAFETY: fresh descriptor, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Builds the filesystem. Called in the init, in its own mount namespace.
pub fn setup(plan: &Plan, v1: &V1Mounts) -> Result<()> {
    sys_mount(None, c"/", None, plan.rootfs_propagation, None)
        .map_err(|e| format!("make / private in the new mount namespace: {e}"))?;
    let Some(rootfs) = &plan.root else {
        let root = open_dir(Path::new("/"))?;
        for m in &plan.mounts {
            do_mount(root.as_raw_fd(), m, v1)?;
        }
        return protect_paths(root.as_raw_fd(), plan);
    };
    let r = cstr(rootfs.as_os_str().as_bytes())?;
    sys_mount(Some(&r), &r, None, libc::MS_BIND | libc::MS_REC, None)
        .map_err(|e| format!("bind the rootfs {}: {e}", rootfs.display()))?;
    let root = open_dir(rootfs)?;
    for m in &plan.mounts {
        do_mount(root.as_raw_fd(), m, v1)?;
    }
    if plan
        .mounts
        .iter()
        .any(|m| m.destination.trim_end_matches('/') == "/dev" && m.kind == MountKind::Tmpfs)
    {
        populate_dev(root.as_raw_fd())?;
    }
    protect_paths(root.as_raw_fd(), plan)?;
    // SAFETY: fchdir to an open directory; pivot_root(".", ".") stacks the old root on the new
    // one, and the lazy unmount of "." then removes it (mounts are private: nothing
    // propagates to the host).
    unsafe {
        if libc::fchdir(root.as_raw_fd()) != 0 {
            return Err(format!("chdir to the rootfs: {}", errno()));
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            return Err(format!("pivot_root into {}: {}", rootfs.display(), errno()));
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(format!("detach the old root: {}", errno()));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(format!("chdir /: {}", errno()));
        }
    }
    if plan.root_readonly {
        sys_mount(
            None,
            c"/",
            None,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
            None,
        )
        .map_err(|e| format!("make the root read-only: {e}"))?;
    }
    Ok(())
}

/// The host's v1 hierarchies (directory name under /sys/fs/cgroup, mount options).
pub fn host_v1_mounts(mounts: &palisade_cgroupfs::Mounts) -> V1Mounts {
    mounts
        .v1
        .iter()
        .filter_map(|(path, opts)| {
            let dir = path.file_name()?.to_string_lossy().into_owned();
            let opts = if opts.iter().all(|o| o.starts_with("name=")) {
                format!("none,{}", opts.join(","))
            } else {
                opts.join(",")
            };
            Some((dir, opts))
        })
        .collect()
}
