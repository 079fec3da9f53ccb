//! Policies → the kernel tables of one slot (see `palisade_common::policy`), and the seccomp
//! rules of a launched workload.
//!
//! Several policies may select one cgroup; the slot then holds their combination:
//! - syscalls: a call is denied when any policy denies it; the reported rule is the strongest
//!   (unconditional before conditional, enforce before audit, kill before errno before log);
//! - exec: deny patterns of every policy; the first policy's allow-list;
//! - network: the first policy's rules per direction (a warning names the others).
use std::net::IpAddr;

use palisade_common::policy::{
    ArgAlt, ArgCond as KCond, ArgRule, ExecConf, ExecRule, MAX_ARG_ALTS, MAX_NET_RULES,
    MAX_SYSCALLS, NetRule as KRule, NetRuleSet, RuleInfo, SyscallVerdicts, VERDICT_CONDITIONAL,
    action, arg_op, cgroup_flags, exec_kind, fnv, mode,
};

use crate::model::{
    ArgCond, ArgOp, Direction, ExecAction, ExecKind, ListKind, Mode, NetAction, Policy, SysAction,
    Syscalls,
};

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
    pub egress: NetRuleSet,
    pub ingress: NetRuleSet,
    /// What the combination leaves out, for the log.
    pub notes: Vec<String>,
}

pub fn mode_number(m: Mode) -> u32 {
    match m {
        Mode::Audit => mode::AUDIT,
        Mode::Enforce => mode::ENFORCE,
    }
}

fn sys_action(a: SysAction) -> (u32, u32) {
    match a {
        SysAction::Errno(e) => (action::ERRNO, u32::from(e)),
        SysAction::Kill => (action::KILL, 0),
        SysAction::Log => (action::LOG, 0),
    }
}

