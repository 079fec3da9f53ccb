//! `palisade agent`: start-up in a fixed order (so a failure leaves nothing loaded), the
//! background tasks, and a clean shutdown on SIGTERM/SIGINT.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Instant,
};

use palisade_common::names;
use tokio::{net::TcpListener, sync::mpsc};
use tracing::{debug, info, warn};

use crate::{
    cgroupfs::{self, CgroupfsError, Mounts},
    config::{Config, Pattern},
    features,
    identity::{Identity, Inserted, Registry},
    kernel::{self, CgroupChange, KernelError, KernelHandle, LoadOptions},
    metrics::{Info, SelfMetrics},
    model::Model,
    server, tracefs,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "palisade agent must run as root: it loads eBPF programs and reads every cgroup (try `sudo palisade agent`)"
    )]
    NotRoot,
    #[error(transparent)]
    Cgroupfs(#[from] CgroupfsError),
    #[error(
        "cannot listen on {addr}: address already in use (another agent running? pick a free port with --listen or `listen:` in the config)"
    )]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source} (check --listen or `listen:` in the config)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("cannot walk the cgroup tree at {root}: {source}")]
    Walk {
        root: PathBuf,
        source: std::io::Error,
    },
    #[error("metrics setup: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot write the ready file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("http server: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
}

/// Registry and numbers, behind one lock so a collection pass sees a consistent registry.
pub struct State {
    pub registry: Registry,
    pub model: Model,
}

/// What the HTTP handlers and background tasks share.
pub struct Shared {
    pub state: tokio::sync::Mutex<State>,
    pub kernel: KernelHandle,
    pub config: Config,
    pub info: Info,
    pub own: SelfMetrics,
    pub unified_root: PathBuf,
}

impl Shared {
    fn selected(&self, identity: &Identity) -> bool {
        selected(&self.config.syscalls.cgroups, identity)
    }

    /// Tells the kernel to trace a newly known cgroup when a filter is set and it matches.
    async fn select_new(&self, identity: Option<Identity>) {
        if self.config.syscalls.cgroups.is_empty() {
            return;
        }
        if let Some(identity) = identity
            && self.selected(&identity)
            && let Err(e) = self.kernel.select(identity.cgroup_id, true).await
        {
            warn!(error = %e, "cannot update the cgroup filter");
        }
    }

    /// One collection pass: read the kernel maps, reap removed cgroups, name unknown ids, expire
    /// old removals.
    pub async fn collect(&self) -> Result<(), KernelError> {
        let mut st = self.state.lock().await;
        let reap = st.registry.unreaped();
        let snap = self.kernel.collect(reap).await?;
        let now = Instant::now();
        let mut unknown: Vec<u64> = snap
            .syscalls
            .iter()
            .map(|(k, _)| k.cgroup_id)
            .chain(snap.errnos.iter().map(|(k, _)| k.cgroup_id))
            .filter(|id| st.registry.get(*id).is_none())
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        let mut new = Vec::new();
        for id in unknown {
            // An event was lost or not yet processed: ask the kernel for the path by id.
            match cgroupfs::resolve_id(&self.unified_root, id) {
                Some(path) => {
                    if st.registry.insert(id, &path) == Inserted::New {
                        new.push(st.registry.get(id).cloned());
                    }
                }
                None => st.registry.mark_removed(id, None, now),
            }
        }
        st.model.apply(&snap);
        st.registry.mark_reaped(&snap.reaped);
        let expired = st
            .registry
            .expire(now, self.config.metrics.series_grace_period);
        st.model.forget(&expired);
        drop(st);
        for identity in new {
            self.select_new(identity).await;
        }
        Ok(())
    }

    /// Names a launcher workload and makes sure the kernel traces it (registering opts in, even
    /// past a `--cgroup` filter). Returns once both are done.
    pub async fn register_workload(
        &self,
        cgroup_id: u64,
        path: &str,
        name: &str,
    ) -> Result<(), KernelError> {
        let mut st = self.state.lock().await;
        if st.registry.register_workload(cgroup_id, path, name) == Inserted::Dropped {
            warn!(
                cgroup_id,
                name, "identity registry full; workload not named"
            );
        }
        drop(st);
        if !self.config.syscalls.cgroups.is_empty() {
            self.kernel.select(cgroup_id, true).await?;
        }
        Ok(())
    }

