//! Policy metric families (rendered with the others on `/metrics`).
use super::{
    Budget,
    expo::{Family, Kind, NONE, Out},
};
use crate::policy::Snapshot;

pub(crate) fn families(s: &Snapshot, o: Out, budget: &mut Budget) -> Vec<Family> {
    let mut out = Vec::new();
    let mut f = Family::new(
        o,
        "palisade_policy_violations_total",
        "Policy violations by policy, rule, what happened (errno, kill, log, drop, would_block) and container; every violation counts, rate-limited events or not.",
        Kind::Counter,
    );
    if budget.take(s.violations.len()) {
        for ((policy, rule, action, container), n) in &s.violations {
            f.sample(
                &NONE,
                &[
                    ("policy", policy),
                    ("rule", rule),
                    ("action", action),
                    ("container", container),
                ],
                *n,
            );
        }
    }
    out.push(f);
    let mut f = Family::new(
        o,
        "palisade_policy_reloads_total",
        "Policy files reloaded (SIGHUP, file change, `palisade policy reload`).",
        Kind::Counter,
    );
    f.sample(&NONE, &[], s.reloads);
    out.push(f);
    let mut f = Family::new(
        o,
        "palisade_policy_reload_errors_total",
        "Reloads rejected because a policy file was invalid (the previous policies stayed in force).",
        Kind::Counter,
    );
    f.sample(&NONE, &[], s.reload_errors);
    out.push(f);
    let mut f = Family::new(
        o,
        "palisade_policy_cgroups",
        "Cgroups each policy applies to, with its current mode.",
        Kind::Gauge,
    );
    for ((policy, mode), n) in &s.cgroups {
        f.sample(&NONE, &[("policy", policy), ("mode", mode)], *n);
    }
    out.push(f);
    let mut f = Family::new(
        o,
        "palisade_policy_unenforced",
        "1 for each policy that cannot be put in place (fully) for a container, by reason: slots_full, cgroups_full, rules_full, network_policies, table_error, not_loaded, hook_<group> (a hook group that does not attach), files_reported_only (file rules that should refuse are reported only). Never silently weaker: see `palisade policy status`.",
        Kind::Gauge,
    );
    for (policy, container, reason) in &s.unenforced {
        f.sample(
            &NONE,
            &[
                ("policy", policy),
                ("container", container),
                ("reason", reason),
            ],
            1u64,
        );
    }
    out.push(f);
    if s.loaded {
        let mut f = Family::new(
            o,
            "palisade_policy_hook_attached",
            "Enforcement hook groups attached now (1) or not (0): syscalls, seccomp, exec, egress, socket_create, packet_socket, ingress, files.",
            Kind::Gauge,
        );
        for (hook, on) in &s.hooks {
            f.sample(&NONE, &[("hook", hook)], u64::from(*on));
        }
        out.push(f);
        let mut f = Family::new(
            o,
            "palisade_policy_events_lost_total",
            "Violation events lost to a full ring buffer, or left out while the event log was behind (the counts stay exact; each is in the suppressed of a later event).",
            Kind::Counter,
        );
        f.sample(&NONE, &[], s.lost);
        out.push(f);
    }
    out
}
