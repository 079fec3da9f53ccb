//! The event log: one JSON object per line to stdout or to a file with size-based rotation
//! (`FILE` → `FILE.1` → … → `FILE.N`, the oldest dropped). Every event is written whole or
//! counted lost (see `lines`).
use std::{
    fs::{File, OpenOptions},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::sync::{
    broadcast::{
        self,
        error::{RecvError, TryRecvError},
    },
    oneshot,
};
use tracing::{info, warn};

use super::{
    Event, Hub,
    lines::{self, Pending},
};

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
        f: File,
        path: PathBuf,
        /// Bytes in the file (complete lines only).
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

/// What a write of the batch did: lines delivered, lines lost, and the first error.
#[derive(Debug, Default)]
struct Outcome {
    delivered: u64,
    lost: u64,
    error: Option<std::io::Error>,
    /// What the delivered lines report (see [`super::Reported`]).
    reports: Vec<super::Reported>,
}

impl Outcome {
    fn add(&mut self, mut w: lines::Written) {
        self.reports.append(&mut w.reports);
        self.delivered += w.lines;
        self.lost += w.lost;
        if self.error.is_none() {
            self.error = w.error;
        }
    }
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
                    f,
                    path: path.clone(),
                    size,
                    max_bytes: *max_bytes,
                    keep: *keep,
                }
            }
        })
    }

    /// Queues one line; writes the batch first when the line would pass the rotation size,
    /// and after it when the batch is large.
    fn push(
        &mut self,
        pending: &mut Pending,
        line: &[u8],
        reports: Option<super::Reported>,
    ) -> Outcome {
        let mut out = Outcome::default();
        let n = line.len() as u64 + 1;
        if let Out::File {
            size, max_bytes, ..
        } = self
            && *size + pending.bytes() as u64 > 0
            && *size + pending.bytes() as u64 + n > *max_bytes
        {
            out.add(self.write(pending));
            if let Err(e) = self.rotate() {
                out.error.get_or_insert(e);
            }
        }
        pending.push(line, reports);
        if pending.bytes() >= lines::BATCH_BYTES {
            out.add(self.write(pending));
        }
        out
    }

    /// Writes the batch: whole lines reach the file or are counted lost; a line cut by a
    /// failed write is taken back out of the file.
    fn write(&mut self, pending: &mut Pending) -> lines::Written {
        match self {
            Out::Stdout(s) => pending.write_to(&mut s.lock()),
            Out::File { f, size, .. } => {
                let w = pending.write_to(f);
                if w.partial_bytes > 0
                    && let Err(e) = f.set_len(*size + w.bytes)
                {
                    warn!(error = %e, "cannot take a cut line back out of the event log");
                }
                *size += w.bytes;
                w
            }
        }
    }

    /// FILE → FILE.1 …, and a fresh FILE.
    fn rotate(&mut self) -> std::io::Result<()> {
        let Out::File {
            f,
            path,
            size,
            keep,
            ..
        } = self
        else {
            return Ok(());
        };
        rotate(path, *keep)?;
        let (nf, s) = open_append(path).map_err(std::io::Error::other)?;
        *f = nf;
        *size = s;
        Ok(())
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

/// Writes every event from `rx` (subscribed before any event was published) until `stop`
/// fires, then what is still queued. Lines are batched and written whenever the queue is
/// empty; each one is counted delivered or lost (`palisade_events_delivered_total` /
/// `_dropped_total{sink="log"}`): a consumer that fell behind, a failed write (a full disk).
/// The agent keeps serving whatever the log does.
pub async fn run(
    target: Target,
    hub: Arc<Hub>,
    mut rx: broadcast::Receiver<Arc<Event>>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut out = match Out::open(&target) {
        Ok(o) => o,
        Err(e) => {
            warn!(error = %e, "event log disabled");
            hub.log_gone();
            return;
        }
    };
    let mut pending = Pending::default();
    let mut line: Vec<u8> = Vec::with_capacity(1024);
    let mut failing = false;
    let account = |o: Outcome, failing: &mut bool| {
        // at once, before anything else: what these lines report is now recorded as reported
        hub.log_wrote(&o.reports);
        if o.delivered > 0 {
            hub.count_delivered("log", o.delivered);
        }
        if o.lost > 0 {
            hub.count_dropped("log", o.lost);
        }
        match o.error {
            Some(e) if !*failing => {
                *failing = true;
                warn!(error = %e, lost = o.lost, "event log write failed; events are counted lost until writes succeed again");
            }
            None if *failing && o.delivered > 0 => {
                *failing = false;
                info!("event log writes succeed again");
            }
            _ => {}
        }
    };
    let mut stopping = false;
    loop {
        let r = if stopping {
            // the producers have stopped: take what is queued, then end
            match rx.try_recv() {
                Ok(ev) => Ok(ev),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        } else {
            tokio::select! {
                biased;
                r = rx.recv() => r,
                _ = &mut stop => {
                    stopping = true;
                    continue;
                }
            }
        };
        let ev = match r {
            Ok(ev) => {
                hub.log_took(1);
                ev
            }
            Err(RecvError::Lagged(n)) => {
                hub.log_took(n);
                hub.count_dropped("log", n);
                continue;
            }
            Err(RecvError::Closed) => break,
        };
        // one buffer for every line (no allocation per event)
        line.clear();
        match serde_json::to_writer(&mut line, &*ev) {
            Ok(()) => {
                let o = out.push(&mut pending, &line, ev.reports);
                account(o, &mut failing);
            }
            Err(e) => {
                warn!(error = %e, "cannot encode event");
                hub.count_dropped("log", 1);
            }
        }
        if rx.is_empty() && !pending.is_empty() {
            let mut o = Outcome::default();
            o.add(out.write(&mut pending));
            account(o, &mut failing);
        }
    }
    let mut o = Outcome::default();
    o.add(out.write(&mut pending));
    account(o, &mut failing);
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
        let mut p = Pending::default();
        for i in 0..7 {
            let o = out.push(&mut p, format!("line-{i}-xxxxxxxx").as_bytes(), None); // 16 bytes + newline
            assert!(o.error.is_none() && o.lost == 0);
        }
        assert_eq!(out.write(&mut p).lines, 1);
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
        let mut p = Pending::default();
        let _ = out.push(&mut p, b"new", None);
        assert_eq!(out.write(&mut p).lines, 1);
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
