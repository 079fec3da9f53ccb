//! What can stop a launch, typed: each variant carries the flag, field, path or value it is
//! about. The sentences are written once, here and next to the parsers; the `palisade` binary
//! prints them (`palisade: error: ...`) with [`LaunchError::exit_code`].
use std::{io, path::PathBuf};

use crate::{
    caps, cgroup::CgroupError, oci::BundleError, plan::ValueError, policy::PolicyError, process,
    register::AgentError, seccomp::SeccompError, validate::CommandError,
};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "palisade run must run as root: it creates cgroups and namespaces (try `sudo palisade run ...`)"
    )]
    NotRoot,
    /// The flags, or the plan checked against this host.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The program cannot be found or run inside the root the workload will see.
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The agent was required and could not register the workload.
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("cannot start {name}: {source}")]
    Spawn { name: String, source: io::Error },
}

impl LaunchError {
    /// 125 for the launcher's own failures, 126/127 for a command that cannot run (as Docker).
    pub fn exit_code(&self) -> u8 {
        match self {
            LaunchError::Command(CommandError::NotFound { .. }) => process::EXIT_NOT_FOUND,
            LaunchError::Command(CommandError::NotExecutable { .. }) => process::EXIT_CANNOT_EXEC,
            _ => process::EXIT_SETUP,
        }
    }
}

/// A flag that cannot be used, or a plan this host cannot run.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "no command: put it after `--` (palisade run --name web -- /bin/sh -c 'echo hi'), or give --bundle DIR"
    )]
    NoCommand,
    #[error(
        "invalid workload name `{0}`: letters, digits, `-`, `_`, `.`, at most 100 (set it with --name)"
    )]
    Name(String),
    #[error(
        "--rootfs {}: {source} (give an existing directory holding the workload's files)",
        path.display()
    )]
    Rootfs { path: PathBuf, source: io::Error },
    #[error("--rootfs {}: not a directory", path.display())]
    RootfsNotADirectory { path: PathBuf },
    /// `--memory`, `--cpus`, `--pids`, `--user` with a value that cannot be used.
    #[error("{flag} {source}")]
    Flag {
        flag: &'static str,
        source: ValueError,
    },
    #[error("--hostname `{0}`: 1 to 64 characters")]
    Hostname(String),
    #[error("--hostname needs a UTS namespace (the bundle's linux.namespaces has none)")]
    HostnameWithoutUts,
    #[error("--cwd `{0}` must be an absolute path")]
    RelativeCwd(String),
    /// A string handed to the kernel holds a NUL byte (JSON can hold one).
    #[error("{field}: `{}` holds a NUL byte", .value.replace('\0', "\\0"))]
    Nul { field: &'static str, value: String },
    #[error("process.cwd holds a NUL byte")]
    NulInCwd,
    #[error("no command to run")]
    EmptyArgs,
    #[error(
        "process.rlimits {name}: hard limit {hard} is above this launcher's own {own}; raising it needs CAP_SYS_RESOURCE, which palisade run does not hold here (lower it to at most {own})"
    )]
    RlimitAboveOwn {
        name: &'static str,
        hard: u64,
        own: u64,
    },
    #[error(
        "process.capabilities asks for {} which palisade run does not hold itself on this host; remove them",
        caps::names(*.missing).join(", ")
    )]
    CapabilitiesNotHeld { missing: u64 },
    #[error("linux.namespaces: the network namespace {} does not exist", .0.display())]
    NoNetworkNamespace(PathBuf),
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
}

impl PlanError {
    /// `map_err(PlanError::flag("--memory"))`.
    pub fn flag(flag: &'static str) -> impl FnOnce(ValueError) -> Self {
        move |source| PlanError::Flag { flag, source }
    }
}
