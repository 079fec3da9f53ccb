//! Rule ids and slots: the two numbered resources the kernel tables hand out.
//!
//! Rule ids are stable for the agent's lifetime per (policy, rule), recovered from the pinned
//! `POLICY_RULES` map when a new agent adopts the state, so events and counts the old programs
//! produce keep their meaning. Slots are shared by cgroups whose effective policy compiles to
//! the same tables; a changed policy gets a fresh slot that is filled before any cgroup points
//! at it (make before break), and the old slot is cleared once nothing uses it.
use std::{
    collections::{HashMap, HashSet},
    hash::{Hash as _, Hasher as _},
};

use palisade_common::policy::RuleInfo;
use palisade_policy::compile::{RuleDesc, Tables};

use super::bpf::{MAX_RULES, MAX_SLOTS};

/// Rule id allocator (ids 1 ..= `MAX_RULES` - 1, 0 meaning "no rule").
#[derive(Debug, Default)]
pub struct Ids {
    by_name: HashMap<(String, String), u16>,
    descs: HashMap<u16, RuleDesc>,
    next: u16,
    /// Ids whose description changed and must be rewritten in the kernel.
    pub dirty: Vec<u16>,
}

fn name_of(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

impl Ids {
    /// Learns the ids a previous agent left in `POLICY_RULES`.
    pub fn adopt(&mut self, id: u16, info: &RuleInfo) {
        if info.mode == 0 {
            return;
        }
        let d = RuleDesc {
            policy: name_of(&info.policy),
            rule: name_of(&info.rule),
            action: info.action,
            errno: info.errno,
            mode: info.mode,
        };
        self.by_name.insert((d.policy.clone(), d.rule.clone()), id);
        self.descs.insert(id, d);
        self.next = self.next.max(id);
    }

    /// The id of `d`, allocating one (and marking it dirty) when new or changed.
    pub fn get(&mut self, d: &RuleDesc) -> Option<u16> {
        let key = (d.policy.clone(), d.rule.clone());
        if let Some(id) = self.by_name.get(&key).copied() {
            if self.descs.get(&id) != Some(d) {
                self.descs.insert(id, d.clone());
                self.dirty.push(id);
            }
            return Some(id);
        }
        if u32::from(self.next) + 1 >= MAX_RULES {
            return None;
        }
        self.next += 1;
        let id = self.next;
        self.by_name.insert(key, id);
        self.descs.insert(id, d.clone());
        self.dirty.push(id);
        Some(id)
    }

    pub fn desc(&self, id: u32) -> Option<&RuleDesc> {
        u16::try_from(id).ok().and_then(|i| self.descs.get(&i))
    }

    /// Ids of every rule of `policy`.
    pub fn of_policy(&self, policy: &str) -> Vec<u16> {
        self.descs
            .iter()
            .filter(|(_, d)| d.policy == policy)
            .map(|(i, _)| *i)
            .collect()
    }

    pub fn set_mode(&mut self, id: u16, mode: u32) {
        if let Some(d) = self.descs.get_mut(&id)
            && d.mode != mode
        {
            d.mode = mode;
            self.dirty.push(id);
        }
    }
}

/// `POLICY_XLAT` entries: (index, x86_64 number or `xlat::*`) of every i386 and x32 call.
pub fn xlat() -> Vec<(u32, u32)> {
    use palisade_common::policy::{abi_id, xlat, xlat_index};
    use palisade_syscalls::{Abi, Native};
    let mut out = Vec::new();
    for (abi, id) in [(Abi::I386, abi_id::I386), (Abi::X32, abi_id::X32)] {
        for nr in 0..abi.table_len() {
            let Some(i) = xlat_index(id, u64::from(nr)) else {
                continue;
            };
            let v = match palisade_syscalls::native(abi, nr) {
                Native::Nr(n) => n,
                Native::SocketCall => xlat::SOCKETCALL,
                Native::Ipc => xlat::IPC,
                Native::None => xlat::NONE,
            };
            out.push((i, v));
        }
    }
    out
}

/// A content key for tables: identical tables share a slot.
pub fn key(t: &Tables) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.flags.hash(&mut h);
    t.verdicts.rule.hash(&mut h);
    (t.verdicts.abi_rule, t.verdicts.unmapped_rule).hash(&mut h);
    for (nr, r) in &t.args {
        (nr, r.alts, r.match_allows).hash(&mut h);
        for a in &r.alt {
            (a.rule, a.count).hash(&mut h);
            for c in &a.conds {
                (c.index, c.op, c.value, c.value_two).hash(&mut h);
            }
        }
    }
    (t.exec_conf.allow_list, t.exec_conf.default_rule).hash(&mut h);
    for (k, x, r) in &t.exec {
        (k, x, r.rule, r.allow).hash(&mut h);
    }
    for (k, x, e) in &t.files {
        (k, x, e.rule, e.rank).hash(&mut h);
    }
    for s in t.egress.iter().chain(t.ingress.iter()) {
        (s.count, s.default_action, s.default_rule, s.kind_rule).hash(&mut h);
        for r in &s.rules[..(s.count as usize).min(s.rules.len())] {
            (
                r.addr, r.family, r.prefix, r.proto, r.port_lo, r.port_hi, r.action, r.rule,
            )
                .hash(&mut h);
        }
    }
    h.finish()
}

/// Slot bookkeeping.
#[derive(Debug, Default)]
pub struct Slots {
    /// content key → slot
    pub by_key: HashMap<u64, u32>,
    /// Slots holding tables (by content, or adopted with unknown content).
    pub used: HashSet<u32>,
}

impl Slots {
    /// A slot not in use and not about to be used.
    pub fn free(&self, also_busy: &HashSet<u32>) -> Option<u32> {
        (0..MAX_SLOTS).find(|s| !self.used.contains(s) && !also_busy.contains(s))
    }

    pub fn release(&mut self, slot: u32) {
        self.used.remove(&slot);
        self.by_key.retain(|_, s| *s != slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(policy: &str, rule: &str, mode: u32) -> RuleDesc {
        RuleDesc {
            policy: policy.into(),
            rule: rule.into(),
            action: 2,
            errno: 0,
            mode,
        }
    }

    #[test]
    fn ids_are_stable_and_mode_changes_are_dirty() {
        let mut ids = Ids::default();
        let a = ids.get(&d("p", "r", 1)).unwrap();
        let b = ids.get(&d("p", "s", 1)).unwrap();
        assert_ne!(a, b);
        ids.dirty.clear();
        assert_eq!(ids.get(&d("p", "r", 1)), Some(a));
        assert!(ids.dirty.is_empty());
        assert_eq!(ids.get(&d("p", "r", 2)), Some(a), "same id, new mode");
        assert_eq!(ids.dirty, vec![a]);
        assert_eq!(ids.of_policy("p").len(), 2);
        // adopted ids continue the numbering
        let mut info = d("q", "x", 1).clone();
        info.mode = 1;
        let mut other = Ids::default();
        let mut ri = RuleInfo::EMPTY;
        ri.mode = 1;
        ri.policy[..1].copy_from_slice(b"q");
        ri.rule[..1].copy_from_slice(b"x");
        other.adopt(7, &ri);
        assert_eq!(other.get(&info), Some(7));
        assert_eq!(other.get(&d("q", "y", 1)), Some(8));
    }
}
