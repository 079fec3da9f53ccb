//! Network rules: `cgroup_sock_addr` programs (connect4/6 and sendmsg4/6 for egress, bind4/6
//! for ingress) return EPERM for a denied address, and a `cgroup_skb` ingress program drops
//! incoming TCP connection requests (SYN) a rule denies. All are attached to the root of the
//! unified hierarchy (every cgroup, present and future) while some cgroup has network rules;
//! a cgroup without a policy costs one hash lookup per connect, bind or incoming packet.
//!
//! Context fields are read at constant offsets (the verifier rejects arithmetic on the
//! context pointer); packets are read with constant-size `bpf_skb_load_bytes`.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_addr},
    helpers::{bpf_get_current_cgroup_id, bpf_skb_cgroup_id},
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::Array,
    programs::{SkBuffContext, SockAddrContext},
};
use palisade_common::{
    net::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    policy::{NET_EGRESS, NET_INGRESS, NetRuleSet, NetTuple, cgroup_flags, taken, what},
};

use palisade_ebpf::skb_load;

use crate::report::{Detail, Subject, policy_of, report, rule};

#[map(name = "POLICY_NET")]
static POLICY_NET: Array<NetRuleSet> = Array::with_max_entries(512, 0);

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// A field of the program's own context.
macro_rules! field {
    ($ctx:expr, $f:ident) => {
        // SAFETY: a field of the program's own context, read at a constant offset.
        unsafe { core::ptr::read_volatile(&raw const (*$ctx).$f) }
    };
    ($ctx:expr, $f:ident, $i:literal) => {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(&raw const (*$ctx).$f[$i]) }
    };
}

/// The transport protocol of a socket from its type (the `protocol` field may be 0).
#[inline(always)]
fn proto_of(sa: *const bpf_sock_addr) -> u8 {
    let p = field!(sa, protocol);
    if p != 0 {
        return p as u8;
    }
    match field!(sa, type_) {
        SOCK_STREAM => IPPROTO_TCP,
        SOCK_DGRAM => IPPROTO_UDP,
        _ => 0,
    }
}

/// The user address of a sock_addr call as (family, address, port); an IPv4-mapped IPv6
/// address counts as IPv4.
#[inline(always)]
fn user_addr(sa: *const bpf_sock_addr, v6: bool) -> (u16, [u8; 16], u16) {
    let port = u16::from_be(field!(sa, user_port) as u16);
    let mut addr = [0u8; 16];
    if !v6 {
        addr[..4].copy_from_slice(&field!(sa, user_ip4).to_ne_bytes());
        return (AF_INET, addr, port);
    }
    let w = [
        field!(sa, user_ip6, 0),
        field!(sa, user_ip6, 1),
        field!(sa, user_ip6, 2),
        field!(sa, user_ip6, 3),
    ];
    if w[0] == 0 && w[1] == 0 && w[2] == 0xffffu32.to_be() {
        addr[..4].copy_from_slice(&w[3].to_ne_bytes());
        return (AF_INET, addr, port);
    }
    for i in 0..4 {
        addr[i * 4..i * 4 + 4].copy_from_slice(&w[i].to_ne_bytes());
    }
    (AF_INET6, addr, port)
}

/// Checks one connect/sendmsg (egress) or bind (ingress).
#[inline(always)]
fn check(ctx: &SockAddrContext, v6: bool, kind: u32) -> i32 {
    // SAFETY: helper without preconditions (process context).
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(p) = policy_of(cgroup_id) else {
        return ALLOW;
    };
    let (flag, dir) = if kind == what::BIND {
        (cgroup_flags::INGRESS, NET_INGRESS)
    } else {
        (cgroup_flags::EGRESS, NET_EGRESS)
    };
    if p.flags & flag == 0 {
        return ALLOW;
    }
    let Some(set) = POLICY_NET.get(p.slot * 2 + dir) else {
        return ALLOW;
    };
    let sa = ctx.sock_addr;
    let proto = proto_of(sa);
    let (family, addr, port) = user_addr(sa, v6);
    let (act, id) = if kind == what::BIND {
        set.bind_verdict(port, proto)
    } else {
        set.evaluate(family, &addr, port, proto)
    };
    let Some(info) = rule(id) else {
        return ALLOW;
    };
    let Some(t) = info.taken_network(act, taken::ERRNO) else {
        return ALLOW;
    };
    let mut tuple = NetTuple {
        family,
        proto,
        _pad: 0,
        lport: 0,
        rport: port,
        laddr: [0; 16],
        raddr: addr,
    };
    if kind == what::BIND {
        tuple.lport = port;
        tuple.rport = 0;
        tuple.laddr = addr;
        tuple.raddr = [0; 16];
    }
    report(
        kind,
        id,
        t,
        cgroup_id,
        Subject::Current,
        &Detail {
            nr: 0,
            errno: 0,
            net: Some(&tuple),
            path: None,
        },
    );
    if t == taken::ERRNO { REFUSE } else { ALLOW }
}

