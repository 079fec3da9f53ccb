//! [`Sys`] on the running kernel: the libc calls the init makes. A node is an `O_PATH`
//! descriptor from `openat2(RESOLVE_IN_ROOT)`; mounting on `/proc/self/fd/N` mounts on what the
//! descriptor resolved to, not on whatever the name points at by then.
use std::{
    ffi::{CStr, CString},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use super::{Loc, Sys};

/// The real calls.
#[derive(Debug, Default)]
pub struct Linux {
    /// The read end of the launcher's go pipe ([`Sys::wait_placed`]), closed once read.
    go: Option<OwnedFd>,
}

impl Linux {
    /// The init's calls; `go` is the pipe [`Sys::wait_placed`] reads.
    pub fn new(go: OwnedFd) -> Self {
        Self { go: Some(go) }
    }
}

fn errno() -> io::Error {
    io::Error::last_os_error()
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 { Ok(()) } else { Err(errno()) }
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// `/proc/self/fd/N`: the path through which a call reaches what `fd` resolved to.
fn fd_path(fd: &OwnedFd) -> io::Result<CString> {
    cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())
}

fn loc_path(loc: &Loc<'_, OwnedFd>) -> io::Result<CString> {
    match loc {
        Loc::Path(p) => cstr(p.as_os_str().as_bytes()),
        Loc::Node(fd) => fd_path(fd),
    }
}

/// Takes ownership of a descriptor a call just returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn open(path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated path; the result is checked by `owned`.
    owned(unsafe { libc::open(path.as_ptr(), flags) }.into())
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

/// struct mount_attr (mount_setattr(2)).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MS_*` flags as `MOUNT_ATTR_*` bits.
fn mount_attrs(flags: libc::c_ulong) -> u64 {
    [
        (libc::MS_RDONLY, MOUNT_ATTR_RDONLY),
        (libc::MS_NOSUID, MOUNT_ATTR_NOSUID),
        (libc::MS_NODEV, MOUNT_ATTR_NODEV),
        (libc::MS_NOEXEC, MOUNT_ATTR_NOEXEC),
    ]
    .iter()
    .filter(|(ms, _)| flags & ms != 0)
    .fold(0, |a, (_, attr)| a | attr)
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// struct open_how (openat2(2)); libc marks its own definition non-exhaustive.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

impl Sys for Linux {
    type Node = OwnedFd;

    fn open_dir(&mut self, path: &Path) -> io::Result<OwnedFd> {
        let c = cstr(path.as_os_str().as_bytes())?;
        open(&c, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
    }

    fn lookup(&mut self, root: &OwnedFd, path: &str) -> io::Result<OwnedFd> {
        let rel = cstr(path.trim_start_matches('/').as_bytes())?;
        let rel = if rel.as_bytes().is_empty() {
            c".".to_owned()
        } else {
            rel
        };
        let how = OpenHow {
            flags: (libc::O_PATH | libc::O_CLOEXEC) as u64,
            mode: 0,
            resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
        };
        // SAFETY: `rel` and `how` are valid for the call; the size is open_how's.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                rel.as_ptr(),
                &raw const how,
                std::mem::size_of::<OpenHow>(),
            )
        };
        owned(fd)
    }

    fn reopen_dir(&mut self, node: &OwnedFd) -> io::Result<OwnedFd> {
        // O_PATH descriptors cannot be read; open the directory they name
        open(
            &fd_path(node)?,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    }

    fn is_dir(&mut self, node: &OwnedFd) -> bool {
        let mut st = std::mem::MaybeUninit::<libc::stat>::zeroed();
        // SAFETY: fstat on an open descriptor into a stat buffer of the right size; the buffer
        // is only read when the call succeeded (it is zeroed anyway).
        unsafe {
            libc::fstat(node.as_raw_fd(), st.as_mut_ptr()) == 0
                && (st.assume_init().st_mode & libc::S_IFMT) == libc::S_IFDIR
        }
    }

    fn host_is_file(&mut self, path: &Path) -> bool {
        path.is_file()
    }

    fn mkdir(&mut self, dir: &OwnedFd, name: &str, mode: u32) -> io::Result<()> {
        let name = cstr(name.as_bytes())?;
        // SAFETY: a directory descriptor and a NUL-terminated name.
        check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })
    }

    fn create_file(&mut self, dir: &OwnedFd, name: &str, mode: u32) -> io::Result<()> {
        let name = cstr(name.as_bytes())?;
        // SAFETY: a directory descriptor and a NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                mode,
            )
        };
        owned(fd.into()).map(drop)
    }

    fn mknod(
        &mut self,
        dir: &OwnedFd,
        name: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let name = cstr(name.as_bytes())?;
        let dev = libc::makedev(major, minor);
        // SAFETY: a directory descriptor and a NUL-terminated name.
        check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFCHR | mode, dev) })
    }

    fn chmod(&mut self, dir: &OwnedFd, name: &str, mode: u32) -> io::Result<()> {
        let name = cstr(name.as_bytes())?;
        // SAFETY: a directory descriptor and a NUL-terminated name.
        check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode, 0) })
    }

    fn symlink(&mut self, target: &str, dir: &OwnedFd, name: &str) -> io::Result<()> {
        let (target, name) = (cstr(target.as_bytes())?, cstr(name.as_bytes())?);
        // SAFETY: NUL-terminated strings and a directory descriptor.
        check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
    }

    fn clone_tree(&mut self, path: &Path) -> io::Result<OwnedFd> {
        let c = cstr(path.as_os_str().as_bytes())?;
        let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
        // SAFETY: a NUL-terminated path and integer flags; the result is checked by `owned`.
        owned(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })
    }

    fn set_tree_attrs(&mut self, node: &OwnedFd, attrs: libc::c_ulong) -> io::Result<()> {
        let attr = MountAttr {
            attr_set: mount_attrs(attrs),
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let flags = libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE;
        // SAFETY: an open descriptor, an empty path, and a mount_attr of the size given.
        let r = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                node.as_raw_fd(),
                c"".as_ptr(),
                flags,
                &raw const attr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if r == 0 { Ok(()) } else { Err(errno()) }
    }

    fn attach_tree(&mut self, tree: &OwnedFd, target: &Path) -> io::Result<()> {
        let t = cstr(target.as_os_str().as_bytes())?;
        // SAFETY: an open descriptor of a detached tree, an empty path, a NUL-terminated
        // target and integer flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                t.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if r == 0 { Ok(()) } else { Err(errno()) }
    }

    fn mount(
        &mut self,
        source: Option<Loc<'_, OwnedFd>>,
        target: Loc<'_, OwnedFd>,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> io::Result<()> {
        let source = source.as_ref().map(loc_path).transpose()?;
        let target = loc_path(&target)?;
        let fstype = fstype.map(|f| cstr(f.as_bytes())).transpose()?;
        let data = data.map(|d| cstr(d.as_bytes())).transpose()?;
        let p = |c: &Option<CString>| c.as_deref().map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: every pointer is NULL or a NUL-terminated string that outlives the call.
        check(unsafe {
            libc::mount(
                p(&source),
                target.as_ptr(),
                p(&fstype),
                flags,
                p(&data).cast(),
            )
        })
    }

    fn fchdir(&mut self, dir: &OwnedFd) -> io::Result<()> {
        // SAFETY: fchdir to an open directory descriptor.
        check(unsafe { libc::fchdir(dir.as_raw_fd()) })
    }

    fn chdir(&mut self, path: &str) -> io::Result<()> {
        let path = cstr(path.as_bytes())?;
        // SAFETY: a NUL-terminated path.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn pivot_root(&mut self, new_root: &str, put_old: &str) -> io::Result<()> {
        let (new_root, put_old) = (cstr(new_root.as_bytes())?, cstr(put_old.as_bytes())?);
        // SAFETY: two NUL-terminated paths. pivot_root(".", ".") stacks the old root on the
        // new one; the caller's mounts are private, so nothing propagates to the host.
        let r = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
        if r == 0 { Ok(()) } else { Err(errno()) }
    }

    fn umount2(&mut self, target: &str, flags: libc::c_int) -> io::Result<()> {
        let target = cstr(target.as_bytes())?;
        // SAFETY: a NUL-terminated path and integer flags.
        check(unsafe { libc::umount2(target.as_ptr(), flags) })
    }

    fn wait_placed(&mut self) -> io::Result<()> {
        let go = self
            .go
            .take()
            .ok_or_else(|| io::Error::from(io::ErrorKind::BrokenPipe))?;
        let mut b = [0u8; 1];
        // SAFETY: reading one byte into a local buffer.
        match unsafe { libc::read(go.as_raw_fd(), b.as_mut_ptr().cast(), 1) } {
            1 => Ok(()),
            0 => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
            _ => Err(errno()),
        }
    }

    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: unshare with namespace flags only.
        check(unsafe { libc::unshare(flags) })
    }

    fn setns(&mut self, path: &Path, nstype: libc::c_int) -> io::Result<()> {
        let f = std::fs::File::open(path)?;
        // SAFETY: setns on an open namespace descriptor.
        check(unsafe { libc::setns(f.as_raw_fd(), nstype) })
    }

    fn sethostname(&mut self, name: &str) -> io::Result<()> {
        // SAFETY: a buffer and its length.
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
    }

    fn setdomainname(&mut self, name: &str) -> io::Result<()> {
        // SAFETY: a buffer and its length.
        check(unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) })
    }

    fn loopback_up(&mut self) -> io::Result<()> {
        // SAFETY: a datagram socket used only for interface ioctls; the result is checked and
        // the descriptor owned (closed on return).
        let s = owned(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }.into(),
        )?;
        // SAFETY: ifreq is plain data; all zeroes is a valid (empty) request.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, b) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *b as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS fills the flags of the named interface into `req`.
        check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) })?;
        // SAFETY: the flags member is the one SIOCGIFFLAGS just wrote.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`.
        check(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut req) })
    }
}
