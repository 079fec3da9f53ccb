//! The kernel/user contract of Palisade.
//!
//! Every type that crosses the kernel/user boundary lives here: map keys and values, ring-buffer
//! events, map and program names, global-variable names and the indices of the loss counters.
//! All types are `#[repr(C)]` and padding-free (explicit `_pad` fields, `u32` flags instead of
//! `bool`) so both sides agree byte for byte; `tests::sizes` pins every size.
#![no_std]

pub mod names;
pub mod net;
pub mod policy;
pub mod process;
pub mod syscalls;

pub use process::*;
pub use syscalls::*;

/// Indices into the per-CPU `LOSS_COUNTERS` array. Every place the kernel side can lose data has
/// its own slot; userspace sums the CPUs and exports `palisade_kernel_lost_total{reason}`.
pub mod loss {
    /// `SYSCALL_STATS` was full: a (cgroup, syscall) pair could not be inserted.
    pub const SYSCALL_STATS_FULL: u32 = 0;
    /// `SYSCALL_ERRNOS` was full: a (cgroup, syscall, errno) triple could not be inserted.
    pub const SYSCALL_ERRNOS_FULL: u32 = 1;
    /// The `EVENTS` ring buffer had no room for an event.
    pub const RINGBUF_FULL: u32 = 2;
    /// A syscall exit had no matching entry (the thread's slot was taken by another thread,
    /// the syscall started before the agent attached, or seccomp refused it before the
    /// `sys_enter` tracepoint). The call and its errno are still counted; only its latency is
    /// missing from the histogram. Calls the latency sample leaves out
    /// (`syscalls.latency_sample`) are not counted here: their entry was seen.
    pub const SYSCALL_UNTIMED: u32 = 3;
    /// Number of slots in `LOSS_COUNTERS`.
    pub const COUNT: u32 = 4;

    /// Stable label values for each slot, in index order.
    pub const REASONS: [&str; COUNT as usize] = [
        "syscall_stats_map_full",
        "syscall_errno_map_full",
        "ringbuf_full",
        "syscall_untimed",
    ];
}

/// Ring-buffer event kinds (`EventHeader::kind`).
pub mod event_kind {
    /// A cgroup was created in the unified hierarchy ([`crate::CgroupEvent`]).
    pub const CGROUP_MKDIR: u32 = 1;
    /// A cgroup was removed from the unified hierarchy ([`crate::CgroupEvent`]).
    pub const CGROUP_RMDIR: u32 = 2;
    /// A process replaced its image ([`crate::ExecEvent`]).
    pub const EXEC: u32 = 3;
    /// A process (thread group) ended ([`crate::ExitEvent`]).
    pub const EXIT: u32 = 4;
    /// The OOM killer chose a victim ([`crate::OomEvent`]).
    pub const OOM: u32 = 5;
    /// A TCP connection was established, closed or failed ([`crate::net::TcpEvent`]).
    pub const TCP: u32 = 6;
    /// A DNS packet left a cgroup ([`crate::net::DnsEvent`]).
    pub const DNS: u32 = 7;
    /// A task moved into a cgroup of the unified hierarchy ([`crate::MoveEvent`]).
    pub const CGROUP_MOVE: u32 = 8;
}

/// Longest cgroup path (bytes, without the NUL) carried in a [`CgroupEvent`]. Longer paths are
/// cut and flagged with [`CgroupEvent::truncated`]; userspace then resolves the id itself.
pub const CGROUP_PATH_MAX: usize = 512;

