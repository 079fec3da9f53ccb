//! Network telemetry: `cgroup_skb` egress/ingress programs on the unified root (every
//! container, including ones created later) count packets and bytes per cgroup and per flow;
//! a `sock_ops` program follows TCP connections (established, closed, failed, retransmits).
//!
//! Packet parsing uses `bpf_skb_load_bytes` with constant lengths only. Each socket's cgroup
//! comes from `bpf_skb_cgroup_id` in the packet programs; in `sock_ops` it is the current
//! task's at connect/listen time (process context), remembered per socket cookie and, for
//! accepted connections, per listening port.
use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RETRANS_CB, BPF_SOCK_OPS_RETRANS_CB_FLAG,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_SOCK_OPS_TCP_LISTEN_CB,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_skb_cgroup_id, generated::bpf_skb_load_bytes,
    },
    macros::{cgroup_skb, map, sock_ops},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::{SkBuffContext, SockOpsContext},
};
use palisade_common::{
    event_kind,
    loss::RINGBUF_FULL,
    net::{
        AF_INET, AF_INET6, DNS_PAYLOAD_MAX, DnsEvent, FLOW_FIRST_EGRESS, FLOW_PARTIAL, FlowKey,
        FlowStats, IPPROTO_TCP, IPPROTO_UDP, ListenKey, NetTotals, SEQ_KNOWN, SockInfo, TcpCounts,
        TcpEvent, direction, tcp_what,
    },
};

use palisade_ebpf::{atomic_add, per_cpu_entry, skb_load};

use crate::{cgroups::EVENTS, loss};

/// Shared (not per-CPU) so `sock_ops` can hand a closed connection's final counts to userspace
/// and remove the entry at once: closed flows never crowd live ones out of the LRU.
#[map(name = "FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowStats> = LruHashMap::with_max_entries(65536, 0);

#[map(name = "NET_TOTALS")]
static NET_TOTALS: PerCpuHashMap<u64, NetTotals> = PerCpuHashMap::with_max_entries(4096, 0);

#[map(name = "TCP_COUNTS")]
static TCP_COUNTS: PerCpuHashMap<u64, TcpCounts> = PerCpuHashMap::with_max_entries(4096, 0);

/// Global network counters (per CPU): index 0 = flows inserted into `FLOWS`.
#[map(name = "NET_COUNTERS")]
static NET_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "SOCK_INFO")]
static SOCK_INFO: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(65536, 0);

#[map(name = "LISTENERS")]
static LISTENERS: LruHashMap<ListenKey, u64> = LruHashMap::with_max_entries(8192, 0);

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_ESTABLISHED: u32 = 1;
const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;
const TCP_CLOSE_WAIT: u32 = 8;

#[cgroup_skb(egress)]
pub fn net_egress(ctx: SkBuffContext) -> i32 {
    account(&ctx, true);
    1
}

#[cgroup_skb(ingress)]
pub fn net_ingress(ctx: SkBuffContext) -> i32 {
    account(&ctx, false);
    1
}

/// What the IP and transport headers say.
struct Parsed {
    family: u16,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    sport: u16,
    dport: u16,
    /// IP + transport header bytes (repeated per segment under segmentation offload).
    headers: u32,
    /// Offset of the transport payload.
    payload_off: u32,
    /// TCP flags byte (0 for other protocols).
    tcp_flags: u8,
    /// TCP sequence number (0 for other protocols).
    seq: u32,
}

