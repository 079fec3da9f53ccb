//! Ring-buffer records → typed events. Every record starts with its `u32` kind.
use palisade_common::{
    CGROUP_PATH_MAX, CgroupEvent, EXEC_ARGS_MAX, EXEC_FILENAME_MAX, ExecEvent, ExitEvent,
    MoveEvent, OomEvent, event_kind, exec_flags,
    net::{AF_INET, AF_INET6, DNS_PAYLOAD_MAX, DnsEvent, FlowKey, FlowStats, TcpEvent},
};
use tracing::warn;

/// A cgroup appeared or vanished in the unified hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupChange {
    Created {
        cgroup_id: u64,
        path: String,
        /// The kernel's path was longer than the event can carry.
        truncated: bool,
    },
    Removed {
        cgroup_id: u64,
        path: String,
    },
}

/// A successful exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub pid: u32,
    pub old_pid: u32,
    /// `None` when the kernel's BTF was not available.
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    pub comm: String,
    pub filename: String,
    pub filename_truncated: bool,
    /// `None` when the arguments could not be read.
    pub args: Option<Vec<String>>,
    pub args_truncated: bool,
}

/// How a process ended, from `task_struct.exit_code` (wait(2) encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
    Unknown,
}

impl ExitStatus {
    pub fn from_wait(code: u32) -> Self {
        let sig = (code & 0x7f) as i32;
        if sig != 0 {
            ExitStatus::Signal(sig)
        } else {
            ExitStatus::Code(((code >> 8) & 0xff) as i32)
        }
    }
}

/// A process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub tid: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// CLOCK_MONOTONIC start of the process, when known.
    pub start_ns: Option<u64>,
    pub status: ExitStatus,
    pub comm: String,
}

/// The OOM killer chose a victim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oom {
    pub pid: u32,
    pub uid: u32,
    /// cgroup of the task that hit the limit.
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    pub comm: String,
}

/// A task moved into another cgroup of the unified hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The task moved (a thread id; each thread of a process moved sends one).
    pub pid: u32,
    /// Destination cgroup.
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    pub comm: String,
}

/// A TCP connection was established, closed or failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tcp {
    /// One of `palisade_common::net::tcp_what`.
    pub what: u32,
    pub key: FlowKey,
    pub cookie: u64,
    pub ktime_ns: u64,
    pub start_ns: u64,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    /// One of `palisade_common::net::direction`.
    pub direction: u32,
    pub srtt_us: u32,
    pub total_retrans: u32,
    /// The flow's final counts: taken out of the flow table by `sock_ops` at close, or by the
    /// kernel actor when `sock_ops` could not (`None` for `ESTABLISHED`, or when the flow was
    /// already gone).
    pub flow: Option<FlowStats>,
}

/// The start of a DNS message a cgroup sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub key: FlowKey,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    Cgroup(CgroupChange),
    Exec(Box<Exec>),
    Exit(Exit),
    Oom(Oom),
    Tcp(Tcp),
    Dns(Dns),
    Moved(Moved),
}

/// An IPv4-mapped IPv6 socket address (`::ffff:a.b.c.d`) as the IPv4 packets show it.
pub fn normalize(mut k: FlowKey) -> FlowKey {
    let mapped = |a: &[u8; 16]| a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff;
    if k.family == AF_INET6 && mapped(&k.laddr) && mapped(&k.raddr) {
        k.family = AF_INET;
        for a in [&mut k.laddr, &mut k.raddr] {
            let v4 = [a[12], a[13], a[14], a[15]];
            *a = [0; 16];
            a[..4].copy_from_slice(&v4);
        }
    }
    k
}

fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        warn!(
            len = bytes.len(),
            want = size_of::<T>(),
            "short ring buffer record"
        );
        return None;
    }
    // SAFETY: at least size_of::<T>() bytes are present; T is plain old data written by the
    // kernel program; read_unaligned copes with any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// C string in a fixed buffer, up to `len` bytes or the first NUL.
