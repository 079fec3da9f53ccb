//! Network rules → one rule set per policy and direction. The kernel evaluates every set of a
//! slot and the strongest outcome wins, so a deny in any policy refuses whatever the order of
//! the policies (an earlier audit policy no longer switches a later deny off).
use std::net::IpAddr;

use palisade_common::policy::{
    MAX_NET_RULES, MAX_NET_SETS, NetRule as KRule, NetRuleSet, action, cgroup_flags,
};

use super::{RuleDesc, Shortfall, Tables, desc};
use crate::model::{Direction, Mode, NetAction, Policy};

fn net_action(a: NetAction) -> u32 {
    match a {
        NetAction::Allow => action::ALLOW,
        NetAction::Deny => action::DENY,
        NetAction::Log => action::LOG,
    }
}

/// Fills the network sets of `t`, one per policy with rules for a direction, in order.
pub(super) fn compile(
    policies: &[(&Policy, Mode)],
    id: &mut dyn FnMut(&RuleDesc) -> Option<u16>,
    t: &mut Tables,
) {
    let (mut n_egress, mut n_ingress) = (0usize, 0usize);
    for (p, m) in policies {
        for (dir, which) in [(&p.network.egress, 0), (&p.network.ingress, 1)] {
            let Some(d) = dir else { continue };
            let (used, flag, name) = if which == 0 {
                (&mut n_egress, cgroup_flags::EGRESS, "egress")
            } else {
                (&mut n_ingress, cgroup_flags::INGRESS, "ingress")
            };
            if *used >= MAX_NET_SETS as usize {
                t.left_out(
                    &p.name,
                    Shortfall::NetworkSets,
                    format!(
                        "{name} rules not enforced: more than {MAX_NET_SETS} policies with {name} rules select this cgroup"
                    ),
                );
                continue;
            }
            t.flags |= flag;
            let mut full = false;
            let set = rule_set(d, &mut |rule: &str, a: u32| {
                let r = id(&desc(p, *m, rule, a, 0));
                full |= r.is_none();
                r
            });
            if full {
                t.left_out(
                    &p.name,
                    Shortfall::RulesFull,
                    format!("rule table full: some {name} rules not enforced"),
                );
            }
            let sets = if which == 0 {
                &mut t.egress
            } else {
                &mut t.ingress
            };
            sets[*used] = set;
            *used += 1;
        }
    }
}

/// One direction's rules, one kernel rule per port range, in order.
pub fn rule_set(d: &Direction, id: &mut dyn FnMut(&str, u32) -> Option<u16>) -> NetRuleSet {
    let mut s = NetRuleSet::EMPTY;
    s.default_action = net_action(d.default);
    s.default_rule = id(&d.default_rule, s.default_action).map_or(0, u32::from);
    if let Some(k) = &d.kind_rule {
        s.kind_rule = id(k, action::DENY).map_or(0, u32::from);
    }
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
                mask: palisade_common::policy::prefix_mask(prefix),
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
