//! The state owner: one task owns the identity registry, the per-cgroup numbers (model), the
//! process table, the name resolver and the network state, as the kernel actor owns the eBPF
//! object.
//!
//! Who owns what, and who waits for whom:
//! - the kernel actor owns the loaded telemetry object; its output (ring-buffer events, map
//!   snapshots, flows taken out of the table) reaches this task in one ordered stream, so a
//!   snapshot is always applied after every event read before it;
//! - this task applies that stream, the collection ticks and the rescans in order. It sends
//!   commands to the kernel actor and the policy task and never waits for their answers (the
//!   only wait is for room in the policy task's queue; the policy task never waits for this
//!   one);
//! - `/metrics`, the control socket and start-up ask it over [`StateHandle`] and get a
//!   `oneshot` reply: a rendered page (shared by every scrape waiting for the same
//!   collection), a registration's outcome, what `policy learn` needs.
//!
//! No lock is held anywhere: the data is this task's alone.
mod apply;
mod collect;
mod flows;
mod owner;

use std::{collections::HashMap, sync::Arc};

use palisade_common::net::{FlowKey, FlowStats};
use tokio::sync::{mpsc, oneshot};

pub use owner::{Parts, spawn};

use crate::{config::Pattern, kernel::KernelError, metrics::Page, policy::Launched};

/// Why the owner could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    #[error("the agent's state task has stopped")]
    Gone,
    #[error("collection failed: {0}")]
    Kernel(Arc<KernelError>),
    #[error("cannot walk the cgroup tree at {root}: {source}", root = .root.display())]
    Walk {
        root: std::path::PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("policy: {0}")]
    Policy(Arc<crate::policy::PolicyError>),
    #[error("policy: cgroup {0} is not known to the agent")]
    UnknownCgroup(u64),
}

/// Syscall number → (calls, calls that failed with EPERM), for one cgroup.
pub type Counts = HashMap<u32, (u64, u64)>;

/// Which cgroups `policy learn` is about.
#[derive(Debug, Clone)]
pub struct LearnRequest {
    /// Live cgroups whose name or id matches.
    pub pattern: Pattern,
    /// Cgroups seen during the window (perhaps removed since): their counts too.
    pub include: Vec<u64>,
    /// Read the flow table too.
    pub flows: bool,
}

/// What `policy learn` reads at the start and the end of its window, after a fresh collection.
#[derive(Debug, Default)]
pub struct LearnView {
    /// Live cgroups whose name or id matches.
    pub cgroups: Vec<u64>,
    pub counts: HashMap<u64, Counts>,
    /// Their flows in the kernel table (when asked).
    pub flows: Vec<(FlowKey, FlowStats)>,
}

pub enum Cmd {
    /// Collect now and answer with the `/metrics` page.
    Scrape {
        reply: oneshot::Sender<Result<Arc<Page>, StateError>>,
    },
    /// A launcher's workload: name it, trace it (past a `--cgroup` filter), apply its policies;
    /// answers once all three are in place.
    Register {
        name: String,
        cgroup_id: u64,
        path: String,
        launched: Option<Launched>,
        reply: oneshot::Sender<Result<(), StateError>>,
    },
    /// Collect now (the flow table too when asked) and answer with the matching cgroups.
    Learn {
        req: LearnRequest,
        reply: oneshot::Sender<Result<LearnView, StateError>>,
    },
    /// Whether any of these cgroups is a launched workload's (`palisade run` registered it).
    Launched {
        ids: Vec<u64>,
        reply: oneshot::Sender<Result<bool, StateError>>,
    },
    /// Walk the unified hierarchy now; answers with the number of known cgroups.
    Rescan {
        reply: oneshot::Sender<Result<usize, StateError>>,
    },
}

/// Cheap, cloneable way to ask the owner.
#[derive(Clone)]
pub struct StateHandle {
    tx: mpsc::Sender<Cmd>,
}

impl StateHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StateError>>) -> Cmd,
    ) -> Result<T, StateError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| StateError::Gone)?;
        rx.await.map_err(|_| StateError::Gone)?
    }

    /// The page of a collection that starts after this call (shared with the scrapes that ask
    /// before it starts).
    pub async fn scrape(&self) -> Result<Arc<Page>, StateError> {
        self.ask(|reply| Cmd::Scrape { reply }).await
    }

    pub async fn register(
        &self,
        name: String,
        cgroup_id: u64,
        path: String,
        launched: Option<Launched>,
    ) -> Result<(), StateError> {
        self.ask(|reply| Cmd::Register {
            name,
            cgroup_id,
            path,
            launched,
            reply,
        })
        .await
    }

    pub async fn learn(&self, req: LearnRequest) -> Result<LearnView, StateError> {
        self.ask(|reply| Cmd::Learn { req, reply }).await
    }

    pub async fn launched(&self, ids: Vec<u64>) -> Result<bool, StateError> {
        self.ask(|reply| Cmd::Launched { ids, reply }).await
    }

    pub async fn rescan(&self) -> Result<usize, StateError> {
        self.ask(|reply| Cmd::Rescan { reply }).await
    }
}
