//! Violation events: the `violation` object of a `policy_violation` event, and the decoding of
//! the kernel's [`PolicyEvent`] records.
use std::net::{Ipv4Addr, Ipv6Addr};

use palisade_common::{
    net::{AF_INET, AF_INET6},
    policy::{
        ExecPaths, NetTuple, POLICY_EVENT_HEAD, POLICY_PATH_MAX, PolicyEvent, abi_id, exec_flags,
        kind, taken, unresolved, what,
    },
};
use palisade_syscalls::Abi;

use crate::events::{ExecDetail, NetworkRef};

pub fn hook_name(w: u32) -> &'static str {
    match w {
        what::SYSCALL => "syscall",
        what::SECCOMP => "seccomp",
        what::SYSCALL_LSM => "lsm",
        what::EXEC => "exec",
        what::CONNECT => "connect",
        what::SENDMSG => "sendmsg",
        what::BIND => "bind",
        what::INGRESS => "ingress",
        what::SOCKET => "socket",
        what::FILE => "file",
        _ => "unknown",
    }
}

fn abi_of(abi: u32) -> Abi {
    match abi {
        abi_id::I386 => Abi::I386,
        abi_id::X32 => Abi::X32,
        _ => Abi::X86_64,
    }
}

/// A syscall by its name in its ABI (the number where unknown).
pub fn syscall_name(abi: u32, nr: u32) -> String {
    palisade_syscalls::name_in(abi_of(abi), nr).map_or_else(|| nr.to_string(), str::to_owned)
}

/// The ABI of a syscall violation made through another ABI than x86_64.
pub fn abi_name(w: u32, abi: u32) -> Option<String> {
    (matches!(w, what::SYSCALL | what::SECCOMP) && abi != abi_id::X86_64)
        .then(|| abi_of(abi).as_str().to_owned())
}

/// The x86_64 call a compat call was checked as, when its name differs from the call's own.
pub fn checked_as(ev: &PolicyEvent) -> Option<String> {
    if ev.abi == abi_id::X86_64 || ev.native == u32::MAX {
        return None;
    }
    let native = palisade_syscalls::name(ev.native)?;
    (Some(native) != palisade_syscalls::name_in(abi_of(ev.abi), ev.nr)).then(|| native.to_owned())
}

fn endpoint(family: u16, addr: &[u8; 16], port: u16) -> String {
    match family {
        AF_INET => {
            let a = Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]);
            format!("{a}:{port}")
        }
        AF_INET6 => format!("[{}]:{port}", Ipv6Addr::from(*addr)),
        _ => String::new(),
    }
}

/// The network part of a record.
pub fn network(w: u32, t: &NetTuple) -> Option<NetworkRef> {
    let direction = match w {
        what::CONNECT | what::SENDMSG => "egress",
        what::BIND | what::INGRESS => "ingress",
        what::SOCKET => {
            // a socket being created: its kind, no endpoints
            return Some(NetworkRef {
                direction: "egress".to_owned(),
                protocol: match t.proto {
                    kind::ICMP => "icmp",
                    kind::PACKET => "packet",
                    _ => "raw",
                }
                .to_owned(),
                local: String::new(),
                remote: String::new(),
            });
        }
        _ => return None,
    };
    let protocol = match t.proto {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        0 => "any".to_owned(),
        kind::ICMP => "icmp".to_owned(),
        kind::RAW => "raw".to_owned(),
        kind::PACKET => "packet".to_owned(),
        p => p.to_string(),
    };
    let local = if t.lport != 0 || w == what::BIND || w == what::INGRESS {
        endpoint(t.family, &t.laddr, t.lport)
    } else {
        String::new()
    };
    let remote = if w == what::BIND {
        String::new()
    } else {
        endpoint(t.family, &t.raddr, t.rport)
    };
    Some(NetworkRef {
        direction: direction.to_owned(),
        protocol,
        local,
        remote,
    })
}

