//! `palisade run --policy FILE`: the syscall rules of the policy selecting the workload are
//! added to its seccomp profile (enforce mode; a second filter after the baseline, `default`,
//! `--seccomp FILE` or the bundle's: the kernel takes the strictest answer of the two, so a
//! policy never weakens the baseline), its resources become cgroup limits (flags win) and,
//! sent with the registration, its exec and network rules are put in force by the agent
//! before the workload's first instruction.
use std::path::{Path, PathBuf};

use palisade_policy::{
    Mode, Policy, Target,
    compile::seccomp_rules,
    model::{Abi, ArgOp, SysAction},
};

use super::{
    LaunchError,
    plan::{CPU_PERIOD_US, Plan},
    seccomp::{Action, Arch, ArgCmp, Op, Profile, Rule},
};

/// A policy file that cannot be applied to this launch.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "cannot read the policy {}: {source} (give a policy file; see `palisade policy check`)",
        path.display()
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy {}: invalid:\n{source}", path.display())]
    Invalid {
        path: PathBuf,
        source: palisade_policy::PolicyErrors,
    },
    #[error(
        "policy {}: replicas are selected by different policies (at {workload}); give them one policy",
        path.display()
    )]
    ReplicasDiffer { path: PathBuf, workload: String },
    #[error(
        "policy {}: no policy selects workload {workload} (selectors: {})",
        path.display(),
        .selectors.join("; ")
    )]
    NoneSelects {
        path: PathBuf,
        workload: String,
        /// `NAME: selector` of each policy in the file.
        selectors: Vec<String>,
    },
    #[error(
        "policy {}: policies {} both have syscall rules; a workload has one seccomp filter from its policy",
        path.display(),
        .policies.join(" and ")
    )]
    TwoSeccompPolicies {
        path: PathBuf,
        policies: Vec<String>,
    },
}
use palisade_proto::LaunchPolicy;

/// What the launcher does with a policy file.
#[derive(Debug)]
pub struct ForLaunch {
    /// For the registration (the agent validates and enforces it).
    pub wire: LaunchPolicy,
    /// Policies with exec, file or network rules in enforce mode: only the agent enforces
    /// those, so the launch is refused without one.
    pub needs_agent: Vec<String>,
}

fn action(a: SysAction) -> Action {
    match a {
        SysAction::Errno(e) => Action::Errno(e),
        SysAction::Kill => Action::KillProcess,
        SysAction::Log => Action::Log,
    }
}

fn op(o: ArgOp) -> Op {
    match o {
        ArgOp::Eq => Op::Eq,
        ArgOp::Ne => Op::Ne,
        ArgOp::Lt => Op::Lt,
        ArgOp::Le => Op::Le,
        ArgOp::Gt => Op::Gt,
        ArgOp::Ge => Op::Ge,
        ArgOp::MaskedEq => Op::MaskedEq,
    }
}

/// The seccomp profile of a policy's syscall rules (enforce mode only).
pub fn profile(p: &Policy, source: &str) -> Option<Profile> {
    let r = seccomp_rules(p)?;
    Some(Profile {
        source: format!("policy {} ({source})", p.name),
        default_action: r.default.map_or(Action::Allow, action),
        // the policy's `abis:`: a call through another ABI kills the workload, as at run time
        arches: r
            .abis
            .iter()
            .map(|a| match a {
                Abi::X86_64 => Arch::X86_64,
                Abi::I386 => Arch::X86,
                Abi::X32 => Arch::X32,
            })
            .collect(),
        rules: r
            .rules
            .into_iter()
            .map(|(names, a, args)| Rule {
                names,
                action: a.map_or(Action::Allow, action),
                args: args
                    .iter()
                    .map(|c| ArgCmp {
                        index: c.index,
                        value: c.value,
                        value_two: c.value_two,
                        op: op(c.op),
                    })
                    .collect(),
            })
            .collect(),
        log: false,
        spec_allow: false,
    })
}