#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Option<Parsed> {
    let skb: *const __sk_buff = ctx.skb.skb;
    // SAFETY: `skb` is the program's context pointer; these fields are readable.
    let protocol = u16::from_be(unsafe { (*skb).protocol } as u16) as u32;
    let mut p = Parsed {
        family: 0,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        headers: 0,
        payload_off: 0,
        tcp_flags: 0,
        seq: 0,
    };
    let l4: u32;
    if protocol == ETH_P_IP {
        let mut h = [0u8; 20];
        skb_load(ctx, 0, &raw mut h)?;
        let ihl = u32::from(h[0] & 0x0f) * 4;
        if ihl < 20 {
            return None;
        }
        p.family = AF_INET;
        p.proto = h[9];
        p.src[..4].copy_from_slice(&h[12..16]);
        p.dst[..4].copy_from_slice(&h[16..20]);
        l4 = ihl;
    } else if protocol == ETH_P_IPV6 {
        let mut h = [0u8; 40];
        skb_load(ctx, 0, &raw mut h)?;
        p.family = AF_INET6;
        p.proto = h[6];
        p.src.copy_from_slice(&h[8..24]);
        p.dst.copy_from_slice(&h[24..40]);
        l4 = 40;
    } else {
        return None;
    }
    match p.proto {
        IPPROTO_TCP => {
            let mut t = [0u8; 14];
            skb_load(ctx, l4, &raw mut t)?;
            p.sport = u16::from_be_bytes([t[0], t[1]]);
            p.dport = u16::from_be_bytes([t[2], t[3]]);
            let doff = u32::from(t[12] >> 4) * 4;
            p.headers = l4 + doff;
            p.tcp_flags = t[13];
            p.seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
        }
        IPPROTO_UDP => {
            let mut u = [0u8; 4];
            skb_load(ctx, l4, &raw mut u)?;
            p.sport = u16::from_be_bytes([u[0], u[1]]);
            p.dport = u16::from_be_bytes([u[2], u[3]]);
            p.headers = l4 + 8;
        }
        _ => p.headers = l4,
    }
    p.payload_off = p.headers;
    Some(p)
}

