//! The event log: one JSON object per line to stdout or to a file with size-based rotation
//! (`FILE` → `FILE.1` → … → `FILE.N`, the oldest dropped).
use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::broadcast::{self, error::RecvError};
use tracing::warn;

use super::{Event, Hub};

/// Why the event log cannot be opened. It holds every container's command lines: it is
/// root's alone (0600), never reached through a symlink, in a directory root owns.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open the event log {}: {source} (check --events)", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the event log {} is a symlink; refusing to follow it (give the real path to --events)",
        path.display()
    )]
    Symlink { path: PathBuf },
    #[error(
        "the event log's directory {} is owned by uid {uid}, not root: another user could swap the file (choose a root-owned directory for --events)",
        dir.display()
    )]
    DirOwner { dir: PathBuf, uid: u32 },
    #[error("the event log {} is owned by uid {uid}, not root; refusing to write to it", path.display())]
    FileOwner { path: PathBuf, uid: u32 },
    #[error("the event log {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
}

/// Where events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File {
        path: PathBuf,
        /// Rotate when the file would grow past this many bytes.
        max_bytes: u64,
        /// Rotated files kept.
        keep: u32,
    },
}

enum Out {
    Stdout(std::io::Stdout),
    File {
        w: BufWriter<File>,
        path: PathBuf,
        size: u64,
        max_bytes: u64,
        keep: u32,
    },
}

/// Opens the log for appending: its directory must be root's (the agent's own user), the file
/// is created 0600 (an existing one is tightened to 0600), never through a symlink, and must be
/// root's too.
fn open_append(path: &Path) -> Result<(File, u64), SinkError> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let io = |source| SinkError::Open {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // root in production (the agent refuses to run otherwise); whoever runs the unit tests
    let me = nix::unistd::geteuid().as_raw();
    let dm = std::fs::metadata(dir).map_err(io)?;
    if dm.uid() != me {
        return Err(SinkError::DirOwner {
            dir: dir.to_owned(),
            uid: dm.uid(),
        });
    }
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                SinkError::Symlink {
                    path: path.to_owned(),
                }
            } else {
                io(e)
            }
        })?;
    let m = f.metadata().map_err(io)?;
    if !m.is_file() {
        return Err(SinkError::NotAFile {
            path: path.to_owned(),
        });
    }
    if m.uid() != me {
        return Err(SinkError::FileOwner {
            path: path.to_owned(),
            uid: m.uid(),
        });
    }
    if m.mode() & 0o077 != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    Ok((f, m.len()))
}

impl Out {
    fn open(target: &Target) -> Result<Self, SinkError> {
        Ok(match target {
            Target::Stdout => Out::Stdout(std::io::stdout()),
            Target::File {
                path,
                max_bytes,
                keep,
            } => {
                let (f, size) = open_append(path)?;
                Out::File {
                    w: BufWriter::new(f),
                    path: path.clone(),
                    size,
                    max_bytes: *max_bytes,
                    keep: *keep,
                }
            }
        })
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Out::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(line.as_bytes())?;
                l.write_all(b"\n")
            }
            Out::File {
                w,
                path,
                size,
                max_bytes,
                keep,
            } => {
                let n = line.len() as u64 + 1;
                if *size > 0 && *size + n > *max_bytes {
                    w.flush()?;
                    rotate(path, *keep)?;
                    let (f, s) = open_append(path).map_err(std::io::Error::other)?;
                    *w = BufWriter::new(f);
                    *size = s;
                }
                w.write_all(line.as_bytes())?;
                w.write_all(b"\n")?;
                *size += n;
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Stdout(s) => s.flush(),
            Out::File { w, .. } => w.flush(),
        }
    }
}

/// FILE.(keep-1) → FILE.keep, …, FILE → FILE.1 (FILE.keep is overwritten).
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    let numbered = |i: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{i}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    for i in (1..keep).rev() {
        let from = numbered(i);
        if from.exists() {
            std::fs::rename(&from, numbered(i + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

/// Checks that the target can be opened (so a bad path fails at start-up, not later).
pub fn check(target: &Target) -> Result<(), SinkError> {
    Out::open(target).map(|_| ())
}

/// Writes every event `rx` receives (a subscription to `hub` taken before anything publishes,
/// so start-up events are not missed) until the hub closes. Flushes whenever the queue is
/// drained.
pub async fn run(target: Target, hub: Arc<Hub>, mut rx: broadcast::Receiver<Arc<Event>>) {
    let mut out = match Out::open(&target) {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "event log disabled");
            return;
        }
    };
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => {
                hub.count_dropped("log", n);
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        let line = match serde_json::to_string(&*ev) {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot encode event");
                continue;
            }
        };
        if let Err(e) = out.write_line(&line) {
            warn!(error = %e, "event log write failed");
            hub.count_dropped("log", 1);
        }
        if rx.is_empty()
            && let Err(e) = out.flush()
        {
            warn!(error = %e, "event log flush failed");
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let target = Target::File {
            path: path.clone(),
            max_bytes: 25,
            keep: 2,
        };
        let mut out = Out::open(&target).unwrap();
        for i in 0..7 {
            out.write_line(&format!("line-{i}-xxxxxxxx")).unwrap(); // 16 bytes + newline
        }
        out.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(&path), "line-6-xxxxxxxx\n");
        assert_eq!(
            read(&dir.path().join("events.jsonl.1")),
            "line-5-xxxxxxxx\n"
        );
        assert_eq!(
            read(&dir.path().join("events.jsonl.2")),
            "line-4-xxxxxxxx\n"
        );
        assert!(!dir.path().join("events.jsonl.3").exists());
    }

    #[test]
    fn appends_to_an_existing_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.log");
        std::fs::write(&path, "old\n").unwrap();
        let mut out = Out::open(&Target::File {
            path: path.clone(),
            max_bytes: 1 << 20,
            keep: 3,
        })
        .unwrap();
        out.write_line("new").unwrap();
        out.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\nnew\n");
    }

    #[test]
    fn the_log_is_private_and_never_a_symlink() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.log");
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let target = |p: &Path| Target::File {
            path: p.to_owned(),
            max_bytes: 1 << 20,
            keep: 1,
        };
        check(&target(&path)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = check(&target(&link)).unwrap_err();
        assert!(matches!(e, SinkError::Symlink { .. }), "{e}");
    }

    #[test]
    fn unopenable_target_is_an_error() {
        let e = check(&Target::File {
            path: PathBuf::from("/nonexistent/dir/e.log"),
            max_bytes: 1,
            keep: 1,
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir/e.log"));
    }
}
