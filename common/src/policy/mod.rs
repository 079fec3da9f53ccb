//! Policy enforcement: the tables userspace writes for the `palisade-policy` object, the
//! violation records it sends back, and the small pure functions both sides share (rule
//! matching, rate limiting, path hashing) so their logic is unit-tested on the host.
//!
//! Layout: a cgroup id maps to a [`CgroupPolicy`] (a *slot* and the hook families it needs); a
//! slot indexes per-slot tables (syscall verdicts, exec configuration, network rule sets) that
//! several cgroups with the same effective policy share. Every rule has an id (≥ 1) whose
//! [`RuleInfo`] (action, mode, errno, names) lives in `POLICY_RULES`, so a mode switch rewrites
//! one entry per rule and the pinned state names its own rules across agent restarts.
//!
//! A cgroup without an entry of its own has its nearest ancestor's: the hooks walk up the
//! cgroup's ancestry in the kernel and remember the answer per cgroup id ([`Resolved`] in
//! `POLICY_RESOLVED`), valid until the agent bumps [`config::GENERATION`] after a change.

mod args;
mod compat;
mod exec;
mod files;
mod learn;
mod lsm;
mod net;

pub use args::*;
pub use compat::*;
pub use exec::*;
pub use files::*;
pub use learn::*;
pub use lsm::*;
pub use net::*;

/// Version of this layout; pinned state of another version is refused (run `--cleanup`).
pub const POLICY_ABI: u32 = 6;

/// Syscall numbers covered by the verdict table (x86_64 numbers are below 512).
pub const MAX_SYSCALLS: usize = 512;
/// Cgroup levels the hooks walk up looking for a policied ancestor (level 0 is the root).
pub const MAX_CGROUP_DEPTH: i32 = 32;
/// Bytes of a policy or rule name kept in [`RuleInfo`] (NUL-padded).
pub const RULE_NAME_MAX: usize = 64;
/// Longest exec path carried in a [`PolicyEvent`], resolved and hashed for exec rules.
pub const POLICY_PATH_MAX: usize = 256;

/// Bit of a [`SyscallVerdicts`] entry: the rule has argument conditions (evaluated by the
/// seccomp filter of a launched workload; see the README for the run-time limitation).
pub const VERDICT_CONDITIONAL: u16 = 0x8000;
/// Mask of the rule id in a [`SyscallVerdicts`] entry.
pub const VERDICT_RULE: u16 = 0x7fff;

/// [`CgroupPolicy::flags`] bits: the hook families a cgroup's slot uses.
pub mod cgroup_flags {
    /// Syscall rules, checked at `sys_enter` (run-time path).
    pub const SYSCALLS: u32 = 1;
    /// Exec rules, checked at `sched_process_exec`.
    pub const EXEC: u32 = 2;
    /// Egress rules, checked at connect/sendmsg.
    pub const EGRESS: u32 = 4;
    /// Ingress rules, checked at bind and on incoming TCP connection requests.
    pub const INGRESS: u32 = 8;
    /// A workload started by `palisade run` whose seccomp filter enforces the slot's `errno`
    /// and `kill` syscall rules: `sys_exit` reports the calls the filter refused.
    pub const SECCOMP: u32 = 16;
    /// File rules: refused at the BPF-LSM file hooks (resolved path) where they are attached,
    /// else reported at `sys_enter` from the path as given.
    pub const FILES: u32 = 64;
}

/// Value of `POLICY_RESOLVED` (LRU: cgroup id → the entry that applies to it: its own or its
/// nearest policied ancestor's, found by walking up in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub policy: CgroupPolicy,
    /// [`config::GENERATION`] when resolved: a different one means "look again".
    pub generation: u32,
    /// 1: `policy` applies; 0: no policy applies to this cgroup.
    pub found: u32,
}

/// Configured rule actions ([`RuleInfo::action`]).
pub mod action {
    /// Syscalls: fail with [`super::RuleInfo::errno`] (seccomp at launch). Execs: refused with
    /// EPERM at `bprm_check_security` where BPF-LSM is active, else killed.
    pub const ERRNO: u32 = 1;
    /// Syscalls and execs: SIGKILL the process (also what an `errno` syscall rule does at run
    /// time: a tracepoint cannot make the call fail).
    pub const KILL: u32 = 2;
    /// Report only.
    pub const LOG: u32 = 3;
    /// Network: refuse (EPERM for connect/sendmsg/bind, drop for incoming connections).
    pub const DENY: u32 = 4;
    /// Network: allow.
    pub const ALLOW: u32 = 5;
}

/// What happened ([`PolicyEvent::action`], the `action` label of violations).
pub mod taken {
    /// The call failed with an errno (seccomp, or EPERM from a network hook).
    pub const ERRNO: u32 = 1;
    pub const KILL: u32 = 2;
    pub const LOG: u32 = 3;
    /// Audit mode: it would have been blocked.
    pub const WOULD_BLOCK: u32 = 4;
    /// An incoming packet was dropped.
    pub const DROP: u32 = 5;

