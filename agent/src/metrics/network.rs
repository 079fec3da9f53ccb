//! Per-container network families: bytes and packets each way, TCP connections by result,
//! retransmits, RTT histograms, opt-in per-peer bytes; and the flow table's own fill.
use std::collections::BTreeMap;

use palisade_common::net::{NetTotals, TcpCounts};

use super::{
    Budget, ContainerKey, Inputs,
    expo::{Family, Kind, NONE, Out},
    histogram,
};
use crate::net::RttHist;

#[derive(Default)]
struct Agg {
    net: Option<NetTotals>,
    tcp: Option<TcpCounts>,
    rtt: Option<RttHist>,
}

pub(crate) fn families(inp: &Inputs<'_>, out: Out, budget: &mut Budget) -> Vec<Family> {
    let mut agg: BTreeMap<ContainerKey, Agg> = BTreeMap::new();
    for (id, s) in &inp.model.by_cgroup {
        let rtt = inp.net.and_then(|n| n.rtt.get(id));
        if s.net.is_none() && s.tcp.is_none() && rtt.is_none() {
            continue;
        }
        let a = agg
            .entry(ContainerKey::of(inp.registry.get(*id)))
            .or_default();
        if let Some(n) = &s.net {
            a.net.get_or_insert_with(NetTotals::default).merge(n);
        }
        if let Some(t) = &s.tcp {
            a.tcp.get_or_insert_with(TcpCounts::default).merge(t);
        }
        if let Some(r) = rtt {
            let h = a.rtt.get_or_insert_with(RttHist::default);
            for (x, y) in h.hist.iter_mut().zip(r.hist.iter()) {
                *x += y;
            }
            h.sum_ns += r.sum_ns;
        }
    }
    let mut bytes = Family::new(
        out,
        "palisade_network_bytes_total",
        "IP bytes a container's sockets sent (tx) and received (rx), headers included.",
        Kind::Counter,
    );
    let mut packets = Family::new(
        out,
        "palisade_network_packets_total",
        "IP packets a container's sockets sent (tx) and received (rx).",
        Kind::Counter,
    );
    let mut icmp = Family::new(
        out,
        "palisade_network_icmp_packets_total",
        "ICMP and ICMPv6 packets a container's sockets sent (tx) and received (rx).",
        Kind::Counter,
    );
    let mut conns = Family::new(
        out,
        "palisade_tcp_connections_total",
        "TCP connections per container: outbound (it connected) established, refused or timeout; inbound (it accepted) established.",
        Kind::Counter,
    );
    let mut retrans = Family::new(
        out,
        "palisade_tcp_retransmits_total",
        "TCP segments a container retransmitted.",
        Kind::Counter,
    );
    let mut rtts = Family::new(
        out,
        "palisade_tcp_rtt_seconds",
        "Smoothed RTT of a container's TCP connections, sampled when each closes.",
        Kind::Histogram,
    );
    let step = inp.cfg.latency_bucket_step.0;
    for (key, a) in &agg {
        let set = key.label_set();
        if let Some(n) = &a.net
            && budget.take(6)
        {
            for (dir, b, p, i) in [
                ("tx", n.tx_bytes, n.tx_packets, n.icmp_tx),
                ("rx", n.rx_bytes, n.rx_packets, n.icmp_rx),
            ] {
                let l = [("direction", dir)];
                bytes.sample(&set, &l, b);
                packets.sample(&set, &l, p);
                icmp.sample(&set, &l, i);
            }
        }
        if let Some(t) = &a.tcp
            && budget.take(5)
        {
            for (dir, result, v) in [
                ("outbound", "established", t.outbound_established),
                ("outbound", "refused", t.refused),
                ("outbound", "timeout", t.timeout),
                ("inbound", "established", t.inbound_established),
            ] {
                conns.sample(&set, &[("direction", dir), ("result", result)], v);
            }
            retrans.sample(&set, &[], t.retransmits);
        }
        if let Some(r) = &a.rtt
            && budget.take(histogram::series_per_histogram(step))
        {
            rtts.kernel_histogram(&set, &[], &r.hist, r.sum_ns, step);
        }
    }
    let mut fams = vec![bytes, packets, icmp, conns, retrans, rtts];
    fams.extend(peer_families(inp, out));
    fams
}

/// Opt-in per-peer bytes, under their own series cap, and the flow table's fill.
fn peer_families(inp: &Inputs<'_>, out: Out) -> Vec<Family> {
    let (Some(net), Some(cfg)) = (inp.net, inp.network) else {
        return Vec::new();
    };
    let mut flows = Family::new(
        out,
        "palisade_network_flows",
        "Flows in the kernel flow table at the last walk.",
        Kind::Gauge,
    );
    flows.sample(&NONE, &[], net.live_flows as u64);
    let mut evicted = Family::new(
        out,
        "palisade_network_flows_evicted_total",
        "Flows the kernel's LRU flow table dropped to make room before they ended (network.flow_entries).",
        Kind::Counter,
    );
    evicted.sample(&NONE, &[], net.evicted_total);
    let mut fams = vec![flows, evicted];
    if cfg.per_peer_metrics {
        let mut peers = Family::new(
            out,
            "palisade_network_peer_bytes_total",
            "IP bytes per container and remote network (remote address cut to network.peer_prefix_v4/v6).",
            Kind::Counter,
        );
        let mut rows: BTreeMap<(ContainerKey, &str, &str), u64> = BTreeMap::new();
        for ((cg, dir, remote), b) in &net.peers {
            *rows
                .entry((
                    ContainerKey::of(inp.registry.get(*cg)),
                    *dir,
                    remote.as_str(),
                ))
                .or_default() += b;
        }
        let dropped = rows.len().saturating_sub(cfg.max_peer_series);
        for ((key, dir, remote), b) in rows.iter().take(cfg.max_peer_series) {
            peers.sample(
                &key.label_set(),
                &[("direction", dir), ("remote", remote)],
                *b,
            );
        }
        let mut d = Family::new(
            out,
            "palisade_network_peer_series_dropped",
            "Per-peer series left out of this scrape by network.max_peer_series.",
            Kind::Gauge,
        );
        d.sample(&NONE, &[], dropped as u64);
        fams.push(peers);
        fams.push(d);
    }
    fams
}
