//! Writing one slot's tables into the kernel maps, and clearing a slot nothing uses.
use palisade_common::policy::{
    ArgKey, ExecConf, ExecKey, MAX_NET_SETS, NET_EGRESS, NET_INGRESS, NetRuleSet, SyscallVerdicts,
    net_index,
};
use palisade_policy::compile::Tables;

use crate::policy::{PolicyError, bpf::Kernel};

/// The hash keys a slot owns: exec patterns, argument checks and file patterns.
pub type SlotKeys = (Vec<ExecKey>, Vec<ArgKey>, Vec<ExecKey>);

/// Writes one slot's tables; returns the hash keys now in the maps for it.
pub fn write(
    k: &mut Kernel,
    slot: u32,
    t: &Tables,
    old: &SlotKeys,
) -> Result<SlotKeys, PolicyError> {
    let e = PolicyError::table;
    k.syscalls.set(slot, *t.verdicts, 0).map_err(e("syscall"))?;
    k.exec_conf.set(slot, t.exec_conf, 0).map_err(e("exec"))?;
    for key in &old.0 {
        let _ = k.exec.remove(key);
    }
    for key in &old.1 {
        let _ = k.args.remove(key);
    }
    for key in &old.2 {
        let _ = k.files.remove(key);
    }
    let mut args = Vec::new();
    for (nr, rule) in &t.args {
        let key = ArgKey { slot, nr: *nr };
        k.args.insert(key, rule, 0).map_err(e("argument"))?;
        args.push(key);
    }
    let mut keys = Vec::new();
    for (kind, hash, rule) in &t.exec {
        let key = ExecKey {
            slot,
            kind: *kind,
            hash: *hash,
        };
        k.exec.insert(key, rule, 0).map_err(e("exec"))?;
        keys.push(key);
    }
    let mut files = Vec::new();
    for (kind, hash, entry) in &t.files {
        let key = ExecKey {
            slot,
            kind: *kind,
            hash: *hash,
        };
        k.files.insert(key, entry, 0).map_err(e("file"))?;
        files.push(key);
    }
    for (dir, sets) in [(NET_EGRESS, &t.egress), (NET_INGRESS, &t.ingress)] {
        for (i, set) in (0..MAX_NET_SETS).zip(sets.iter()) {
            k.net
                .set(net_index(slot, dir, i), set, 0)
                .map_err(e("network"))?;
        }
    }
    Ok((keys, args, files))
}

/// Empties a slot nothing points at any more.
pub fn clear(k: &mut Kernel, slot: u32, old: &SlotKeys) {
    let _ = k.syscalls.set(slot, SyscallVerdicts::ZERO, 0);
    let _ = k.exec_conf.set(slot, ExecConf::default(), 0);
    for key in &old.0 {
        let _ = k.exec.remove(key);
    }
    for key in &old.1 {
        let _ = k.args.remove(key);
    }
    for key in &old.2 {
        let _ = k.files.remove(key);
    }
    for dir in [NET_EGRESS, NET_INGRESS] {
        for i in 0..MAX_NET_SETS {
            let _ = k.net.set(net_index(slot, dir, i), NetRuleSet::EMPTY, 0);
        }
    }
}
