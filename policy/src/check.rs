//! Checks across rules and policies: errors that make a set invalid, and warnings that explain
//! conflicts (a rule that never applies, two allow-lists on one container, ...).
use std::net::IpAddr;

use palisade_syscalls as syscalls;

use crate::model::{Diagnostic, ListKind, NetAction, NetRule, Policy, PolicySet, Proto, Selector};

/// Errors of the set as a whole: two policies with one name.
pub fn set_errors(set: &PolicySet) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, p) in set.policies.iter().enumerate() {
        if let Some(first) = set.policies[..i].iter().find(|q| q.name == p.name) {
            out.push(Diagnostic {
                loc: p.loc.clone(),
                message: format!(
                    "a second policy named `{}` (the first is at {}); names identify policies in events, metrics and `palisade policy mode`",
                    p.name, first.loc
                ),
            });
        }
    }
    out
}

/// Warnings: conflicts and surprises, each with the reason and what wins.
pub fn warnings(set: &PolicySet) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in &set.policies {
        policy_warnings(p, &mut out);
        crate::check_enforce::notes(p, &mut out);
    }
    for (i, a) in set.policies.iter().enumerate() {
        for b in &set.policies[i + 1..] {
            if !may_overlap(&a.selector, &b.selector) {
                continue;
            }
            let both = |f: &dyn Fn(&Policy) -> bool| f(a) && f(b);
            if both(&|p| {
                p.syscalls
                    .as_ref()
                    .is_some_and(|s| s.list == ListKind::Allow)
            }) {
                out.push(Diagnostic {
                    loc: b.loc.clone(),
                    message: format!(
                        "policies `{}` and `{}` may select the same containers and both have a syscall allow-list: a call outside either list is denied (the first policy's rule is reported); at launch only one policy may carry syscall rules",
                        a.name, b.name
                    ),
                });
            }
            if both(&|p| p.exec.as_ref().is_some_and(|e| e.allow.is_some())) {
                out.push(Diagnostic {
                    loc: b.loc.clone(),
                    message: format!(
                        "policies `{}` and `{}` may select the same containers and both have an exec allow-list: only `{}`'s applies where both select",
                        a.name, b.name, a.name
                    ),
                });
            }
        }
    }
    out
}

/// Two selectors might select one cgroup (conservative: different literal values of the same
/// field cannot).
fn may_overlap(a: &Selector, b: &Selector) -> bool {
    let literal = |g: &Option<crate::model::Glob>| {
        g.as_ref()
            .filter(|g| !g.source.contains(['*', '?', '[', '{']))
            .map(|g| g.source.clone())
    };
    for (x, y) in [
        (&a.workload, &b.workload),
        (&a.container, &b.container),
        (&a.runtime, &b.runtime),
        (&a.namespace, &b.namespace),
        (&a.pod, &b.pod),
        (&a.cgroup, &b.cgroup),
    ] {
        if let (Some(x), Some(y)) = (literal(x), literal(y))
            && x != y
        {
            return false;
        }
    }
    true
}

