//! Syscall rules → the verdict table of a slot (x86_64 numbers; compat calls are translated by
//! the kernel), the argument checks of conditional verdicts, and the implicit rules: ABIs a
//! policy does not list (`syscalls.abi`) and io_uring (`syscalls.io_uring`).
use palisade_common::policy::{
    ArgAlt, ArgCond as KCond, ArgRule, MAX_ARG_ALTS, MAX_SYSCALLS, VERDICT_CONDITIONAL, action,
    arg_op, cgroup_flags,
};
use palisade_syscalls::Abi;

use super::{RuleDesc, Shortfall, Tables, desc};
use crate::model::{ArgOp, ListKind, Mode, Policy, SysAction, Syscalls};

pub(super) fn sys_action(a: SysAction) -> (u32, u32) {
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

/// The action of the ABI rule: calls through an ABI the policy does not list are killed,
/// unless the policy only reports (`log`).
fn abi_action(s: &Syscalls) -> SysAction {
    match s.action {
        SysAction::Log => SysAction::Log,
        _ => SysAction::Kill,
    }
}

/// Fills the syscall part of `t` from every policy with syscall rules.
pub(super) fn compile(
    policies: &[(&Policy, Mode)],
    id: &mut dyn FnMut(&RuleDesc) -> Option<u16>,
    t: &mut Tables,
) {
    let mut best = vec![0u32; MAX_SYSCALLS];
    // the policy whose conditional rule holds each conditional verdict
    let mut cond_src: Vec<Option<usize>> = vec![None; MAX_SYSCALLS];
    // (rank, rule) of the ABI rules and of calls without an x86_64 counterpart
    let mut abi_best = [(0u32, 0u16); 2];
    let mut unmapped_best = (0u32, 0u16);
    for (pi, (p, m)) in policies.iter().enumerate() {
        let m = *m;
        let Some(s) = &p.syscalls else { continue };
        t.flags |= cgroup_flags::SYSCALLS;
        let (a, errno) = sys_action(s.action);
        let mut full = Vec::new();
        let mut alloc = |rule: &str, a: u32, errno: u32, full: &mut Vec<String>| {
            let r = id(&desc(p, m, rule, a, errno));
            if r.is_none() && !full.iter().any(|f| f == rule) {
                full.push(rule.to_owned());
            }
            r
        };
        if s.list == ListKind::Allow {
            let r = rank(false, m, s.action);
            if r > unmapped_best.0
                && let Some(rid) = alloc(Syscalls::ALLOW_RULE, a, errno, &mut full)
            {
                unmapped_best = (r, rid);
            }
        }
        let abi_act = abi_action(s);
        let (aa, ae) = sys_action(abi_act);
        for abi in s.refused_abis() {
            let i = usize::from(abi == Abi::X32);
            let r = rank(false, m, abi_act);
            if r > abi_best[i].0
                && let Some(rid) = alloc(Syscalls::ABI_RULE, aa, ae, &mut full)
            {
                abi_best[i] = (r, rid);
            }
        }
        let mut put =
            |nr: u32, rule: &str, conditional: bool, t: &mut Tables, full: &mut Vec<String>| {
                let r = rank(conditional, m, s.action);
                let Some(slot) = best.get_mut(nr as usize) else {
                    return;
                };
                if r <= *slot {
                    return;
                }
                let Some(rid) = alloc(rule, a, errno, full) else {
                    return;
                };
                *slot = r;
                t.verdicts.rule[nr as usize] =
                    rid | if conditional { VERDICT_CONDITIONAL } else { 0 };
                cond_src[nr as usize] = conditional.then_some(pi);
            };
        let io_uring: Vec<u32> = s
            .implicit_io_uring()
            .iter()
            .filter_map(|n| palisade_syscalls::number(n))
            .collect();
        match s.list {
            ListKind::Deny => {
                for e in &s.entries {
                    for nr in &e.nrs {
                        put(*nr, &e.rule, !e.args.is_empty(), t, &mut full);
                    }
                }
            }
            ListKind::Allow => {
                for nr in 0..MAX_SYSCALLS as u32 {
                    if io_uring.contains(&nr) {
                        continue;
                    }
                    let allowed_uring = s.io_uring_allowed
                        && palisade_syscalls::name(nr)
                            .is_some_and(|n| Syscalls::IO_URING.contains(&n));
                    let entries: Vec<_> =
                        s.entries.iter().filter(|e| e.nrs.contains(&nr)).collect();
                    if allowed_uring || entries.iter().any(|e| e.args.is_empty()) {
                        continue;
                    }
                    put(nr, Syscalls::ALLOW_RULE, !entries.is_empty(), t, &mut full);
                }
            }
        }
        for nr in io_uring {
            put(nr, Syscalls::IO_URING_RULE, false, t, &mut full);
        }
        for rule in full {
            t.left_out(
                &p.name,
                Shortfall::RulesFull,
                format!("rule table full: `{rule}` not enforced"),
            );
        }
    }
    t.verdicts.abi_rule = [abi_best[0].1, abi_best[1].1];
    t.verdicts.unmapped_rule = unmapped_best.1;
    for (nr, src) in cond_src.iter().enumerate() {
        let Some(pi) = src else { continue };
        let Some((p, m)) = policies.get(*pi) else {
            continue;
        };
        let Some(s) = &p.syscalls else { continue };
        let (a, errno) = sys_action(s.action);
        let mut rid = |rule: &str| id(&desc(p, *m, rule, a, errno));
        let (rule, dropped) = arg_rule(s, nr as u32, &mut rid);
        if dropped > 0 {
            t.notes.push(format!(
                "{}: {dropped} argument alternatives of syscall {nr} beyond {MAX_ARG_ALTS} not checked at run time",
                p.name
            ));
        }
        t.args.push((nr as u32, rule));
    }
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
