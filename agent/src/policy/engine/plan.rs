//! Which policies hold for each known cgroup: a policy holds for the whole subtree of a cgroup
//! it selects. A cgroup selected itself (or launched with policies) gets a kernel entry with
//! its ancestors' policies and its own; a cgroup below one without a selection of its own
//! gets no entry: the hooks find its nearest ancestor's in the kernel (cgroups created after
//! the agent last looked included).
use std::collections::HashMap;

/// Where a cgroup's policies come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding<K> {
    /// Policies in order: the outermost selecting ancestor's first, then nearer ones, then the
    /// cgroup's own (a name once).
    pub policies: Vec<K>,
    /// The cgroup has a kernel entry (it, or a launch, selects something itself).
    pub entry: bool,
    /// Ancestors (ids) with an entry, outermost first.
    pub ancestors: Vec<u64>,
    /// The path of the nearest selecting ancestor, when the cgroup has no selection of its own.
    pub inherited_from: Option<String>,
}

/// The ancestor paths of `path` (relative to the unified root), nearest first: `/a/b/c` →
/// `/a/b`, `/a`, `/`. A placeholder path (`cgroup:42`) has none.
pub fn ancestors(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    if !path.starts_with('/') {
        return out;
    }
    let mut p = path.trim_end_matches('/');
    while let Some(i) = p.rfind('/') {
        p = &p[..i];
        out.push(if p.is_empty() { "/" } else { p });
        if p.is_empty() {
            break;
        }
    }
    out
}

/// For every cgroup (id → path) given the policies selecting each one itself (`own`, keyed by a
/// name `K` that identifies a policy), what holds for it. Cgroups nothing holds for are left
/// out.
pub fn holdings<K: Clone + PartialEq>(
    paths: &HashMap<u64, String>,
    own: &HashMap<u64, Vec<K>>,
) -> HashMap<u64, Holding<K>> {
    let by_path: HashMap<&str, u64> = paths.iter().map(|(id, p)| (p.as_str(), *id)).collect();
    let mut out = HashMap::new();
    for (id, path) in paths {
        let mut chain: Vec<u64> = ancestors(path)
            .into_iter()
            .filter_map(|p| by_path.get(p).copied())
            .filter(|a| own.get(a).is_some_and(|v| !v.is_empty()))
            .collect();
        let mine = own.get(id).filter(|v| !v.is_empty());
        if chain.is_empty() && mine.is_none() {
            continue;
        }
        let inherited_from = match (mine, chain.first()) {
            (None, Some(a)) => paths.get(a).cloned(),
            _ => None,
        };
        chain.reverse();
        let mut policies: Vec<K> = Vec::new();
        for k in chain
            .iter()
            .filter_map(|a| own.get(a))
            .chain(mine)
            .flatten()
        {
            if !policies.contains(k) {
                policies.push(k.clone());
            }
        }
        out.insert(
            *id,
            Holding {
                policies,
                entry: mine.is_some(),
                ancestors: chain,
                inherited_from,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestor_paths() {
        assert_eq!(ancestors("/a/b/c"), ["/a/b", "/a", "/"]);
        assert_eq!(ancestors("/a/"), ["/"]);
        assert_eq!(ancestors("/"), Vec::<&str>::new());
        assert!(ancestors("cgroup:42").is_empty());
    }

    #[test]
    fn policies_hold_for_the_subtree() {
        let paths: HashMap<u64, String> = [
            (1, "/"),
            (2, "/pod"),
            (3, "/pod/c1"),
            (4, "/pod/c1/sub"),
            (5, "/pod/c2"),
            (6, "/other"),
        ]
        .into_iter()
        .map(|(i, p)| (i, p.to_owned()))
        .collect();
        let own: HashMap<u64, Vec<&str>> = [(2, vec!["pod"]), (3, vec!["c1", "pod"])]
            .into_iter()
            .collect();
        let h = holdings(&paths, &own);
        assert!(!h.contains_key(&1) && !h.contains_key(&6), "{h:?}");
        assert_eq!(h[&2].policies, ["pod"]);
        assert!(h[&2].entry);
        assert_eq!(h[&3].policies, ["pod", "c1"], "the ancestor's first, once");
        assert_eq!(h[&3].ancestors, [2]);
        assert!(h[&3].entry);
        assert_eq!(h[&4].policies, ["pod", "c1"]);
        assert!(!h[&4].entry, "found in the kernel");
        assert_eq!(h[&4].inherited_from.as_deref(), Some("/pod/c1"));
        assert_eq!(h[&5].inherited_from.as_deref(), Some("/pod"));
    }
}
