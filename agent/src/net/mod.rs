//! Network flows in userspace: flow records (when a TCP connection ends, when a UDP flow goes
//! idle, and periodically for long flows), DNS query names, RTT histograms and per-peer totals.
//!
//! The kernel keeps the counters (flow table, per-cgroup totals, TCP counters); this module
//! decides when a flow is over, joins what `sock_ops` said about a connection with what the
//! packet programs counted, and accumulates what must survive a flow's deletion.
pub mod dns;

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use crate::{
    config::NetworkConfig,
    events::{FlowRecord, TcpInfo},
    kernel::events::Tcp,
};
use palisade_common::{
    HIST_BUCKETS, latency_bucket,
    net::{
        AF_INET6, FLOW_FIRST_EGRESS, FLOW_PARTIAL, FlowKey, FlowStats, IPPROTO_TCP, IPPROTO_UDP,
        direction, tcp_what,
    },
};

pub fn addr(family: u16, a: &[u8; 16]) -> String {
    if family == AF_INET6 {
        Ipv6Addr::from(*a).to_string()
    } else {
        Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    }
}

pub fn endpoint(family: u16, a: &[u8; 16], port: u16) -> String {
    if family == AF_INET6 {
        format!("[{}]:{port}", addr(family, a))
    } else {
        format!("{}:{port}", addr(family, a))
    }
}

/// The remote address cut to a prefix, as a CIDR label (`10.1.2.0/24`).
pub fn cidr(family: u16, a: &[u8; 16], v4_prefix: u8, v6_prefix: u8) -> String {
    let (bits, len) = if family == AF_INET6 {
        (v6_prefix.min(128), 16)
    } else {
        (v4_prefix.min(32), 4)
    };
    let mut m = *a;
    for (i, b) in m.iter_mut().enumerate().take(len) {
        let keep = (bits as usize).saturating_sub(i * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    format!("{}/{bits}", addr(family, &m))
}

fn protocol(p: u8) -> &'static str {
    match p {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        _ => "other",
    }
}

/// A log2 histogram of RTTs (same buckets as syscall latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttHist {
    pub hist: [u64; HIST_BUCKETS],
    pub sum_ns: u64,
}

impl Default for RttHist {
    fn default() -> Self {
        Self {
            hist: [0; HIST_BUCKETS],
            sum_ns: 0,
        }
    }
}

