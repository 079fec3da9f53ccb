//! The agent's side of network telemetry: TCP connection ends and DNS packets from the ring
//! buffer, and the periodic walk of the flow table, turned into flow records.
use std::time::SystemTime;

use palisade_common::net::{FlowKey, tcp_what};
use tracing::warn;

use super::normalize;
use crate::{
    events::{Clock, Event, EventType, rfc3339},
    kernel::{
        KernelError,
        events::{Dns, Tcp},
    },
    state::{Shared, container_ref},
};

/// CLOCK_MONOTONIC now, in ns (the kernel's timestamps).
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Shared {
    /// A connection closed or failed: take its flow out of the table and write its record.
    pub(crate) async fn on_tcp(&self, t: Tcp, clock: &Clock) {
        if t.what == tcp_what::ESTABLISHED {
            return; // counted in the kernel; the record comes at the end
        }
        let key = normalize(t.key);
        let stats = match t.flow {
            // the usual case: sock_ops took the entry out of the table at close
            Some(f) => f,
            None => match self.kernel.take_flows(vec![key]).await {
                Ok(v) => v.into_iter().next().map(|(_, f)| f).unwrap_or_default(),
                Err(e) => {
                    warn!(error = %e, "cannot read a closed connection's flow");
                    return;
                }
            },
        };
        let mut new = Vec::new();
        let mut st = self.state.lock().await;
        let cfg = &self.config.network;
        if t.what == tcp_what::CLOSED || t.what == tcp_what::RESET {
            st.net.rtt_sample(key.cgroup_id, t.srtt_us);
        }
        st.net.ended(&key, &stats, cfg);
        if !self.hub.has_consumers() {
            return; // counted; nobody reads flow records
        }
        let record = st.net.record(&key, &stats, Some(&t), true, t.ktime_ns);
        let Some(identity) = self.identity_of(&mut st, key.cgroup_id, &mut new) else {
            return;
        };
        drop(st);
        self.hub.publish(Event {
            flow: Some(record),
            ..Event::new(
                EventType::Flow,
                rfc3339(clock.wall(t.ktime_ns)),
                container_ref(&identity),
            )
        });
        self.select_new(new).await;
    }

    pub(crate) async fn on_dns(&self, d: Dns) {
        if let Some(name) = super::dns::query_name(&d.payload) {
            self.state.lock().await.net.dns_seen(d.key, name);
        }
    }

    /// Ends idle flows and writes interim records of long ones.
    pub(crate) async fn flow_pass(
        &self,
        flows: &[(FlowKey, palisade_common::net::FlowStats)],
        created: u64,
    ) -> Result<(), KernelError> {
        let now = monotonic_ns();
        let clock = Clock::now();
        let cfg = &self.config.network;
        let pass = self
            .state
            .lock()
            .await
            .net
            .flow_pass(flows, created, now, cfg);
        let ended = if pass.finish.is_empty() {
            Vec::new()
        } else {
            self.kernel.take_flows(pass.finish).await?
        };
        let mut events = Vec::new();
        let mut new = Vec::new();
        {
            let mut st = self.state.lock().await;
            for (key, record) in pass.interim_keys.iter().zip(pass.interim) {
                if let Some(i) = self.identity_of(&mut st, key.cgroup_id, &mut new) {
                    events.push(Event {
                        flow: Some(record),
                        ..Event::new(
                            EventType::Flow,
                            rfc3339(SystemTime::now()),
                            container_ref(&i),
                        )
                    });
                }
            }
            for (key, stats) in &ended {
                st.net.ended(key, stats, cfg);
                let record = st.net.record(key, stats, None, true, now);
                if let Some(i) = self.identity_of(&mut st, key.cgroup_id, &mut new) {
                    events.push(Event {
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
        for e in events {
            self.hub.publish(e);
        }
        self.select_new(new).await;
        Ok(())
    }
}
