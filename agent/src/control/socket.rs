//! The control socket file: created 0600 from the start in a directory only root can change,
//! never replacing a live agent's socket.
use std::{
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use tokio::net::{UnixListener, UnixStream};

/// Why the control socket cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another agent answers on the control socket {} (stop it, or set `control_socket` in the config)",
        .0.display()
    )]
    InUse(PathBuf),
    #[error("cannot create the control socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the control socket's directory {} is {why}: another user could replace the socket (use a directory only root can write, e.g. the default {})",
        dir.display(),
        palisade_proto::DEFAULT_SOCKET
    )]
    UnsafeDir { dir: PathBuf, why: String },
}

/// Makes `dir` ready to hold the socket: created 0700 when missing (the default directory,
/// ours alone, is tightened to 0700); an existing one must be root's and not writable by group
/// or others.
fn prepare_dir(dir: &Path, socket: &Path) -> Result<(), ControlError> {
    let err = |source| ControlError::Bind {
        path: socket.to_owned(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
    }
    let md = std::fs::metadata(dir).map_err(err)?;
    let me = nix::unistd::geteuid().as_raw();
    let unsafe_dir = |why: String| ControlError::UnsafeDir {
        dir: dir.to_owned(),
        why,
    };
    if md.uid() != me {
        return Err(unsafe_dir(format!("owned by uid {}", md.uid())));
    }
    let ours = Path::new(palisade_proto::DEFAULT_SOCKET).parent() == Some(dir);
    if ours && md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    } else if md.mode() & 0o022 != 0 && md.mode() & libc::S_ISVTX == 0 {
        return Err(unsafe_dir(format!(
            "writable by others (mode {:o})",
            md.mode() & 0o7777
        )));
    } else if md.mode() & 0o022 != 0 {
        return Err(unsafe_dir(format!(
            "shared with other users (mode {:o})",
            md.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Binds the socket, 0600 from its creation. A stale socket file is replaced; a live one is an
/// error.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    prepare_dir(dir, path)?;
    if std::fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        // a stale socket, or anything else in its place (a symlink is removed, not followed)
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    // The socket file takes its mode from the umask when it is created: 0600 from the first
    // instant. The umask is the process's, so this runs before any other task of the agent
    // creates files (start-up, before anything is loaded).
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}
