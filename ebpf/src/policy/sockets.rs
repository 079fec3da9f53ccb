//! Socket kinds whose traffic the address rules cannot see, where egress rules apply: raw IP
//! sockets and ICMP ("ping" and raw ICMP) sockets are refused at creation by a
//! `cgroup/sock_create` program (EPERM); packet sockets (`AF_PACKET`) do not pass that hook
//! (it is the inet create path), so the `syscalls:sys_enter_socket` tracepoint kills the
//! process that opens one (after the fact, as with syscall rules), unless an egress rule
//! allows the kind (`protocol: icmp|raw|packet`).
//!
//! Not covered here: packet sockets opened through i386/x32 calls or io_uring (syscall
//! tracepoints do not fire for compat calls; io_uring does not make the call at all). A policy
//! with syscall rules kills other ABIs and denies io_uring by default.
use aya_ebpf::{
    Global,
    bindings::bpf_sock,
    helpers::bpf_get_current_cgroup_id,
    macros::{cgroup_sock, tracepoint},
    programs::{SockContext, TracePointContext},
};
use palisade_common::policy::{NET_EGRESS, NetTuple, cgroup_flags, kind, taken, what};

use crate::{
    net::{ALLOW, Query, REFUSE, ask, outcome},
    report::{Detail, Subject, policy_current, report},
};

/// Offset of `family` in `syscalls:sys_enter_socket` records, from tracefs.
#[unsafe(no_mangle)]
static POLICY_SOCKET_OFF_FAMILY: Global<u32> = Global::new(16);

const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
const IPPROTO_ICMP: u32 = 1;
const IPPROTO_ICMPV6: u32 = 58;
const AF_PACKET: u64 = 17;
const SIGKILL: u32 = 9;

/// Refuses (or reports) a socket of kind `k` (or the wider `also`) in the current cgroup;
/// returns what happened.
#[inline(always)]
fn decide(k: u8, also: u8, refuse: u32) -> Option<u32> {
    // SAFETY: helper without preconditions (process context).
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let p = policy_current(cgroup_id)?;
    if p.flags & cgroup_flags::EGRESS == 0 {
        return None;
    }
    let q = Query {
        kind: k,
        also,
        ..Query::NONE
    };
    let (t, id) = outcome(p.slot, NET_EGRESS, refuse, ask::SOCKET, &q)?;
    // the kind in the protocol field, no endpoints
    let tuple = NetTuple {
        proto: if k == kind::ICMP { kind::ICMP } else { also },
        ..NetTuple::default()
    };
    report(
        what::SOCKET,
        id,
        t,
        cgroup_id,
        Subject::Current,
        &Detail {
            net: Some(&tuple),
            ..Detail::NONE
        },
    );
    Some(t)
}

#[cgroup_sock(sock_create)]
pub fn policy_sock_create(ctx: SockContext) -> i32 {
    sock_create(&ctx)
}

#[inline(always)]
fn sock_create(ctx: &SockContext) -> i32 {
    let sk: *const bpf_sock = ctx.sock;
    // SAFETY: fields of the program's own context, read at constant offsets.
    let (kind_, protocol) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*sk).type_),
            core::ptr::read_volatile(&raw const (*sk).protocol),
        )
    };
    let icmp = protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6;
    let (k, also) = match kind_ {
        SOCK_RAW if icmp => (kind::ICMP, kind::RAW),
        SOCK_RAW => (kind::RAW, kind::RAW),
        SOCK_DGRAM if icmp => (kind::ICMP, kind::ICMP),
        _ => return ALLOW,
    };
    match decide(k, also, taken::ERRNO) {
        Some(taken::ERRNO) => REFUSE,
        _ => ALLOW,
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_socket")]
pub fn policy_packet(ctx: TracePointContext) -> u32 {
    match try_packet(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_packet(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: the offset comes from the format file; read_at uses bpf_probe_read_kernel.
    let family: u64 =
        unsafe { ctx.read_at(POLICY_SOCKET_OFF_FAMILY.load() as usize) }.map_err(|_| 0u32)?;
    if family != AF_PACKET {
        return Ok(0);
    }
    if decide(kind::PACKET, kind::PACKET, taken::KILL) == Some(taken::KILL) {
        // SAFETY: signals the current process (the helper's only target); its socket() call
        // has not returned yet.
        unsafe { aya_ebpf::helpers::bpf_send_signal(SIGKILL) };
    }
    Ok(0)
}
