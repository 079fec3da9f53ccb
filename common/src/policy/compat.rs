//! Syscalls through the compat ABIs (i386 `int 0x80`, x32) as the `sys_enter` hook sees them:
//! how it tells them apart, and the translation table (`POLICY_XLAT`, written by the agent
//! from `palisade-syscalls`) that maps each to the x86_64 call a policy names.

/// [`super::PolicyEvent::abi`] values.
pub mod abi_id {
    pub const X86_64: u32 = 0;
    pub const I386: u32 = 1;
    pub const X32: u32 = 2;
}

/// The bit x32 calls carry in their number (`__X32_SYSCALL_BIT`).
pub const X32_SYSCALL_BIT: u64 = 0x4000_0000;
/// `thread_info.status` bit set while the task runs a 32-bit (i386) syscall (x86 `TS_COMPAT`).
pub const TS_COMPAT: u32 = 0x0002;

/// Byte offsets, from the kernel's BTF, through which the syscall hooks read the current
/// thread's id and cgroup v2 id with plain loads from the task (`task->pid`,
/// `task->cgroups->dfl_cgrp->kn->id`, what `bpf_get_current_pid_tgid` and
/// `bpf_get_current_cgroup_id` return) and its ABI (`thread_info.status`): one helper call per
/// syscall (the task) instead of three. `cgroups` 0: unknown, the helpers are used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.pid`.
    pub pid: u32,
    /// `task_struct.cgroups` (`struct css_set *`).
    pub cgroups: u32,
    /// `css_set.dfl_cgrp` (`struct cgroup *`).
    pub dfl_cgrp: u32,
    /// `cgroup.kn` (`struct kernfs_node *`).
    pub kn: u32,
    /// `kernfs_node.id` (u64).
    pub kn_id: u32,
    pub _pad: u32,
}

impl TaskOffsets {
    pub const ZERO: Self = Self {
        pid: 0,
        cgroups: 0,
        dfl_cgrp: 0,
        kn: 0,
        kn_id: 0,
        _pad: 0,
    };
}

/// `POLICY_XLAT` entries: i386 numbers at `nr`, x32 numbers (without the x32 bit) at
/// `XLAT_X32_BASE + nr`.
pub const XLAT_ENTRIES: u32 = 2048;
pub const XLAT_X32_BASE: u32 = 1024;

/// `POLICY_XLAT` values besides an x86_64 number.
pub mod xlat {
    /// No x86_64 counterpart (or no such call).
    pub const NONE: u32 = 0xffff;
    /// i386 `socketcall`: see [`super::socketcall_native`].
    pub const SOCKETCALL: u32 = 0xfffe;
    /// i386 `ipc`: see [`super::ipc_native`].
    pub const IPC: u32 = 0xfffd;
}

/// The `POLICY_XLAT` index of compat call `nr` of `abi` ([`abi_id`]), if the table covers it.
#[inline(always)]
pub fn xlat_index(abi: u32, nr: u64) -> Option<u32> {
    let (base, limit) = match abi {
        abi_id::I386 => (0, XLAT_X32_BASE),
        abi_id::X32 => (XLAT_X32_BASE, XLAT_ENTRIES - XLAT_X32_BASE),
        _ => return None,
    };
    (nr < u64::from(limit)).then(|| base + nr as u32)
}

/// Offsets in `struct pt_regs` of the six arguments of an i386 call (ebx, ecx, edx, esi, edi,
/// ebp); x86_64 and x32 calls use di, si, dx, r10, r8, r9.
pub const I386_ARG_OFFSETS: [u64; 6] = [5 * 8, 11 * 8, 12 * 8, 13 * 8, 14 * 8, 4 * 8];
pub const X86_64_ARG_OFFSETS: [u64; 6] = [14 * 8, 13 * 8, 12 * 8, 7 * 8, 9 * 8, 8 * 8];

/// x86_64 numbers of the calls i386 `socketcall`'s first argument (1 ..= 20) selects (checked
/// against `palisade-syscalls` by a host test).
const SOCKETCALLS: [u16; 20] = [
    41, 49, 42, 50, 43, 51, 52, 53, 44, 45, 44, 45, 48, 54, 55, 46, 47, 288, 299, 307,
];

/// The x86_64 call `socketcall(call, ...)` makes.
#[inline(always)]
pub fn socketcall_native(call: u64) -> Option<u32> {
    if call == 0 || call > SOCKETCALLS.len() as u64 {
        return None;
    }
    SOCKETCALLS.get(call as usize - 1).map(|n| u32::from(*n))
}

/// (first argument of i386 `ipc`, x86_64 number of the call it makes).
const IPC_CALLS: [(u16, u16); 12] = [
    (1, 65),
    (2, 64),
    (3, 66),
    (4, 220),
    (11, 69),
    (12, 70),
    (13, 68),
    (14, 71),
    (21, 30),
    (22, 67),
    (23, 29),
    (24, 31),
];

/// The x86_64 call `ipc(call, ...)` makes (the version in the upper 16 bits is ignored).
#[inline(always)]
pub fn ipc_native(call: u64) -> Option<u32> {
    let c = (call & 0xffff) as u16;
    for (k, n) in IPC_CALLS {
        if k == c {
            return Some(u32::from(n));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_syscalls::{Abi, abi};

    #[test]
    fn multiplexed_calls_match_the_syscall_tables() {
        for (i, name) in abi::SOCKETCALLS.iter().enumerate() {
            assert_eq!(
                socketcall_native(i as u64 + 1),
                palisade_syscalls::number_in(Abi::X86_64, name),
                "socketcall {} = {name}",
                i + 1
            );
        }
        assert_eq!(socketcall_native(0), None);
        assert_eq!(socketcall_native(21), None);
        for (call, name) in abi::IPC_CALLS {
            assert_eq!(
                ipc_native(u64::from(call) | 1 << 16),
                palisade_syscalls::number_in(Abi::X86_64, name),
                "ipc {call} = {name}"
            );
        }
        assert_eq!(ipc_native(5), None);
    }

    #[test]
    fn xlat_indices() {
        assert_eq!(xlat_index(abi_id::I386, 96), Some(96));
        assert_eq!(xlat_index(abi_id::X32, 547), Some(XLAT_X32_BASE + 547));
        assert_eq!(xlat_index(abi_id::I386, 1024), None);
        assert_eq!(xlat_index(abi_id::X86_64, 1), None);
        assert!(Abi::I386.table_len() <= XLAT_X32_BASE);
        assert!(Abi::X32.table_len() <= XLAT_ENTRIES - XLAT_X32_BASE);
    }
}
