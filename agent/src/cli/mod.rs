//! The command line: its arguments (clap), and the subcommands that are client-side only —
//! `palisade policy status|mode|reload|learn` and `palisade events` talk to a running agent
//! through `palisade_proto`. Errors become text only here.
mod events;
mod man;
mod policy;
mod run;

use std::{net::SocketAddr, path::PathBuf};

pub use run::main;

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
    #[command(after_help = DOCTOR_JSON)]
    Doctor {
        #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
        output: Output,
    },
    /// Developer tools (used by `cargo xtask bench`).
    #[command(hide = true, subcommand)]
    Debug(DebugCommand),
    /// Follow a running agent's events (JSON, one per line) with optional filters.
    #[command(after_help = EVENTS_EXAMPLES)]
    Events(EventsArgs),
    /// Start a workload isolated, limited and audited from its first instruction: a fresh
    /// cgroup with limits, new namespaces, capabilities dropped, no_new_privs and seccomp,
    /// registered with the agent before it runs.
    #[command(after_help = palisade_launcher::HELP)]
    Run(palisade_launcher::RunArgs),
    /// Policies: validate files, see and switch what a running agent enforces, learn a policy
    /// from a running workload.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files or directories: errors as file:line:column, conflicts explained.
    /// Exits 2 when a file is invalid.
    #[command(after_help = POLICY_EXAMPLES)]
    Check {
        /// Policy files or directories (every *.yaml / *.yml inside).
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
    },
    /// What the agent enforces: policies, their modes and the cgroups they apply to.
    #[command(after_help = STATUS_JSON)]
    Status {
        /// The agent's control socket.
        #[arg(long, value_name = "PATH", default_value = palisade_proto::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
        output: Output,
    },
    /// Switch a policy between audit (report only) and enforce, without a restart.
    Mode {
        /// The policy's name (metadata.name).
        name: String,
        /// `audit` (report what would be blocked) or `enforce`.
        #[arg(value_parser = ["audit", "enforce"])]
        mode: String,
        /// The agent's control socket.
        #[arg(long, value_name = "PATH", default_value = palisade_proto::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Reload the policy files now (as SIGHUP does); an invalid file is rejected and the
    /// previous policies stay.
    Reload {
        /// The agent's control socket.
        #[arg(long, value_name = "PATH", default_value = palisade_proto::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Record what a container does for a while and write the smallest policy that allows it.
    ///
    /// Syscalls, programs and peers become allow-lists. File rules are a deny list, so the
    /// files the workload wrote, unlinked or chmodded are listed in comments, and the `files`
    /// section denies writes, unlinks and chmods in the system trees (/etc, /usr, /boot,
    /// /root, /opt, and /bin, /sbin, /lib* where they are directories) the workload did not
    /// write to; a tree it wrote to is left out and named. File writes are seen at the call
    /// (the path as given; a relative path resolved against the process's directory while it
    /// lives; symlinks not followed).
    Learn {
        /// Container name or id (a glob).
        #[arg(long, value_name = "NAME")]
        container: String,
        /// How long to watch at most: Ctrl-C (or SIGTERM) ends the window sooner and writes
        /// what it learned; a second one quits without.
        #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        #[arg(long, value_enum, default_value = "policy")]
        format: policy::LearnFormat,
        /// Write to FILE instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Name of the policy written [default: CONTAINER-learned].
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The agent's control socket.
        #[arg(long, value_name = "PATH", default_value = palisade_proto::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON object, for scripts: its shape is documented and stable (fields may be added,
    /// none renamed or removed).
    Json,
}

const DOCTOR_JSON: &str = "\
--output json prints one object:
  {\"cgroup_layout\": \"v1\"|\"hybrid\"|\"v2\"|null, \"unified_root\": PATH|null,
   \"features\": [{\"name\", \"available\", \"required\", \"used_for\", \"detail\"}, ...],
   \"agent_can_run\": BOOL, \"missing_required\": [NAME, ...],
   \"cgroup_discovery\": \"tracepoints\"|\"rescans\", \"probe_ms\": N}
The exit status is the same as with text: 1 when the agent cannot run here.";

const STATUS_JSON: &str = "\
--output json prints one object:
  {\"pin_dir\": PATH, \"loaded\": BOOL, \"hooks\": [HOOK, ...],
   \"policies\": [{\"name\", \"mode\": \"audit\"|\"enforce\", \"source\",
                  \"cgroups\": [{\"cgroup_id\", \"container\"}, ...]}, ...],
   \"adopted_workloads\": [CGROUP_ID, ...]}";

const POLICY_EXAMPLES: &str = "\
Examples:
  palisade policy check policy/examples/          every policy file in a directory
  palisade policy learn --container web --duration 2m -o web.yaml
  palisade policy mode web enforce                after watching it in audit mode
  palisade run --name web-0 --policy web.yaml -- /usr/sbin/nginx";

#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Time the userspace part of scrapes over a fixture tree of simulated containers.
    ScrapeBench {
        #[arg(long, default_value_t = 1000)]
        containers: usize,
        #[arg(long, default_value_t = 20)]
        scrapes: usize,
    },
    /// Attach an empty program pair where syscall telemetry hooks (the sys_enter and sys_exit
    /// raw tracepoints, or fentry/fexit on x64_sys_call), write FILE, and hold them until
    /// SIGINT/SIGTERM: the hook cost every syscall pays under any accounting on that pair (the
    /// floors of `cargo xtask bench syscalls`). `--hook raw_tracepoint_exit` attaches the
    /// sys_exit program alone: the pair's cost less it is what the entry's dispatch costs.
    EmptyHooks {
        #[arg(long, value_name = "FILE")]
        ready_file: PathBuf,
        /// Which pair.
        #[arg(long, value_enum, default_value = "raw_tracepoint")]
        hook: EmptyHookPair,
    },
    /// Print the shell completion script for SHELL (`cargo xtask dist` packages them).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (palisade.1 and one per subcommand) into DIR.
    ManPages {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

/// `palisade debug empty-hooks --hook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmptyHookPair {
    /// Raw tracepoints sys_enter and sys_exit.
    #[value(name = "raw_tracepoint")]
    RawTracepoint,
    /// The raw tracepoint sys_exit alone.
    #[value(name = "raw_tracepoint_exit")]
    RawTracepointExit,
    /// fentry and fexit on x64_sys_call (needs kernel BTF).
    #[value(name = "fentry")]
    Fentry,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of containers whose name or id matches GLOB (repeatable).
    #[arg(long = "container", value_name = "GLOB")]
    pub containers: Vec<String>,
    /// Only these types (repeatable): exec, exit, oom, container_start, container_stop, flow,
    /// policy_violation.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// The agent's control socket.
    #[arg(long, value_name = "PATH", default_value = palisade_proto::DEFAULT_SOCKET)]
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
    /// Push events as OTLP logs to this collector (e.g. http://127.0.0.1:4318); replaces
    /// `otlp.endpoint` from the config.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// This node's name: `host.name` (and `service.instance.id`) of exported OTLP telemetry and
    /// the `node` label of `palisade_build_info`. The DaemonSet sets NODE_NAME from the
    /// downward API; replaces `node_name` from the config [default: the kernel's hostname].
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Once serving, write the listen address to FILE (removed on exit).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
    /// Print the default configuration (commented YAML) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Validate the configuration (and the policy files it names) and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Remove the pinned policy enforcement state (`policy.pin_dir`), print what was removed,
    /// and exit.
    #[arg(long)]
    pub cleanup: bool,
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