    /// Stable label values, indexed by the constants above.
    pub fn name(t: u32) -> &'static str {
        match t {
            ERRNO => "errno",
            KILL => "kill",
            LOG => "log",
            WOULD_BLOCK => "would_block",
            DROP => "drop",
            _ => "unknown",
        }
    }
}

/// [`RuleInfo::mode`] values.
pub mod mode {
    pub const ENFORCE: u32 = 1;
    pub const AUDIT: u32 = 2;
}

/// [`PolicyEvent::what`] values: which hook saw the violation.
pub mod what {
    /// A syscall seen at `sys_enter` (run-time path).
    pub const SYSCALL: u32 = 1;
    /// A syscall the launch-time seccomp filter refused (seen at `sys_exit`).
    pub const SECCOMP: u32 = 2;
    pub const EXEC: u32 = 3;
    pub const CONNECT: u32 = 4;
    pub const SENDMSG: u32 = 5;
    pub const BIND: u32 = 6;
    /// An incoming TCP connection request.
    pub const INGRESS: u32 = 7;
    /// A raw, packet or ICMP socket being created where egress rules apply.
    pub const SOCKET: u32 = 8;
    /// A syscall refused by its BPF-LSM hook (run-time path, `LSM_CALLS`).
    pub const SYSCALL_LSM: u32 = 9;
    /// A file access a file rule refuses (`nr`: the syscall, `errno`: the access bit, the path
    /// in `exec.given`).
    pub const FILE: u32 = 16;
}

/// Value of `POLICY_CGROUPS` (cgroup id → policy).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupPolicy {
    pub slot: u32,
    /// [`cgroup_flags`] bits.
    pub flags: u32,
}

/// Value of `POLICY_SYSCALLS` (slot → verdict per x86_64 syscall number): 0 = no rule, else
/// the rule id, with [`VERDICT_CONDITIONAL`] when the rule has argument conditions. Calls
/// through i386 and x32 are translated to their x86_64 call first (`POLICY_XLAT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallVerdicts {
    pub rule: [u16; MAX_SYSCALLS],
    /// Per compat ABI (0: i386, 1: x32): 0 when the policy considers it (its calls are
    /// translated and checked), else the rule every call through it violates.
    pub abi_rule: [u16; 2],
    /// The rule a translated call without an x86_64 counterpart violates (an allow-list's
    /// rule; 0 for a deny-list: such a call is allowed).
    pub unmapped_rule: u16,
    /// Always 0 (explicit padding).
    pub _pad: u16,
}

impl SyscallVerdicts {
    pub const ZERO: Self = Self {
        rule: [0; MAX_SYSCALLS],
        abi_rule: [0; 2],
        unmapped_rule: 0,
        _pad: 0,
    };
}

/// Value of `POLICY_ENTER` (thread slot): the last syscall a thread entered, so `sys_exit` can
/// tell a call the seccomp filter refused (no entry seen) from one that ran.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnterSlot {
    pub tid: u32,
    pub nr: u32,
}

/// Value of `POLICY_THREADS` (thread slot): the resolution of the cgroup a thread was last
/// seen in, so that the syscall hooks skip the `POLICY_RESOLVED` lookup. Valid only for the
/// same thread, cgroup and [`config::GENERATION`]; `tid` is written last (0 first), so a
/// thread reading `tid` twice around the other fields never takes a colliding thread's half
/// written entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadResolved {
    pub cgroup_id: u64,
    pub resolved: Resolved,
    pub tid: u32,
    pub _pad: u32,
}

/// Value of `POLICY_RULES` (rule id → what it does and what it is called).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// One of [`action`].
    pub action: u32,
    /// One of [`mode`]; 0 for an unused id.
    pub mode: u32,
    /// The errno of an [`action::ERRNO`] rule.
    pub errno: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
    /// NUL-padded policy and rule names.
    pub policy: [u8; RULE_NAME_MAX],
    pub rule: [u8; RULE_NAME_MAX],
}

impl RuleInfo {
    pub const EMPTY: Self = Self {
        action: 0,
        mode: 0,
        errno: 0,
        _pad: 0,
        policy: [0; RULE_NAME_MAX],
        rule: [0; RULE_NAME_MAX],
    };

    /// What a run-time hook does about a syscall or exec this rule denies. A tracepoint
    /// cannot make a call fail, so an `errno` rule kills (after the fact: the call runs, the
    /// process dies before it returns) rather than be silently weaker than the policy.
    #[inline(always)]
    pub fn taken_runtime(&self) -> u32 {
        if self.action == action::LOG {
            taken::LOG
        } else if self.mode == mode::AUDIT {
            taken::WOULD_BLOCK
        } else {
            taken::KILL
        }
    }

