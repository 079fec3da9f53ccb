//! File rules on this host: the tier they get ([`FileTier`]) and what each rule does there, as
//! `palisade policy check`, `palisade policy status` and the agent's log say it.
use super::lsm::{LsmSupport, LsmUnavailable};
use palisade_policy::{
    PolicySet,
    files::{self, FileTier},
};

/// The tier file rules get from this agent on this host: the BPF-LSM file hooks (refused on
/// the resolved path) where BPF-LSM is active and the hooks attached, else the audit tier
/// (`sys_enter`, the path as given, reported only) with why.
pub fn tier(lsm: &LsmSupport) -> FileTier {
    match &lsm.files {
        Ok(()) => FileTier::Lsm,
        Err(LsmUnavailable::Refused(e)) => FileTier::Audit {
            why: format!("the kernel refused the BPF-LSM file hooks: {e}"),
        },
        Err(e) => FileTier::Audit {
            why: format!("no BPF-LSM on this host: {e}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn support(files: Result<(), LsmUnavailable>) -> LsmSupport {
        LsmSupport {
            state: Ok(()),
            syscalls: Ok(()),
            files,
        }
    }

    #[test]
    fn the_tier_is_lsm_only_where_the_file_hooks_can_attach() {
        assert_eq!(tier(&support(Ok(()))), FileTier::Lsm);
        let refused = tier(&support(Err(LsmUnavailable::Refused(
            "verifier: too big".into(),
        ))));
        assert_eq!(
            refused,
            FileTier::Audit {
                why: "the kernel refused the BPF-LSM file hooks: verifier: too big".into()
            }
        );
        let FileTier::Audit { why } = tier(&support(Err(LsmUnavailable::Inactive(
            "capability,apparmor".into(),
        )))) else {
            panic!("no BPF-LSM is the audit tier");
        };
        assert!(
            why.starts_with("no BPF-LSM on this host: `bpf` is not among"),
            "{why}"
        );
        assert_eq!(tier_status(&FileTier::Lsm).0, "lsm");
    }
}
