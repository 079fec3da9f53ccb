//! Network rules: `cgroup_sock_addr` programs (connect4/6 and sendmsg4/6 for egress, bind4/6
//! for ingress) return EPERM for a denied address, and a `cgroup_skb` ingress program drops
//! incoming TCP connection requests (SYN) a rule denies. All are attached to the root of the
//! unified hierarchy (every cgroup, present and future) while some cgroup has network rules;
//! a cgroup without a policy costs one cached resolution per connect, bind or incoming packet.
//!
//! A slot holds one rule set per policy and direction; every set is evaluated and the
//! strongest outcome wins (any deny, whatever the order of the policies).
//!
//! Context fields are read at constant offsets (the verifier rejects arithmetic on the
//! context pointer); packets are read with constant-size `bpf_skb_load_bytes`.
use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock_addr},
    helpers::{bpf_get_current_cgroup_id, bpf_skb_cgroup_id},
    macros::{cgroup_skb, cgroup_sock_addr, map},
    maps::{Array, PerCpuArray},
    programs::{SkBuffContext, SockAddrContext},
};
use palisade_common::{
    net::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP},
    policy::{
        MAX_EXT_HEADERS, MAX_NET_SETS, NET_EGRESS, NET_INGRESS, NetRuleSet, NetTuple, Step,
        Transport, action, cgroup_flags, ipv6_step, net_index, stronger, taken, what,
    },
};

use palisade_ebpf::skb_load;

use crate::report::{Detail, Subject, policy_current, policy_skb, report, rule};

#[map(name = "POLICY_NET")]
static POLICY_NET: Array<NetRuleSet> = Array::with_max_entries(2048, 0);

pub const ALLOW: i32 = 1;
pub const REFUSE: i32 = 0;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// What a rule set is asked about (passed in a register: the verifier then knows which).
pub mod ask {
    /// A connection (egress) or an incoming connection request (ingress).
    pub const CONNECT: u32 = 0;
    /// Binding a local port.
    pub const BIND: u32 = 1;
    /// A packet that could not be parsed: the default decides.
    pub const DEFAULT: u32 = 2;
    /// Creating a socket of a kind (`Query::kind`, `Query::also`).
    pub const SOCKET: u32 = 3;
}

/// One question to every rule set of a slot and direction. The address is borrowed (no array
/// is zeroed here: a zeroing loop becomes a `memset` call whose register use the verifier
/// does not accept).
pub struct Query<'a> {
    pub family: u16,
    pub port: u16,
    pub proto: u8,
    pub kind: u8,
    pub also: u8,
    pub addr: &'a [u8; 16],
}

/// The address of questions that have none.
static NO_ADDR: [u8; 16] = [0; 16];

impl Query<'static> {
    pub const NONE: Self = Self {
        family: 0,
        port: 0,
        proto: 0,
        kind: 0,
        also: 0,
        addr: &NO_ADDR,
    };
}

/// One set's (action, rule id) for question `a` ([`ask`]) about `q`. Not inlined: the sets
/// are evaluated by one copy of the rule loop (the stack and the program stay small).
#[inline(never)]
fn one_set(set: &NetRuleSet, q: &Query<'_>, a: u32) -> (u32, u32) {
    match a {
        ask::CONNECT => set.evaluate(q.family, q.addr, q.port, q.proto),
        ask::BIND => set.bind_verdict(q.port, q.proto),
        ask::SOCKET => set.socket_verdict(q.kind, q.also),
        _ => (set.default_action, set.default_rule),
    }
}

