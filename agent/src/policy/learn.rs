//! `palisade policy learn`, the agent's side: for a time window, record what the containers
//! named by a glob did — syscalls (from the syscall telemetry counts, before/after), programs
//! (exec events), peers (flow records and the live flow table) — and answer with the lot.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    time::Duration,
};

use palisade_common::net::{AF_INET, FLOW_FIRST_EGRESS, FlowKey, IPPROTO_TCP};
use palisade_policy::learn::Learned;
use tokio::sync::broadcast::error::RecvError;

use crate::{config::Pattern, events::EventType, state::Shared};

const EPERM: u32 = 1;

/// Calls and EPERM results per syscall of one cgroup.
type Counts = HashMap<u32, (u64, u64)>;

fn counts(shared_model: &crate::model::Model, cgroup_id: u64) -> Counts {
    let mut out = Counts::new();
    if let Some(c) = shared_model.by_cgroup.get(&cgroup_id) {
        for (nr, s) in &c.syscalls {
            out.entry(*nr).or_default().0 = s.calls;
        }
        for ((nr, errno), n) in &c.errnos {
            if *errno == EPERM {
                out.entry(*nr).or_default().1 = *n;
            }
        }
    }
    out
}

fn proto(p: u8) -> String {
    if p == IPPROTO_TCP { "tcp" } else { "udp" }.to_owned()
}

fn addr(key: &FlowKey, remote: bool) -> Option<IpAddr> {
    let b = if remote { &key.raddr } else { &key.laddr };
    if key.family == AF_INET {
        Some(IpAddr::from([b[0], b[1], b[2], b[3]]))
    } else {
        Some(IpAddr::from(*b))
    }
}

/// `a.b.c.d:port` / `[v6]:port` → (address, port).
fn endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let sa: std::net::SocketAddr = s.parse().ok()?;
    Some((sa.ip(), sa.port()))
}

/// Learns for `window`; `container` is a glob over container names and ids.
pub async fn learn(shared: &Shared, container: &str, window: Duration) -> Result<Learned, String> {
    let pat = Pattern::new(container).map_err(|e| e.to_string())?;
    let matches = |name: &str, id: &str| pat.is_match(name) || pat.is_match(id);
    let mut rx = shared.hub.subscribe();
    shared.collect(false).await.map_err(|e| e.to_string())?;
    let mut cgroups: HashSet<u64> = HashSet::new();
    let mut base: HashMap<u64, Counts> = HashMap::new();
    {
        let st = shared.state.lock().await;
        for i in st.registry.live() {
            if matches(&i.name, i.display_id()) {
                cgroups.insert(i.cgroup_id);
                base.insert(i.cgroup_id, counts(&st.model, i.cgroup_id));
            }
        }
    }
    tracing::info!(
        container,
        seconds = window.as_secs_f64(),
        cgroups = cgroups.len(),
        "learning started"
    );
    let mut l = Learned::default();
    let deadline = tokio::time::Instant::now() + window;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            ev = rx.recv() => {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "learning missed events");
                        continue;
                    }
                    Err(RecvError::Closed) => break,
                };
                if !matches(&ev.container.name, &ev.container.id) {
                    continue;
                }
                cgroups.insert(ev.container.cgroup_id);
                match ev.kind {
                    EventType::Exec => {
                        if let Some(p) = &ev.process && !p.exe.is_empty() {
                            l.execs.insert(p.exe.clone());
                        }
                    }
                    EventType::Flow => {
                        if let Some(f) = &ev.flow {
                            if f.direction == "outbound" {
                                if let Some((a, port)) = endpoint(&f.remote) {
                                    l.egress.insert((a, port, f.protocol.clone()));
                                }
                            } else if let Some((_, port)) = endpoint(&f.local) {
                                l.ingress.insert((port, f.protocol.clone()));
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    shared.collect(false).await.map_err(|e| e.to_string())?;
    let live_flows = shared
        .kernel
        .collect(Vec::new(), true)
        .await
        .map_err(|e| e.to_string())?
        .flows
        .unwrap_or_default();
    {
        let st = shared.state.lock().await;
        for i in st.registry.live() {
            if matches(&i.name, i.display_id()) {
                cgroups.insert(i.cgroup_id);
            }
        }
        let mut refused: BTreeSet<String> = BTreeSet::new();
        for cg in &cgroups {
            let before = base.remove(cg).unwrap_or_default();
            for (nr, (calls, eperm)) in counts(&st.model, *cg) {
                let (c0, e0) = before.get(&nr).copied().unwrap_or((0, 0));
                let (dc, de) = (calls.saturating_sub(c0), eperm.saturating_sub(e0));
                if dc == 0 {
                    continue;
                }
                let name = palisade_syscalls::label(nr).into_owned();
                if name.parse::<u32>().is_ok() {
                    continue;
                }
                if de >= dc {
                    refused.insert(name);
                } else {
                    l.syscalls.insert(name);
                }
            }
        }
        l.refused = refused.difference(&l.syscalls).cloned().collect();
    }
    for (key, stats) in live_flows {
        if !cgroups.contains(&key.cgroup_id) {
            continue;
        }
        if stats.flags & FLOW_FIRST_EGRESS != 0 {
            if let Some(a) = addr(&key, true) {
                l.egress.insert((a, key.rport, proto(key.proto)));
            }
        } else {
            l.ingress.insert((key.lport, proto(key.proto)));
        }
    }
    if cgroups.is_empty() {
        return Err(format!(
            "no container matching `{container}` was seen during the {}",
            humantime::format_duration(window)
        ));
    }
    Ok(l)
}

/// The learned data as the control socket sends it.
pub fn to_wire(l: &Learned) -> palisade_proto::Learned {
    palisade_proto::Learned {
        syscalls: l.syscalls.iter().cloned().collect(),
        refused: l.refused.iter().cloned().collect(),
        execs: l.execs.iter().cloned().collect(),
        egress: l
            .egress
            .iter()
            .map(|(addr, port, protocol)| palisade_proto::Peer {
                addr: *addr,
                port: *port,
                protocol: protocol.clone(),
            })
            .collect(),
        ingress: l
            .ingress
            .iter()
            .map(|(port, protocol)| palisade_proto::Port {
                port: *port,
                protocol: protocol.clone(),
            })
            .collect(),
    }
}
