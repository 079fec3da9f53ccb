//! Per-container network families: bytes and packets each way, TCP connections by result,
//! retransmits, RTT histograms, opt-in per-peer bytes; and the flow table's own fill.
use std::collections::BTreeMap;

use palisade_common::net::{NetTotals, TcpCounts};
use prometheus::proto::{MetricFamily, MetricType};

use super::{Budget, ContainerKey, Inputs, counter, family, gauge, histogram};
use crate::net::RttHist;

#[derive(Default)]
struct Agg {
    net: Option<NetTotals>,
    tcp: Option<TcpCounts>,
    rtt: Option<RttHist>,
}

pub(crate) fn families(inp: &Inputs<'_>, budget: &mut Budget) -> Vec<MetricFamily> {
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
    let mut bytes = family(
        "palisade_network_bytes_total",
        "IP bytes a container's sockets sent (tx) and received (rx), headers included.",
        MetricType::COUNTER,
    );
    let mut packets = family(
        "palisade_network_packets_total",
        "IP packets a container's sockets sent (tx) and received (rx).",
        MetricType::COUNTER,
    );
    let mut icmp = family(
        "palisade_network_icmp_packets_total",
        "ICMP and ICMPv6 packets a container's sockets sent (tx) and received (rx).",
        MetricType::COUNTER,
    );
    let mut conns = family(
        "palisade_tcp_connections_total",
        "TCP connections per container: outbound (it connected) established, refused or timeout; inbound (it accepted) established.",
        MetricType::COUNTER,
    );
    let mut retrans = family(
        "palisade_tcp_retransmits_total",
        "TCP segments a container retransmitted.",
        MetricType::COUNTER,
    );
    let mut rtts = family(
        "palisade_tcp_rtt_seconds",
        "Smoothed RTT of a container's TCP connections, sampled when each closes.",
        MetricType::HISTOGRAM,
    );
    let step = inp.cfg.latency_bucket_step.0;
    for (key, a) in &agg {
        if let Some(n) = &a.net
            && budget.take(6)
        {
            for (dir, b, p, i) in [
                ("tx", n.tx_bytes, n.tx_packets, n.icmp_tx),
                ("rx", n.rx_bytes, n.rx_packets, n.icmp_rx),
            ] {
                let l = key.labels(&[("direction", dir)]);
                bytes.mut_metric().push(counter(&l, b as f64));
                packets.mut_metric().push(counter(&l, p as f64));
                icmp.mut_metric().push(counter(&l, i as f64));
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
                conns.mut_metric().push(counter(
                    &key.labels(&[("direction", dir), ("result", result)]),
                    v as f64,
                ));
            }
            retrans
                .mut_metric()
                .push(counter(&key.labels(&[]), t.retransmits as f64));
        }
        if let Some(r) = &a.rtt
            && budget.take(histogram::series_per_histogram(step))
        {
            let h = histogram::convert(&r.hist, r.sum_ns, step);
            rtts.mut_metric()
                .push(super::histogram(&key.labels(&[]), &h));
        }
    }
    let mut out = vec![bytes, packets, icmp, conns, retrans, rtts];
    out.extend(peer_families(inp));
    out
}

/// Opt-in per-peer bytes, under their own series cap, and the flow table's fill.
fn peer_families(inp: &Inputs<'_>) -> Vec<MetricFamily> {
    let (Some(net), Some(cfg)) = (inp.net, inp.network) else {
        return Vec::new();
    };
    let mut flows = family(
        "palisade_network_flows",
        "Flows in the kernel flow table at the last walk.",
        MetricType::GAUGE,
    );
    flows.mut_metric().push(gauge(&[], net.live_flows as f64));
    let mut evicted = family(
        "palisade_network_flows_evicted_total",
        "Flows the kernel's LRU flow table dropped to make room before they ended (network.flow_entries).",
        MetricType::COUNTER,
    );
    evicted
        .mut_metric()
        .push(counter(&[], net.evicted_total as f64));
    let mut out = vec![flows, evicted];
    if cfg.per_peer_metrics {
        let mut peers = family(
            "palisade_network_peer_bytes_total",
            "IP bytes per container and remote network (remote address cut to network.peer_prefix_v4/v6).",
            MetricType::COUNTER,
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
            peers.mut_metric().push(counter(
                &key.labels(&[("direction", dir), ("remote", remote)]),
                *b as f64,
            ));
        }
        let mut d = family(
            "palisade_network_peer_series_dropped",
            "Per-peer series left out of this scrape by network.max_peer_series.",
            MetricType::GAUGE,
        );
        d.mut_metric().push(gauge(&[], dropped as f64));
        out.push(peers);
        out.push(d);
    }
    out
}
