//! Whole lines or nothing: the event log batches complete JSON lines and writes them with
//! plain `write(2)` calls, so after a failed write (a full disk) it knows exactly which lines
//! reached the file — every line is either delivered or counted lost, never half of one. A
//! line cut by the failure is removed again (the file is truncated back to the last whole
//! line) where the target allows it.
use std::io::Write;

use super::Reported;

/// Bytes batched before a write is forced (the log also writes whenever its queue is empty).
pub const BATCH_BYTES: usize = 64 << 10;

/// Complete lines waiting to be written.
#[derive(Debug, Default)]
pub struct Pending {
    buf: Vec<u8>,
    /// End offset (exclusive) of each line in `buf`.
    ends: Vec<usize>,
    /// The lines (by index) of events that report kernel violations, and what they report.
    reports: Vec<(usize, Reported)>,
}

/// What one write of the batch did.
#[derive(Debug, Default)]
pub struct Written {
    /// Lines now complete in the target.
    pub lines: u64,
    /// Lines that did not reach it (all of them, or all after the first failure).
    pub lost: u64,
    /// Bytes of a cut line that reached the target and must be taken back (0 when none).
    pub partial_bytes: u64,
    /// Bytes of complete lines written.
    pub bytes: u64,
    pub error: Option<std::io::Error>,
    /// What the complete lines report (see [`Reported`]), in order.
    pub reports: Vec<Reported>,
}

impl Pending {
    /// Queues `line`; `reports`: what its event reports, handed back once it is written.
    pub fn push(&mut self, line: &[u8], reports: Option<Reported>) {
        if let Some(r) = reports {
            self.reports.push((self.ends.len(), r));
        }
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
        self.ends.push(self.buf.len());
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Writes the batch to `w` and empties it, whatever happened.
    pub fn write_to(&mut self, w: &mut impl Write) -> Written {
        let mut done = 0usize;
        let mut error = None;
        while done < self.buf.len() {
            match w.write(&self.buf[done..]) {
                Ok(0) => {
                    error = Some(std::io::Error::from(std::io::ErrorKind::WriteZero));
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_none()
            && let Err(e) = w.flush()
        {
            error = Some(e);
        }
        let complete = self.ends.iter().take_while(|e| **e <= done).count();
        let complete_bytes = if complete == 0 {
            0
        } else {
            self.ends[complete - 1]
        };
        let out = Written {
            lines: complete as u64,
            lost: (self.ends.len() - complete) as u64,
            partial_bytes: (done - complete_bytes) as u64,
            bytes: complete_bytes as u64,
            error,
            reports: self
                .reports
                .drain(..)
                .take_while(|(i, _)| *i < complete)
                .map(|(_, r)| r)
                .collect(),
        };
        self.buf.clear();
        self.ends.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `room` bytes, in chunks of at most `chunk`, then fails like a full disk.
    struct Disk {
        data: Vec<u8>,
        room: usize,
        chunk: usize,
    }

    impl Write for Disk {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let left = self.room - self.data.len();
            if left == 0 {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = b.len().min(left).min(self.chunk);
            self.data.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_or_lost_never_half() {
        for room in 0..40 {
            let mut p = Pending::default();
            let report = |total| Reported {
                key: Default::default(),
                total,
                what: 0,
            };
            // the second and fourth lines report violations 1 and 2
            for (l, r) in [
                ("aaaa", None),
                ("bbbbbbb", Some(report(1))),
                ("cc", None),
                ("dddddddddd", Some(report(2))),
            ] {
                p.push(l.as_bytes(), r);
            }
            let mut d = Disk {
                data: Vec::new(),
                room,
                chunk: 3,
            };
            let w = p.write_to(&mut d);
            assert_eq!(w.lines + w.lost, 4, "room {room}");
            assert!(p.is_empty());
            let kept = d.data.len() - w.partial_bytes as usize;
            assert_eq!(kept as u64, w.bytes);
            let text = std::str::from_utf8(&d.data[..kept]).unwrap();
            assert_eq!(
                text.lines().count() as u64,
                w.lines,
                "room {room}: {text:?}"
            );
            assert!(text.is_empty() || text.ends_with('\n'));
            assert_eq!(w.error.is_some(), room < 27, "room {room}");
            // handed back only once their line is whole in the target
            let back: Vec<u64> = w.reports.iter().map(|r| r.total).collect();
            let expect: &[u64] = match w.lines {
                0 | 1 => &[],
                2 | 3 => &[1],
                _ => &[1, 2],
            };
            assert_eq!(back, expect, "room {room}");
        }
    }
}