#[inline(always)]
fn account(ctx: &SkBuffContext, egress: bool) {
    let skb: *const __sk_buff = ctx.skb.skb;
    // SAFETY: helper on the program's own context.
    let cgroup_id = unsafe { bpf_skb_cgroup_id(skb as *mut _) };
    if cgroup_id == 0 {
        // not owned by a full socket (time-wait, forwarded): not attributable
        return;
    }
    let Some(p) = parse(ctx) else { return };
    // SAFETY: context fields.
    let (len, segs) = unsafe { ((*skb).len, (*skb).gso_segs.max(1)) };
    let payload = u64::from(len.saturating_sub(p.headers));
    let wire = u64::from(len) + u64::from(segs - 1) * u64::from(p.headers);
    let segs = u64::from(segs);
    let icmp = p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6;
    let flow = p.proto == IPPROTO_TCP || p.proto == IPPROTO_UDP;

    let Some(t) = per_cpu_entry(&NET_TOTALS, &cgroup_id, NetTotals::default()) else {
        return;
    };
    let key = FlowKey {
        cgroup_id,
        family: p.family,
        proto: p.proto,
        _pad: 0,
        lport: if egress { p.sport } else { p.dport },
        rport: if egress { p.dport } else { p.sport },
        laddr: if egress { p.src } else { p.dst },
        raddr: if egress { p.dst } else { p.src },
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `t` is this CPU's copy of a per-CPU value; nothing else writes it meanwhile.
    unsafe {
        if egress {
            (*t).tx_bytes += wire;
            (*t).tx_packets += segs;
            if icmp {
                (*t).icmp_tx += segs;
            }
        } else {
            (*t).rx_bytes += wire;
            (*t).rx_packets += segs;
            if icmp {
                (*t).icmp_rx += segs;
            }
        }
    }
    if !flow {
        return;
    }
    let f = match FLOWS.get_ptr_mut(key) {
        Some(f) => f,
        None => {
            const SYN: u8 = 0x02;
            let mut flags = if egress { FLOW_FIRST_EGRESS } else { 0 };
            if p.proto == IPPROTO_TCP && p.tcp_flags & SYN == 0 {
                flags |= FLOW_PARTIAL;
            }
            let first = FlowStats {
                first_ns: now,
                flags,
                ..FlowStats::default()
            };
            // BPF_NOEXIST: a racing insert of the same flow on another CPU wins, we add to it.
            let _ = FLOWS.insert(key, first, BPF_NOEXIST as u64);
            // SAFETY: as above; the counter slot is this CPU's.
            unsafe {
                (*t).flows_created += 1;
                if let Some(c) = NET_COUNTERS.get_ptr_mut(0) {
                    *c += 1;
                }
            }
            match FLOWS.get_ptr_mut(key) {
                Some(f) => f,
                None => return,
            }
        }
    };
    // SAFETY: a shared map value; counters go through atomic adds, `last_ns` is a plain store
    // (a racing store of a nearby timestamp is harmless), the sequence marks as documented on
    // `FlowStats`.
    unsafe {
        (*f).last_ns = now;
        let (pkts, bytes, payloads, next_seq, holes) = if egress {
            (
                &raw mut (*f).pkts_out,
                &raw mut (*f).bytes_out,
                &raw mut (*f).payload_out,
                &raw mut (*f).next_seq_out,
                &raw mut (*f).holes_out,
            )
        } else {
            (
                &raw mut (*f).pkts_in,
                &raw mut (*f).bytes_in,
                &raw mut (*f).payload_in,
                &raw mut (*f).next_seq_in,
                &raw mut (*f).holes_in,
            )
        };
        let fresh = if p.proto == IPPROTO_TCP {
            fresh_tcp_payload(next_seq, holes, &p, payload)
        } else {
            payload
        };
        atomic_add(pkts, segs);
        atomic_add(bytes, wire);
        atomic_add(payloads, fresh);
    }
    if egress && p.proto == IPPROTO_UDP && p.dport == 53 {
        dns(ctx, &key, p.payload_off, len);
    }
}

/// The bytes of a TCP segment's `payload` not counted before in this direction of the flow, so
/// a retransmitted range counts once however the segments were lost or reordered:
/// - past the highest sequence number seen (`next`, which then moves forward): new;
/// - a segment starting past `next` leaves a gap (`holes`) of bytes lost or still in flight;
/// - bytes at or below `next` count up to the gaps still open and close them.
///
/// Once the gaps are filled the flow's count is the sequence space it covered, exactly; a
/// duplicate arriving while a gap is open counts in place of the fill that follows it. A flow's
/// first segment counts whole (a SYN's sequence number is its own; the payload follows it).
///
/// # Safety
/// `next` and `holes` point into a live `FLOWS` value.
#[inline(always)]
unsafe fn fresh_tcp_payload(next: *mut u64, holes: *mut u64, p: &Parsed, payload: u64) -> u64 {
    const SYN: u8 = 0x02;
    let start = p.seq.wrapping_add(u32::from(p.tcp_flags & SYN != 0));
    let end = start.wrapping_add(payload as u32);
    // SAFETY: the caller's.
    let (known, open) = unsafe { (*next, *holes) };
    if known & SEQ_KNOWN == 0 {
        // SAFETY: the caller's.
        unsafe { *next = SEQ_KNOWN | u64::from(end) };
        return payload;
    }
    let mark = known as u32;
    // sequence arithmetic (RFC 793): a positive difference is ahead
    let ahead = end.wrapping_sub(mark) as i32;
    let (above, gap) = if ahead > 0 {
        let gap = start.wrapping_sub(mark) as i32;
        (
            (ahead as u64).min(payload),
            if gap > 0 { gap as u64 } else { 0 },
        )
    } else {
        (0, 0)
    };
    let fill = (payload - above).min(open);
    // SAFETY: the caller's.
    unsafe {
        if ahead > 0 {
            *next = SEQ_KNOWN | u64::from(end);
        }
        *holes = open + gap - fill;
    }
    above + fill
}

/// Copies the start of an outgoing DNS message to userspace (it parses the query name).
#[inline(always)]
fn dns(ctx: &SkBuffContext, key: &FlowKey, off: u32, len: u32) {
    let Some(mut entry) = EVENTS.reserve::<DnsEvent>(0) else {
        loss::count(RINGBUF_FULL);
        return;
    };
    let ev = entry.as_mut_ptr();
    let avail = len.saturating_sub(off) as usize;
    // SAFETY: reserved record we own until submit/discard.
    unsafe {
        (*ev).kind = event_kind::DNS;
        (*ev).key = *key;
        // a variable size the verifier can bound: 12 (a DNS header) ..= DNS_PAYLOAD_MAX
        let n = (avail as u32).min(DNS_PAYLOAD_MAX as u32);
        if n < 12 {
            entry.discard(0);
            return;
        }
        let r = bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off,
            (&raw mut (*ev).payload).cast(),
            n,
        );
        if r != 0 {
            entry.discard(0);
            return;
        }
        (*ev).len = n;
    }
    entry.submit(0);
}