    async fn apply_change(&self, change: CgroupChange) {
        let now = Instant::now();
        let mut st = self.state.lock().await;
        match change {
            CgroupChange::Created {
                cgroup_id,
                path,
                truncated,
            } => {
                let path = if truncated {
                    cgroupfs::resolve_id(&self.unified_root, cgroup_id).unwrap_or(path)
                } else {
                    path
                };
                let inserted = st.registry.insert(cgroup_id, &path);
                let identity = (inserted == Inserted::New)
                    .then(|| st.registry.get(cgroup_id).cloned())
                    .flatten();
                if let Some(i) = &identity {
                    debug!(
                        cgroup_id,
                        path,
                        container = %i.name,
                        runtime = i.runtime.as_str(),
                        container_id = i.container_id.as_deref().unwrap_or(""),
                        pod_uid = i.pod_uid.as_deref().unwrap_or(""),
                        "cgroup created"
                    );
                } else {
                    debug!(cgroup_id, path, ?inserted, "cgroup event");
                }
                drop(st);
                self.select_new(identity).await;
            }
            CgroupChange::Removed { cgroup_id, path } => {
                debug!(cgroup_id, path, "cgroup removed");
                st.registry.mark_removed(cgroup_id, Some(&path), now);
            }
        }
    }

    async fn rescan(&self) -> Result<(), AgentError> {
        let root = self.unified_root.clone();
        let walked = tokio::task::spawn_blocking(move || cgroupfs::walk(&root))
            .await
            .map_err(|e| AgentError::Walk {
                root: self.unified_root.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| AgentError::Walk {
                root: self.unified_root.clone(),
                source,
            })?;
        let mut st = self.state.lock().await;
        let (added, removed) = st.registry.sync(&walked, Instant::now());
        let new: Vec<Option<Identity>> = added
            .iter()
            .map(|id| st.registry.get(*id).cloned())
            .collect();
        drop(st);
        if !added.is_empty() || !removed.is_empty() {
            debug!(added = added.len(), removed = removed.len(), "rescan");
        }
        for identity in new {
            self.select_new(identity).await;
        }
        Ok(())
    }
}

fn selected(patterns: &[Pattern], identity: &Identity) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .any(|p| p.is_match(&identity.name) || p.is_match(&identity.path))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            AgentError::PortInUse { addr }
        } else {
            AgentError::Listen { addr, source }
        }
    })
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
}

pub async fn run(config: Config, ready_file: Option<PathBuf>) -> Result<(), AgentError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(AgentError::NotRoot);
    }
    let mounts = Mounts::detect()?;
    let unified_root = mounts.unified_root(config.cgroup_root.as_deref())?;
    // Bind first: a busy port must fail before anything is loaded.
    let listener = bind(config.listen).await?;
    let listen_addr = listener.local_addr().unwrap_or(config.listen);
    let control_path = config.control_socket.clone();
    let control = crate::control::bind(&control_path).await?;
    let result = serve_all(
        config,
        ready_file,
        listener,
        listen_addr,
        control,
        mounts,
        unified_root,
    )
    .await;
    // Whatever happened after the bind, leave no socket file behind.
    let _ = std::fs::remove_file(&control_path);
    result
}

