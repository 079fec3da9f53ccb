//! The `flow` object of a `flow` event: one flow record (see the README's "Events").
use serde::{Deserialize, Serialize};

/// TCP details of a flow record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpInfo {
    /// `closed` (established, then closed), `reset` (established, then reset or aborted),
    /// `refused`, `timeout` (connect failed), `open` (interim record), `idle` (dropped after
    /// `tcp_idle_timeout` without a close).
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_seconds: Option<f64>,
    pub retransmits: u32,
}

/// The `flow` object of a `flow` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// `outbound` (this container connected / sent first) or `inbound`.
    pub direction: String,
    pub protocol: String,
    /// `addr:port`, IPv6 as `[addr]:port`.
    pub local: String,
    pub remote: String,
    /// Transport payload bytes the packet programs saw (TCP/UDP headers excluded; a
    /// retransmitted segment counts again, see `tcp.retransmits`).
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    /// IP bytes on the wire, headers included.
    pub wire_bytes_out: u64,
    pub wire_bytes_in: u64,
    pub duration_seconds: f64,
    /// True when the flow is over; false for an interim record of a long flow.
    pub ended: bool,
    /// The counts miss the flow's start: its entry was created mid-connection (evicted from a
    /// full flow table earlier, or opened before the agent started).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpInfo>,
    /// Last DNS question the container sent on this flow (UDP/53).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_query: Option<String>,
}
