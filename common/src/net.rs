//! Network types: the flow table, per-cgroup totals and TCP counters, and TCP/DNS events.

/// `FlowKey::family` values (the kernel's AF_* numbers).
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// `FlowKey::proto` values (IP protocol numbers).
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Key of `FLOWS`: one flow of one cgroup, seen from that cgroup's side. IPv4 addresses sit in
/// the first 4 bytes of `laddr`/`raddr` (the rest zero); ports in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub cgroup_id: u64,
    pub family: u16,
    pub proto: u8,
    /// Always 0 (explicit padding).
    pub _pad: u8,
    pub lport: u16,
    pub rport: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

/// Bit of [`FlowStats::flags`]: the flow's first packet went out (egress).
pub const FLOW_FIRST_EGRESS: u32 = 1;
/// Bit of [`FlowStats::flags`]: the entry was created mid-connection (its first packet was a TCP
/// segment without SYN), so the counts miss the start: the flow was evicted from the full table
/// earlier, or began before the agent.
pub const FLOW_PARTIAL: u32 = 2;

/// Bit of [`FlowStats::next_seq_out`]/`_in`: a sequence number was recorded.
pub const SEQ_KNOWN: u64 = 1 << 32;

/// Value of `FLOWS`, one shared copy per flow: counters are updated with atomic adds (a flow's
/// packets may be handled on several CPUs at once); `first_ns`/`flags` are set at creation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub pkts_out: u64,
    pub pkts_in: u64,
    /// IP bytes on the wire (headers included; segmentation offload counted per segment).
    pub bytes_out: u64,
    pub bytes_in: u64,
    /// Transport payload bytes (TCP/UDP headers excluded); TCP counts each byte of sequence
    /// space once, so a retransmitted segment adds to the wire bytes only.
    pub payload_out: u64,
    pub payload_in: u64,
    /// TCP: [`SEQ_KNOWN`] | the end of the highest sequence range seen in each direction (0 until
    /// the first segment), and the bytes of the gaps below it not yet filled (segments that
    /// arrived after a loss, ahead of the lost ones). Plain loads and stores: egress runs under
    /// the socket's lock, ingress of one flow on one CPU at a time but for rare cases (the
    /// sender moved CPUs while segments were queued), where the worst is a mark moved back, so
    /// a later retransmission of that range counts again.
    pub next_seq_out: u64,
    pub next_seq_in: u64,
    pub holes_out: u64,
    pub holes_in: u64,
    /// CLOCK_MONOTONIC ns of the first and last packet.
    pub first_ns: u64,
    pub last_ns: u64,
    /// [`FLOW_FIRST_EGRESS`], [`FLOW_PARTIAL`].
    pub flags: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
}

/// Per-cgroup network totals (`NET_TOTALS`, one copy per CPU). Bytes are IP bytes on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetTotals {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub icmp_tx: u64,
    pub icmp_rx: u64,
    /// New entries this cgroup put into the flow table (for the eviction count).
    pub flows_created: u64,
}

impl NetTotals {
    /// Adds `o`'s counters (summing CPUs or cgroups that share a name).
    pub fn merge(&mut self, o: &Self) {
        self.tx_bytes += o.tx_bytes;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.rx_packets += o.rx_packets;
        self.icmp_tx += o.icmp_tx;
        self.icmp_rx += o.icmp_rx;
        self.flows_created += o.flows_created;
    }
}

/// Per-cgroup TCP counters (`TCP_COUNTS`, one copy per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounts {
    /// Connections this cgroup opened that were established.
    pub outbound_established: u64,
    /// Connections this cgroup accepted.
    pub inbound_established: u64,
    /// Outbound connects answered with a reset (no SYN retransmitted).
    pub refused: u64,
    /// Outbound connects that failed after SYN retransmits.
    pub timeout: u64,
    pub retransmits: u64,
    /// Connection ends (close, reset, failure) the ring buffer had no room for: their flow
    /// stays in the flow table and is reported `idle` once `network.tcp_idle_timeout` passes.
    pub events_lost: u64,
}

impl TcpCounts {
    /// Adds `o`'s counters (summing CPUs or cgroups that share a name).
    pub fn merge(&mut self, o: &Self) {
        self.outbound_established += o.outbound_established;
        self.inbound_established += o.inbound_established;
        self.refused += o.refused;
        self.timeout += o.timeout;
        self.retransmits += o.retransmits;
        self.events_lost += o.events_lost;
    }
}

/// [`TcpEvent::what`] values.
pub mod tcp_what {
    /// The connection was established (counted in the kernel; not sent as an event).
    pub const ESTABLISHED: u32 = 1;
    /// The connection closed after being established.
    pub const CLOSED: u32 = 2;
    /// An outbound connect failed (reset: refused; after SYN retransmits: timeout).
    pub const FAILED: u32 = 3;
    /// The connection was established and ended without an orderly close: it went to CLOSE
    /// straight from ESTABLISHED or CLOSE_WAIT (a reset sent or received, or the kernel gave up
    /// after retransmission or keepalive timeouts). A reset after this side's own FIN is
    /// [`CLOSED`].
    pub const RESET: u32 = 4;
}

/// [`TcpEvent::direction`] values.
pub mod direction {
    pub const UNKNOWN: u32 = 0;
    /// This cgroup connected.
    pub const OUTBOUND: u32 = 1;
    /// This cgroup accepted.
    pub const INBOUND: u32 = 2;
}

/// A TCP connection changed (from `sock_ops`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpEvent {
    /// `event_kind::TCP`.
    pub kind: u32,
    /// One of [`tcp_what`].
    pub what: u32,
    /// The flow as the flow table keys it (cgroup 0 when the socket's cgroup is unknown).
    pub key: FlowKey,
    pub cookie: u64,
    pub ktime_ns: u64,
    /// When the connect/accept happened (CLOCK_MONOTONIC ns), 0 when unknown.
    pub start_ns: u64,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    /// One of [`direction`].
    pub direction: u32,
    pub srtt_us: u32,
    pub total_retrans: u32,
    /// 1 when `flow` holds the flow table's final counts (the entry was found and removed).
    pub has_flow: u32,
    /// The connection's flow table entry at close (taken out of the table by `sock_ops`).
    pub flow: FlowStats,
}

/// Most DNS message bytes copied into a [`DnsEvent`].
pub const DNS_PAYLOAD_MAX: usize = 256;

/// A UDP packet to port 53 left a cgroup (its payload, for the query name).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsEvent {
    /// `event_kind::DNS`.
    pub kind: u32,
    /// Bytes of `payload` used.
    pub len: u32,
    pub key: FlowKey,
    pub payload: [u8; DNS_PAYLOAD_MAX],
}

/// Value of `SOCK_INFO` (socket cookie → what `sock_ops` learned at connect/accept time).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    pub cgroup_id: u64,
    pub start_ns: u64,
    /// One of [`direction`].
    pub direction: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
}

/// Key of `LISTENERS`: a listening port in a network namespace → the listener's cgroup, so an
/// accepted connection (whose `sock_ops` callback runs in softirq) is attributed to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns_cookie: u64,
    pub family: u32,
    pub port: u32,
}
