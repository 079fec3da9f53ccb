//! The namespace plan: which namespaces `clone3` creates (a pure function of the plan) and
//! what the init does inside them before it forks the workload, in this order: the network
//! (join a namespace by path, or bring up the new one's loopback), the hostname and domain
//! name, then the filesystem ([`mounts::setup_gated`]); the cgroup namespace only once the
//! init is in every hierarchy (so each one's root is the workload's cgroup) and the agent has
//! registered it, right before the first cgroup mount or after the filesystem (see
//! [`container`]).
//!
//! One code path: the init runs [`container`] on [`crate::sys::Linux`], the tests on the
//! recording fake.
use std::{io, path::PathBuf};

use crate::{
    mounts::{self, MountError, V1Mounts},
    plan::{Namespaces, Net, Plan},
    sys::Sys,
};

/// A failed step inside the new namespaces, reported by the init to the launcher.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The launcher gave up before releasing the init (nothing to report).
    #[error("the launcher gave up")]
    Released,
    #[error("cannot create the cgroup namespace: {0}")]
    CgroupNamespace(#[source] io::Error),
    #[error("cannot join the network namespace {}: {source}", path.display())]
    JoinNetns { path: PathBuf, source: io::Error },
    #[error("cannot bring up loopback: {0}")]
    Loopback(#[source] io::Error),
    #[error("cannot set the hostname {name}: {source}")]
    Hostname { name: String, source: io::Error },
    #[error("cannot set the domain name {name}: {source}")]
    Domainname { name: String, source: io::Error },
    #[error("cannot set up the container's filesystem: {0}")]
    Filesystem(#[from] MountError),
}

/// The `CLONE_NEW*` flags the init is cloned with. A mount namespace always (the launcher
/// never changes the host's mounts); the cgroup namespace is not among them: the init
/// unshares it after its placement (see [`container`]); a network namespace only when a new
/// one is made (joining one happens inside, by `setns`).
pub fn clone_flags(ns: &Namespaces) -> u64 {
    let mut flags = libc::CLONE_NEWNS as u64;
    if ns.pid {
        flags |= libc::CLONE_NEWPID as u64;
    }
    if ns.uts {
        flags |= libc::CLONE_NEWUTS as u64;
    }
    if ns.ipc {
        flags |= libc::CLONE_NEWIPC as u64;
    }
    if ns.net == Net::New {
        flags |= libc::CLONE_NEWNET as u64;
    }
    flags
}

/// Everything the init sets up inside its namespaces; `hostname` is the workload's name (used
/// when the plan sets none).
///
/// The init runs this while the agent registers its cgroup (and, on kernels without
/// `CLONE_INTO_CGROUP`, while the launcher places it in the unified cgroup): what does not
/// depend on that overlaps the wait. It waits ([`Sys::wait_placed`]) right before the first
/// step that does: the cgroup namespace and the first cgroup mount, or, without one, after
/// the filesystem. The workload is forked only after it, so it never runs before its
/// placement and registration. A step that fails before it still waits, so the launcher is
/// not told a placement failed because the init already left (and the failure reported is
/// the step's).
pub fn container<S: Sys>(
    sys: &mut S,
    plan: &Plan,
    hostname: &str,
    v1: &V1Mounts,
) -> Result<(), SetupError> {
    let mut passed = false;
    let r = before_and_at_placement(sys, plan, hostname, v1, &mut passed);
    if !passed {
        match &r {
            Ok(()) => placed(sys, plan)?,
            Err(_) => sys.wait_placed().map_err(|_| SetupError::Released)?,
        }
    }
    r
}

/// Waits for the placement, then the cgroup namespace (rooted at the workload's cgroups).
fn placed<S: Sys>(sys: &mut S, plan: &Plan) -> Result<(), SetupError> {
    sys.wait_placed().map_err(|_| SetupError::Released)?;
    if plan.ns.cgroup {
        sys.unshare(libc::CLONE_NEWCGROUP)
            .map_err(SetupError::CgroupNamespace)?;
    }
    Ok(())
}

fn before_and_at_placement<S: Sys>(
    sys: &mut S,
    plan: &Plan,
    hostname: &str,
    v1: &V1Mounts,
    passed: &mut bool,
) -> Result<(), SetupError> {
    match &plan.ns.net {
        Net::Join(path) => {
            sys.setns(path, libc::CLONE_NEWNET)
                .map_err(|source| SetupError::JoinNetns {
                    path: path.clone(),
                    source,
                })?
        }
        Net::New => sys.loopback_up().map_err(SetupError::Loopback)?,
        Net::Host => {}
    }
    if plan.ns.uts {
        let name = plan.hostname.as_deref().unwrap_or(hostname);
        sys.sethostname(name)
            .map_err(|source| SetupError::Hostname {
                name: name.to_owned(),
                source,
            })?;
        if let Some(d) = &plan.domainname {
            sys.setdomainname(d)
                .map_err(|source| SetupError::Domainname {
                    name: d.clone(),
                    source,
                })?;
        }
    }
    let mut gate = |sys: &mut S| {
        // set first: a failure inside the gate has waited already
        *passed = true;
        placed(sys, plan)
    };
    mounts::setup_gated(sys, plan, v1, &mut gate)?;
    Ok(())
}

#[cfg(test)]
mod tests;
