//! `palisade run`'s command-line arguments (clap), kept apart from the launcher's logic as
//! youki keeps liboci-cli apart from libcontainer: the `palisade` binary embeds [`RunArgs`] in
//! its `run` subcommand and hands them to [`crate::run`].
use std::path::PathBuf;

use clap::Args;

/// `--net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    /// A new network namespace with only loopback, up.
    None,
    /// The host's network.
    Host,
}

/// What `palisade run --help` shows after the flags.
pub const HELP: &str = "\
Examples:
  palisade run --name web --memory 256M --cpus 0.5 --pids 128 --rootfs ./rootfs -- /bin/httpd -f
  palisade run --name job --seccomp ./docker-default.json -v $PWD:/src -- /usr/bin/make test
  palisade run --bundle ./mybundle                  an OCI bundle, as `runc spec` makes it
  palisade run --name web --replicas 3 --rootfs ./rootfs -- /bin/sh -c 'hostname'
  palisade run --name batch --require-agent -- ./job.sh   refuse to run unaudited

Isolation: new pid (the launcher's init is pid 1: it reaps zombies, forwards SIGHUP, SIGINT,
SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2), mount, UTS, IPC and cgroup namespaces; --net none (the
default) gives a network namespace with only loopback. With --rootfs the workload pivot_roots
into it with fresh /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys (read-only) and
/sys/fs/cgroup (read-only); without, it sees the host's files read-only (every submount
too) with a fresh /proc, private tmpfs on /tmp and /dev/shm, its own /sys/fs/cgroup, and
/run/palisade, /sys/fs/bpf and the filter cache hidden. /sys/fs/cgroup shows the workload's
own cgroups only. Writable host paths: --volume HOST:DEST[:ro|rw] only.
No descriptor beyond stdin, stdout and stderr reaches the workload.
Capabilities: AUDIT_WRITE, KILL, NET_BIND_SERVICE (the OCI default set); no_new_privs;
devices: null, zero, full, random, urandom, tty, ptmx, pts only.

Cgroups: /palisade/NAME in the unified hierarchy (the agent's `container` label) and, on
hybrid hosts, in the v1 memory, cpu, cpuacct and pids hierarchies; removed on exit, with any
cgroups made under them. If the launcher itself is SIGKILLed the workload dies with it and the
empty cgroups stay until the next `palisade run` with the same name removes them.

Exit status: the workload's (128+N when killed by signal N, as shells show it); with
--replicas, the first non-zero one once all have exited. 125: palisade run failed (bad
input, cgroups, agent); 126: the command cannot be executed; 127: it was not found.";

/// `palisade run`: flags override what a bundle's config.json says.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Workload name: cgroup /palisade/NAME, the `container` label in metrics, the default
    /// hostname [default: the bundle directory's name, else the command's file name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Start the OCI bundle in DIR (config.json + rootfs, as `runc spec` writes it).
    #[arg(long, value_name = "DIR", conflicts_with = "rootfs")]
    pub bundle: Option<PathBuf>,
    /// Run N copies, NAME-0 … NAME-{N-1}, each in its own cgroup and namespaces.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub replicas: u32,
    /// Memory limit, bytes with an optional binary suffix (K, M, G: 256M = 256 MiB); no swap.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPU limit in CPUs (0.5 = half of one CPU per 100 ms period).
    #[arg(long, value_name = "CPUS")]
    pub cpus: Option<String>,
    /// Maximum number of processes and threads in the workload's cgroup (its init included).
    #[arg(long, value_name = "N")]
    pub pids: Option<i64>,
    /// Seccomp profile: `default` (Palisade's deny-list), `unconfined`, or an OCI/Docker JSON
    /// profile FILE [default: default, or the bundle's linux.seccomp].
    #[arg(long, value_name = "PROFILE")]
    pub seccomp: Option<String>,
    /// Network: `none` (a new network namespace with only loopback, up) or `host`
    /// [default: none, or the bundle's namespaces].
    #[arg(long, value_enum, value_name = "MODE")]
    pub net: Option<NetMode>,
    /// Hostname in the workload's UTS namespace [default: the workload name].
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Root filesystem to pivot_root into, with /proc, /dev, /sys mounted fresh. Without it
    /// the workload sees the host's files read-only (submounts too), with a fresh /proc, a
    /// private /tmp, its own /sys/fs/cgroup, and /run/palisade and /sys/fs/bpf hidden.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Bind the host path HOST at DEST (Docker's -v syntax; repeatable): read-write unless
    /// `:ro`. The only host files a workload can write: without --rootfs the host's tree is
    /// read-only, and DEST must exist in it.
    #[arg(long = "volume", short = 'v', value_name = "HOST:DEST[:ro|rw]")]
    pub volumes: Vec<String>,
    /// Run as UID:GID (numbers; supplementary groups are cleared) [default: 0:0].
    #[arg(long, value_name = "UID:GID")]
    pub user: Option<String>,
    /// Working directory inside the workload [default: / with --rootfs, else the current one;
    /// below /tmp it does not exist inside: the workload's /tmp is its own].
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Environment variable K=V for the workload (repeatable; `K` alone copies it from here).
    /// The host environment is not passed on; PATH and HOME are set.
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Fail unless an agent answers on the control socket and registers the workload.
    #[arg(long)]
    pub require_agent: bool,
    /// The agent's control socket [default: /run/palisade/agent.sock].
    #[arg(long, value_name = "PATH")]
    pub agent_socket: Option<PathBuf>,
    /// How long the agent may take to answer a registration (it loads, verifies and attaches
    /// the programs the workload's policy needs first: seconds on a busy host, more under
    /// emulation). Past it, a required agent means nothing is started.
    #[arg(long, value_name = "DURATION", default_value = "30s", env = "PALISADE_AGENT_TIMEOUT", value_parser = humantime::parse_duration)]
    pub agent_timeout: std::time::Duration,
    /// Policy file: the policy selecting this workload (by workload name or cgroup path)
    /// adds its syscall rules to the seccomp profile (a second filter: the stricter answer
    /// wins), sets its cgroup limits (resources) and, through the agent, its exec and network
    /// rules, all in force from its first instruction.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The command and its arguments (after `--`); with --bundle, replaces process.args.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}
