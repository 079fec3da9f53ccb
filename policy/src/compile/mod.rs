//! Policies → the kernel tables of one slot (see `palisade_common::policy`), and the seccomp
//! rules of a launched workload.
//!
//! Several policies may select one cgroup (directly, or through an ancestor cgroup: a policy
//! holds for the whole subtree of what it selects); the slot then holds their combination, and
//! any deny among them wins whatever their order:
//! - syscalls: a call is denied when any policy denies it; the reported rule is the strongest
//!   (unconditional before conditional, enforce before audit, kill before errno before log).
//!   The same holds for the implicit rules: a call through an ABI some policy does not list
//!   (`syscalls.abi`) and the io_uring calls no rule names (`syscalls.io_uring`);
//! - exec: deny patterns of every policy; the first policy's allow-list;
//! - network: every policy's rules are a set of their own (up to `MAX_NET_SETS` per
//!   direction); the kernel evaluates each and the strongest outcome wins.
//!
//! What cannot be put in the tables (a full rule table, too many network policies) is listed in
//! [`Tables::left_out`]: the agent reports it, never silently weaker.
pub mod files;
mod network;
mod syscalls;

use palisade_common::policy::{
    ArgRule, ExecConf, ExecRule, MAX_NET_SETS, NetRuleSet, RuleInfo, SyscallVerdicts, action,
    cgroup_flags, exec_kind, fnv, mode,
};

pub use self::network::rule_set;
use crate::model::{ArgCond, ExecAction, ExecKind, ListKind, Mode, Policy, SysAction};

/// The errno of a refused exec (`action: errno` exec rules).
const EPERM: u32 = 1;

/// A rule as the kernel needs it described (the id allocator stores it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleDesc {
    pub policy: String,
    pub rule: String,
    /// One of `palisade_common::policy::action`.
    pub action: u32,
    pub errno: u32,
    /// One of `palisade_common::policy::mode`.
    pub mode: u32,
}

impl RuleDesc {
    pub fn info(&self) -> RuleInfo {
        let mut i = RuleInfo::EMPTY;
        i.action = self.action;
        i.mode = self.mode;
        i.errno = self.errno;
        copy_name(&mut i.policy, &self.policy);
        copy_name(&mut i.rule, &self.rule);
        i
    }
}

fn copy_name(dst: &mut [u8], s: &str) {
    let n = s.len().min(dst.len() - 1);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Why some of a policy's rules are not in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Shortfall {
    /// The rule id table (`POLICY_RULES`) is full.
    RulesFull,
    /// More policies with network rules for one direction than a cgroup can combine.
    NetworkSets,
}

impl Shortfall {
    /// The `reason` label of `palisade_policy_unenforced`.
    pub fn as_str(self) -> &'static str {
        match self {
            Shortfall::RulesFull => "rules_full",
            Shortfall::NetworkSets => "network_policies",
        }
    }
}

/// Rules of a policy the tables could not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub policy: String,
    pub reason: Shortfall,
    pub detail: String,
}

/// The tables of one slot.
#[derive(Debug, Clone, PartialEq)]
pub struct Tables {
    /// `palisade_common::policy::cgroup_flags` this slot needs (without `SECCOMP`).
    pub flags: u32,
    pub verdicts: Box<SyscallVerdicts>,
    /// Argument checks of conditional verdicts: (syscall number, rule).
    pub args: Vec<(u32, ArgRule)>,
    pub exec_conf: ExecConf,
    /// (kind, hash, rule)
    pub exec: Vec<(u32, u64, ExecRule)>,
    /// File patterns: (kind, hash, rules per access); see [`files::compile`].
    pub files: Vec<(u32, u64, palisade_common::policy::FileEntry)>,
    /// One rule set per policy with rules for the direction (unused sets allow everything).
    pub egress: [NetRuleSet; MAX_NET_SETS as usize],
    pub ingress: [NetRuleSet; MAX_NET_SETS as usize],
    /// What the combination leaves out, for the log.
    pub notes: Vec<String>,
    /// Rules not in the tables, by policy: reported as unenforced.
    pub left_out: Vec<LeftOut>,
}

impl Tables {
    fn left_out(&mut self, policy: &str, reason: Shortfall, detail: String) {
        self.notes.push(format!("{policy}: {detail}"));
        self.left_out.push(LeftOut {
            policy: policy.to_owned(),
            reason,
            detail,
        });
    }
}

pub fn mode_number(m: Mode) -> u32 {
    match m {
        Mode::Audit => mode::AUDIT,
        Mode::Enforce => mode::ENFORCE,
    }
}

/// The description of rule `rule` of `p` in mode `m`.
fn desc(p: &Policy, m: Mode, rule: &str, action: u32, errno: u32) -> RuleDesc {
    RuleDesc {
        policy: p.name.clone(),
        rule: rule.to_owned(),
        action,
        errno,
        mode: mode_number(m),
    }
}

