//! Collections: read the kernel maps (through the kernel actor), apply them, read cgroupfs
//! (off the task), then answer whoever waits: scrapes get one rendered page between them,
//! `policy learn` its view. Background collections also walk the flow table.
use std::{
    collections::HashSet,
    sync::Arc,
    time::{Instant, SystemTime},
};

use palisade_common::net::{FlowKey, FlowStats};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{
    Counts, LearnRequest, LearnView, StateError,
    owner::{Internal, Owner},
};
use crate::{
    kernel::{KernelError, KernelSnapshot},
    metrics::{self, Page},
    resources,
};

const EPERM: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Phase {
    /// Waiting for the kernel's snapshot.
    #[default]
    Kernel,
    /// Waiting for cgroupfs readings.
    Resources,
}

/// One collection and who waits for it.
#[derive(Default)]
pub(super) struct Collection {
    phase: Phase,
    /// Read the flow table.
    pub flows_read: bool,
    /// End idle flows and write interim records (background collections).
    pub flow_pass: bool,
    /// Read cgroupfs for every live cgroup (background collections, or every scrape with
    /// `resources.read_on_scrape`); otherwise only for cgroups not read yet, and a scrape
    /// serves the last background readings (at most `metrics.collect_interval` old).
    pub resources_all: bool,
    pub scrapes: Vec<oneshot::Sender<Result<Arc<Page>, StateError>>>,
    pub learns: Vec<(LearnRequest, oneshot::Sender<Result<LearnView, StateError>>)>,
    started: Option<Instant>,
    flows: Option<Vec<(FlowKey, FlowStats)>>,
    flows_created: u64,
}

impl Collection {
    fn fail(self, e: &StateError) {
        for s in self.scrapes {
            let _ = s.send(Err(e.clone()));
        }
        for (_, l) in self.learns {
            let _ = l.send(Err(e.clone()));
        }
    }
}

impl Owner {
    /// Joins the next collection (one that starts after this request), starting it at once
    /// when nothing is in flight.
    pub(super) fn want_collection(&mut self, f: impl FnOnce(&mut Collection)) {
        f(self.next.get_or_insert_with(Collection::default));
        if self.current.is_none() {
            self.start_next();
        }
    }

    fn start_next(&mut self) {
        let Some(mut c) = self.next.take() else {
            return;
        };
        c.started = Some(Instant::now());
        let reap = self.registry.unreaped();
        let flows = c.flows_read && self.config.network.enabled;
        match self.kernel.collect(reap, flows) {
            Ok(()) => self.current = Some(c),
            Err(e) => c.fail(&StateError::Kernel(Arc::new(e))),
        }
    }

