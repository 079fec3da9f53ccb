//! Capabilities: names, the OCI default set, and applying a set in the child before exec.
//!
//! Order in the child (as runc does it): drop the bounding set while still fully privileged,
//! keep permitted capabilities across the uid switch (`PR_SET_KEEPCAPS`), switch uid/gid, then
//! `capset` the effective, permitted and inheritable sets and raise the ambient ones.

/// Capability names, indexed by number (`capability.h`).
pub const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The capability number of `name` (`CAP_KILL` or `KILL`, any case).
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

/// The set `runc spec` writes (and Palisade's command-line form uses): AUDIT_WRITE, KILL,
/// NET_BIND_SERVICE.
pub fn oci_default() -> u64 {
    ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        .iter()
        .filter_map(|n| number(n))
        .fold(0, |m, c| m | (1 << c))
}

/// The five sets of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CapSets {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
}

impl CapSets {
    /// The same set in bounding, effective and permitted; none inheritable or ambient (a
    /// non-root user then execs with no capabilities, as in Docker).
    pub fn uniform(set: u64) -> Self {
        Self {
            bounding: set,
            effective: set,
            permitted: set,
            inheritable: 0,
            ambient: 0,
        }
    }

    pub fn union(&self) -> u64 {
        self.bounding | self.effective | self.permitted | self.inheritable | self.ambient
    }
}

/// Names of the capabilities in `mask`, for messages.
pub fn names(mask: u64) -> Vec<&'static str> {
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect()
}

/// The highest capability this kernel knows: the highest `PR_CAPBSET_READ` accepts (it
/// refuses any above with `EINVAL`), as `/proc/sys/kernel/cap_last_cap` says, found in six
/// `prctl` calls instead of a procfs read that costs as much as forty.
pub fn last_cap() -> u32 {
    let known = |cap: u32| {
        // SAFETY: prctl with integer arguments only; reads, changes nothing.
        unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) >= 0 }
    };
    if !known(0) {
        return 40;
    }
    // the highest known capability lies in [lo, hi)
    let (mut lo, mut hi) = (0u32, 64u32);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if known(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// This process's permitted set (`capget`).
pub fn own_permitted() -> u64 {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and two data structs as capget(2) version 3 expects; both outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    if r != 0 {
        return 0;
    }
    u64::from(data[0].permitted) | (u64::from(data[1].permitted) << 32)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Drops every capability not in `keep` from the bounding set (needs CAP_SETPCAP).
pub(crate) fn drop_bounding(keep: u64, last_cap: u32) -> std::io::Result<()> {
    for cap in 0..=last_cap {
        if keep & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                // EINVAL: a capability this kernel does not have
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Sets effective, permitted and inheritable with `capset`.
pub(crate) fn set(sets: &CapSets) -> std::io::Result<()> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |m: u64| (m as u32, (m >> 32) as u32);
    let (e0, e1) = split(sets.effective);
    let (p0, p1) = split(sets.permitted);
    let (i0, i1) = split(sets.inheritable);
    let data = [
        CapData {
            effective: e0,
            permitted: p0,
            inheritable: i0,
        },
        CapData {
            effective: e1,
            permitted: p1,
            inheritable: i1,
        },
    ];
    // SAFETY: header and two data structs as capset(2) version 3 expects; both outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the ambient capabilities (each must be permitted and inheritable).
pub(crate) fn raise_ambient(ambient: u64, last_cap: u32) -> std::io::Result<()> {
    for cap in 0..=last_cap {
        if ambient & (1 << cap) != 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    cap as libc::c_ulong,
                    0,
                    0,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(number("CAP_KILL"), Some(5));
        assert_eq!(number("net_bind_service"), Some(10));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("CAP_NOPE"), None);
        assert_eq!(oci_default(), 0x2000_0420);
        assert_eq!(
            names(oci_default()),
            ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"]
        );
    }

    /// The syscalls answer what procfs says.
    #[test]
    fn last_cap_and_own_permitted_match_procfs() {
        let proc_last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .unwrap_or_else(|e| panic!("cap_last_cap: {e}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("cap_last_cap: {e}"));
        assert_eq!(last_cap(), proc_last);
        let status = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_else(|e| panic!("/proc/self/status: {e}"));
        let prm = status
            .lines()
            .find_map(|l| l.strip_prefix("CapPrm:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no CapPrm in {status}"));
        assert_eq!(own_permitted(), prm);
    }
}