#[sock_ops]
pub fn tcp_ops(ctx: SockOpsContext) -> u32 {
    match try_tcp_ops(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// The connection's flow key from the socket's point of view.
#[inline(always)]
fn sock_key(ctx: &SockOpsContext, cgroup_id: u64) -> FlowKey {
    let mut k = FlowKey {
        cgroup_id,
        family: ctx.family() as u16,
        proto: IPPROTO_TCP,
        _pad: 0,
        lport: ctx.local_port() as u16,
        // remote_port holds the big-endian port shifted into the upper 16 bits on little-endian
        // hosts (the kernel's ctx rewrite loads skc_dport and shifts it left by 16)
        rport: u16::from_be((ctx.remote_port() >> 16) as u16),
        laddr: [0; 16],
        raddr: [0; 16],
    };
    let ops = ctx.ops;
    // Context fields must be read at constant offsets from the context pointer (the verifier
    // rejects arithmetic on it), so each word is its own volatile read.
    macro_rules! field {
        ($f:ident) => {
            // SAFETY: a field of the program's own context.
            unsafe { core::ptr::read_volatile(&raw const (*ops).$f) }
        };
        ($f:ident, $i:literal) => {
            // SAFETY: a field of the program's own context.
            unsafe { core::ptr::read_volatile(&raw const (*ops).$f[$i]) }
        };
    }
    if k.family == AF_INET {
        k.laddr[..4].copy_from_slice(&field!(local_ip4).to_ne_bytes());
        k.raddr[..4].copy_from_slice(&field!(remote_ip4).to_ne_bytes());
    } else {
        let l = [
            field!(local_ip6, 0),
            field!(local_ip6, 1),
            field!(local_ip6, 2),
            field!(local_ip6, 3),
        ];
        let r = [
            field!(remote_ip6, 0),
            field!(remote_ip6, 1),
            field!(remote_ip6, 2),
            field!(remote_ip6, 3),
        ];
        // An IPv4-mapped address (::ffff:a.b.c.d) carries IPv4 packets: key it like them.
        let ffff = 0xffffu32.to_be();
        if l[0] == 0 && l[1] == 0 && l[2] == ffff && r[0] == 0 && r[1] == 0 && r[2] == ffff {
            k.family = AF_INET;
            k.laddr[..4].copy_from_slice(&l[3].to_ne_bytes());
            k.raddr[..4].copy_from_slice(&r[3].to_ne_bytes());
        } else {
            for i in 0..4 {
                k.laddr[i * 4..i * 4 + 4].copy_from_slice(&l[i].to_ne_bytes());
                k.raddr[i * 4..i * 4 + 4].copy_from_slice(&r[i].to_ne_bytes());
            }
        }
    }
    k
}

#[inline(always)]
fn tcp_counts(cgroup_id: u64, f: impl FnOnce(&mut TcpCounts)) {
    if cgroup_id == 0 {
        return;
    }
    if let Some(c) = per_cpu_entry(&TCP_COUNTS, &cgroup_id, TcpCounts::default()) {
        // SAFETY: this CPU's copy of a per-CPU value.
        f(unsafe { &mut *c });
    }
}

fn try_tcp_ops(ctx: &SockOpsContext) -> Result<u32, u32> {
    let op = ctx.op();
    // SAFETY: helpers on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    match op {
        BPF_SOCK_OPS_TCP_LISTEN_CB => {
            let key = ListenKey {
                // SAFETY: helper on the program's own context.
                netns_cookie: unsafe { bpf_get_netns_cookie(ctx.ops as *mut _) },
                family: ctx.family(),
                port: ctx.local_port(),
            };
            // SAFETY: listen(2) runs in the listener's process context.
            let cg = unsafe { bpf_get_current_cgroup_id() };
            let _ = LISTENERS.insert(key, cg, 0);
        }
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let info = SockInfo {
                // SAFETY: connect(2) runs in the caller's process context.
                cgroup_id: unsafe { bpf_get_current_cgroup_id() },
                start_ns: now,
                direction: direction::OUTBOUND,
                _pad: 0,
            };
            let _ = SOCK_INFO.insert(cookie, info, 0);
            let _ = ctx
                .set_cb_flags((BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG) as i32);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // SAFETY: read-only lookup; copied out.
            let info = unsafe { SOCK_INFO.get(cookie) }
                .copied()
                .unwrap_or_default();
            tcp_counts(info.cgroup_id, |c| c.outbound_established += 1);
        }
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            let key = ListenKey {
                // SAFETY: helper on the program's own context.
                netns_cookie: unsafe { bpf_get_netns_cookie(ctx.ops as *mut _) },
                family: ctx.family(),
                port: ctx.local_port(),
            };
            // SAFETY: read-only lookup; copied out.
            let cg = unsafe { LISTENERS.get(key) }.copied().unwrap_or(0);
            let info = SockInfo {
                cgroup_id: cg,
                start_ns: now,
                direction: direction::INBOUND,
                _pad: 0,
            };
            let _ = SOCK_INFO.insert(cookie, info, 0);
            let _ = ctx
                .set_cb_flags((BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG) as i32);
            tcp_counts(cg, |c| c.inbound_established += 1);
        }
        BPF_SOCK_OPS_RETRANS_CB => {
            // SAFETY: read-only lookup; copied out.
            let info = unsafe { SOCK_INFO.get(cookie) }
                .copied()
                .unwrap_or_default();
            tcp_counts(info.cgroup_id, |c| c.retransmits += 1);
        }
        BPF_SOCK_OPS_STATE_CB => {
            let (old, new) = (ctx.arg(0), ctx.arg(1));
            if new != TCP_CLOSE {
                return Ok(0);
            }
            // SAFETY: read-only lookup; copied out.
            let info = unsafe { SOCK_INFO.get(cookie) }
                .copied()
                .unwrap_or_default();
            let _ = SOCK_INFO.remove(cookie);
            if old == TCP_SYN_SENT {
                // SAFETY: context field.
                let retrans = unsafe { (*ctx.ops).total_retrans };
                tcp_counts(info.cgroup_id, |c| {
                    if retrans == 0 {
                        c.refused += 1;
                    } else {
                        c.timeout += 1;
                    }
                });
                emit(ctx, tcp_what::FAILED, cookie, &info, now);
            } else if old == TCP_ESTABLISHED || old == TCP_CLOSE_WAIT {
                // No FIN exchange on this side's way out: a reset (or a kernel timeout).
                emit(ctx, tcp_what::RESET, cookie, &info, now);
            } else {
                emit(ctx, tcp_what::CLOSED, cookie, &info, now);
            }
        }
        _ => {}
    }
    Ok(0)
}

