//! `palisade policy learn`, the agent's side: for a time window, record what the containers
//! named by a glob did — syscalls (from the syscall telemetry counts, before/after), programs
//! (exec events), peers (flow records and the live flow table), files written (a program of
//! its own, `learn_files`) — and answer with the lot.
use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use palisade_common::net::{AF_INET, FLOW_FIRST_EGRESS, FlowKey, IPPROTO_TCP};
use palisade_policy::learn::Learned;
use tokio::sync::{
    Notify,
    broadcast::error::{RecvError, TryRecvError},
};

use crate::{
    config::{Pattern, PatternError},
    events::{Event, EventType},
    state::{LearnRequest, StateError},
};

/// The file process `pid` runs, as the process sees it (`/proc/PID/exe`; for a process in
/// another mount namespace the kernel gives the path from that namespace's root). `None` when
/// the process is gone or the file has no path.
fn file_executed(pid: u32) -> Option<String> {
    let p = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let p = p.to_str()?;
    (p.starts_with('/') && !p.ends_with(" (deleted)")).then(|| p.to_owned())
}

/// Why learning gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Pattern(#[from] PatternError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("no container matching `{container}` was seen during the {window}")]
    NothingSeen { container: String, window: String },
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

/// Records what event `ev` says about the containers `matches` selects: a new cgroup (watched
/// for file writes too), a program executed, a peer.
fn observe(
    ev: &Event,
    matches: &impl Fn(&str, &str) -> bool,
    cgroups: &mut HashSet<u64>,
    files: &mut Result<Option<super::learn_files::FileLearner>, String>,
    l: &mut Learned,
) {
    if !matches(&ev.container.name, &ev.container.id) {
        return;
    }
    if cgroups.insert(ev.container.cgroup_id)
        && let Ok(Some(f)) = files
    {
        f.add(ev.container.cgroup_id);
    }
    match ev.kind {
        EventType::Exec => {
            if let Some(p) = &ev.process
                && !p.exe.is_empty()
            {
                l.execs.insert(p.exe.clone());
                // exec rules see the file executed: its path too, when the process is still
                // there to ask
                if let Some(real) = file_executed(p.pid) {
                    l.execs.insert(real);
                }
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

/// The learning windows open now, by pattern: `policy_learn_end` ends those of its pattern.
#[derive(Default)]
pub struct Windows {
    open: std::sync::Mutex<Vec<(String, Arc<Notify>)>>,
}

/// An open window; closed (forgotten) when dropped. Its `end` is also what tells it from the
/// other windows of its pattern.
pub struct Open<'a> {
    windows: &'a Windows,
    /// Notified by [`Windows::end`].
    pub end: Arc<Notify>,
}

impl Windows {
    fn open(&self, pattern: &str) -> Open<'_> {
        let end = Arc::new(Notify::new());
        self.lock().push((pattern.to_owned(), end.clone()));
        Open { windows: self, end }
    }

    /// Ends the open windows of `pattern` now; how many.
    pub fn end(&self, pattern: &str) -> usize {
        let open = self.lock();
        let mut n = 0;
        for (p, end) in open.iter() {
            if p == pattern {
                // stored if the window is not waiting at this moment: it ends at its next wait
                end.notify_one();
                n += 1;
            }
        }
        n
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Arc<Notify>)>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.windows
            .lock()
            .retain(|(_, end)| !Arc::ptr_eq(end, &self.end));
    }
}

/// Learns for `window`; `container` is a glob over container names and ids.
pub async fn learn(
    ctx: &super::Context,
    container: &str,
    window: Duration,
) -> Result<palisade_proto::Learned, LearnError> {
    let pat = Pattern::new(container)?;
    let matches = |name: &str, id: &str| pat.is_match(name) || pat.is_match(id);
    let mut rx = ctx.hub.subscribe();
    let ask = |include: Vec<u64>, flows: bool| LearnRequest {
        pattern: pat.clone(),
        include,
        flows,
    };
    let mut base = ctx.state.learn(ask(Vec::new(), false)).await?;
    let mut cgroups: HashSet<u64> = base.cgroups.iter().copied().collect();
    // file writes are watched once their program is loaded (it takes a while; the other
    // sources start now): said in the log
    let start: Vec<u64> = cgroups.iter().copied().collect();
    let mut loading =
        tokio::task::spawn_blocking(move || super::learn_files::FileLearner::start(&start));
    let mut loaded = false;
    let mut files: Result<Option<super::learn_files::FileLearner>, String> = Ok(None);
    tracing::info!(
        container,
        seconds = window.as_secs_f64(),
        cgroups = cgroups.len(),
        "learning started"
    );
    let mut l = Learned::default();
    let mut drain = tokio::time::interval(Duration::from_millis(200));
    let started = tokio::time::Instant::now();
    let deadline = started + window;
    let open = ctx.learning.open(container);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            () = open.end.notified() => {
                tracing::info!(container, "learning ended early");
                break;
            }
            r = &mut loading, if !loaded => {
                loaded = true;
                files = match r {
                    Ok(Ok(mut f)) => {
                        // the cgroups seen while it loaded
                        for cg in &cgroups {
                            f.add(*cg);
                        }
                        tracing::info!(container, "learning: file writes watched");
                        Ok(Some(f))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "learning: file writes will not be learned");
                        Err(e.to_string())
                    }
                    Err(e) => Err(format!("loading the program: {e}")),
                };
            }
            _ = drain.tick() => {
                if let Ok(Some(f)) = &mut files {
                    f.drain();
                }
            }
            ev = rx.recv() => match ev {
                Ok(ev) => observe(&ev, &matches, &mut cgroups, &mut files, &mut l),
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "learning missed events");
                }
                Err(RecvError::Closed) => break,
            },
        }
    }
    // the events already published when the window closed (an early end can come while some
    // wait in the queue: the ones of a workload that just ended)
    loop {
        match rx.try_recv() {
            Ok(ev) => observe(&ev, &matches, &mut cgroups, &mut files, &mut l),
            Err(TryRecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "learning missed events");
            }
            Err(_) => break,
        }
    }
    // as the user reads it: whole seconds
    let window = Duration::from_secs(started.elapsed().as_secs_f64().round() as u64);
    let end = ctx
        .state
        .learn(ask(cgroups.iter().copied().collect(), true))
        .await?;
    cgroups.extend(end.cgroups.iter().copied());
    let mut refused: BTreeSet<String> = BTreeSet::new();
    for cg in &cgroups {
        let before = base.counts.remove(cg).unwrap_or_default();
        let Some(after) = end.counts.get(cg) else {
            continue;
        };
        for (nr, (calls, eperm)) in after {
            let (c0, e0) = before.get(nr).copied().unwrap_or((0, 0));
            let (dc, de) = (calls.saturating_sub(c0), eperm.saturating_sub(e0));
            if dc == 0 {
                continue;
            }
            let Some(name) = palisade_syscalls::name(*nr) else {
                continue;
            };
            if de >= dc {
                refused.insert(name.to_owned());
            } else {
                l.syscalls.insert(name.to_owned());
            }
        }
    }
    l.refused = refused.difference(&l.syscalls).cloned().collect();
    for (key, stats) in &end.flows {
        if !cgroups.contains(&key.cgroup_id) {
            continue;
        }
        if stats.flags & FLOW_FIRST_EGRESS != 0 {
            if let Some(a) = addr(key, true) {
                l.egress.insert((a, key.rport, proto(key.proto)));
            }
        } else {
            l.ingress.insert((key.lport, proto(key.proto)));
        }
    }
    if !loaded {
        // dropped: the program, loaded later, detaches with it
        files = Err("the program was not loaded before the window closed".into());
    }
    let (writes, lost) = match files {
        Ok(Some(f)) => {
            let (w, lost) = f.finish();
            (Ok(w), lost)
        }
        Ok(None) => (Err("not loaded".to_owned()), 0),
        Err(e) => (Err(e), 0),
    };
    if cgroups.is_empty() {
        return Err(LearnError::NothingSeen {
            container: container.to_owned(),
            window: humantime::format_duration(window).to_string(),
        });
    }
    let mut w = to_wire(&l);
    w.files_learned = true;
    w.files_lost = lost;
    match writes {
        Ok(f) => {
            w.files = f
                .files
                .into_iter()
                .map(|(path, a)| palisade_proto::FileWrite {
                    path,
                    access: a.into_iter().collect(),
                })
                .collect();
            w.files_unresolved = f.unresolved.into_iter().collect();
        }
        Err(e) => w.files_error = Some(e),
    }
    Ok(w)
}

/// The learned data as the control socket sends it (files apart).
fn to_wire(l: &Learned) -> palisade_proto::Learned {
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
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_end_reaches_the_open_windows_of_its_pattern_only() {
        let w = Windows::default();
        let web = w.open("web-*");
        let web2 = w.open("web-*");
        let db = w.open("db");
        assert_eq!(w.end("web"), 0, "patterns match as strings, not as globs");
        assert_eq!(w.end("web-*"), 2);
        // stored for a window not waiting yet: it ends at its next wait
        web.end.notified().await;
        web2.end.notified().await;
        drop(web);
        drop(web2);
        assert_eq!(w.end("web-*"), 0, "a closed window is forgotten");
        assert_eq!(w.end("db"), 1);
        db.end.notified().await;
    }
}