/// Rank of a candidate verdict: higher wins.
fn rank(conditional: bool, m: Mode, a: SysAction) -> u32 {
    let act = match a {
        SysAction::Kill => 3,
        SysAction::Errno(_) => 2,
        SysAction::Log => 1,
    };
    (u32::from(!conditional) << 8) | (u32::from(m == Mode::Enforce) << 4) | act
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
        egress: NetRuleSet::EMPTY,
        ingress: NetRuleSet::EMPTY,
        notes: Vec::new(),
    };
    let mut best = vec![0u32; MAX_SYSCALLS];
    // the policy whose conditional rule holds each conditional verdict
    let mut cond_src: Vec<Option<usize>> = vec![None; MAX_SYSCALLS];
    let mut have_allow_list = false;
    let (mut have_egress, mut have_ingress) = (None::<&str>, None::<&str>);
    for (pi, (p, m)) in policies.iter().enumerate() {
        let m = *m;
        let desc = |rule: &str, a: u32, errno: u32| RuleDesc {
            policy: p.name.clone(),
            rule: rule.to_owned(),
            action: a,
            errno,
            mode: mode_number(m),
        };
        if let Some(s) = &p.syscalls {
            t.flags |= cgroup_flags::SYSCALLS;
            let (a, errno) = sys_action(s.action);
            let mut put = |nr: u32, rule: &str, conditional: bool, t: &mut Tables| {
                let r = rank(conditional, m, s.action);
                let Some(slot) = best.get_mut(nr as usize) else {
                    return;
                };
                if r <= *slot {
                    return;
                }
                let Some(rid) = id(&desc(rule, a, errno)) else {
                    t.notes.push(format!(
                        "rule table full: `{}` of {} not enforced",
                        rule, p.name
                    ));
                    return;
                };
                *slot = r;
                t.verdicts.rule[nr as usize] =
                    rid | if conditional { VERDICT_CONDITIONAL } else { 0 };
                cond_src[nr as usize] = conditional.then_some(pi);
            };
            match s.list {
                ListKind::Deny => {
                    for e in &s.entries {
                        for nr in &e.nrs {
                            put(*nr, &e.rule, !e.args.is_empty(), &mut t);
                        }
                    }
                }
                ListKind::Allow => {
                    for nr in 0..MAX_SYSCALLS as u32 {
                        let entries: Vec<_> =
                            s.entries.iter().filter(|e| e.nrs.contains(&nr)).collect();
                        if entries.iter().any(|e| e.args.is_empty()) {
                            continue;
                        }
                        put(
                            nr,
                            crate::model::Syscalls::ALLOW_RULE,
                            !entries.is_empty(),
                            &mut t,
                        );
                    }
                }
            }
        }
        if let Some(e) = &p.exec {
            t.flags |= cgroup_flags::EXEC;
            let (a, errno) = match e.action {
                ExecAction::Errno => (action::ERRNO, EPERM),
                ExecAction::Kill => (action::KILL, 0),
                ExecAction::Log => (action::LOG, 0),
            };
            for d in &e.deny {
                match id(&desc(&format!("exec.deny:{}", d.text), a, errno)) {
                    Some(rid) => t.exec.push((
                        kind_number(d.kind),
                        fnv(d.key.as_bytes()),
                        ExecRule {
                            rule: u32::from(rid),
                            allow: 0,
                        },
                    )),
                    None => t
                        .notes
                        .push(format!("rule table full: exec deny {}", d.text)),
                }
            }
            if let Some(allow) = &e.allow {
                if have_allow_list {
                    t.notes.push(format!(
                        "exec allow-list of {} not applied: an earlier policy's allow-list applies",
                        p.name
                    ));
                } else if let Some(rid) = id(&desc(crate::model::Exec::ALLOW_RULE, a, errno)) {
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
                }
            }
        }
        for (d, set, flag, seen) in [
            (
                &p.network.egress,
                &mut t.egress,
                cgroup_flags::EGRESS,
                &mut have_egress,
            ),
            (
                &p.network.ingress,
                &mut t.ingress,
                cgroup_flags::INGRESS,
                &mut have_ingress,
            ),
        ] {
            let Some(d) = d else { continue };
            if let Some(first) = seen {
                t.notes.push(format!(
                    "network rules of {} not applied: {first}'s apply",
                    p.name
                ));
                continue;
            }
            *seen = Some(&p.name);
            t.flags |= flag;
            *set = rule_set(d, &mut |rule: &str, a: u32| id(&desc(rule, a, 0)));
        }
    }
    for (nr, src) in cond_src.iter().enumerate() {
        let Some(pi) = src else { continue };
        let Some((p, m)) = policies.get(*pi) else {
            continue;
        };
        let Some(s) = &p.syscalls else { continue };
        let (a, errno) = sys_action(s.action);
        let mut rid = |rule: &str| {
            id(&RuleDesc {
                policy: p.name.clone(),
                rule: rule.to_owned(),
                action: a,
                errno,
                mode: mode_number(*m),
            })
        };
        let (rule, dropped) = arg_rule(s, nr as u32, &mut rid);
        if dropped > 0 {
            t.notes.push(format!(
                "{}: {dropped} argument alternatives of syscall {nr} beyond {MAX_ARG_ALTS} not checked at run time",
                p.name
            ));
        }
        t.args.push((nr as u32, rule));
    }
    // keep `exec` deterministic and free of duplicates (deny entries first win in the kernel
    // anyway: the map holds one value per key, so prefer deny)
    t.exec.sort_by_key(|(k, h, r)| (*k, *h, r.allow));
    t.exec.dedup_by_key(|(k, h, _)| (*k, *h));
    t
}

fn op_number(o: ArgOp) -> u32 {
    match o {
        ArgOp::Eq => arg_op::EQ,
        ArgOp::Ne => arg_op::NE,
        ArgOp::Lt => arg_op::LT,
        ArgOp::Le => arg_op::LE,
        ArgOp::Gt => arg_op::GT,
        ArgOp::Ge => arg_op::GE,
        ArgOp::MaskedEq => arg_op::MASKED_EQ,
    }
}

