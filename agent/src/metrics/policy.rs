//! Policy metric families (rendered with the others on `/metrics`).
use prometheus::proto::{MetricFamily, MetricType};

use super::{Budget, counter, family, gauge};
use crate::policy::Snapshot;

pub(crate) fn families(s: &Snapshot, budget: &mut Budget) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let mut f = family(
        "palisade_policy_violations_total",
        "Policy violations by policy, rule, what happened (errno, kill, log, drop, would_block) and container; every violation counts, rate-limited events or not.",
        MetricType::COUNTER,
    );
    if budget.take(s.violations.len()) {
        for ((policy, rule, action, container), n) in &s.violations {
            f.mut_metric().push(counter(
                &[
                    ("policy", policy),
                    ("rule", rule),
                    ("action", action),
                    ("container", container),
                ],
                *n as f64,
            ));
        }
    }
    out.push(f);
    let mut f = family(
        "palisade_policy_reloads_total",
        "Policy files reloaded (SIGHUP, file change, `palisade policy reload`).",
        MetricType::COUNTER,
    );
    f.mut_metric().push(counter(&[], s.reloads as f64));
    out.push(f);
    let mut f = family(
        "palisade_policy_reload_errors_total",
        "Reloads rejected because a policy file was invalid (the previous policies stayed in force).",
        MetricType::COUNTER,
    );
    f.mut_metric().push(counter(&[], s.reload_errors as f64));
    out.push(f);
    let mut f = family(
        "palisade_policy_cgroups",
        "Cgroups each policy applies to, with its current mode.",
        MetricType::GAUGE,
    );
    for ((policy, mode), n) in &s.cgroups {
        f.mut_metric()
            .push(gauge(&[("policy", policy), ("mode", mode)], *n as f64));
    }
    out.push(f);
    let mut f = family(
        "palisade_policy_unenforced",
        "1 for each policy that cannot be put in place (fully) for a container, by reason: slots_full, cgroups_full, rules_full, network_policies, table_error, not_loaded, hook_<group> (a hook group that does not attach). Never silently weaker: see `palisade policy status`.",
        MetricType::GAUGE,
    );
    for (policy, container, reason) in &s.unenforced {
        f.mut_metric().push(gauge(
            &[
                ("policy", policy),
                ("container", container),
                ("reason", reason),
            ],
            1.0,
        ));
    }
    out.push(f);
    if s.loaded {
        let mut f = family(
            "palisade_policy_hook_attached",
            "Enforcement hook groups attached now (1) or not (0): syscalls, seccomp, exec, egress, socket_create, packet_socket, ingress.",
            MetricType::GAUGE,
        );
        for (hook, on) in &s.hooks {
            f.mut_metric()
                .push(gauge(&[("hook", hook)], if *on { 1.0 } else { 0.0 }));
        }
        out.push(f);
        let mut f = family(
            "palisade_policy_events_lost_total",
            "Violation events lost to a full ring buffer (the counts stay exact).",
            MetricType::COUNTER,
        );
        f.mut_metric().push(counter(&[], s.lost as f64));
        out.push(f);
    }
    out
}
