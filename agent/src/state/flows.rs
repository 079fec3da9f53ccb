//! The state owner's side of network telemetry: TCP connection ends and DNS packets from the
//! kernel's stream, and the periodic walk of the flow table, turned into flow records.
use std::time::SystemTime;

use palisade_common::net::{FlowKey, FlowStats, tcp_what};
use tracing::warn;

use super::{apply::container_ref, owner::Owner};
use crate::{
    events::{Clock, Event, EventType, rfc3339},
    kernel::events::{Dns, Tcp},
};

/// CLOCK_MONOTONIC now, in ns (the kernel's timestamps).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Owner {
    /// A connection closed or failed: its flow left the table (taken by `sock_ops`, or by the
    /// kernel actor); write its record.
    pub(super) fn on_tcp(&mut self, t: Tcp, clock: &Clock) {
        if t.what == tcp_what::ESTABLISHED {
            return; // counted in the kernel; the record comes at the end
        }
        let key = t.key;
        let stats = t.flow.unwrap_or_default();
        let cfg = &self.config.network;
        if t.what == tcp_what::CLOSED || t.what == tcp_what::RESET {
            self.net.rtt_sample(key.cgroup_id, t.srtt_us);
        }
        self.net.ended(&key, &stats, cfg);
        if !self.hub.has_consumers() {
            return; // counted; nobody reads flow records
        }
        let record = self.net.record(&key, &stats, Some(&t), true, t.ktime_ns);
        let Some(identity) = self.identity_of(key.cgroup_id) else {
            return;
        };
        self.hub.publish(Event {
            flow: Some(record),
            ..Event::new(
                EventType::Flow,
                rfc3339(clock.wall(t.ktime_ns)),
                container_ref(&identity),
            )
        });
    }

    pub(super) fn on_dns(&mut self, d: Dns) {
        if let Some(name) = crate::net::dns::query_name(&d.payload) {
            self.net.dns_seen(d.key, name);
        }
    }

    /// Writes interim records of long flows and asks the kernel for the flows that ended (idle
    /// UDP, idle TCP); their records follow in [`Owner::on_taken`].
    pub(super) fn flow_pass(&mut self, flows: &[(FlowKey, FlowStats)], created: u64) {
        let now = monotonic_ns();
        let pass = self
            .net
            .flow_pass(flows, created, now, &self.config.network);
        if !pass.finish.is_empty()
            && let Err(e) = self.kernel.take_flows(pass.finish)
        {
            warn!(error = %e, "cannot end idle flows");
        }
        for (key, record) in pass.interim_keys.iter().zip(pass.interim) {
            if let Some(i) = self.identity_of(key.cgroup_id) {
                self.hub.publish(Event {
                    flow: Some(record),
                    ..Event::new(
                        EventType::Flow,
                        rfc3339(SystemTime::now()),
                        container_ref(&i),
                    )
                });
            }
        }
    }

    /// Flows the kernel actor took out of the table for a flow pass: they ended.
    pub(super) fn on_taken(&mut self, ended: Vec<(FlowKey, FlowStats)>) {
        let now = monotonic_ns();
        let clock = Clock::now();
        for (key, stats) in &ended {
            self.net.ended(key, stats, &self.config.network);
            let record = self.net.record(key, stats, None, true, now);
            if let Some(i) = self.identity_of(key.cgroup_id) {
                self.hub.publish(Event {
                    flow: Some(record),
                    ..Event::new(
                        EventType::Flow,
                        rfc3339(clock.wall(stats.last_ns)),
                        container_ref(&i),
                    )
                });
            }
        }
    }
}