/// A ring-buffer record as a [`PolicyEvent`]: a whole one, or its head ([`POLICY_EVENT_HEAD`]
/// bytes) with empty paths; `None` when shorter.
pub fn decode(bytes: &[u8]) -> Option<PolicyEvent> {
    if bytes.len() < POLICY_EVENT_HEAD {
        tracing::warn!(len = bytes.len(), "short policy event");
        return None;
    }
    let mut ev = std::mem::MaybeUninit::<PolicyEvent>::zeroed();
    let n = bytes.len().min(size_of::<PolicyEvent>());
    // SAFETY: the type is plain old data (integers and byte arrays), so all zeroes is a valid
    // value and so is any prefix of a record the kernel program wrote over it; `n` bytes fit
    // both the source and the destination.
    Some(unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), ev.as_mut_ptr().cast::<u8>(), n);
        ev.assume_init()
    })
}

fn text(b: &[u8; POLICY_PATH_MAX], len: u32) -> String {
    let b = &b[..(len as usize).min(POLICY_PATH_MAX)];
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A path as the kernel left it, marked the way `/proc/PID/exe` marks it where it is not a
/// path the rules could match.
fn shown(path: String, why: u32) -> String {
    match why {
        unresolved::DELETED => format!("{path} (deleted)"),
        unresolved::TOO_LONG => format!("…{path}"),
        _ => path,
    }
}

/// The `exec` of a record and the rest of what it says about the exec.
pub fn exec(ev: &PolicyEvent) -> Option<(String, ExecDetail)> {
    if ev.what != what::EXEC {
        return None;
    }
    let x: &ExecPaths = &ev.exec;
    let name = |r: u32| (r != unresolved::NONE).then(|| unresolved::name(r).to_owned());
    let resolved = x.flags & exec_flags::RESOLVED != 0;
    let script = x.flags & exec_flags::SCRIPT != 0;
    let by_name = !resolved || x.flags & exec_flags::SCRIPT_BY_NAME != 0;
    let id = x.flags & exec_flags::HAVE_ID != 0;
    let (major, minor) = x.dev_numbers();
    Some((
        shown(text(&x.path, x.path_len), x.path_unresolved),
        ExecDetail {
            exec_given: Some(text(&x.given, x.given_len)),
            exec_match: Some(if by_name { "path_given" } else { "file" }.to_owned()),
            exec_unresolved: name(x.path_unresolved),
            exec_dev: id.then(|| format!("{major}:{minor}")),
            exec_ino: id.then_some(x.ino),
            interpreter: script.then(|| shown(text(&x.interp, x.interp_len), x.interp_unresolved)),
            interpreter_unresolved: if script {
                name(x.interp_unresolved)
            } else {
                None
            },
        },
    ))
}

/// The file of a `file` record: the path matched (in `exec.given`: the path resolved by a
/// BPF-LSM file hook with [`exec_flags::RESOLVED`], else the path given to the call) and the
/// access (in `errno`).
pub fn file(ev: &PolicyEvent) -> Option<crate::events::FileRef> {
    (ev.what == what::FILE).then(|| {
        let resolved = ev.exec.flags & exec_flags::RESOLVED != 0;
        let path = text(&ev.exec.given, ev.exec.given_len);
        crate::events::FileRef {
            path: if resolved {
                shown(path, ev.exec.path_unresolved)
            } else {
                path
            },
            access: palisade_common::policy::access::name(ev.errno).to_owned(),
            matched: if resolved { "resolved" } else { "path_given" }.to_owned(),
        }
    })
}

/// `comm` as text.
pub fn comm(c: &[u8; 16]) -> String {
    let end = c.iter().position(|b| *b == 0).unwrap_or(16);
    String::from_utf8_lossy(&c[..end]).into_owned()
}

pub fn action_name(a: u32) -> &'static str {
    taken::name(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_tuples_render() {
        let mut t = NetTuple {
            family: AF_INET,
            proto: 6,
            rport: 22,
            ..NetTuple::default()
        };
        t.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let n = network(what::CONNECT, &t).unwrap();
        assert_eq!(n.direction, "egress");
        assert_eq!(n.remote, "127.0.0.1:22");
        assert_eq!(n.local, "");
        let b = NetTuple {
            family: AF_INET6,
            proto: 17,
            lport: 53,
            ..NetTuple::default()
        };
        let n = network(what::BIND, &b).unwrap();
        assert_eq!(n.local, "[::]:53");
        assert_eq!(n.protocol, "udp");
        assert!(network(what::EXEC, &b).is_none());
    }

    fn exec_event(f: impl FnOnce(&mut ExecPaths)) -> PolicyEvent {
        let mut x = ExecPaths::EMPTY;
        f(&mut x);
        PolicyEvent {
            what: what::EXEC,
            rule: 1,
            action: taken::KILL,
            pid: 1,
            tid: 1,
            uid: 0,
            nr: 0,
            errno: 0,
            cgroup_id: 1,
            ktime_ns: 0,
            total: 1,
            comm: [0; 16],
            net: NetTuple::default(),
            abi: abi_id::X86_64,
            native: u32::MAX,
            exec: x,
        }
    }

    #[test]
    fn head_only_records_decode_with_empty_paths() {
        let mut full = exec_event(|x| {
            put(&mut x.path, &mut x.path_len, "/bin/sh");
            x.flags = exec_flags::RESOLVED;
        });
        full.what = what::SYSCALL;
        full.nr = 110;
        // SAFETY: plain old data, read as the bytes the kernel writes
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const full).cast::<u8>(), size_of::<PolicyEvent>())
        };
        let head = decode(&bytes[..POLICY_EVENT_HEAD]).unwrap();
        assert_eq!((head.what, head.nr, head.total), (what::SYSCALL, 110, 1));
        assert_eq!((head.exec.flags, head.exec.path_len), (0, 0));
        let whole = decode(bytes).unwrap();
        assert_eq!(whole.exec.path_len, 7);
        assert!(decode(&bytes[..POLICY_EVENT_HEAD - 1]).is_none());
        assert!(POLICY_EVENT_HEAD * 6 < size_of::<PolicyEvent>());
    }

    fn put(b: &mut [u8; POLICY_PATH_MAX], len: &mut u32, s: &str) {
        b[..s.len()].copy_from_slice(s.as_bytes());
        *len = s.len() as u32;
    }

    #[test]
    fn exec_records_render() {
        let ev = exec_event(|x| {
            x.flags = exec_flags::RESOLVED | exec_flags::SCRIPT | exec_flags::HAVE_ID;
            put(&mut x.path, &mut x.path_len, "/opt/tool.sh");
            put(&mut x.interp, &mut x.interp_len, "/usr/bin/dash");
            put(&mut x.given, &mut x.given_len, "./t");
            x.dev = (254 << 20) | 3;
            x.ino = 42;
        });
        let (path, d) = exec(&ev).unwrap();
        assert_eq!(path, "/opt/tool.sh");
        assert_eq!(d.exec_given.as_deref(), Some("./t"));
        assert_eq!(d.exec_match.as_deref(), Some("file"));
        assert_eq!(d.interpreter.as_deref(), Some("/usr/bin/dash"));
        assert_eq!(d.exec_dev.as_deref(), Some("254:3"));
        assert_eq!(d.exec_ino, Some(42));
        assert_eq!(d.exec_unresolved, None);
        let ev = exec_event(|x| {
            x.flags = exec_flags::RESOLVED;
            x.path_unresolved = unresolved::DELETED;
            put(&mut x.path, &mut x.path_len, "/tmp/x");
        });
        let (path, d) = exec(&ev).unwrap();
        assert_eq!(path, "/tmp/x (deleted)");
        assert_eq!(d.exec_unresolved.as_deref(), Some("deleted"));
        assert_eq!(d.interpreter, None);
        let ev = exec_event(|x| put(&mut x.path, &mut x.path_len, "/bin/true"));
        assert_eq!(
            exec(&ev).unwrap().1.exec_match.as_deref(),
            Some("path_given")
        );
    }
}