#[inline(always)]
fn emit(ctx: &SockOpsContext, what: u32, cookie: u64, info: &SockInfo, now: u64) {
    let Some(mut entry) = EVENTS.reserve::<TcpEvent>(0) else {
        loss::count(RINGBUF_FULL);
        // the flow stays in FLOWS: it is reported (`idle`) when the table's idle pass finds it
        tcp_counts(info.cgroup_id, |c| c.events_lost += 1);
        return;
    };
    let ev = entry.as_mut_ptr();
    let ops = ctx.ops;
    let key = sock_key(ctx, info.cgroup_id);
    // SAFETY: reserved record we own until submit; context fields of a full socket.
    unsafe {
        (*ev).kind = event_kind::TCP;
        (*ev).what = what;
        (*ev).key = key;
        (*ev).has_flow = 0;
        (*ev).flow = FlowStats::default();
        if what != tcp_what::ESTABLISHED {
            // The connection is over: hand its final counts over and free the entry.
            if let Some(f) = FLOWS.get_ptr(key) {
                (*ev).flow = *f;
                (*ev).has_flow = 1;
                let _ = FLOWS.remove(key);
            }
        }
        (*ev).cookie = cookie;
        (*ev).ktime_ns = now;
        (*ev).start_ns = info.start_ns;
        (*ev).direction = info.direction;
        (*ev).bytes_received = (*ops).bytes_received;
        (*ev).bytes_acked = (*ops).bytes_acked;
        (*ev).srtt_us = (*ops).srtt_us >> 3;
        (*ev).total_retrans = (*ops).total_retrans;
    }
    entry.submit(0);
}