    pub(super) async fn on_snapshot(&mut self, snap: Result<KernelSnapshot, KernelError>) {
        let Some(mut c) = self.current.take().filter(|c| c.phase == Phase::Kernel) else {
            warn!("a kernel snapshot nobody asked for");
            return;
        };
        let snap = match snap {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "collection failed");
                c.fail(&StateError::Kernel(Arc::new(e)));
                self.start_next();
                return;
            }
        };
        self.apply_snapshot(&snap);
        c.flows = snap.flows;
        c.flows_created = snap.flows_created;
        if !self.config.resources.enabled {
            return self.finish(c).await;
        }
        // cgroupfs is read off the task; the readings come back as `Internal::Resources`
        let all = c.resources_all || self.config.resources.read_on_scrape;
        let model = &self.model;
        let live: Vec<(u64, String)> = self
            .registry
            .live()
            .filter(|i| {
                all || model
                    .by_cgroup
                    .get(&i.cgroup_id)
                    .is_none_or(|e| e.resources.is_none())
            })
            .map(|i| (i.cgroup_id, i.path.clone()))
            .collect();
        if live.is_empty() {
            return self.finish(c).await;
        }
        let reader = self.resources.clone();
        let tx = self.internal.clone();
        tokio::task::spawn_blocking(move || {
            let read = live
                .into_iter()
                .map(|(id, path)| (id, reader.read(&path)))
                .collect();
            let _ = tx.blocking_send(Internal::Resources(read));
        });
        c.phase = Phase::Resources;
        self.current = Some(c);
    }

    /// The kernel's numbers into the model; removed cgroups reaped, unknown ids named, old
    /// removals expired, container names looked up.
    fn apply_snapshot(&mut self, snap: &KernelSnapshot) {
        let now = Instant::now();
        let mut unknown: Vec<u64> = snap
            .syscalls
            .iter()
            .map(|(k, _)| k.cgroup_id)
            .chain(snap.errnos.iter().map(|(k, _)| k.cgroup_id))
            .chain(snap.processes.iter().map(|(id, _)| *id))
            .chain(snap.net.iter().map(|(id, _)| *id))
            .chain(snap.tcp.iter().map(|(id, _)| *id))
            .filter(|id| self.registry.get(*id).is_none())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        for id in unknown {
            // An event was lost or not yet processed: ask the kernel for the path by id.
            if self.identity_of(id).is_none() {
                debug!(
                    cgroup_id = id,
                    "unknown cgroup not found by id: taken for removed"
                );
                self.registry.mark_removed(id, None, now);
            }
        }
        self.model.apply(snap);
        self.registry.mark_reaped(&snap.reaped);
        let expired = self
            .registry
            .expire(now, self.config.metrics.series_grace_period);
        self.model.forget(&expired);
        self.net.forget_cgroups(&expired);
        let window = self.config.identity.name_resolution_window;
        // a fresh `now`: cgroups learned during this pass are due at once
        let now = Instant::now();
        for identity in self.registry.due_for_naming(now) {
            let found = self.resolver.resolve(&identity);
            self.registry
                .apply_names(identity.cgroup_id, found, now, window);
        }
    }

    pub(super) async fn on_resources(&mut self, read: Vec<(u64, resources::Resources)>) {
        let Some(c) = self.current.take().filter(|c| c.phase == Phase::Resources) else {
            warn!("cgroupfs readings nobody asked for");
            return;
        };
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        for (id, mut r) in read {
            if let Some(i) = self.registry.get(id).filter(|i| i.is_live()) {
                if let Some(created) = i.created_at {
                    r.start_time_seconds = created
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .ok()
                        .map(|d| d.as_secs_f64());
                }
                let e = self.model.by_cgroup.entry(id).or_default();
                e.resources = Some(r);
                e.last_seen = Some(unix);
            }
        }
        self.finish(c).await;
    }

    /// Everything after the readings: the kernel filter and the policy task hear of new
    /// cgroups, the flow pass, then the answers; then the next collection starts.
    async fn finish(&mut self, c: Collection) {
        let _ = self.flush_new().await;
        self.policy_sync(false).await;
        if c.flow_pass
            && let Some(flows) = &c.flows
        {
            self.flow_pass(flows, c.flows_created);
        }
        if !c.scrapes.is_empty() || self.published.is_some() {
            let page = Arc::new(Page::new(self.render(
                c.started.unwrap_or_else(Instant::now),
                !c.scrapes.is_empty(),
            )));
            for s in c.scrapes {
                let _ = s.send(Ok(page.clone()));
            }
        }
        for (req, reply) in c.learns {
            let _ = reply.send(Ok(self.learn_view(&req, c.flows.as_deref())));
        }
        self.start_next();
    }

    /// The `/metrics` page from the current numbers (an empty page unless `page`); the families
    /// also go to the OTLP metrics export when it runs.
    fn render(&self, started: Instant, page: bool) -> Vec<bytes::Bytes> {
        let policy = self.policy.snapshot();
        let out = metrics::expo::Out {
            text: page,
            proto: self.published.is_some(),
        };
        let rendered = metrics::render(
            &metrics::Inputs {
                model: &self.model,
                registry: &self.registry,
                info: &self.info,
                cfg: &self.config.metrics,
                hub: Some(&self.hub),
                procs_evicted: self.procs.evicted_total,
                procs_live: self.procs.len(),
                net: self.config.network.enabled.then_some(&self.net),
                network: Some(&self.config.network),
                policy: Some(&policy),
            },
            &self.own,
            out,
        );
        if page {
            self.own.observe_scrape(started.elapsed().as_secs_f64());
        }
        if let Some(tx) = &self.published {
            tx.send_replace(Arc::new(rendered.families));
        }
        rendered.text
    }

    /// The live cgroups whose name or id matches, the syscall counts of those and of the
    /// cgroups asked for, and their flows.
    fn learn_view(&self, req: &LearnRequest, flows: Option<&[(FlowKey, FlowStats)]>) -> LearnView {
        let cgroups: Vec<u64> = self
            .registry
            .live()
            .filter(|i| req.pattern.is_match(&i.name) || req.pattern.is_match(i.display_id()))
            .map(|i| i.cgroup_id)
            .collect();
        let mut ids: HashSet<u64> = cgroups.iter().copied().collect();
        ids.extend(req.include.iter().copied());
        LearnView {
            counts: ids.iter().map(|id| (*id, self.counts(*id))).collect(),
            flows: flows
                .unwrap_or_default()
                .iter()
                .filter(|(k, _)| ids.contains(&k.cgroup_id))
                .copied()
                .collect(),
            cgroups,
        }
    }

    /// Calls and EPERM results per syscall of one cgroup.
    fn counts(&self, cgroup_id: u64) -> Counts {
        let mut out = Counts::new();
        if let Some(c) = self.model.by_cgroup.get(&cgroup_id) {
            for (nr, s) in &c.syscalls {
                out.entry(*nr).or_default().0 = *s;
            }
            for ((nr, errno), n) in &c.errnos {
                if *errno == EPERM {
                    out.entry(*nr).or_default().1 = *n;
                }
            }
        }
        out
    }
}