/// (cgroup, direction, remote CIDR) for per-peer byte counters.
pub type PeerKey = (u64, &'static str, String);

#[derive(Debug, Default)]
pub struct NetState {
    /// Last DNS question per UDP flow (bounded: cleared past 65,536 entries).
    dns: HashMap<FlowKey, String>,
    /// CLOCK_MONOTONIC ns of each long flow's last interim record.
    reported: HashMap<FlowKey, u64>,
    /// RTT histograms per cgroup (from closed connections).
    pub rtt: HashMap<u64, RttHist>,
    /// Bytes of flows already ended, per peer (they are gone from the kernel table).
    peers_final: HashMap<PeerKey, u64>,
    /// Bytes (out, in) of each live flow at the last pass, so a flow the kernel's LRU drops
    /// still leaves its last known bytes in `peers_final` (per-peer counters never go down).
    last_live: HashMap<FlowKey, (u64, u64)>,
    /// `peers_final` plus live flows, as of the last flow pass.
    pub peers: HashMap<PeerKey, u64>,
    /// Flows this module deleted from the kernel table.
    pub deleted_total: u64,
    /// Entries in the flow table at the last flow pass.
    pub live_flows: usize,
    /// Flows the kernel's LRU dropped before they ended, as of the last flow pass: inserted,
    /// minus deleted by us, minus still there (kept monotonic).
    pub evicted_total: u64,
}

/// What a flow pass decided: flows to take out of the kernel table, and interim records.
#[derive(Debug, Default)]
pub struct FlowPass {
    /// Flows that ended (idle UDP, idle TCP): read-and-delete, then record.
    pub finish: Vec<FlowKey>,
    /// Interim records of long flows.
    pub interim: Vec<FlowRecord>,
    /// Their keys, in the same order (for the container).
    pub interim_keys: Vec<FlowKey>,
}

impl NetState {
    pub fn dns_seen(&mut self, key: FlowKey, name: String) {
        if self.dns.len() >= 65_536 {
            self.dns.clear();
        }
        self.dns.insert(key, name);
    }

    /// Looks at the whole flow table (`now`: CLOCK_MONOTONIC ns; `created`: flows ever
    /// inserted, from the kernel's counter read with the table).
    pub fn flow_pass(
        &mut self,
        flows: &[(FlowKey, FlowStats)],
        created: u64,
        now: u64,
        cfg: &NetworkConfig,
    ) -> FlowPass {
        let mut pass = FlowPass::default();
        self.live_flows = flows.len();
        self.evicted_total = self
            .evicted_total
            .max(created.saturating_sub(self.deleted_total + flows.len() as u64));
        let ns = |d: Duration| d.as_nanos() as u64;
        let mut live_peers: HashMap<PeerKey, u64> = HashMap::new();
        for (k, f) in flows {
            let idle = now.saturating_sub(f.last_ns);
            let limit = if k.proto == IPPROTO_UDP {
                cfg.udp_idle_timeout
            } else {
                cfg.tcp_idle_timeout
            };
            if idle >= ns(limit) {
                pass.finish.push(*k);
                continue;
            }
            if cfg.per_peer_metrics {
                for (dir, bytes) in [("tx", f.bytes_out), ("rx", f.bytes_in)] {
                    *live_peers.entry(self.peer_key(k, dir, cfg)).or_default() += bytes;
                }
            }
            let last = self.reported.get(k).copied().unwrap_or(f.first_ns);
            if now.saturating_sub(last) >= ns(cfg.report_interval) {
                self.reported.insert(*k, now);
                pass.interim.push(self.record(k, f, None, false, now));
                pass.interim_keys.push(*k);
            }
        }
        // Flows the kernel's LRU dropped never "end" here: forget their interim-report times,
        // and keep what they had carried in the per-peer totals.
        let live: std::collections::HashSet<&FlowKey> = flows.iter().map(|(k, _)| k).collect();
        self.reported.retain(|k, _| live.contains(k));
        if cfg.per_peer_metrics {
            let gone: Vec<(FlowKey, (u64, u64))> = self
                .last_live
                .iter()
                .filter(|(k, _)| !live.contains(k))
                .map(|(k, v)| (*k, *v))
                .collect();
            for (k, (out, inn)) in gone {
                for (dir, bytes) in [("tx", out), ("rx", inn)] {
                    *self
                        .peers_final
                        .entry(self.peer_key(&k, dir, cfg))
                        .or_default() += bytes;
                }
            }
            let finishing: std::collections::HashSet<&FlowKey> = pass.finish.iter().collect();
            self.last_live = flows
                .iter()
                .filter(|(k, _)| !finishing.contains(k))
                .map(|(k, f)| (*k, (f.bytes_out, f.bytes_in)))
                .collect();
        }
        if cfg.per_peer_metrics {
            let mut all = self.peers_final.clone();
            for (p, b) in live_peers {
                *all.entry(p).or_default() += b;
            }
            self.peers = all;
        }
        pass
    }

    fn peer_key(&self, k: &FlowKey, dir: &'static str, cfg: &NetworkConfig) -> PeerKey {
        (
            k.cgroup_id,
            dir,
            cidr(k.family, &k.raddr, cfg.peer_prefix_v4, cfg.peer_prefix_v6),
        )
    }

    /// A flow left the kernel table: remember its bytes per peer, forget its state.
    pub fn ended(&mut self, k: &FlowKey, f: &FlowStats, cfg: &NetworkConfig) {
        self.deleted_total += 1;
        self.reported.remove(k);
        self.last_live.remove(k);
        if cfg.per_peer_metrics {
            for (dir, bytes) in [("tx", f.bytes_out), ("rx", f.bytes_in)] {
                let p = self.peer_key(k, dir, cfg);
                *self.peers_final.entry(p.clone()).or_default() += bytes;
                // visible now, not only after the next pass (which recomputes from the finals)
                *self.peers.entry(p).or_default() += bytes;
            }
        }
    }

    /// Forgets per-peer totals of cgroups that are gone for good.
    pub fn forget_cgroups(&mut self, ids: &[u64]) {
        self.peers_final.retain(|(c, _, _), _| !ids.contains(c));
        self.peers.retain(|(c, _, _), _| !ids.contains(c));
        self.last_live.retain(|k, _| !ids.contains(&k.cgroup_id));
        self.rtt.retain(|c, _| !ids.contains(c));
    }

    /// A flow record from the flow table's counters and, for TCP, what `sock_ops` said.
    pub fn record(
        &mut self,
        k: &FlowKey,
        f: &FlowStats,
        tcp: Option<&Tcp>,
        ended: bool,
        now: u64,
    ) -> FlowRecord {
        let outbound = match tcp.map(|t| t.direction) {
            Some(direction::OUTBOUND) => true,
            Some(direction::INBOUND) => false,
            _ => f.flags & FLOW_FIRST_EGRESS != 0,
        };
        let start = tcp
            .map(|t| t.start_ns)
            .filter(|s| *s != 0)
            .unwrap_or(f.first_ns);
        let end = tcp.map_or(if ended { f.last_ns } else { now }, |t| t.ktime_ns);
        let tcp_info = (k.proto == IPPROTO_TCP).then(|| match tcp {
            Some(t) => TcpInfo {
                result: match t.what {
                    tcp_what::FAILED if t.total_retrans == 0 => "refused",
                    tcp_what::FAILED => "timeout",
                    tcp_what::RESET => "reset",
                    _ => "closed",
                }
                .to_owned(),
                rtt_seconds: (t.srtt_us > 0).then(|| f64::from(t.srtt_us) / 1e6),
                retransmits: t.total_retrans,
            },
            None => TcpInfo {
                result: if ended { "idle" } else { "open" }.to_owned(),
                rtt_seconds: None,
                retransmits: 0,
            },
        });
        // sock_ops' bytes_acked/bytes_received also count SYN and FIN sequence numbers, so the
        // packet programs' payload counts are the honest byte counts.
        let (bytes_out, bytes_in) = (f.payload_out, f.payload_in);
        let dns_query = if ended {
            self.dns.remove(k)
        } else {
            self.dns.get(k).cloned()
        };
        FlowRecord {
            direction: if outbound { "outbound" } else { "inbound" }.to_owned(),
            protocol: protocol(k.proto).to_owned(),
            local: endpoint(k.family, &k.laddr, k.lport),
            remote: endpoint(k.family, &k.raddr, k.rport),
            bytes_out,
            bytes_in,
            packets_out: f.pkts_out,
            packets_in: f.pkts_in,
            wire_bytes_out: f.bytes_out,
            wire_bytes_in: f.bytes_in,
            duration_seconds: end.saturating_sub(start) as f64 / 1e9,
            ended,
            partial: f.flags & FLOW_PARTIAL != 0,
            tcp: tcp_info,
            dns_query,
        }
    }

    /// Records the RTT of a closed connection.
    pub fn rtt_sample(&mut self, cgroup_id: u64, srtt_us: u32) {
        if srtt_us == 0 || cgroup_id == 0 {
            return;
        }
        let ns = u64::from(srtt_us) * 1000;
        let h = self.rtt.entry(cgroup_id).or_default();
        h.hist[latency_bucket(ns)] += 1;
        h.sum_ns += ns;
    }
}

#[cfg(test)]
mod tests {
    use palisade_common::net::AF_INET;

    use super::*;

    fn key(proto: u8) -> FlowKey {
        let mut k = FlowKey {
            cgroup_id: 7,
            family: AF_INET,
            proto,
            _pad: 0,
            lport: 40000,
            rport: 8080,
            laddr: [0; 16],
            raddr: [0; 16],
        };
        k.laddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        k.raddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        k
    }

    #[test]
    fn addresses_and_cidrs() {
        let k = key(IPPROTO_TCP);
        assert_eq!(endpoint(k.family, &k.raddr, k.rport), "10.0.0.2:8080");
        assert_eq!(cidr(AF_INET, &k.raddr, 24, 64), "10.0.0.0/24");
        assert_eq!(cidr(AF_INET, &k.raddr, 31, 64), "10.0.0.2/31");
        assert_eq!(cidr(AF_INET, &k.raddr, 0, 64), "0.0.0.0/0");
        let v6: [u8; 16] = "2001:db8::1:2".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(endpoint(AF_INET6, &v6, 53), "[2001:db8::1:2]:53");
        assert_eq!(cidr(AF_INET6, &v6, 24, 64), "2001:db8::/64");
    }

    #[test]
    fn tcp_records_use_sock_ops_bytes_and_results() {
        let mut s = NetState::default();
        let f = FlowStats {
            pkts_out: 20,
            pkts_in: 15,
            bytes_out: 1_001_080,
            bytes_in: 780,
            payload_out: 1_000_000,
            payload_in: 0,
            first_ns: 1_000,
            last_ns: 5_000,
            flags: FLOW_FIRST_EGRESS,
            ..FlowStats::default()
        };
        let t = Tcp {
            what: tcp_what::CLOSED,
            key: key(IPPROTO_TCP),
            cookie: 1,
            ktime_ns: 2_000_001_000,
            start_ns: 1_000,
            bytes_received: 1,
            bytes_acked: 1_000_002,
            direction: direction::OUTBOUND,
            srtt_us: 250,
            total_retrans: 0,
            flow: None,
        };
        let r = s.record(&key(IPPROTO_TCP), &f, Some(&t), true, 0);
        assert_eq!(r.direction, "outbound");
        // payload from the packet programs, not sock_ops' sequence-space counts
        assert_eq!((r.bytes_out, r.bytes_in), (1_000_000, 0));
        assert_eq!(r.wire_bytes_out, 1_001_080);
        assert_eq!(r.duration_seconds, 2.0);
        let tcp = r.tcp.unwrap();
        assert_eq!(tcp.result, "closed");
        assert_eq!(tcp.rtt_seconds, Some(0.00025));
        let failed = Tcp {
            what: tcp_what::FAILED,
            ..t.clone()
        };
        assert_eq!(
            s.record(&key(IPPROTO_TCP), &f, Some(&failed), true, 0)
                .tcp
                .unwrap()
                .result,
            "refused"
        );
        let reset = Tcp {
            what: tcp_what::RESET,
            ..t.clone()
        };
        let r = s.record(&key(IPPROTO_TCP), &f, Some(&reset), true, 0);
        assert_eq!(r.tcp.unwrap().result, "reset");
        assert_eq!(r.bytes_out, 1_000_000, "a reset flow keeps its counts");
        let timeout = Tcp {
            what: tcp_what::FAILED,
            total_retrans: 3,
            ..t
        };
        assert_eq!(
            s.record(&key(IPPROTO_TCP), &f, Some(&timeout), true, 0)
                .tcp
                .unwrap()
                .result,
            "timeout"
        );
    }

    #[test]
    fn udp_idle_ends_flows_and_long_flows_get_interim_records() {
        let cfg = NetworkConfig {
            per_peer_metrics: true,
            ..NetworkConfig::default()
        };
        let mut s = NetState::default();
        let sec = 1_000_000_000u64;
        let udp = FlowStats {
            pkts_out: 100,
            payload_out: 51_200,
            bytes_out: 54_000,
            first_ns: sec,
            last_ns: sec,
            flags: FLOW_FIRST_EGRESS,
            ..FlowStats::default()
        };
        let tcp = FlowStats {
            first_ns: sec,
            last_ns: 100 * sec,
            bytes_in: 10,
            ..FlowStats::default()
        };
        s.dns_seen(key(IPPROTO_UDP), "db.example.test".into());
        let flows = [(key(IPPROTO_UDP), udp), (key(IPPROTO_TCP), tcp)];
        let pass = s.flow_pass(&flows, 2, 100 * sec, &cfg);
        assert_eq!(
            pass.finish,
            vec![key(IPPROTO_UDP)],
            "UDP idle for 99 s ends"
        );
        assert_eq!(
            pass.interim.len(),
            1,
            "the TCP flow is 99 s old: one interim record"
        );
        assert!(!pass.interim[0].ended);
        assert_eq!(pass.interim[0].tcp.as_ref().unwrap().result, "open");
        // no second interim record before another interval
        assert!(
            s.flow_pass(&flows[1..], 2, 101 * sec, &cfg)
                .interim
                .is_empty()
        );
        let r = s.record(&key(IPPROTO_UDP), &udp, None, true, 100 * sec);
        assert_eq!((r.bytes_out, r.packets_out), (51_200, 100));
        assert_eq!(r.dns_query.as_deref(), Some("db.example.test"));
        assert_eq!(r.direction, "outbound");
        s.ended(&key(IPPROTO_UDP), &udp, &cfg);
        s.flow_pass(&flows[1..], 5, 102 * sec, &cfg);
        assert_eq!(s.evicted_total, 5 - 1 - 1, "5 created, 1 deleted, 1 live");
        assert_eq!(s.peers.get(&(7, "tx", "10.0.0.0/24".into())), Some(&54_000));
        assert_eq!(s.peers.get(&(7, "rx", "10.0.0.0/24".into())), Some(&10));
        // a flow evicted by the kernel (gone from the table without ending) is forgotten, and
        // the bytes it carried stay counted
        assert!(s.reported.contains_key(&key(IPPROTO_TCP)));
        s.flow_pass(&[], 5, 103 * sec, &cfg);
        assert!(s.reported.is_empty());
        assert_eq!(s.peers.get(&(7, "rx", "10.0.0.0/24".into())), Some(&10));
        assert_eq!(s.deleted_total, 1);
    }

    #[test]
    fn rtt_histogram() {
        let mut s = NetState::default();
        s.rtt_sample(3, 100);
        s.rtt_sample(3, 100);
        s.rtt_sample(0, 100);
        let h = s.rtt[&3];
        assert_eq!(h.hist.iter().sum::<u64>(), 2);
        assert_eq!(h.sum_ns, 200_000);
    }
}
