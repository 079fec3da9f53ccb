//! File rules → the slot's file table (`POLICY_FILES`): every pattern of every policy
//! selecting the cgroup, with the rule refusing each access on it.
use palisade_common::policy::{FileEntry, access, action, exec_kind, fnv};

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
                add(&mut out, kind, &pat.key, r.mask(), rid, rank);
                // the directories above it (and a tree's own directory): renamed, they
                // would take the denied files out from under the pattern
                for dir in containing(&pat.key, pat.kind == PathKind::Tree) {
                    add(&mut out, exec_kind::EXACT, dir, access::CONTAINS, rid, rank);
                }
            }
        }
    }
    out
}

fn add(out: &mut Vec<(u32, u64, FileEntry)>, kind: u32, key: &str, mask: u32, rid: u16, rank: u16) {
    let hash = fnv(key.as_bytes());
    match out.iter_mut().find(|(k, h, _)| *k == kind && *h == hash) {
        Some((_, _, e)) => e.add(mask, rid, rank),
        None => {
            let mut e = FileEntry::default();
            e.add(mask, rid, rank);
            out.push((kind, hash, e));
        }
    }
}

/// The directories above `key` but `/` (which cannot be renamed), and `key` itself for a
/// tree (`/root` for `/root/**`).
fn containing(key: &str, tree: bool) -> impl Iterator<Item = &str> {
    let own = tree.then_some(key);
    key.match_indices('/')
        .map(|(i, _)| &key[..i])
        .filter(|d| !d.is_empty())
        .chain(own)
}

#[cfg(test)]
mod tests {
    use super::containing;

    #[test]
    fn directories_above_a_pattern() {
        assert_eq!(
            containing("/etc/shadow", false).collect::<Vec<_>>(),
            ["/etc"]
        );
        assert_eq!(containing("/root", true).collect::<Vec<_>>(), ["/root"]);
        assert_eq!(
            containing("/usr/local/bin", true).collect::<Vec<_>>(),
            ["/usr", "/usr/local", "/usr/local/bin"]
        );
        assert_eq!(containing("/x", false).count(), 0);
    }
}
