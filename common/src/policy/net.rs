//! Network rules as the kernel evaluates them: rule sets (one per policy, direction and slot),
//! socket kinds refused at creation, the combination of several policies' verdicts (any deny
//! wins), and the walk over IPv6 extension headers to a SYN's TCP header.
use super::{action, taken};

/// Rules per network rule set (one set per policy, slot and direction).
pub const MAX_NET_RULES: usize = 16;
/// Policies with network rules for one direction that one cgroup can combine (each its own
/// set; every set is evaluated, any deny wins).
pub const MAX_NET_SETS: u32 = 4;

/// Direction index into `POLICY_NET`.
pub const NET_EGRESS: u32 = 0;
pub const NET_INGRESS: u32 = 1;

/// The `POLICY_NET` index of set `i` of `slot` in direction `dir`.
#[inline(always)]
pub fn net_index(slot: u32, dir: u32, i: u32) -> u32 {
    (slot * 2 + dir) * MAX_NET_SETS + i
}

/// [`NetRule::proto`] values that name a socket kind rather than an IP protocol: such rules
/// decide when the socket is created (`cgroup/sock_create`, and the `socket()` tracepoint for
/// packet sockets), never at connect or send, and have no address or port.
pub mod kind {
    /// ICMP and ICMPv6: datagram ("ping") sockets and raw sockets of those protocols.
    pub const ICMP: u8 = 1;
    /// Packet sockets (`AF_PACKET`): whole frames, below IP.
    pub const PACKET: u8 = 254;
    /// Raw IP sockets of any protocol.
    pub const RAW: u8 = 255;
}

/// One network rule: remote prefix, port range and protocol. IPv4 addresses sit in the first
/// 4 bytes of `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    pub addr: [u8; 16],
    /// The prefix as a mask over `addr` ([`prefix_mask`]): the kernel compares words, without
    /// a branch per bit.
    pub mask: [u8; 16],
    /// `AF_INET`, `AF_INET6`, or 0 for both (then `prefix` is 0).
    pub family: u16,
    /// Prefix length in bits.
    pub prefix: u8,
    /// IP protocol (6 TCP, 17 UDP), 0 for any, or a socket [`kind`].
    pub proto: u8,
    /// Port range, inclusive (egress: the remote port; ingress: the local port).
    pub port_lo: u16,
    pub port_hi: u16,
    /// [`action::ALLOW`], [`action::DENY`] or [`action::LOG`] (allowed and reported).
    pub action: u32,
    pub rule: u32,
}

/// Value of `POLICY_NET` (index [`net_index`]): one policy's rules for one direction, in
/// order, the first match decides; none matching means `default_action` (reported as
/// `default_rule` when it denies). An unused set (no rules, default allow, no `kind_rule`)
/// allows everything.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRuleSet {
    pub count: u32,
    pub default_action: u32,
    pub default_rule: u32,
    /// Egress: the rule a raw, packet or ICMP socket no [`kind`] rule allows violates (0: the
    /// set has no egress rules). Ingress: 0.
    pub kind_rule: u32,
    pub rules: [NetRule; MAX_NET_RULES],
}

impl NetRuleSet {
    pub const EMPTY: Self = Self {
        count: 0,
        default_action: action::ALLOW,
        default_rule: 0,
        kind_rule: 0,
        rules: [NetRule {
            addr: [0; 16],
            mask: [0; 16],
            family: 0,
            prefix: 0,
            proto: 0,
            port_lo: 0,
            port_hi: 0,
            action: 0,
            rule: 0,
        }; MAX_NET_RULES],
    };

    /// (action, rule id) for a connection to/from `addr`:`port` over `proto`.
    #[inline(always)]
    pub fn evaluate(&self, family: u16, addr: &[u8; 16], port: u16, proto: u8) -> (u32, u32) {
        let n = self.count as usize;
        for i in 0..MAX_NET_RULES {
            if i >= n {
                break;
            }
            let r = &self.rules[i];
            if r.matches_port(port, proto) && r.matches_addr(family, addr) {
                return (r.action, r.rule);
            }
        }
        (self.default_action, self.default_rule)
    }

    /// (action, rule id) for binding local `port`: allowed when some remote address could still
    /// reach it. A rule for every address decides; an allow for some addresses allows; a deny
    /// for some addresses does not decide.
    #[inline(always)]
    pub fn bind_verdict(&self, port: u16, proto: u8) -> (u32, u32) {
        let n = self.count as usize;
        for i in 0..MAX_NET_RULES {
            if i >= n {
                break;
            }
            let r = &self.rules[i];
            if !r.matches_port(port, proto) {
                continue;
            }
            if r.prefix == 0 || r.action != action::DENY {
                return (r.action, r.rule);
            }
        }
        (self.default_action, self.default_rule)
    }

    /// (action, rule id) for creating a socket of kind `k` (or `also`, the wider kind that
    /// covers it: a raw ICMP socket is both [`kind::ICMP`] and [`kind::RAW`]): the first rule
    /// naming either decides; none means refused by `kind_rule`, whatever the default. A set
    /// without egress rules (`kind_rule` 0) allows.
    #[inline(always)]
    pub fn socket_verdict(&self, k: u8, also: u8) -> (u32, u32) {
        if self.kind_rule == 0 {
            return (action::ALLOW, 0);
        }
        let n = self.count as usize;
        for i in 0..MAX_NET_RULES {
            if i >= n {
                break;
            }
            let r = &self.rules[i];
            if r.proto == k || r.proto == also {
                return (r.action, r.rule);
            }
        }
        (action::DENY, self.kind_rule)
    }
}

