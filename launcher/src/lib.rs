//! `palisade run`: the launcher. Starts a workload (a command, or an OCI bundle) in a fresh
//! cgroup with limits, new namespaces, capabilities dropped, no_new_privs and seccomp, and
//! registers it with the agent before its first instruction.
//!
//! Order, so that bad input leaves nothing behind: build and validate the whole [`plan::Plan`]
//! (bundle, limits, seccomp compiled, the command found in the rootfs, a running workload of
//! the same name refused, the agent pinged with `--require-agent`); then create the cgroups,
//! send the registrations, clone the inits (blocked), place them in the v1 cgroups, read the
//! agent's answers, release them; then forward signals and wait; remove each workload's cgroups
//! as soon as its init is gone.
//!
//! Errors are typed ([`LaunchError`] and the enums it wraps, each carrying the path, field or
//! value it is about) and become text only where they are shown: the `palisade` binary prints
//! them, the init writes its own to the launcher over a pipe.
//!
//! Public besides [`run`]: the OCI `config.json` parser ([`oci::parse_config`]) and the seccomp
//! profile parser ([`seccomp::parse_profile`]), pure functions a fuzzer can drive without root.
mod args;
pub mod caps;
mod cgroup;
mod cmdline;
mod error;
pub mod json;
mod launch;
mod mounts;
pub mod oci;
pub mod plan;
mod policy;
mod process;
mod register;
pub mod seccomp;
mod setup;
mod sys;
#[cfg(test)]
mod testing;
mod validate;
mod volume;

pub use args::{HELP, NetMode, RunArgs};
pub use error::{LaunchError, PlanError};
pub use launch::run;

/// Exit status when `palisade run` itself fails (bad flags included).
pub const EXIT_USAGE: u8 = process::EXIT_SETUP;