    /// What the `sched_process_exec` programs do about an exec this rule denies; `None` when
    /// the rule is left to the BPF-LSM program (`lsm`: it is attached and refuses `errno`
    /// rules in enforce mode). Without BPF-LSM an `errno` rule kills: the exec has happened,
    /// the new image has not run an instruction. In audit mode these programs report every
    /// rule: they see an exec once, where `bprm_check_security` sees a script twice (its own
    /// file, then its interpreter), and reporting there would count one exec twice.
    #[inline(always)]
    pub fn taken_exec(&self, lsm: bool) -> Option<u32> {
        if self.action == action::ERRNO && lsm && self.mode != mode::AUDIT {
            None
        } else if self.action == action::LOG {
            Some(taken::LOG)
        } else if self.mode == mode::AUDIT {
            Some(taken::WOULD_BLOCK)
        } else {
            Some(taken::KILL)
        }
    }

    /// What the BPF-LSM exec program (`bprm_check_security`) does about an exec this rule
    /// denies: `errno` rules in enforce mode only (refused with EPERM); `None` for the others,
    /// which the `sched_process_exec` programs handle (audit mode too: see
    /// [`RuleInfo::taken_exec`]).
    #[inline(always)]
    pub fn taken_exec_lsm(&self) -> Option<u32> {
        (self.action == action::ERRNO && self.mode == mode::ENFORCE).then_some(taken::ERRNO)
    }

    /// What a network hook does about a connection this rule (or default) decided; `None`
    /// when it is simply allowed.
    #[inline(always)]
    pub fn taken_network(&self, rule_action: u32, refuse: u32) -> Option<u32> {
        match rule_action {
            action::DENY if self.mode == mode::AUDIT => Some(taken::WOULD_BLOCK),
            action::DENY => Some(refuse),
            action::LOG => Some(taken::LOG),
            _ => None,
        }
    }
}

/// Key of `POLICY_VIOLATIONS`: one rule in one cgroup with one outcome.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ViolationKey {
    pub cgroup_id: u64,
    pub rule: u32,
    /// One of [`taken`].
    pub action: u32,
}

/// Value of `POLICY_VIOLATIONS`: the exact count and the event rate limiter's window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ViolationState {
    /// Every violation (updated atomically).
    pub total: u64,
    /// Start of the current window (CLOCK_MONOTONIC ns) and events sent in it.
    pub window_start: u64,
    pub in_window: u64,
}

/// Fixed-window rate limit: whether one more event may be sent at `now`. At most `burst`
/// events per `interval_ns`; the rest are only counted (`total`) and reported as `suppressed`
/// on the next event or by userspace's periodic sweep.
#[inline(always)]
pub fn admit(s: &mut ViolationState, now: u64, burst: u64, interval_ns: u64) -> bool {
    if now.wrapping_sub(s.window_start) >= interval_ns || s.window_start == 0 {
        s.window_start = now;
        s.in_window = 0;
    }
    if s.in_window < burst {
        s.in_window += 1;
        true
    } else {
        false
    }
}

/// The 5-tuple of a network violation (ports in host byte order; IPv4 in the first 4 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetTuple {
    pub family: u16,
    pub proto: u8,
    /// Always 0 (explicit padding).
    pub _pad: u8,
    pub lport: u16,
    pub rport: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

/// A violation, sent on `POLICY_EVENTS` (subject to the rate limit). Only exec and file
/// violations carry `exec`: the others send the first [`POLICY_EVENT_HEAD`] bytes, so a flood
/// of them fits about eight times as many records in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PolicyEvent {
    /// One of [`what`].
    pub what: u32,
    pub rule: u32,
    /// One of [`taken`].
    pub action: u32,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    /// Syscall number as called (syscall and seccomp violations; x32 without its bit).
    pub nr: u32,
    /// The errno the call got (seccomp), else 0.
    pub errno: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// `ViolationState::total` after this violation (userspace derives `suppressed`).
    pub total: u64,
    pub comm: [u8; 16],
    pub net: NetTuple,
    /// The ABI of `nr` ([`abi_id`]).
    pub abi: u32,
    /// The x86_64 call a compat call was checked as (`u32::MAX`: not translated).
    pub native: u32,
    /// Exec violations: the file executed, its interpreter, the path given.
    pub exec: ExecPaths,
}

/// Bytes of a [`PolicyEvent`] without its `exec` paths: the record of every other violation.
pub const POLICY_EVENT_HEAD: usize = core::mem::offset_of!(PolicyEvent, exec);

/// Indices of `POLICY_CONFIG` (`u64` values userspace sets).
pub mod config {
    /// Events per rate-limit window and key.
    pub const BURST: u32 = 0;
    /// Rate-limit window, ns.
    pub const INTERVAL_NS: u32 = 1;
    /// `POLICY_ABI` of the tables.
    pub const ABI: u32 = 2;
    /// Bumped by the agent after every change of `POLICY_CGROUPS`: resolutions cached before
    /// are looked up again.
    pub const GENERATION: u32 = 3;
    pub const COUNT: u32 = 4;
}

#[cfg(test)]
mod tests;
