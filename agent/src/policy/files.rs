//! File rules on this host: the tier they get ([`FileTier`]) and what each rule does there, as
//! `palisade policy check`, `palisade policy status` and the agent's log say it.
use palisade_policy::{
    PolicySet,
    files::{self, FileTier},
};

/// Whether BPF-LSM is active on this host (`bpf` among the active LSMs).
fn lsm_active() -> bool {
    std::fs::read_to_string("/sys/kernel/security/lsm")
        .is_ok_and(|l| l.trim().split(',').any(|m| m == "bpf"))
}

/// The tier file rules get from this agent on this host: the audit tier (`sys_enter`, the
/// path as given, reported only) everywhere in this build.
pub fn tier() -> FileTier {
    FileTier::Audit {
        why: if lsm_active() {
            "this Palisade has no BPF-LSM file hooks yet".into()
        } else {
            "no BPF-LSM on this host".into()
        },
    }
}

/// One line per file rule: `file:line:column: policy P: rule R on PATHS: ACCESS: what happens`.
pub fn describe(set: &PolicySet, tier: &FileTier) -> Vec<String> {
    let mut out = Vec::new();
    for p in &set.policies {
        let Some(f) = &p.files else { continue };
        for r in &f.deny {
            out.push(format!(
                "{}: policy {}: {}",
                r.loc,
                p.name,
                files::describe_rule(f, r, p.mode, tier)
            ));
        }
    }
    out
}

/// The tier's name for status output: `lsm`, `audit` or `none`, and why not `lsm`.
pub fn tier_status(tier: &FileTier) -> (&'static str, String) {
    match tier {
        FileTier::Lsm => ("lsm", String::new()),
        FileTier::Audit { why } => ("audit", why.clone()),
        FileTier::None { why } => ("none", why.clone()),
    }
}