/// The run-time argument check of syscall `nr` in `s`; also how many alternatives did not fit.
fn arg_rule(s: &Syscalls, nr: u32, id: &mut dyn FnMut(&str) -> Option<u16>) -> (ArgRule, usize) {
    let mut r = ArgRule {
        match_allows: u32::from(s.list == ListKind::Allow),
        ..ArgRule::default()
    };
    let alts: Vec<_> = s
        .entries
        .iter()
        .filter(|e| e.nrs.contains(&nr) && !e.args.is_empty())
        .collect();
    for (slot, e) in r.alt.iter_mut().zip(&alts) {
        let mut alt = ArgAlt {
            rule: if s.list == ListKind::Deny {
                id(&e.rule).map_or(0, u32::from)
            } else {
                0
            },
            count: 0,
            ..ArgAlt::default()
        };
        for (k, c) in alt.conds.iter_mut().zip(&e.args) {
            *k = KCond {
                index: c.index,
                op: op_number(c.op),
                value: c.value,
                value_two: c.value_two,
            };
            alt.count += 1;
        }
        *slot = alt;
        r.alts += 1;
    }
    (r, alts.len().saturating_sub(MAX_ARG_ALTS))
}

fn kind_number(k: ExecKind) -> u32 {
    match k {
        ExecKind::Exact => exec_kind::EXACT,
        ExecKind::Dir => exec_kind::DIR,
        ExecKind::Tree => exec_kind::TREE,
        ExecKind::Basename => exec_kind::BASENAME,
    }
}

fn net_action(a: NetAction) -> u32 {
    match a {
        NetAction::Allow => action::ALLOW,
        NetAction::Deny => action::DENY,
        NetAction::Log => action::LOG,
    }
}

/// One direction's rules, one kernel rule per port range, in order.
pub fn rule_set(d: &Direction, id: &mut dyn FnMut(&str, u32) -> Option<u16>) -> NetRuleSet {
    let mut s = NetRuleSet::EMPTY;
    s.default_action = net_action(d.default);
    s.default_rule = id(&d.default_rule, s.default_action).map_or(0, u32::from);
    let mut n = 0;
    for r in &d.rules {
        let a = net_action(r.action);
        let rid = id(&r.rule, a).map_or(0, u32::from);
        let (family, addr, prefix) = match r.cidr {
            None => (0u16, [0u8; 16], 0u8),
            Some((IpAddr::V4(v), len)) => {
                let mut x = [0u8; 16];
                x[..4].copy_from_slice(&v.octets());
                (palisade_common::net::AF_INET, x, len)
            }
            Some((IpAddr::V6(v), len)) => (palisade_common::net::AF_INET6, v.octets(), len),
        };
        let ranges: Vec<(u16, u16)> = if r.ports.is_empty() {
            vec![(0, u16::MAX)]
        } else {
            r.ports.clone()
        };
        for (lo, hi) in ranges {
            if n >= MAX_NET_RULES {
                break;
            }
            s.rules[n] = KRule {
                addr,
                family,
                prefix,
                proto: r.proto.number(),
                port_lo: lo,
                port_hi: hi,
                action: a,
                rule: rid,
            };
            n += 1;
        }
    }
    s.count = n as u32;
    s
}

/// What the launcher's seccomp filter gets from a policy: the default for calls no rule names
/// and the rules (names, allow or the policy's action, argument conditions).
#[derive(Debug, Clone, PartialEq)]
pub struct SeccompRules {
    /// `None`: allow.
    pub default: Option<SysAction>,
    pub rules: Vec<(Vec<String>, Option<SysAction>, Vec<ArgCond>)>,
}

/// The seccomp rules of a policy's syscall section (enforce mode; in audit mode a launched
/// workload gets no filter from the policy and the run-time hook reports instead).
pub fn seccomp_rules(p: &Policy) -> Option<SeccompRules> {
    let s = p.syscalls.as_ref()?;
    if p.mode == Mode::Audit {
        return None;
    }
    Some(match s.list {
        ListKind::Deny => SeccompRules {
            default: None,
            rules: s
                .entries
                .iter()
                .map(|e| (e.names.clone(), Some(s.action), e.args.clone()))
                .collect(),
        },
        ListKind::Allow => SeccompRules {
            default: Some(s.action),
            rules: s
                .entries
                .iter()
                .map(|e| (e.names.clone(), None, e.args.clone()))
                .collect(),
        },
    })
}