/// The strongest outcome of `slot`'s sets in direction `dir` for question `a` about `q`:
/// (what happens, rule id), or `None` when every set lets it pass quietly. `refuse` is what a
/// deny does here (EPERM or a drop).
#[inline(always)]
pub fn outcome(slot: u32, dir: u32, refuse: u32, a: u32, q: &Query<'_>) -> Option<(u32, u32)> {
    // plain integers, no Option: the verifier refuses to copy a `None`'s undefined payload
    let (mut best, mut best_rule) = (0u32, 0u32);
    for i in 0..MAX_NET_SETS {
        let Some(set) = POLICY_NET.get(net_index(slot, dir, i)) else {
            continue;
        };
        let (act, id) = one_set(set, q, a);
        if act == action::ALLOW {
            continue;
        }
        let Some(info) = rule(id) else {
            continue;
        };
        if let Some(t) = info.taken_network(act, refuse)
            && stronger(t, best)
        {
            best = t;
            best_rule = id;
        }
    }
    (best != 0).then_some((best, best_rule))
}

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
    let Some(p) = policy_current(cgroup_id) else {
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
    let sa = ctx.sock_addr;
    let proto = proto_of(sa);
    let (family, addr, port) = user_addr(sa, v6);
    let q = Query {
        family,
        port,
        proto,
        kind: 0,
        also: 0,
        addr: &addr,
    };
    let a = if kind == what::BIND {
        ask::BIND
    } else {
        ask::CONNECT
    };
    let Some((t, id)) = outcome(p.slot, dir, taken::ERRNO, a, &q) else {
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
            net: Some(&tuple),
            ..Detail::NONE
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

/// Where the IPv6 extension-header walk stands: (next header, offset), in map memory so the
/// verifier does not follow every header sequence separately.
#[map(name = "POLICY_WALK")]
static POLICY_WALK: PerCpuArray<[u32; 2]> = PerCpuArray::with_max_entries(1, 0);

/// The transport header of the IPv6 packet whose fixed header says `first` (see
/// `ipv6_transport`, the same steps on the host).
#[inline(always)]
fn walk_ipv6(ctx: &SkBuffContext, first: u8) -> Option<Transport> {
    let w = POLICY_WALK.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch value, written before it is read.
    unsafe { core::ptr::write_volatile(w, [u32::from(first), 40]) };
    for _ in 0..=MAX_EXT_HEADERS {
        // SAFETY: as above.
        let [next, off] = unsafe { core::ptr::read_volatile(w) };
        let off = off & 0xffff;
        match ipv6_step(next as u8, || {
            let mut b = [0u8; 4];
            skb_load(ctx, off, &raw mut b).map(|()| b)
        }) {
            Step::Done(Transport::Tcp(_)) => return Some(Transport::Tcp(off)),
            Step::Done(t) => return Some(t),
            Step::Skip { next, len } => {
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(w, [u32::from(next), off + len]) };
            }
        }
    }
    Some(Transport::Unparsed)
}

/// What a packet that cannot be parsed gets: dropped where a default denies (the strongest
/// default among the sets), reported with that default's rule.
#[inline(always)]
fn unparsed(slot: u32, cgroup_id: u64, t: &NetTuple) -> Option<i32> {
    let (taken, id) = outcome(slot, NET_INGRESS, taken::DROP, ask::DEFAULT, &Query::NONE)?;
    report(
        what::INGRESS,
        id,
        taken,
        cgroup_id,
        Subject::Packet,
        &Detail {
            net: Some(t),
            ..Detail::NONE
        },
    );
    Some(if taken == taken::DROP { REFUSE } else { ALLOW })
}

#[inline(always)]
fn ingress(ctx: &SkBuffContext) -> Option<i32> {
    let skb: *const __sk_buff = ctx.skb.skb;
    // SAFETY: helper on the program's own context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb as *mut _) };
    if cgroup_id == 0 {
        return None;
    }
    let p = policy_skb(skb, cgroup_id)?;
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
        t.family = AF_INET6;
        t.raddr.copy_from_slice(&h[8..24]);
        t.laddr.copy_from_slice(&h[24..40]);
        l4 = match walk_ipv6(ctx, h[6])? {
            Transport::Tcp(off) => off,
            Transport::Other => return None,
            Transport::Unparsed => return unparsed(p.slot, cgroup_id, &t),
        };
    } else {
        return None;
    }
    let mut tcp = [0u8; 14];
    if skb_load(ctx, l4, &raw mut tcp).is_none() {
        return unparsed(p.slot, cgroup_id, &t);
    }
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    if tcp[13] & (SYN | ACK) != SYN {
        return None;
    }
    t.rport = u16::from_be_bytes([tcp[0], tcp[1]]);
    t.lport = u16::from_be_bytes([tcp[2], tcp[3]]);
    let q = Query {
        family: t.family,
        port: t.lport,
        proto: IPPROTO_TCP,
        kind: 0,
        also: 0,
        addr: &t.raddr,
    };
    let (taken, id) = outcome(p.slot, NET_INGRESS, taken::DROP, ask::CONNECT, &q)?;
    report(
        what::INGRESS,
        id,
        taken,
        cgroup_id,
        Subject::Packet,
        &Detail {
            net: Some(&t),
            ..Detail::NONE
        },
    );
    Some(if taken == taken::DROP { REFUSE } else { ALLOW })
}
