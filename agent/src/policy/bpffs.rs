//! bpffs: mounted at `/sys/fs/bpf` when missing (this host does not mount it at boot), and the
//! pin directory's removal for `palisade agent --cleanup`.
use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use super::bpf::{BpfError, PinDirError};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT_MOUNT: &str = "/sys/fs/bpf";

fn on_bpffs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// The nearest existing ancestor of `p` (itself included).
fn existing_ancestor(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| a.exists())
}

/// Makes sure `pin_dir` can be created on bpffs: mounts bpffs at /sys/fs/bpf when that is
/// where it goes and nothing is mounted there. Serialised with a lock file, so agents starting
/// together never stack two mounts (each would see different pins).
pub fn ensure(pin_dir: &Path) -> Result<(), BpfError> {
    let fail = |source| BpfError::PinDir {
        path: pin_dir.to_owned(),
        source,
    };
    let io = |what| move |source| fail(PinDirError::Io { what, source });
    let mount = Path::new(DEFAULT_MOUNT);
    if pin_dir.starts_with(mount) {
        std::fs::create_dir_all("/run/palisade").map_err(io("create /run/palisade"))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/palisade/bpffs.lock")
            .map_err(io("lock file"))?;
        // SAFETY: flock on a descriptor we own; released when `lock` is closed.
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        if !on_bpffs(mount) {
            std::fs::create_dir_all(mount).map_err(io("create /sys/fs/bpf"))?;
            nix::mount::mount(
                Some("bpf"),
                mount,
                Some("bpf"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                Some("mode=0700"),
            )
            .map_err(|source| {
                fail(PinDirError::Mount {
                    at: DEFAULT_MOUNT,
                    source,
                })
            })?;
            tracing::info!(path = DEFAULT_MOUNT, "bpffs was not mounted; mounted it");
        }
        drop(lock);
    }
    match existing_ancestor(pin_dir) {
        Some(a) if on_bpffs(a) => Ok(()),
        Some(a) => Err(fail(PinDirError::NotBpffs(a.to_owned()))),
        None => Err(fail(PinDirError::Missing)),
    }
}

/// A pin directory that exists must be root's and 0700: what is pinned there is enforcement
/// state a new agent adopts, so nobody else may have been able to plant or change it. A missing
/// one is fine (it is created 0700).
pub fn check_pin_dir(pin_dir: &Path) -> Result<(), BpfError> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(md) = std::fs::symlink_metadata(pin_dir) else {
        return Ok(());
    };
    let mode = md.mode() & 0o7777;
    if md.uid() != 0 || mode & 0o077 != 0 || !md.is_dir() {
        return Err(BpfError::PinDir {
            path: pin_dir.to_owned(),
            source: PinDirError::Unsafe {
                uid: md.uid(),
                mode,
            },
        });
    }
    Ok(())
}

/// Removes a pin directory tree (unpinning links detaches their programs); returns what was
/// removed, deepest first.
pub fn remove_tree(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return removed;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                removed.extend(remove_tree(&p));
            } else if std::fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        }
    }
    if std::fs::remove_dir(dir).is_ok() {
        removed.push(dir.to_owned());
    }
    removed
}

/// `palisade agent --cleanup`: removes `pin_dir` (mounting nothing); returns what went.
pub fn cleanup(pin_dir: &Path) -> Result<Vec<PathBuf>, BpfError> {
    let fail = |source| BpfError::PinDir {
        path: pin_dir.to_owned(),
        source,
    };
    if !pin_dir.exists() {
        return Ok(Vec::new());
    }
    if !on_bpffs(pin_dir) {
        return Err(fail(PinDirError::NotBpffs(pin_dir.to_owned())));
    }
    let removed = remove_tree(pin_dir);
    if pin_dir.exists() {
        return Err(fail(PinDirError::NotRemoved));
    }
    Ok(removed)
}