/// Reads `file`, picks the policies selecting the workloads `names`, and applies them to
/// `plan` (a seccomp filter after the baseline's, limits).
pub fn prepare(file: &Path, names: &[String], plan: &mut Plan) -> Result<ForLaunch, LaunchError> {
    let source = file.display().to_string();
    let file_path = || file.to_owned();
    let text = std::fs::read_to_string(file).map_err(|source| PolicyError::Read {
        path: file_path(),
        source,
    })?;
    let all =
        palisade_policy::parse_str(&text, &source).map_err(|source| PolicyError::Invalid {
            path: file_path(),
            source,
        })?;
    let mut picked: Option<Vec<&Policy>> = None;
    for n in names {
        let path = format!("/palisade/{n}");
        let t = Target {
            name: n,
            runtime: "palisade",
            path: &path,
            workload: true,
            ..Target::default()
        };
        let these: Vec<&Policy> = all.iter().filter(|p| p.selector.matches(&t)).collect();
        match &picked {
            None => picked = Some(these),
            Some(first)
                if first
                    .iter()
                    .map(|p| &p.name)
                    .eq(these.iter().map(|p| &p.name)) => {}
            Some(_) => {
                return Err(PolicyError::ReplicasDiffer {
                    path: file_path(),
                    workload: n.clone(),
                }
                .into());
            }
        }
    }
    let picked = picked.unwrap_or_default();
    if picked.is_empty() {
        return Err(PolicyError::NoneSelects {
            path: file_path(),
            workload: names.first().map_or_else(|| "?".to_owned(), String::clone),
            selectors: all
                .iter()
                .map(|p| format!("{}: {}", p.name, p.selector.describe()))
                .collect(),
        }
        .into());
    }
    let with_syscalls: Vec<&&Policy> = picked
        .iter()
        .filter(|p| p.syscalls.is_some() && p.mode == Mode::Enforce)
        .collect();
    if with_syscalls.len() > 1 {
        return Err(PolicyError::TwoSeccompPolicies {
            path: file_path(),
            policies: with_syscalls.iter().map(|p| p.name.clone()).collect(),
        }
        .into());
    }
    let mut seccomp = false;
    if let Some(p) = with_syscalls.first().and_then(|p| profile(p, &source)) {
        // on top of the baseline, never instead of it
        plan.seccomp
            .extend(super::cmdline::compile_seccomp(Some(p))?);
        seccomp = true;
    }
    let limits = picked
        .iter()
        .filter(|p| p.mode == Mode::Enforce)
        .fold(palisade_policy::model::Resources::default(), |a, p| {
            a.stricter(p.resources)
        });
    let r = &mut plan.resources;
    if r.memory.is_none()
        && let Some(m) = limits.memory
    {
        r.memory = Some(m);
        r.memory_swap = None;
    }
    if r.cpu_quota.is_none()
        && let Some(q) = limits.cpu_quota_us
    {
        r.cpu_quota = Some(q);
        r.cpu_period = Some(CPU_PERIOD_US);
    }
    if r.pids.is_none() {
        r.pids = limits.pids;
    }
    let needs_agent = picked
        .iter()
        .filter(|p| {
            p.mode == Mode::Enforce
                && (p.exec.is_some()
                    || p.files.is_some()
                    || p.network.egress.is_some()
                    || p.network.ingress.is_some())
        })
        .map(|p| p.name.clone())
        .collect();
    Ok(ForLaunch {
        wire: LaunchPolicy {
            source,
            text,
            names: picked.iter().map(|p| p.name.clone()).collect(),
            seccomp,
        },
        needs_agent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_becomes_a_seccomp_profile() {
        let text = "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: w}\nspec:\n  selector: {workload: \"w-*\"}\n  syscalls:\n    deny: [mount, {names: [unshare], args: [{index: 0, op: masked_eq, value: 0x20000, value_two: 0x20000}]}]\n";
        let p = palisade_policy::parse_str(text, "t.yaml").unwrap();
        let prof = profile(&p[0], "t.yaml").unwrap();
        assert_eq!(prof.default_action, Action::Allow);
        assert_eq!(prof.rules[0].action, Action::Errno(1));
        assert_eq!(prof.rules[1].args[0].op, Op::MaskedEq);
        let c = super::super::seccomp::compile(&prof).unwrap();
        assert!(c.unknown.is_empty());
        assert_eq!(prof.arches, [Arch::X86_64], "other ABIs kill");
        // io_uring gets the policy's action where no rule names it
        assert!(
            prof.rules
                .iter()
                .any(|r| r.names.iter().any(|n| n == "io_uring_setup")
                    && r.action == Action::Errno(1)),
            "{:?}",
            prof.rules
        );
        let text = text.replace(
            "  syscalls:\n",
            "  syscalls:\n    abis: [x86_64, i386]\n    io_uring: allow\n",
        );
        let p = palisade_policy::parse_str(&text, "t.yaml").unwrap();
        let prof = profile(&p[0], "t.yaml").unwrap();
        assert_eq!(prof.arches, [Arch::X86_64, Arch::X86]);
        let c = super::super::seccomp::compile(&prof).unwrap();
        assert!(c.unknown.is_empty());
    }
}
