//! The BPF-LSM tier of syscall rules: calls the kernel asks an LSM hook about inside the call,
//! so a rule with `action: errno` refuses them on running containers (x86_64 numbers; calls
//! through other ABIs keep the tracepoint tier). The agent, the eBPF programs and the README's
//! table share this list.

/// Indices of the `POLICY_LSM` array of `u32`s.
pub mod lsm_index {
    /// 1 while `policy_exec_lsm` refuses `errno` exec rules (the exec programs leave them to
    /// it).
    pub const EXEC: u32 = 0;
    /// The first of the words of a bitmap by x86_64 call number: a call whose every hook in
    /// [`super::LSM_CALLS`] is attached, so its `errno` rules are refused there (`sys_enter`
    /// leaves them to the hooks). Bit `nr % 32` of word `CALLS + nr / 32`.
    pub const CALLS: u32 = 1;
    pub const COUNT: u32 = CALLS + super::super::MAX_SYSCALLS as u32 / 32;
}

/// (word index in `POLICY_LSM`, bit) of call `nr` (`nr` < `MAX_SYSCALLS`).
#[inline(always)]
pub fn lsm_call_bit(nr: u64) -> (u32, u32) {
    (lsm_index::CALLS + (nr / 32) as u32, 1u32 << (nr % 32))
}

/// One call with a hook.
pub struct LsmCall {
    pub nr: u32,
    pub name: &'static str,
    /// The LSM hooks that refuse it.
    pub hooks: &'static [&'static str],
    /// What the hook does not see, or what the caller gets; empty when nothing.
    pub note: &'static str,
}

/// Every call the syscall hooks refuse, in number order.
pub const LSM_CALLS: &[LsmCall] = &[
    LsmCall {
        nr: 41,
        name: "socket",
        hooks: &["socket_create"],
        note: "",
    },
    LsmCall {
        nr: 53,
        name: "socketpair",
        hooks: &["socket_create"],
        note: "",
    },
    LsmCall {
        nr: 56,
        name: "clone",
        hooks: &["task_alloc"],
        note: "",
    },
    LsmCall {
        nr: 57,
        name: "fork",
        hooks: &["task_alloc"],
        note: "",
    },
    LsmCall {
        nr: 58,
        name: "vfork",
        hooks: &["task_alloc"],
        note: "",
    },
    LsmCall {
        nr: 101,
        name: "ptrace",
        hooks: &["ptrace_access_check", "ptrace_traceme"],
        note: "operations on a tracee already attached ask no hook: they run, unreported",
    },
    LsmCall {
        nr: 105,
        name: "setuid",
        hooks: &["task_fix_setuid"],
        note: "",
    },
    LsmCall {
        nr: 113,
        name: "setreuid",
        hooks: &["task_fix_setuid"],
        note: "",
    },
    LsmCall {
        nr: 117,
        name: "setresuid",
        hooks: &["task_fix_setuid"],
        note: "",
    },
    LsmCall {
        nr: 122,
        name: "setfsuid",
        hooks: &["task_fix_setuid"],
        note: "",
    },
    LsmCall {
        nr: 155,
        name: "pivot_root",
        hooks: &["sb_pivotroot"],
        note: "",
    },
    LsmCall {
        nr: 157,
        name: "prctl",
        hooks: &["task_prctl"],
        note: "",
    },
    LsmCall {
        nr: 165,
        name: "mount",
        hooks: &["sb_mount"],
        note: "",
    },
    LsmCall {
        nr: 175,
        name: "init_module",
        hooks: &["kernel_load_data"],
        note: "",
    },
    LsmCall {
        nr: 248,
        name: "add_key",
        hooks: &["key_permission", "key_alloc"],
        note: "refused at the lookup of the destination keyring (even when the key exists); arguments the kernel rejects first (a bad key type, a keyring id that names no keyring) fail with the kernel's errno, unreported; a special keyring id (KEY_SPEC_*) refused while the kernel resolves it (the user keyrings looked up, a keyring created) fails with ENOKEY: the kernel replaces the error",
    },
    LsmCall {
        nr: 249,
        name: "request_key",
        hooks: &["key_permission", "key_alloc"],
        note: "refused at the lookup of the destination keyring or the search of the caller's keyrings (counted once); a caller with no thread, process or session keyring fails with ENOKEY: the refused lookup of its user session keyring leaves nothing to search (reported with the rule's errno, the kernel answers ENOKEY)",
    },
    LsmCall {
        nr: 250,
        name: "keyctl",
        hooks: &["key_permission", "key_alloc"],
        note: "refused at the lookup of the key or keyring named; a special id (KEY_SPEC_*) refused while the kernel resolves it fails with ENOKEY (the kernel replaces the error), a key the caller may use only by possessing it fails with EACCES (the refused search of its keyrings loses the possession); operations that name none (KEYCTL_CAPABILITIES, KEYCTL_SET_REQKEY_KEYRING other than to the thread keyring, KEYCTL_ASSUME_AUTHORITY 0) and key ids that name no key (ENOKEY) ask no hook: they run, unreported",
    },
    LsmCall {
        nr: 272,
        name: "unshare",
        hooks: &["userns_create", "capable"],
        note: "CLONE_NEWUSER gets the rule's errno; other namespace flags are refused at their CAP_SYS_ADMIN check, which fails with EPERM whatever the rule's errno; without namespace flags no hook is asked: the call runs, unreported",
    },
    LsmCall {
        nr: 298,
        name: "perf_event_open",
        hooks: &["perf_event_open"],
        note: "",
    },
    LsmCall {
        nr: 308,
        name: "setns",
        hooks: &["capable"],
        note: "refused at its CAP_SYS_ADMIN check: EPERM whatever the rule's errno",
    },
    LsmCall {
        nr: 313,
        name: "finit_module",
        hooks: &["kernel_read_file"],
        note: "",
    },
    LsmCall {
        nr: 321,
        name: "bpf",
        hooks: &["bpf"],
        note: "",
    },
    LsmCall {
        nr: 429,
        name: "move_mount",
        hooks: &["move_mount"],
        note: "",
    },
    LsmCall {
        nr: 435,
        name: "clone3",
        hooks: &["task_alloc"],
        note: "argument conditions are checked on the registers (clone3's flags are in memory), as at sys_enter",
    },
];

/// Calls whose hooks refuse them only at their CAP_SYS_ADMIN check (`capable`).
#[inline(always)]
pub fn lsm_by_capable(nr: u64) -> bool {
    matches!(nr, 272 | 308)
}

/// Whether x86_64 call `nr` is in [`LSM_CALLS`].
#[inline(always)]
pub fn lsm_covered(nr: u64) -> bool {
    matches!(
        nr,
        41 | 53
            | 56
            | 57
            | 58
            | 101
            | 105
            | 113
            | 117
            | 122
            | 155
            | 157
            | 165
            | 175
            | 248
            | 249
            | 250
            | 272
            | 298
            | 308
            | 313
            | 321
            | 429
            | 435
    )
}
