//! Sockets that were already listening when the agent started.
//!
//! `sock_ops` learns a listener's cgroup at `listen()` (process context) and keeps it in
//! `LISTENERS`, so that connections the listener accepts (whose callbacks run in softirq, with
//! no process) are attributed to it. A listener created before the agent attached was never
//! seen: right after attaching `sock_ops` the agent fills `LISTENERS` once from `/proc` —
//! every network namespace's `net/tcp` and `net/tcp6` LISTEN sockets, the process holding each
//! socket (the first in `/proc` order when several hold it: usually the parent that called
//! `listen()`), and that process's cgroup. Listeners created after the attach are seen by the
//! kernel, so nothing falls between the two.
use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    os::fd::AsRawFd as _,
    path::Path,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
};
use palisade_common::{names, net::ListenKey};
use tracing::{debug, info, warn};

/// A LISTEN socket from `/proc/<pid>/net/tcp{,6}`: (address family, local port, socket inode).
pub(crate) fn listening(table: &str, family: u32) -> Vec<(u32, u32, u64)> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() < 10 || f[3] != "0A" {
                return None;
            }
            let port = u32::from_str_radix(f[1].rsplit_once(':')?.1, 16).ok()?;
            let inode = f[9].parse().ok()?;
            Some((family, port, inode))
        })
        .collect()
}

/// The unified-hierarchy path of a process's cgroup (`0::/path` in `/proc/<pid>/cgroup`).
pub(crate) fn unified_path(cgroup_file: &str) -> Option<&str> {
    cgroup_file.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The network namespace cookie of the namespace `/proc/<pid>/ns/net` names, read from a
/// socket created inside it (on a thread of its own, which ends with its namespace switch).
fn netns_cookie(pid: u32) -> Option<u64> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).ok()?;
        // SAFETY: plain socket(2); the descriptor is owned right away.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let mut cookie = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        // SAFETY: a valid socket, and a u64 with its size for SO_NETNS_COOKIE.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NETNS_COOKIE,
                (&raw mut cookie).cast(),
                &raw mut len,
            )
        };
        (r == 0).then_some(cookie)
    })
    .join()
    .ok()
    .flatten()
}

/// Every socket already listening: its `LISTENERS` key and its holder's cgroup id.
pub fn scan(unified_root: &Path) -> Vec<(ListenKey, u64)> {
    // one process per network namespace (to read its tables and cookie), and the process
    // holding each socket inode
    let mut netns: BTreeMap<String, u32> = BTreeMap::new();
    let mut holder: StdHashMap<u64, u32> = StdHashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue; // gone, or a kernel thread
        };
        netns
            .entry(ns.to_string_lossy().into_owned())
            .or_insert(pid);
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && let Some(inode) = target
                    .to_str()
                    .and_then(|t| t.strip_prefix("socket:["))
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
            {
                holder.entry(inode).or_insert(pid);
            }
        }
    }
    let mut out = Vec::new();
    for pid in netns.into_values() {
        let mut socks = Vec::new();
        for (file, family) in [("tcp", libc::AF_INET), ("tcp6", libc::AF_INET6)] {
            if let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
                socks.extend(listening(&t, family as u32));
            }
        }
        if socks.is_empty() {
            continue;
        }
        let Some(cookie) = netns_cookie(pid) else {
            debug!(
                pid,
                "no network namespace cookie; its listeners stay unattributed"
            );
            continue;
        };
        for (family, port, inode) in socks {
            let Some(owner) = holder.get(&inode) else {
                continue; // held by no process we can see
            };
            let Some(id) = std::fs::read_to_string(format!("/proc/{owner}/cgroup"))
                .ok()
                .and_then(|c| unified_path(&c).map(|p| palisade_cgroupfs::dir(unified_root, p)))
                .and_then(|dir| palisade_cgroupfs::cgroup_id(&dir).ok())
            else {
                continue;
            };
            out.push((
                ListenKey {
                    netns_cookie: cookie,
                    family,
                    port,
                },
                id,
            ));
        }
    }
    out
}

/// Fills `LISTENERS` with the sockets already listening (call right after attaching
/// `sock_ops`). Failures are logged: they only cost the attribution of those listeners.
pub fn seed(ebpf: &mut Ebpf, unified_root: &Path) {
    let started = std::time::Instant::now();
    let found = scan(unified_root);
    let Some(map) = ebpf.map_mut(names::MAP_LISTENERS) else {
        warn!("no LISTENERS map; listeners from before the agent stay unattributed");
        return;
    };
    let mut map: HashMap<&mut MapData, ListenKey, u64> = match HashMap::try_from(map) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "LISTENERS map unusable; listeners from before the agent stay unattributed");
            return;
        }
    };
    let mut n = 0usize;
    for (key, cgroup) in &found {
        // BPF_NOEXIST: a listen() the kernel saw since the attach is newer than /proc
        match map.insert(key, cgroup, 1) {
            Ok(()) => n += 1,
            Err(e) => debug!(port = key.port, error = ?e, "listener not recorded"),
        }
    }
    info!(
        listeners = n,
        took_ms = started.elapsed().as_millis() as u64,
        "listening sockets from before the agent attributed to their cgroups"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_sockets_only() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:A1B2 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 12346 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listening(t, 2), vec![(2, 8080, 12345)]);
        let t6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening(t6, 10), vec![(10, 22, 777)]);
    }

    #[test]
    fn finds_the_unified_path() {
        assert_eq!(
            unified_path("12:memory:/a\n0::/system.slice/x.service\n"),
            Some("/system.slice/x.service")
        );
        assert_eq!(unified_path("12:memory:/a\n"), None);
    }
}