impl NetRule {
    #[inline(always)]
    pub fn matches_port(&self, port: u16, proto: u8) -> bool {
        (self.proto == 0 || self.proto == proto) && port >= self.port_lo && port <= self.port_hi
    }

    #[inline(always)]
    pub fn matches_addr(&self, family: u16, addr: &[u8; 16]) -> bool {
        if self.family == 0 {
            return true;
        }
        if self.family != family {
            return false;
        }
        let word = |b: &[u8; 16], i: usize| {
            u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
        };
        for i in 0..4 {
            let m = word(&self.mask, i);
            if word(addr, i) & m != word(&self.addr, i) & m {
                return false;
            }
        }
        true
    }
}

/// The mask of a `prefix`-bit prefix over a 16-byte address.
pub fn prefix_mask(prefix: u8) -> [u8; 16] {
    let mut m = [0u8; 16];
    let mut left = u32::from(prefix).min(128);
    for b in m.iter_mut() {
        let bits = left.min(8);
        *b = (0xffu16 << (8 - bits)) as u8;
        left -= bits;
    }
    m
}

/// How strong an outcome is: a refusal over a would-be refusal (audit) over a report.
#[inline(always)]
fn strength(t: u32) -> u32 {
    match t {
        taken::ERRNO | taken::DROP | taken::KILL => 3,
        taken::WOULD_BLOCK => 2,
        taken::LOG => 1,
        _ => 0,
    }
}

/// Whether outcome `next` beats `cur` (`0`: none yet): a refusal over a would-be refusal
/// over a report; the earlier one among equals.
#[inline(always)]
pub fn stronger(next: u32, cur: u32) -> bool {
    strength(next) > strength(cur)
}

/// The outcome of several policies on one connection or socket, as (what happens, rule id):
/// the strongest wins, so any deny among them refuses whatever their order; the earlier one
/// among equals.
pub fn strongest(cur: Option<(u32, u32)>, next: Option<(u32, u32)>) -> Option<(u32, u32)> {
    match (cur, next) {
        (Some(c), Some(n)) if stronger(n.0, c.0) => Some(n),
        (Some(c), _) => Some(c),
        (None, n) => n,
    }
}

/// IPv6 Next Header values the SYN check walks over.
pub mod ipv6_next {
    pub const HOP_BY_HOP: u8 = 0;
    pub const TCP: u8 = 6;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const DESTINATION: u8 = 60;
}

/// Extension headers walked before giving up (a SYN behind more cannot be checked).
pub const MAX_EXT_HEADERS: usize = 8;

/// Where an IPv6 packet's transport header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP, at this offset from the IPv6 header.
    Tcp(u32),
    /// Another transport (not a TCP connection request).
    Other,
    /// Not found: encrypted (ESP), a later fragment, more than [`MAX_EXT_HEADERS`] headers,
    /// or a header that could not be read. A default deny drops these.
    Unparsed,
}

/// One step of the walk over IPv6 extension headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Found: the transport header is at the current offset.
    Done(Transport),
    /// An extension header of `len` bytes whose Next Header is `next`.
    Skip { next: u8, len: u32 },
}

/// What the header at the current offset is, given the Next Header value that announced it;
/// `load` reads its first 4 bytes (only for extension headers).
#[inline(always)]
pub fn ipv6_step(next: u8, load: impl FnOnce() -> Option<[u8; 4]>) -> Step {
    use ipv6_next::*;
    match next {
        TCP => return Step::Done(Transport::Tcp(0)),
        HOP_BY_HOP | ROUTING | DESTINATION | FRAGMENT | AH => {}
        ESP => return Step::Done(Transport::Unparsed),
        _ => return Step::Done(Transport::Other),
    }
    let Some(h) = load() else {
        return Step::Done(Transport::Unparsed);
    };
    let len = match next {
        FRAGMENT => {
            // a later fragment carries no transport header
            if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                return Step::Done(Transport::Unparsed);
            }
            8
        }
        AH => (u32::from(h[1]) + 2) * 4,
        _ => (u32::from(h[1]) + 1) * 8,
    };
    Step::Skip { next: h[0], len }
}

/// Finds the transport header of an IPv6 packet whose fixed header says `next`: walks
/// hop-by-hop, routing, fragment, destination options and AH headers (at most
/// [`MAX_EXT_HEADERS`]), reading 4 bytes at an offset with `load`. The kernel program runs the
/// same steps ([`ipv6_step`]) with its position in map memory.
pub fn ipv6_transport(mut next: u8, mut load: impl FnMut(u32) -> Option<[u8; 4]>) -> Transport {
    let mut off: u32 = 40;
    for _ in 0..=MAX_EXT_HEADERS {
        match ipv6_step(next, || load(off)) {
            Step::Done(Transport::Tcp(_)) => return Transport::Tcp(off),
            Step::Done(t) => return t,
            Step::Skip { next: n, len } => {
                next = n;
                off += len;
            }
        }
    }
    Transport::Unparsed
}
