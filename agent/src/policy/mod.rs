//! Policies in the agent: the task and engine that apply them to cgroups (kernel tables of the
//! `palisade-policy` object, pinned; cgroupfs limits) and report violations as events and
//! counts. The control socket (`control`) answers `palisade policy status|mode|reload|learn`
//! from it; their clients are in `cli`.
//!
//! The policy format, validation and compilation live in the `palisade-policy` crate.
pub mod bpf;
pub mod bpffs;
mod engine;
mod error;
pub mod exec_match;
pub mod files;
pub mod hooks;
pub mod lsm;
mod report;
mod resources;
mod tables;
mod task;
mod violation;

use std::sync::Arc;

pub use engine::{Host, Launched, TargetInfo};
pub use error::PolicyError;
use palisade_proto::LaunchPolicy;
pub use task::{Cmd, Handle, Snapshot};

use crate::{config::PolicyConfig, events::Hub};

/// A registration's policies: the selected ones, validated again by the agent.
pub fn launched(lp: &LaunchPolicy) -> Result<Launched, PolicyError> {
    let all = palisade_policy::parse_str(&lp.text, &lp.source)?;
    let picked: Vec<_> = all
        .into_iter()
        .filter(|p| lp.names.contains(&p.name))
        .collect();
    if picked.len() != lp.names.len() {
        return Err(PolicyError::Missing {
            names: lp.names.clone(),
            file: lp.source.clone(),
        });
    }
    Ok(Launched {
        policies: picked,
        seccomp: lp.seccomp,
    })
}

/// Reads the configured policy files (at start-up: errors stop the agent).
pub fn load_initial(
    cfg: &PolicyConfig,
) -> Result<palisade_policy::PolicySet, palisade_policy::PolicyErrors> {
    if cfg.paths.is_empty() {
        return Ok(palisade_policy::PolicySet::default());
    }
    palisade_policy::load_paths(&cfg.paths)
}

/// Everything the engine needs from the agent's start-up.
pub struct Start {
    pub cfg: PolicyConfig,
    pub set: palisade_policy::PolicySet,
    pub unified_root: std::path::PathBuf,
    pub tracefs: Option<std::path::PathBuf>,
    pub mounts: palisade_cgroupfs::Mounts,
    pub hub: Arc<Hub>,
    /// The syscall telemetry's entry on raw tracepoints (see `crate::kernel::SyscallEntry`).
    pub syscall_entry: Option<crate::kernel::SyscallEntry>,
}

/// What the host gives the policy programs: tracepoint record offsets (tracefs), the offset
/// of `thread_info.status` (the kernel's BTF, `policy.kernel_btf`, when it parsed), the compat
/// syscall translation.
fn host(tracefs: Option<&std::path::Path>, btf: Option<&crate::btf::Btf>) -> Host {
    let offset = |category: &str, name: &str, field: &str| {
        tracefs.and_then(|t| {
            crate::tracefs::Format::read(t, category, name)
                .and_then(|f| f.offset(field))
                .ok()
        })
    };
    let task_status_offset = btf.and_then(|b| {
        let ti = b.member_offset("task_struct", "thread_info").ok()?;
        let st = b.member_offset("thread_info", "status").ok()?;
        Some(ti + st)
    });
    let task_offsets = btf.and_then(|b| {
        Some(palisade_common::policy::TaskOffsets {
            pid: b.member_offset("task_struct", "pid").ok()?,
            cgroups: b.member_offset("task_struct", "cgroups").ok()?,
            dfl_cgrp: b.member_offset("css_set", "dfl_cgrp").ok()?,
            kn: b.member_offset("cgroup", "kn").ok()?,
            kn_id: b.member_offset("kernfs_node", "id").ok()?,
            _pad: 0,
        })
    });
    Host {
        exec_offset: offset("sched", "sched_process_exec", "filename"),
        socket_offset: offset("syscalls", "sys_enter_socket", "family"),
        task_status_offset,
        task_offsets,
        xlat: tables::xlat(),
    }
}

/// Starts the policy task.
pub fn start(s: Start) -> (Handle, tokio::task::JoinHandle<()>) {
    // one read and index of the kernel's BTF for both (5.5 MB and 126,000 types on 6.18)
    let parsed = crate::btf::Btf::from_file(&s.cfg.kernel_btf);
    let host = host(s.tracefs.as_deref(), parsed.as_ref().ok());
    let exec = exec_match::ExecMatch::with_btf(&s.cfg.kernel_btf, parsed);
    let lsm = lsm::LsmSupport::probe(&s.cfg.kernel_btf);
    let btf = s.cfg.kernel_btf.clone();
    let writer = resources::Writer::new(s.unified_root.clone(), &s.mounts);
    let exits = s.hub.subscribe();
    let engine = engine::Engine::new(s.cfg, s.set, s.unified_root, host, exec, s.hub, writer)
        .with_lsm(lsm, btf)
        .with_syscall_entry(s.syscall_entry);
    task::spawn(engine, exits)
}

/// `palisade agent --cleanup`: removes the pinned enforcement state and says what went.
pub fn cleanup(cfg: &PolicyConfig) -> Result<String, bpf::BpfError> {
    let removed = bpffs::cleanup(&cfg.pin_dir)?;
    if removed.is_empty() {
        return Ok(format!("nothing pinned at {}", cfg.pin_dir.display()));
    }
    let mut out = String::new();
    for p in &removed {
        out.push_str(&format!("removed {}\n", p.display()));
    }
    out.push_str(&format!(
        "{} pinned objects removed; policy enforcement detached",
        removed.len()
    ));
    Ok(out)
}