/// A cgroup was created or removed in the unified (cgroup v2) hierarchy.
///
/// Sent on the `EVENTS` ring buffer from the `cgroup:cgroup_mkdir` and `cgroup:cgroup_rmdir`
/// tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupEvent {
    /// One of [`event_kind`].
    pub kind: u32,
    /// Depth below the root (the root is level 0).
    pub level: u32,
    /// The cgroup v2 id (inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// Bytes of `path` used (without the NUL).
    pub path_len: u32,
    /// 1 when the kernel's path was longer than [`CGROUP_PATH_MAX`] and was cut (a `u32`, not a
    /// `bool`, so the type has no invalid bit patterns and no padding).
    pub truncated: u32,
    /// Path relative to the hierarchy root, e.g. `/system.slice/foo.service`.
    pub path: [u8; CGROUP_PATH_MAX],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, has no padding (checked by `tests::sizes`) and
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for crate::SyscallKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::SyscallStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::ErrnoKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::CountSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::ThreadSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::CallSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::CgroupEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::ProcessCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::ExecEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::ExitEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::OomEvent {}
    // SAFETY: repr(C), padding-free, plain integers.
    unsafe impl aya::Pod for crate::MoveEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::net::FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::net::FlowStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::net::NetTotals {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::net::TcpCounts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::net::SockInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::net::ListenKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::CgroupPolicy {}
    // SAFETY: repr(C), u32 fields only, no padding.
    unsafe impl aya::Pod for crate::policy::TaskOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::SyscallVerdicts {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::ExecConf {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::ExecKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::ExecRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::NetRuleSet {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::RuleInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::ViolationKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::ViolationState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::FileEntry {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::EnterSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::ArgKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::ArgRule {}
    // SAFETY: as above (a global of the policy object).
    unsafe impl aya::Pod for crate::policy::ExecOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for crate::policy::Resolved {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    #[test]
    fn count_probes_visit_every_position_of_a_small_region() {
        // A region no larger than COUNT_PROBES is searched whole: a key finds a free position
        // while any is left.
        for bits in 0..=5 {
            let mask = (1u32 << bits) - 1;
            for home in [0, 1, 7, 0xdead_beef] {
                let mut seen = [false; 32];
                for i in 0..=mask {
                    seen[count_probe(home, i, mask) as usize] = true;
                }
                let n = seen.iter().filter(|s| **s).count() as u32;
                assert_eq!(n, mask + 1, "mask {mask} home {home}");
            }
        }
        // neighbouring cgroups and syscalls start apart
        let mut taken = [false; 1024];
        for cg in 0..64u64 {
            for nr in 0..8u32 {
                taken[(count_home(1000 + cg, nr) & 1023) as usize] = true;
            }
        }
        let distinct = taken.iter().filter(|t| **t).count();
        assert!(distinct > 300, "{distinct} distinct homes of 512 keys");
    }

    #[test]
    fn sizes() {
        // Sizes are part of the kernel/user contract; a change here must change both sides.
        assert_eq!(size_of::<SyscallKey>(), 16);
        assert_eq!(size_of::<ErrnoKey>(), 16);
        assert_eq!(size_of::<SyscallStats>(), 16 + 8 * HIST_BUCKETS);
        assert_eq!(size_of::<SyscallStats>(), 256);
        assert_eq!(size_of::<ThreadSlot>(), 24);
        assert_eq!(size_of::<CallSlot>(), 32);
        assert_eq!(size_of::<CountSlot>(), 24);
        assert_eq!(size_of::<CgroupEvent>(), 24 + CGROUP_PATH_MAX);
        assert_eq!(loss::REASONS.len(), loss::COUNT as usize);
        assert_eq!(size_of::<ProcessCounts>(), 64);
        assert_eq!(
            size_of::<ExecEvent>(),
            72 + EXEC_FILENAME_MAX + EXEC_ARGS_MAX
        );
        assert_eq!(size_of::<ExitEvent>(), 64);
        assert_eq!(size_of::<OomEvent>(), 48);
        assert_eq!(size_of::<MoveEvent>(), 40);
        // every event starts with its kind
        assert_eq!(core::mem::offset_of!(ExecEvent, kind), 0);
        assert_eq!(core::mem::offset_of!(ExitEvent, kind), 0);
        assert_eq!(core::mem::offset_of!(OomEvent, kind), 0);
        assert_eq!(core::mem::offset_of!(CgroupEvent, kind), 0);
        assert_eq!(size_of::<net::FlowKey>(), 48);
        assert_eq!(size_of::<net::FlowStats>(), 104);
        assert_eq!(size_of::<net::NetTotals>(), 56);
        assert_eq!(size_of::<net::TcpCounts>(), 48);
        assert_eq!(size_of::<net::TcpEvent>(), 8 + 48 + 40 + 16 + 104);
        assert_eq!(size_of::<net::DnsEvent>(), 8 + 48 + net::DNS_PAYLOAD_MAX);
        assert_eq!(size_of::<net::SockInfo>(), 24);
        assert_eq!(size_of::<net::ListenKey>(), 16);
        assert!(EXEC_ARGS_MAX.is_power_of_two() && EXEC_FILENAME_MAX.is_power_of_two());
        use policy::*;
        assert_eq!(size_of::<CgroupPolicy>(), 8);
        assert_eq!(size_of::<SyscallVerdicts>(), 2 * MAX_SYSCALLS + 8);
        assert_eq!(size_of::<Resolved>(), 16);
        assert_eq!(size_of::<EnterSlot>(), 8);
        assert_eq!(size_of::<ThreadResolved>(), 32);
        assert_eq!(size_of::<ExecConf>(), 8);
        assert_eq!(size_of::<ExecKey>(), 16);
        assert_eq!(size_of::<ExecRule>(), 8);
        assert_eq!(size_of::<NetRule>(), 48);
        assert_eq!(size_of::<NetRuleSet>(), 16 + 48 * MAX_NET_RULES);
        assert_eq!(size_of::<RuleInfo>(), 16 + 2 * RULE_NAME_MAX);
        assert_eq!(size_of::<ViolationKey>(), 16);
        assert_eq!(size_of::<ViolationState>(), 24);
        assert_eq!(size_of::<NetTuple>(), 40);
        assert_eq!(size_of::<ArgCond>(), 24);
        assert_eq!(size_of::<ArgAlt>(), 8 + 24 * MAX_ARG_CONDS);
        assert_eq!(size_of::<ArgRule>(), 8 + size_of::<ArgAlt>() * MAX_ARG_ALTS);
        assert_eq!(size_of::<ArgKey>(), 8);
        assert_eq!(size_of::<ExecOffsets>(), 8 + 4 * 26);
        assert_eq!(size_of::<ExecPaths>(), 40 + 3 * POLICY_PATH_MAX);
        assert_eq!(
            size_of::<PolicyEvent>(),
            32 + 24 + 16 + 40 + 8 + size_of::<ExecPaths>()
        );
        assert_eq!(POLICY_EVENT_HEAD, 32 + 24 + 16 + 40 + 8);
    }
}