async fn serve_all(
    config: Config,
    ready_file: Option<PathBuf>,
    listener: TcpListener,
    listen_addr: SocketAddr,
    control: tokio::net::UnixListener,
    mounts: Mounts,
    unified_root: PathBuf,
) -> Result<(), AgentError> {
    let control_path = config.control_socket.clone();

    let tracefs = match tracefs::ensure_mounted() {
        Ok((path, mounted)) => {
            if mounted {
                info!(path = %path.display(), "tracefs was not mounted; mounted it");
            }
            Some(path)
        }
        Err(e) => {
            warn!(error = %e, "no tracefs: cgroup events unavailable, using rescans");
            None
        }
    };

    let report = tokio::task::spawn_blocking(features::probe_all)
        .await
        .map_err(|e| {
            AgentError::Kernel(KernelError::Program {
                program: "feature probes",
                detail: e.to_string(),
            })
        })?;
    let summary: Vec<String> = report
        .features
        .iter()
        .map(|f| format!("{}={}", f.name, u8::from(f.available)))
        .collect();
    info!(layout = %mounts.layout, unified_root = %unified_root.display(), features = %summary.join(","), elapsed_ms = report.elapsed_ms as u64, "kernel features probed");

    let sc = &config.syscalls;
    let opts = LoadOptions {
        filter_enabled: !sc.cgroups.is_empty(),
        thread_slots: sc.thread_slots.0,
        stats_max_entries: sc.stats_max_entries.0,
        errno_max_entries: sc.errno_max_entries.0,
        tracefs: tracefs.as_deref(),
    };
    let loaded = tokio::task::block_in_place(|| kernel::load(&opts))?;
    if let Some(why) = &loaded.cgroup_cache_unavailable {
        warn!(reason = %why, "per-thread cgroup cache off: every syscall exit asks the kernel for the cgroup id (slower)");
    }
    match &loaded.cgroup_events_unavailable {
        None => info!("syscall tracing and cgroup events attached"),
        Some(why) => {
            warn!(reason = %why, rescan_every = ?config.identity.rescan_interval, "cgroup:cgroup_mkdir/rmdir not attached; discovering cgroups by rescans")
        }
    }
    let ncpu = aya::util::nr_cpus().unwrap_or(1);
    info!(
        stats_entries = sc.stats_max_entries.0,
        kernel_memory_bytes = (sc.stats_max_entries.0 as u64 * 256
            + sc.errno_max_entries.0 as u64 * 16)
            * ncpu as u64
            + sc.thread_slots.0 as u64 * 16,
        "syscall maps sized"
    );

    let (changes_tx, mut changes_rx) = mpsc::channel(4096);
    let (kernel_handle, actor_task) = kernel::spawn(loaded.ebpf, changes_tx)?;

    let info = Info {
        features: report.features.clone(),
        map_capacity: vec![
            (names::MAP_SYSCALL_STATS, u64::from(sc.stats_max_entries.0)),
            (names::MAP_SYSCALL_ERRNOS, u64::from(sc.errno_max_entries.0)),
        ],
    };
    let shared = Arc::new(Shared {
        state: tokio::sync::Mutex::new(State {
            registry: Registry::new(config.identity.max_cgroups),
            model: Model::default(),
        }),
        kernel: kernel_handle.clone(),
        info,
        own: SelfMetrics::new()?,
        unified_root,
        config,
    });

    // Initial walk after the tracepoints are attached, so no cgroup falls in between.
    if let Err(e) = shared.rescan().await {
        kernel_handle.shutdown().await;
        return Err(e);
    }
    {
        let st = shared.state.lock().await;
        info!(cgroups = st.registry.len(), "cgroup tree walked");
    }

    let mut tasks = Vec::new();
    let s = shared.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(change) = changes_rx.recv().await {
            s.apply_change(change).await;
        }
    }));
    let s = shared.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(s.config.identity.rescan_interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = s.rescan().await {
                warn!(error = %e, "rescan failed");
            }
        }
    }));
    let s = shared.clone();
    tasks.push(tokio::spawn(async move {
        let mut tick = tokio::time::interval(s.config.metrics.collect_interval);
        loop {
            tick.tick().await;
            if let Err(e) = s.collect().await {
                warn!(error = %e, "collection failed");
            }
        }
    }));

    tasks.push(tokio::spawn(crate::control::serve(control, shared.clone())));

    if let Some(path) = &ready_file {
        write_ready(path, listen_addr)?;
    }
    info!(listen = %listen_addr, control_socket = %control_path.display(), "serving /metrics");
    let served = server::serve(listener, shared.clone(), shutdown_signal()).await;

    for t in tasks {
        t.abort();
    }
    kernel_handle.shutdown().await;
    let _ = actor_task.await;
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
    }
    info!("eBPF programs detached; nothing pinned; bye");
    served.map_err(AgentError::Serve)
}

/// Writes the listen address atomically (tests and service managers wait for this file).
fn write_ready(path: &Path, addr: SocketAddr) -> Result<(), AgentError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| AgentError::ReadyFile {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_matches_names_and_paths() {
        let id = Identity::new(5, "/palisade/web-0");
        let pats = vec![Pattern::new("web-*").unwrap()];
        assert!(selected(&pats, &id));
        let pats = vec![Pattern::new("/palisade/*").unwrap()];
        assert!(selected(&pats, &id));
        let pats = vec![Pattern::new("db-*").unwrap()];
        assert!(!selected(&pats, &id));
        assert!(selected(&[], &id));
    }
}