fn cstr(buf: &[u8], len: usize) -> String {
    let b = buf.get(..len.min(buf.len())).unwrap_or_default();
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// NUL-separated argument block (as in /proc/PID/cmdline) → arguments.
pub fn split_args(block: &[u8]) -> Vec<String> {
    let block = block.strip_suffix(&[0]).unwrap_or(block);
    if block.is_empty() {
        return Vec::new();
    }
    block
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

pub fn parse(bytes: &[u8]) -> Option<KernelEvent> {
    let kind: u32 = read(bytes)?;
    match kind {
        event_kind::CGROUP_MKDIR | event_kind::CGROUP_RMDIR => {
            let ev: CgroupEvent = read(bytes)?;
            let path = cstr(&ev.path, (ev.path_len as usize).min(CGROUP_PATH_MAX));
            Some(KernelEvent::Cgroup(if kind == event_kind::CGROUP_MKDIR {
                CgroupChange::Created {
                    cgroup_id: ev.cgroup_id,
                    path,
                    truncated: ev.truncated != 0,
                }
            } else {
                CgroupChange::Removed {
                    cgroup_id: ev.cgroup_id,
                    path,
                }
            }))
        }
        event_kind::EXEC => {
            let ev: ExecEvent = read(bytes)?;
            let args = (ev.flags & exec_flags::ARGS_MISSING == 0).then(|| {
                split_args(
                    ev.args
                        .get(..(ev.args_len as usize).min(EXEC_ARGS_MAX))
                        .unwrap_or_default(),
                )
            });
            Some(KernelEvent::Exec(Box::new(Exec {
                pid: ev.pid,
                old_pid: ev.old_pid,
                ppid: (ev.flags & exec_flags::PPID_MISSING == 0).then_some(ev.ppid),
                uid: ev.uid,
                gid: ev.gid,
                cgroup_id: ev.cgroup_id,
                ktime_ns: ev.ktime_ns,
                comm: cstr(&ev.comm, 16),
                filename: cstr(
                    &ev.filename,
                    (ev.filename_len as usize).min(EXEC_FILENAME_MAX),
                ),
                filename_truncated: ev.flags & exec_flags::FILENAME_TRUNCATED != 0,
                args,
                args_truncated: ev.flags & exec_flags::ARGS_TRUNCATED != 0,
            })))
        }
        event_kind::EXIT => {
            let ev: ExitEvent = read(bytes)?;
            let known = ev.flags == 0;
            Some(KernelEvent::Exit(Exit {
                pid: ev.pid,
                tid: ev.tid,
                cgroup_id: ev.cgroup_id,
                ktime_ns: ev.ktime_ns,
                start_ns: (known && ev.start_ns != 0).then_some(ev.start_ns),
                status: if known {
                    ExitStatus::from_wait(ev.exit_code)
                } else {
                    ExitStatus::Unknown
                },
                comm: cstr(&ev.comm, 16),
            }))
        }
        event_kind::CGROUP_MOVE => {
            let ev: MoveEvent = read(bytes)?;
            Some(KernelEvent::Moved(Moved {
                pid: ev.pid,
                cgroup_id: ev.cgroup_id,
                ktime_ns: ev.ktime_ns,
                comm: cstr(&ev.comm, 16),
            }))
        }
        event_kind::OOM => {
            let ev: OomEvent = read(bytes)?;
            Some(KernelEvent::Oom(Oom {
                pid: ev.pid,
                uid: ev.uid,
                cgroup_id: ev.cgroup_id,
                ktime_ns: ev.ktime_ns,
                comm: cstr(&ev.comm, 16),
            }))
        }
        event_kind::TCP => {
            let ev: TcpEvent = read(bytes)?;
            Some(KernelEvent::Tcp(Tcp {
                what: ev.what,
                key: normalize(ev.key),
                cookie: ev.cookie,
                ktime_ns: ev.ktime_ns,
                start_ns: ev.start_ns,
                bytes_received: ev.bytes_received,
                bytes_acked: ev.bytes_acked,
                direction: ev.direction,
                srtt_us: ev.srtt_us,
                total_retrans: ev.total_retrans,
                flow: (ev.has_flow == 1).then_some(ev.flow),
            }))
        }
        event_kind::DNS => {
            let ev: DnsEvent = read(bytes)?;
            let n = (ev.len as usize).min(DNS_PAYLOAD_MAX);
            Some(KernelEvent::Dns(Dns {
                key: ev.key,
                payload: ev.payload.get(..n).unwrap_or_default().to_vec(),
            }))
        }
        other => {
            warn!(kind = other, "unknown ring buffer event");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain-old-data value for a test.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    #[test]
    fn exec_with_args() {
        let mut ev = ExecEvent {
            kind: event_kind::EXEC,
            pid: 10,
            old_pid: 10,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            cgroup_id: 77,
            ktime_ns: 5,
            filename_len: 9,
            args_len: 0,
            flags: 0,
            _pad: 0,
            comm: comm("true"),
            filename: [0; EXEC_FILENAME_MAX],
            args: [0; EXEC_ARGS_MAX],
        };
        ev.filename[..9].copy_from_slice(b"/bin/true");
        let block = b"/bin/true\0a\0b c\0\0";
        ev.args[..block.len()].copy_from_slice(block);
        ev.args_len = block.len() as u32;
        let Some(KernelEvent::Exec(e)) = parse(&bytes_of(&ev)) else {
            panic!("not an exec")
        };
        assert_eq!(e.filename, "/bin/true");
        assert_eq!(e.comm, "true");
        assert_eq!(e.ppid, Some(1));
        assert_eq!(
            e.args.as_deref(),
            Some(&["/bin/true".to_owned(), "a".into(), "b c".into(), "".into()][..])
        );
        ev.flags = exec_flags::ARGS_MISSING | exec_flags::PPID_MISSING;
        let Some(KernelEvent::Exec(e)) = parse(&bytes_of(&ev)) else {
            panic!("not an exec")
        };
        assert_eq!(e.args, None);
        assert_eq!(e.ppid, None);
        // short records are rejected
        assert_eq!(parse(&bytes_of(&ev)[..100]), None);
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(ExitStatus::from_wait(0), ExitStatus::Code(0));
        assert_eq!(ExitStatus::from_wait(3 << 8), ExitStatus::Code(3));
        assert_eq!(ExitStatus::from_wait(9), ExitStatus::Signal(9));
        assert_eq!(ExitStatus::from_wait(0x80 | 11), ExitStatus::Signal(11)); // core dumped
        let ev = ExitEvent {
            kind: event_kind::EXIT,
            pid: 5,
            tid: 6,
            exit_code: 2 << 8,
            cgroup_id: 9,
            ktime_ns: 100,
            start_ns: 40,
            flags: 0,
            _pad: 0,
            comm: comm("sh"),
        };
        let Some(KernelEvent::Exit(e)) = parse(&bytes_of(&ev)) else {
            panic!("not an exit")
        };
        assert_eq!(e.status, ExitStatus::Code(2));
        assert_eq!(e.start_ns, Some(40));
    }

    #[test]
    fn ipv4_mapped_keys_are_normalized() {
        use palisade_common::net::IPPROTO_TCP;
        let key = |proto| {
            let mut k = FlowKey {
                cgroup_id: 7,
                family: palisade_common::net::AF_INET,
                proto,
                _pad: 0,
                lport: 40000,
                rport: 8080,
                laddr: [0; 16],
                raddr: [0; 16],
            };
            k.laddr[..4].copy_from_slice(&[10, 0, 0, 1]);
            k.raddr[..4].copy_from_slice(&[10, 0, 0, 2]);
            k
        };
        let mut mapped = key(IPPROTO_TCP);
        mapped.family = AF_INET6;
        for a in [&mut mapped.laddr, &mut mapped.raddr] {
            let v4 = [a[0], a[1], a[2], a[3]];
            *a = [0; 16];
            a[10] = 0xff;
            a[11] = 0xff;
            a[12..].copy_from_slice(&v4);
        }
        assert_eq!(normalize(mapped), key(IPPROTO_TCP));
    }

    #[test]
    fn args_blocks() {
        assert_eq!(split_args(b""), Vec::<String>::new());
        assert_eq!(split_args(b"ls\0-l\0"), vec!["ls", "-l"]);
        assert_eq!(split_args(b"cut-off"), vec!["cut-off"]);
    }
}
