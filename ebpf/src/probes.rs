//! Tiny programs `palisade doctor` loads (and where it is harmless, attaches) one kind at a time
//! to learn what this kernel allows. Each does nothing observable.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_send_signal,
        bpf_skb_ancestor_cgroup_id,
    },
    macros::{
        cgroup_skb, cgroup_sock_addr, fentry, fexit, kprobe, lsm, map, raw_tracepoint, sock_ops,
        tracepoint,
    },
    maps::Array,
    programs::{
        FEntryContext, FExitContext, LsmContext, ProbeContext, RawTracePointContext, SkBuffContext,
        SockAddrContext, SockOpsContext, TracePointContext,
    },
};

/// Never holds the magic value; it only keeps the verifier from pruning the helper call.
#[map(name = "PROBE_ARMED")]
static PROBE_ARMED: Array<u32> = Array::with_max_entries(1, 0);

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn probe_raw_tracepoint(_ctx: RawTracePointContext) -> i32 {
    0
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn probe_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[cgroup_skb]
pub fn probe_cgroup_skb(_ctx: SkBuffContext) -> i32 {
    1
}

#[cgroup_sock_addr(connect4)]
pub fn probe_cgroup_sock_addr(_ctx: SockAddrContext) -> i32 {
    1
}

/// The TCP program (`tcp_ops`) names the cgroup of the process connecting or listening with
/// `bpf_get_current_cgroup_id`, which older kernels do not offer to sock_ops programs (6.1:
/// "unknown func bpf_get_current_cgroup_id#80"): the probe asks for it too, so `doctor` says
/// what the agent will find.
#[sock_ops]
pub fn probe_sock_ops(_ctx: SockOpsContext) -> u32 {
    // SAFETY: a helper without arguments
    let cg = unsafe { bpf_get_current_cgroup_id() };
    u32::from(cg != 0)
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn probe_send_signal(_ctx: RawTracePointContext) -> i32 {
    if let Some(v) = PROBE_ARMED.get(0)
        && *v == 0x5ee_d0ff
    {
        // SAFETY: never reached (the map value stays 0); the call is here so the verifier
        // checks that this program type may use the helper.
        unsafe { bpf_send_signal(9) };
    }
    0
}

/// Policies hold for child cgroups by walking a cgroup's ancestry with these helpers: each
/// program type the policy object uses must have them.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn probe_ancestor_tracing(_ctx: RawTracePointContext) -> i32 {
    // SAFETY: helper without preconditions.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(1) };
    i32::from(id == 0)
}

#[cgroup_sock_addr(connect4)]
pub fn probe_ancestor_sock_addr(_ctx: SockAddrContext) -> i32 {
    // SAFETY: helper without preconditions.
    let id = unsafe { bpf_get_current_ancestor_cgroup_id(1) };
    i32::from(id != u64::MAX)
}

#[cgroup_skb]
pub fn probe_ancestor_skb(ctx: SkBuffContext) -> i32 {
    // SAFETY: the program's own context.
    let id = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, 1) };
    i32::from(id != u64::MAX)
}

#[fentry(function = "bpf_fentry_test1")]
pub fn probe_fentry(_ctx: FEntryContext) -> i32 {
    0
}

/// The empty fentry/fexit pair on the syscall dispatcher: `palisade doctor` loads the entry
/// (never attaches it: see the agent's `features.rs`) to learn whether syscall telemetry can
/// ride it, `palisade debug empty-hooks --hook fentry` attaches both (the floor the fentry
/// telemetry is measured against).
#[fentry(function = "x64_sys_call")]
pub fn probe_fentry_syscall(_ctx: FEntryContext) -> i32 {
    0
}

#[fexit(function = "x64_sys_call")]
pub fn probe_fexit_syscall(_ctx: FExitContext) -> i32 {
    0
}

#[lsm(hook = "file_open")]
pub fn probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[kprobe]
pub fn probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

// The panic handler comes from the library.
use palisade_ebpf as _;

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
