//! `palisade agent`: start-up in a fixed order (so a failure leaves nothing loaded), the
//! background tasks, and a clean shutdown on SIGTERM/SIGINT.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use palisade_common::names;
use tokio::{net::TcpListener, sync::mpsc};
use tracing::{info, warn};

use palisade_cgroupfs::{CgroupfsError, Mounts};

use crate::{
    config::{Config, SyscallHookChoice},
    control::{self, ControlError},
    events::{Hub, sink},
    features,
    kernel::{self, KernelError, LoadOptions},
    metrics::{Info, SelfMetrics},
    resources, server, state, tracefs,
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
    #[error("the feature probes did not finish: {0}")]
    Probes(tokio::task::JoinError),
    #[error(transparent)]
    Walk(state::StateError),
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
    Control(#[from] ControlError),
    #[error(transparent)]
    EventLog(#[from] sink::SinkError),
    #[error("policy files rejected:\n{0}")]
    Policy(palisade_policy::PolicyErrors),
    #[error(transparent)]
    Otlp(#[from] crate::otlp::OtlpError),
    #[error(transparent)]
    PinDir(#[from] crate::policy::bpf::BpfError),
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

/// Installs the SIGTERM and SIGINT handlers now; the future resolves when either arrives.
/// Installed before the ready file is written: a signal sent once it exists shuts down
/// cleanly, where a handler installed at the future's first poll left a window in which
/// SIGTERM killed the agent outright and an ignored SIGINT (a background job of `sh`) was
/// lost.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            warn!("cannot install signal handlers; stop the agent with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
    }
}

pub async fn run(config: Config, ready_file: Option<PathBuf>) -> Result<(), AgentError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(AgentError::NotRoot);
    }
    let mounts = Mounts::detect()?;
    let unified_root = mounts.unified_root(config.cgroup_root.as_deref())?;
    // Invalid policy files, or pinned state that others could have changed, stop the start-up
    // before anything exists.
    let policies = crate::policy::load_initial(&config.policy).map_err(AgentError::Policy)?;
    crate::policy::bpffs::check_pin_dir(&config.policy.pin_dir)?;
    // Bind first: a busy port must fail before anything is loaded.
    let listener = bind(config.listen).await?;
    let listen_addr = listener.local_addr().unwrap_or(config.listen);
    let control_path = config.control_socket.clone();
    let control = control::bind(&control_path).await?;
    let event_log = config.events.output.as_ref().map(|p| {
        if p.as_os_str() == "-" {
            sink::Target::Stdout
        } else {
            sink::Target::File {
                path: p.clone(),
                max_bytes: config.events.max_file_mib << 20,
                keep: config.events.keep_files,
            }
        }
    });
    if let Some(t) = &event_log
        && let Err(e) = sink::check(t)
    {
        let _ = std::fs::remove_file(&control_path);
        return Err(e.into());
    }
    let result = serve_all(
        config,
        ready_file,
        Listeners {
            http: listener,
            http_addr: listen_addr,
            control,
            event_log,
        },
        mounts,
        unified_root,
        policies,
    )
    .await;
    // Whatever happened after the bind, leave no socket file behind.
    let _ = std::fs::remove_file(&control_path);
    result
}

/// What `run` opened before loading anything.
struct Listeners {
    http: TcpListener,
    http_addr: SocketAddr,
    control: tokio::net::UnixListener,
    event_log: Option<sink::Target>,
}

async fn serve_all(
    config: Config,
    ready_file: Option<PathBuf>,
    listeners: Listeners,
    mounts: Mounts,
    unified_root: PathBuf,
    policies: palisade_policy::PolicySet,
) -> Result<(), AgentError> {
    let control_path = config.control_socket.clone();
    let Listeners {
        http: listener,
        http_addr: listen_addr,
        control,
        event_log,
    } = listeners;

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

    let mut report = tokio::task::spawn_blocking(features::probe_all)
        .await
        .map_err(AgentError::Probes)?;
    let summary: Vec<String> = report
        .features
        .iter()
        .map(|f| format!("{}={}", f.name, u8::from(f.available)))
        .collect();
    info!(layout = %mounts.layout, unified_root = %unified_root.display(), features = %summary.join(","), elapsed_ms = report.elapsed_ms as u64, "kernel features probed");

    let node = config
        .node_name
        .clone()
        .unwrap_or_else(crate::config::NodeName::from_hostname)
        .0;
    info!(node = %node, "node name");
    let sc = &config.syscalls;
    let syscall_hooks: &[kernel::SyscallHook] = match sc.hook {
        SyscallHookChoice::Auto => kernel::AUTO_SYSCALL_HOOKS,
        SyscallHookChoice::RawTracepoint => &[kernel::SyscallHook::RawTracepoint],
        SyscallHookChoice::Fentry => &[kernel::SyscallHook::Fentry],
    };
    let latency_detail = crate::metrics::detailed_syscalls(&config.metrics.syscall_latency_detail);
    // aya's parse of the kernel's BTF (every type of the kernel) lives only until the programs
    // are loaded
    let btf = report.btf.take();
    let opts = LoadOptions {
        filter_enabled: !sc.cgroups.is_empty(),
        thread_slots: sc.thread_slots.0,
        latency_sample_mask: sc.latency_sample_mask(config.metrics.syscall_latency),
        latency_detail: &latency_detail,
        stats_max_entries: sc.stats_max_entries.0,
        latency_max_entries: sc.latency_max_entries(),
        errno_max_entries: sc.errno_max_entries.0,
        ring_buffer_bytes: config.events.kernel_buffer_kib << 10,
        tracefs: tracefs.as_deref(),
        network_root: config.network.enabled.then_some(unified_root.as_path()),
        flow_entries: config.network.flow_entries.0,
        syscall_hooks,
        btf: btf.as_deref(),
    };
    let loaded = tokio::task::block_in_place(|| kernel::load(&opts))?;
    drop(btf);
    for (hook, why) in &loaded.syscall_hooks_refused {
        warn!(hook = hook.as_str(), reason = %why, "syscall hook refused; trying the next");
    }
    info!(
        hook = loaded.syscall_hook.as_str(),
        "syscall telemetry on {}",
        loaded.syscall_hook.describe()
    );
    for (hook, why) in &loaded.optional {
        match why {
            None => info!(hook = hook.as_str(), "attached"),
            Some(why) => {
                warn!(hook = hook.as_str(), reason = %why, "optional hook not attached; degraded (see `palisade doctor`)")
            }
        }
    }
    if let Some(why) = &loaded.task_offsets_unavailable {
        warn!(reason = %why, "no kernel BTF offsets: exec events lack arguments and parent, exit events lack status");
    }
    let ncpu = aya::util::nr_cpus().unwrap_or(1);
    let counts = loaded.counts;
    info!(
        stats_entries = sc.stats_max_entries.0,
        count_positions_per_cpu = counts.positions,
        latency_entries = sc.latency_max_entries(),
        kernel_memory_bytes = u64::from(counts.entries().unwrap_or(0))
            * size_of::<palisade_common::CountSlot>() as u64
            + (u64::from(sc.latency_max_entries()) * 256 + sc.errno_max_entries.0 as u64 * 16)
                * ncpu as u64
            + sc.thread_slots.0 as u64
                * (size_of::<palisade_common::ThreadSlot>()
                    + size_of::<palisade_common::CallSlot>()) as u64,
        "syscall maps sized"
    );

    // The kernel's ordered output (events, snapshots) to the state owner; a full channel
    // leaves the ring buffer to fill, where the kernel counts what it cannot queue.
    let (kernel_out_tx, kernel_out) = mpsc::channel(config.events.kernel_queue);
    let syscall_entry = loaded.syscall_entry;
    let (kernel_handle, actor_task) = kernel::spawn(loaded.ebpf, counts, kernel_out_tx)?;

    let info = Info {
        features: report.features.clone(),
        map_capacity: vec![
            (names::MAP_SYSCALL_COUNTS, u64::from(counts.positions)),
            (
                names::MAP_SYSCALL_STATS,
                u64::from(sc.latency_max_entries()),
            ),
            (names::MAP_SYSCALL_ERRNOS, u64::from(sc.errno_max_entries.0)),
        ],
        node: node.clone(),
    };
    let hub = Arc::new(Hub::new(config.events.queue));
    // The event log and the exporter listen from the first event on, before the policy task
    // and the first walk can publish (a policy that cannot be put in place says so at once):
    // whatever is published reaches them or is counted as their loss.
    let log_rx = event_log.as_ref().map(|_| hub.subscribe_log());
    let otlp_rx = config.otlp.endpoint.as_ref().map(|_| hub.subscribe());
    let (policy, policy_task) = crate::policy::start(crate::policy::Start {
        cfg: config.policy.clone(),
        set: policies,
        unified_root: unified_root.clone(),
        tracefs: tracefs.clone(),
        mounts: mounts.clone(),
        hub: hub.clone(),
        syscall_entry,
    });
    let otlp_cfg = config.otlp.clone();
    // The OTLP metric export reads what each collection publishes.
    let (published, families) = tokio::sync::watch::channel(Arc::new(Vec::new()));
    let published = (otlp_cfg.metrics && otlp_cfg.endpoint.is_some()).then_some(published);
    let pin_dir = config.policy.pin_dir.clone();
    let (state, state_task) = state::spawn(state::Parts {
        kernel: kernel_handle.clone(),
        kernel_out,
        policy: policy.clone(),
        hub: hub.clone(),
        info,
        own: SelfMetrics::new()?,
        resources: resources::Reader::new(
            unified_root.clone(),
            &mounts,
            config.resources.cgroup_v1_root.as_deref(),
        ),
        unified_root: unified_root.clone(),
        published,
        config,
    });

    // Initial walk after the tracepoints are attached, so no cgroup falls in between; the
    // owner then gives the policy task every cgroup (adopted pinned state stays in force until
    // then).
    match state.rescan().await {
        Ok(n) => info!(cgroups = n, "cgroup tree walked"),
        Err(e) => {
            kernel_handle.shutdown().await;
            return Err(AgentError::Walk(e));
        }
    }

    let otlp = crate::otlp::start(&otlp_cfg, &node, hub.clone(), otlp_rx)?;
    let otlp_metrics = crate::otlp_metrics::start(&otlp_cfg, &node, families)?;
    let mut tasks = vec![state_task];
    let log_task = match (event_log, log_rx) {
        (Some(target), Some(rx)) => {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(sink::run(target, hub.clone(), rx, stopped));
            Some((stop, task))
        }
        _ => None,
    };
    tasks.push(tokio::spawn(control::serve(
        control,
        control::Context {
            state: state.clone(),
            policy: policy.clone(),
            hub: hub.clone(),
            unified_root: unified_root.clone(),
            learning: Default::default(),
        },
    )));
    tasks.push(policy_task);
    tasks.push(tokio::spawn(reload_on_sighup(policy.clone())));

    // Loading parsed the kernel's BTF and the programs' object: ~20 MB of heap, all free now.
    return_free_heap();
    let shutdown = shutdown_signal();
    if let Some(path) = &ready_file {
        write_ready(path, listen_addr)?;
    }
    info!(listen = %listen_addr, control_socket = %control_path.display(), "serving /metrics");
    let served = server::serve(listener, server::Context { state, policy }, shutdown).await;

    // Producers first (nothing is published after them), then the consumers take what is
    // queued: every event published is accounted for in the last line.
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    kernel_handle.shutdown().await;
    let _ = actor_task.await;
    if let Some((stop, task)) = log_task {
        let _ = stop.send(());
        let _ = task.await;
    }
    if let Some(o) = otlp {
        o.shutdown().await;
    }
    if let Some(o) = otlp_metrics {
        tokio::task::block_in_place(|| o.shutdown());
    }
    info!(accounting = %hub.accounting(), "events at shutdown");
    if let Some(path) = &ready_file {
        let _ = std::fs::remove_file(path);
    }
    if pin_dir.join("maps").exists() {
        info!(pin_dir = %pin_dir.display(), "telemetry detached; policy enforcement stays pinned (`palisade agent --cleanup` removes it); bye");
    } else {
        info!("eBPF programs detached; nothing pinned; bye");
    }
    served.map_err(AgentError::Serve)
}

/// Gives the allocator's free pages back to the kernel (glibc keeps them otherwise: after start-up
/// they were half of an idle agent's memory).
pub(crate) fn return_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// SIGHUP reloads the policy files (an invalid file is rejected; the previous policies stay).
async fn reload_on_sighup(policy: crate::policy::Handle) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler; reload with `palisade policy reload`");
        return;
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading policies");
        // the policy task logs each error with its file:line:column
        let _ = policy.reload().await;
    }
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
