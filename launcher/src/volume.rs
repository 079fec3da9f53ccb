//! `--volume HOST:DEST[:ro|rw]` (Docker's `-v` syntax): the only way a workload writes to the
//! host's files. Read-write unless `:ro`, as in Docker; bound recursively, and a read-only
//! volume is read-only with every submount of HOST too.
//!
//! Checked before anything is created: HOST must exist (relative paths are taken from the
//! current directory), DEST must be absolute, the mode `ro` or `rw`. Without `--rootfs` the
//! host's tree is read-only, so no mount point can be made in it: DEST must already exist, a
//! directory for a directory and a file for a file.
use std::path::{Path, PathBuf};

use crate::plan::{Mount, MountKind};

/// A `--volume` value that cannot be used; the message names the part at fault.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("--volume `{0}`: expected HOST:DEST[:ro|rw], e.g. --volume /srv/data:/data:ro")]
    Syntax(String),
    #[error(
        "--volume `{spec}`: the host path {} does not exist: {source} (create it first)",
        host.display()
    )]
    MissingHost {
        spec: String,
        host: PathBuf,
        source: std::io::Error,
    },
    #[error("--volume `{spec}`: the destination `{dest}` must be an absolute path")]
    RelativeDest { spec: String, dest: String },
    #[error("--volume `{spec}`: cannot mount over the workload's `/`")]
    OverRoot { spec: String },
    #[error("--volume `{spec}`: unknown mode `{mode}` (ro or rw)")]
    Mode { spec: String, mode: String },
    #[error(
        "--volume `{spec}`: the destination {dest} does not exist on the host; without --rootfs the host's files are read-only and nothing is created in them (use an existing {kind}, or --rootfs)"
    )]
    MissingDest {
        spec: String,
        dest: String,
        kind: &'static str,
    },
    #[error(
        "--volume `{spec}`: {host} is a {host_kind} but {dest} is not (mount a directory on a directory, a file on a file)"
    )]
    KindMismatch {
        spec: String,
        host: String,
        dest: String,
        host_kind: &'static str,
    },
}

fn kind_of(p: &Path) -> &'static str {
    if p.is_dir() { "directory" } else { "file" }
}

/// Parses one `--volume` value into a bind mount. `rootfs`: whether the workload gets its own
/// root (then DEST is created inside it if missing).
pub fn parse(spec: &str, rootfs: bool) -> Result<Mount, VolumeError> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (host, dest, mode) = match parts.as_slice() {
        [h, d] => (*h, *d, "rw"),
        [h, d, m] => (*h, *d, *m),
        _ => return Err(VolumeError::Syntax(spec.to_owned())),
    };
    if host.is_empty() || dest.is_empty() {
        return Err(VolumeError::Syntax(spec.to_owned()));
    }
    let readonly = match mode {
        "ro" => true,
        "rw" => false,
        other => {
            return Err(VolumeError::Mode {
                spec: spec.to_owned(),
                mode: other.to_owned(),
            });
        }
    };
    if !dest.starts_with('/') {
        return Err(VolumeError::RelativeDest {
            spec: spec.to_owned(),
            dest: dest.to_owned(),
        });
    }
    if dest.split('/').all(|p| p.is_empty() || p == ".") {
        return Err(VolumeError::OverRoot {
            spec: spec.to_owned(),
        });
    }
    let source = std::fs::canonicalize(host).map_err(|source| VolumeError::MissingHost {
        spec: spec.to_owned(),
        host: PathBuf::from(host),
        source,
    })?;
    if !rootfs {
        let d = Path::new(dest);
        if !d.exists() {
            return Err(VolumeError::MissingDest {
                spec: spec.to_owned(),
                dest: dest.to_owned(),
                kind: kind_of(&source),
            });
        }
        if source.is_dir() != d.is_dir() {
            return Err(VolumeError::KindMismatch {
                spec: spec.to_owned(),
                host: source.display().to_string(),
                dest: dest.to_owned(),
                host_kind: kind_of(&source),
            });
        }
    }
    let mut flags = libc::MS_BIND | libc::MS_REC;
    if readonly {
        flags |= libc::MS_RDONLY;
    }
    Ok(Mount {
        destination: dest.to_owned(),
        kind: MountKind::Bind,
        source,
        flags,
        data: String::new(),
        propagation: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_syntax() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().to_string_lossy().into_owned();
        let m = parse(&format!("{host}:/data"), true).unwrap();
        assert_eq!(m.destination, "/data");
        assert_eq!(m.flags, libc::MS_BIND | libc::MS_REC, "rw by default");
        let m = parse(&format!("{host}:/data:ro"), true).unwrap();
        assert_ne!(m.flags & libc::MS_RDONLY, 0);
        assert_eq!(m.source, std::fs::canonicalize(d.path()).unwrap());
        let m = parse(&format!("{host}:/data:rw"), true).unwrap();
        assert_eq!(m.flags & libc::MS_RDONLY, 0);
        // without a rootfs the destination must exist, of the same kind
        let m = parse(&format!("{host}:{host}:ro"), false).unwrap();
        assert_eq!(m.destination, host);
    }

    #[test]
    fn bad_values_name_the_part_at_fault() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().to_string_lossy().into_owned();
        let msg = |spec: &str, rootfs| parse(spec, rootfs).unwrap_err().to_string();
        assert!(msg(&format!("{host}/nope:/data"), true).contains("/nope does not exist"));
        assert!(msg(&format!("{host}:data"), true).contains("`data` must be an absolute path"));
        assert!(msg(&format!("{host}:/data:rx"), true).contains("unknown mode `rx`"));
        assert!(msg(&host, true).contains("HOST:DEST"));
        assert!(msg(&format!("{host}:/a:ro:x"), true).contains("HOST:DEST"));
        assert!(msg(&format!("{host}:/"), true).contains("over the workload's `/`"));
        assert!(
            msg(&format!("{host}:/no/such/dir/here"), false).contains("does not exist on the host")
        );
        let file = d.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert!(msg(&format!("{host}:{}", file.display()), false).contains("is a directory"));
        for m in [msg(&host, true), msg(&format!("{host}:data"), true)] {
            assert_eq!(m.lines().count(), 1, "{m}");
        }
    }
}
