//! Command-line interface.
use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::LogFormat;

/// Palisade: per-container syscall telemetry from eBPF, served to Prometheus.
///
/// Every number is keyed by the kernel's cgroup v2 id and labelled with the container's name
/// (Docker, podman, containerd, CRI-O, Kubernetes pods, systemd units, or the cgroup path).
#[derive(Debug, Parser)]
#[command(name = "palisade", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs, name every cgroup and serve per-container metrics.
    #[command(after_help = AGENT_EXAMPLES)]
    Agent(AgentArgs),
    /// Show which kernel hooks, maps and cgroup layout this host offers, and what the agent
    /// will use. Exits 1 when the agent cannot run here.
    Doctor,
    /// Developer tools (used by `cargo xtask bench`).
    #[command(hide = true, subcommand)]
    Debug(DebugCommand),
    /// Follow a running agent's events (JSON, one per line) with optional filters.
    #[command(after_help = EVENTS_EXAMPLES)]
    Events(EventsArgs),
}

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Time the userspace part of scrapes over a fixture tree of simulated containers.
    ScrapeBench {
        #[arg(long, default_value_t = 1000)]
        containers: usize,
        #[arg(long, default_value_t = 20)]
        scrapes: usize,
    },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of containers whose name or id matches GLOB (repeatable).
    #[arg(long = "container", value_name = "GLOB")]
    pub containers: Vec<String>,
    /// Only these types (repeatable): exec, exit, oom, container_start, container_stop.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = "/run/palisade/agent.sock")]
    pub socket: PathBuf,
}

const EVENTS_EXAMPLES: &str = "\
Examples:
  palisade events                                   everything, as it happens
  palisade events --type exec --container 'web-*'   execs in the web containers
  palisade events --type oom | jq .container.name   who got OOM-killed";

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// YAML configuration file (see --print-config for every key and its default).
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for /metrics and /healthz [default: 127.0.0.1:9477].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Control socket for workload registration [default: /run/palisade/agent.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Trace only cgroups whose container name or cgroup path matches GLOB (repeatable);
    /// replaces `syscalls.cgroups` from the config.
    #[arg(long = "cgroup", value_name = "GLOB")]
    pub cgroups: Vec<String>,
    /// Log format [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Write events (JSON lines) to FILE, rotated by size, or to stdout with `-`; replaces
    /// `events.output` from the config.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// Once serving, write the listen address to FILE (removed on exit).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Print the default configuration (commented YAML) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Validate the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
}

const AGENT_EXAMPLES: &str = "\
Examples:
  palisade agent                                  trace every cgroup, serve 127.0.0.1:9477
  palisade agent --listen 0.0.0.0:9477            let a remote Prometheus scrape it
  palisade agent --cgroup 'web-*' --cgroup '/system.slice/*.service'
  palisade agent --events /var/log/palisade/events.jsonl
  palisade agent --print-config > palisade.yaml   start from the documented defaults
  curl -s localhost:9477/metrics | grep palisade_syscalls_total

Needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN). SIGTERM or SIGINT detaches everything.";
