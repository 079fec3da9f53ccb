//! File rules → the slot's file table (`POLICY_FILES`): every pattern of every policy
//! selecting the cgroup, with the rule refusing each access on it.
use palisade_common::policy::{FileEntry, action, exec_kind, fnv};

use super::{RuleDesc, mode_number};
use crate::model::{
    Mode, Policy,
    files::{FileAction, PathKind},
};

/// The file table of one slot: (kind, hash, entry) per pattern of every policy selecting the
/// cgroup (each with its effective mode), deny rules of all of them; a path matching several
/// patterns is reported under the first policy's first rule. `id` allocates a rule id for a
/// description (`None`: the table is full: (policy, what is left out) in `left_out`).
pub fn compile(
    policies: &[(&Policy, Mode)],
    id: &mut dyn FnMut(&RuleDesc) -> Option<u16>,
    left_out: &mut Vec<(String, String)>,
) -> Vec<(u32, u64, palisade_common::policy::FileEntry)> {
    let mut out: Vec<(u32, u64, FileEntry)> = Vec::new();
    for (pi, (p, m)) in policies.iter().enumerate() {
        let Some(f) = &p.files else { continue };
        let (a, errno) = match f.action {
            FileAction::Errno(e) => (action::ERRNO, u32::from(e)),
            FileAction::Kill => (action::KILL, 0),
            FileAction::Log => (action::LOG, 0),
        };
        for (ri, r) in f.deny.iter().enumerate() {
            let desc = RuleDesc {
                policy: p.name.clone(),
                rule: r.rule.clone(),
                action: a,
                errno,
                mode: mode_number(*m),
            };
            let Some(rid) = id(&desc) else {
                left_out.push((
                    p.name.clone(),
                    format!("rule table full: file rule `{}` not enforced", r.rule),
                ));
                continue;
            };
            let rank = u16::try_from((pi << 10) | ri.min(1023)).unwrap_or(u16::MAX);
            for pat in &r.paths {
                let kind = match pat.kind {
                    PathKind::Exact => exec_kind::EXACT,
                    PathKind::Tree => exec_kind::TREE,
                };
                let hash = fnv(pat.key.as_bytes());
                match out.iter_mut().find(|(k, h, _)| *k == kind && *h == hash) {
                    Some((_, _, e)) => e.add(r.mask(), rid, rank),
                    None => {
                        let mut e = FileEntry::default();
                        e.add(r.mask(), rid, rank);
                        out.push((kind, hash, e));
                    }
                }
            }
        }
    }
    out
}