#[cgroup_sock_addr(connect4)]
pub fn policy_connect4(ctx: SockAddrContext) -> i32 {
    check(&ctx, false, what::CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn policy_connect6(ctx: SockAddrContext) -> i32 {
    check(&ctx, true, what::CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn policy_sendmsg4(ctx: SockAddrContext) -> i32 {
    check(&ctx, false, what::SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn policy_sendmsg6(ctx: SockAddrContext) -> i32 {
    check(&ctx, true, what::SENDMSG)
}

#[cgroup_sock_addr(bind4)]
pub fn policy_bind4(ctx: SockAddrContext) -> i32 {
    check(&ctx, false, what::BIND)
}

#[cgroup_sock_addr(bind6)]
pub fn policy_bind6(ctx: SockAddrContext) -> i32 {
    check(&ctx, true, what::BIND)
}

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;

/// Incoming TCP connection requests (SYN without ACK) to a cgroup with ingress rules.
#[cgroup_skb(ingress)]
pub fn policy_ingress(ctx: SkBuffContext) -> i32 {
    ingress(&ctx).unwrap_or(ALLOW)
}

#[inline(always)]
fn ingress(ctx: &SkBuffContext) -> Option<i32> {
    let skb: *const __sk_buff = ctx.skb.skb;
    // SAFETY: helper on the program's own context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb as *mut _) };
    if cgroup_id == 0 {
        return None;
    }
    let p = policy_of(cgroup_id)?;
    if p.flags & cgroup_flags::INGRESS == 0 {
        return None;
    }
    let protocol = u16::from_be(field!(skb, protocol) as u16) as u32;
    let mut t = NetTuple {
        proto: IPPROTO_TCP,
        ..NetTuple::default()
    };
    let l4: u32;
    if protocol == ETH_P_IP {
        let mut h = [0u8; 20];
        skb_load(ctx, 0, &raw mut h)?;
        if h[9] != IPPROTO_TCP {
            return None;
        }
        t.family = AF_INET;
        t.raddr[..4].copy_from_slice(&h[12..16]);
        t.laddr[..4].copy_from_slice(&h[16..20]);
        l4 = u32::from(h[0] & 0x0f) * 4;
    } else if protocol == ETH_P_IPV6 {
        let mut h = [0u8; 40];
        skb_load(ctx, 0, &raw mut h)?;
        if h[6] != IPPROTO_TCP {
            return None;
        }
        t.family = AF_INET6;
        t.raddr.copy_from_slice(&h[8..24]);
        t.laddr.copy_from_slice(&h[24..40]);
        l4 = 40;
    } else {
        return None;
    }
    let mut tcp = [0u8; 14];
    skb_load(ctx, l4, &raw mut tcp)?;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if tcp[13] & (SYN | ACK) != SYN {
        return None;
    }
    t.rport = u16::from_be_bytes([tcp[0], tcp[1]]);
    t.lport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let set = POLICY_NET.get(p.slot * 2 + NET_INGRESS)?;
    let (act, id) = set.evaluate(t.family, &t.raddr, t.lport, IPPROTO_TCP);
    let info = rule(id)?;
    let taken = info.taken_network(act, taken::DROP)?;
    report(
        what::INGRESS,
        id,
        taken,
        cgroup_id,
        Subject::Packet,
        &Detail {
            nr: 0,
            errno: 0,
            net: Some(&t),
            path: None,
        },
    );
    Some(if taken == taken::DROP { REFUSE } else { ALLOW })
}