/// Compiles the policies selecting one cgroup (in priority order, each with its effective
/// mode). `id` allocates a rule id (≤ 0x7fff) for a description; `None` when the table is full.
pub fn compile(
    policies: &[(&Policy, Mode)],
    id: &mut dyn FnMut(&RuleDesc) -> Option<u16>,
) -> Tables {
    let mut t = Tables {
        flags: 0,
        verdicts: Box::new(SyscallVerdicts::ZERO),
        args: Vec::new(),
        exec_conf: ExecConf::default(),
        exec: Vec::new(),
        files: Vec::new(),
        egress: [NetRuleSet::EMPTY; MAX_NET_SETS as usize],
        ingress: [NetRuleSet::EMPTY; MAX_NET_SETS as usize],
        notes: Vec::new(),
        left_out: Vec::new(),
    };
    syscalls::compile(policies, id, &mut t);
    let mut have_allow_list = false;
    for (p, m) in policies {
        if let Some(e) = &p.exec {
            t.flags |= cgroup_flags::EXEC;
            let (a, errno) = match e.action {
                ExecAction::Errno => (action::ERRNO, EPERM),
                ExecAction::Kill => (action::KILL, 0),
                ExecAction::Log => (action::LOG, 0),
            };
            for d in &e.deny {
                match id(&desc(p, *m, &format!("exec.deny:{}", d.text), a, errno)) {
                    Some(rid) => t.exec.push((
                        kind_number(d.kind),
                        fnv(d.key.as_bytes()),
                        ExecRule {
                            rule: u32::from(rid),
                            allow: 0,
                        },
                    )),
                    None => t.left_out(
                        &p.name,
                        Shortfall::RulesFull,
                        format!("rule table full: exec deny {} not enforced", d.text),
                    ),
                }
            }
            if let Some(allow) = &e.allow {
                if have_allow_list {
                    t.notes.push(format!(
                        "exec allow-list of {} not applied: an earlier policy's allow-list applies",
                        p.name
                    ));
                } else if let Some(rid) = id(&desc(p, *m, crate::model::Exec::ALLOW_RULE, a, errno))
                {
                    have_allow_list = true;
                    t.exec_conf = ExecConf {
                        allow_list: 1,
                        default_rule: u32::from(rid),
                    };
                    for x in allow {
                        t.exec.push((
                            kind_number(x.kind),
                            fnv(x.key.as_bytes()),
                            ExecRule { rule: 0, allow: 1 },
                        ));
                    }
                } else {
                    t.left_out(
                        &p.name,
                        Shortfall::RulesFull,
                        "rule table full: exec allow-list not enforced".into(),
                    );
                }
            }
        }
    }
    network::compile(policies, id, &mut t);
    // keep `exec` deterministic and free of duplicates (deny entries first win in the kernel
    // anyway: the map holds one value per key, so prefer deny)
    t.exec.sort_by_key(|(k, h, r)| (*k, *h, r.allow));
    t.exec.dedup_by_key(|(k, h, _)| (*k, *h));
    let mut left = Vec::new();
    t.files = files::compile(policies, id, &mut left);
    if policies.iter().any(|(p, _)| p.files.is_some()) {
        t.flags |= cgroup_flags::FILES;
    }
    for (policy, detail) in left {
        t.left_out(&policy, Shortfall::RulesFull, detail);
    }
    t.files.sort_by_key(|(k, h, _)| (*k, *h));
    t
}

fn kind_number(k: ExecKind) -> u32 {
    match k {
        ExecKind::Exact => exec_kind::EXACT,
        ExecKind::Dir => exec_kind::DIR,
        ExecKind::Tree => exec_kind::TREE,
        ExecKind::Basename => exec_kind::BASENAME,
    }
}

/// What the launcher's seccomp filter gets from a policy: the default for calls no rule names,
/// the rules (names, allow or the policy's action, argument conditions), and the ABIs whose
/// calls the rules hold for (a call through another one kills the process).
#[derive(Debug, Clone, PartialEq)]
pub struct SeccompRules {
    /// `None`: allow.
    pub default: Option<SysAction>,
    pub rules: Vec<(Vec<String>, Option<SysAction>, Vec<ArgCond>)>,
    pub abis: Vec<crate::model::Abi>,
}

/// The seccomp rules of a policy's syscall section (enforce mode; in audit mode a launched
/// workload gets no filter from the policy and the run-time hook reports instead). The
/// io_uring calls no rule names are denied with the policy's action (or allowed, with
/// `io_uring: allow`), as the run-time rule `syscalls.io_uring` does.
pub fn seccomp_rules(p: &Policy) -> Option<SeccompRules> {
    let s = p.syscalls.as_ref()?;
    if p.mode == Mode::Audit {
        return None;
    }
    let mut rules: Vec<_> = match s.list {
        ListKind::Deny => s
            .entries
            .iter()
            .map(|e| (e.names.clone(), Some(s.action), e.args.clone()))
            .collect(),
        ListKind::Allow => s
            .entries
            .iter()
            .map(|e| (e.names.clone(), None, e.args.clone()))
            .collect(),
    };
    let uring = s.implicit_io_uring();
    if !uring.is_empty() {
        rules.push((
            uring.iter().map(|n| (*n).to_owned()).collect(),
            Some(s.action),
            Vec::new(),
        ));
    } else if s.io_uring_allowed {
        let unnamed: Vec<String> = crate::model::Syscalls::IO_URING
            .iter()
            .filter(|n| !s.names(n))
            .map(|n| (*n).to_owned())
            .collect();
        if !unnamed.is_empty() {
            rules.push((unnamed, None, Vec::new()));
        }
    }
    Some(SeccompRules {
        default: match s.list {
            ListKind::Deny => None,
            ListKind::Allow => Some(s.action),
        },
        rules,
        abis: s.abis.clone(),
    })
}