fn policy_warnings(p: &Policy, out: &mut Vec<Diagnostic>) {
    if let Some(s) = &p.syscalls {
        for (nr, n) in conditional_alternatives(s) {
            if n > palisade_common::policy::MAX_ARG_ALTS {
                out.push(Diagnostic {
                    loc: s.loc.clone(),
                    message: format!(
                        "{n} rules with argument conditions name syscall {}: the seccomp filter of a launched workload checks them all, the run-time hook only the first {}",
                        syscalls::name(nr).unwrap_or("?"),
                        palisade_common::policy::MAX_ARG_ALTS
                    ),
                });
            }
        }
        if s.list == ListKind::Allow {
            for needed in ["execve", "exit_group"] {
                if !s
                    .entries
                    .iter()
                    .any(|e| e.names.iter().any(|n| n == needed))
                {
                    out.push(Diagnostic {
                        loc: s.loc.clone(),
                        message: format!(
                            "the allow-list lacks `{needed}`: a workload started under it cannot {}",
                            if needed == "execve" { "start its program" } else { "exit normally" }
                        ),
                    });
                }
            }
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for e in &s.entries {
            for n in &e.names {
                if e.args.is_empty()
                    && let Some((_, first)) = seen.iter().find(|(m, _)| m == n)
                {
                    out.push(Diagnostic {
                        loc: e.loc.clone(),
                        message: format!(
                            "`{n}` is already listed by rule `{first}`: this entry changes nothing"
                        ),
                    });
                }
                if e.args.is_empty() {
                    seen.push((n, &e.rule));
                }
            }
        }
    }
    if let Some(e) = &p.exec
        && let Some(allow) = &e.allow
    {
        for d in &e.deny {
            if let Some(a) = allow.iter().find(|a| a.text == d.text) {
                out.push(Diagnostic {
                    loc: d.loc.clone(),
                    message: format!(
                        "`{}` is both allowed ({}) and denied: deny wins",
                        d.text, a.loc
                    ),
                });
            }
        }
    }
    for d in [&p.network.egress, &p.network.ingress]
        .into_iter()
        .flatten()
    {
        for (j, r) in d.rules.iter().enumerate() {
            if let Some(i) = d.rules[..j].iter().position(|e| covers(e, r)) {
                let e = &d.rules[i];
                out.push(Diagnostic {
                    loc: r.loc.clone(),
                    message: if e.action == r.action {
                        format!(
                            "rule `{}` never applies: `{}` ({}) matches everything it matches first, with the same action",
                            r.rule, e.rule, e.loc
                        )
                    } else {
                        format!(
                            "rule `{}` ({}) never applies: `{}` ({}) matches everything it matches first and says {}; rules are tried in order, the first match decides",
                            r.rule,
                            action_word(r.action),
                            e.rule,
                            e.loc,
                            action_word(e.action)
                        )
                    },
                });
            }
        }
    }
}

/// (syscall number, rules with argument conditions naming it).
fn conditional_alternatives(s: &crate::model::Syscalls) -> Vec<(u32, usize)> {
    let mut counts: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    for e in s.entries.iter().filter(|e| !e.args.is_empty()) {
        for nr in &e.nrs {
            *counts.entry(*nr).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

fn action_word(a: NetAction) -> &'static str {
    match a {
        NetAction::Allow => "allow",
        NetAction::Deny => "deny",
        NetAction::Log => "log",
    }
}

/// Whether `a` matches every connection `b` matches.
fn covers(a: &NetRule, b: &NetRule) -> bool {
    let proto = a.proto == Proto::Any || a.proto == b.proto;
    let ports = a.ports.is_empty()
        || (!b.ports.is_empty()
            && b.ports
                .iter()
                .all(|(lo, hi)| a.ports.iter().any(|(x, y)| x <= lo && hi <= y)));
    let cidr = match (&a.cidr, &b.cidr) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some((x, xl)), Some((y, yl))) => xl <= yl && same_prefix(x, y, *xl),
    };
    proto && ports && cidr
}

fn same_prefix(a: &IpAddr, b: &IpAddr, len: u8) -> bool {
    let (x, y): (Vec<u8>, Vec<u8>) = match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (a.octets().to_vec(), b.octets().to_vec()),
        (IpAddr::V6(a), IpAddr::V6(b)) => (a.octets().to_vec(), b.octets().to_vec()),
        _ => return false,
    };
    let mut left = u32::from(len);
    for (p, q) in x.iter().zip(&y) {
        if left == 0 {
            break;
        }
        let bits = left.min(8);
        let mask = (0xffu16 << (8 - bits)) as u8;
        if p & mask != q & mask {
            return false;
        }
        left -= bits;
    }
    true
}

/// What the file rules of a set do on a host with `tier`, where that is less than written:
/// `action: errno` reported only without BPF-LSM, accesses not seen, best-effort matching.
pub fn file_notes(set: &PolicySet, tier: &crate::files::FileTier) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in &set.policies {
        if let Some(f) = &p.files {
            crate::files::notes(f, p.mode, tier, &mut out);
        }
    }
    out
}
