//! The `syscalls:` section: a deny- or allow-list of calls (x86_64 names) with an action,
//! argument conditions, the ABIs the rules hold for and whether io_uring may run.
use palisade_syscalls::{self as syscalls, errno};
use serde_saphyr::Spanned;

use super::{Ctx, valid_name};
use crate::{
    model::{Abi, ArgCond, ArgOp, ListKind, SysAction, SyscallEntry, Syscalls},
    raw::{RawErrno, RawSyscallEntry, RawSyscalls},
};

pub(crate) fn syscall_rules(ctx: &mut Ctx<'_>, s: &Spanned<RawSyscalls>) -> Option<Syscalls> {
    let r = &s.value;
    let (list, entries) = match (&r.allow, &r.deny) {
        (Some(a), None) => (ListKind::Allow, a),
        (None, Some(d)) => (ListKind::Deny, d),
        (Some(_), Some(_)) => {
            ctx.err(s, "give either `allow` (an allow-list: everything else is denied) or `deny` (a deny-list), not both");
            return None;
        }
        (None, None) => {
            ctx.err(s, "give `allow` (an allow-list) or `deny` (a deny-list)");
            return None;
        }
    };
    let action = match &r.action {
        None => SysAction::Errno(libc_eperm()),
        Some(a) => match a.value.as_str() {
            "errno" => SysAction::Errno(libc_eperm()),
            "kill" => SysAction::Kill,
            "log" => SysAction::Log,
            other => {
                ctx.err(a, format!("unknown action `{other}` (errno, kill or log)"));
                return None;
            }
        },
    };
    let action = match (&r.errno, action) {
        (None, a) => a,
        (Some(e), SysAction::Errno(_)) => {
            let n = match &e.value {
                RawErrno::Number(n) => Some(*n),
                RawErrno::Name(s) => errno::number(s),
            };
            match n
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| (1..4096).contains(n))
            {
                Some(n) => SysAction::Errno(n),
                None => {
                    ctx.err(e, "unknown errno (a name like EPERM, EACCES, ENOSYS, or a number from 1 to 4095)");
                    return None;
                }
            }
        }
        (Some(e), _) => {
            ctx.err(e, "`errno` goes with `action: errno` only");
            return None;
        }
    };
    let prefix = match list {
        ListKind::Allow => "syscalls.allow",
        ListKind::Deny => "syscalls.deny",
    };
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let loc = ctx.loc(e);
        let (rule, names, raw_args) = match &e.value {
            RawSyscallEntry::Name(n) => (format!("{prefix}[{i}]"), vec![n.clone()], &[][..]),
            RawSyscallEntry::Rule(r) => (
                r.name.clone().unwrap_or_else(|| format!("{prefix}[{i}]")),
                r.names.clone(),
                &r.args[..],
            ),
        };
        if names.is_empty() {
            ctx.err(e, "a rule needs at least one syscall name");
            continue;
        }
        if !valid_name(&rule) && !rule.starts_with(prefix) {
            ctx.err(
                e,
                format!("invalid rule name `{rule}` (letters, digits, `-`, `_`, `.`)"),
            );
            continue;
        }
        let mut nrs = Vec::new();
        for n in &names {
            match syscalls::number(n) {
                Some(nr) => nrs.push(nr),
                None => ctx.err(
                    e,
                    match syscalls::closest(n) {
                        Some(c) => format!("unknown syscall `{n}` (did you mean `{c}`?)"),
                        None => {
                            format!("unknown syscall `{n}` (x86_64 names, as in `man 2 syscalls`)")
                        }
                    },
                ),
            }
        }
        let mut args = Vec::new();
        let mut seen = [false; 6];
        for a in raw_args {
            let op = match a.op.as_str() {
                "eq" | "SCMP_CMP_EQ" => ArgOp::Eq,
                "ne" | "SCMP_CMP_NE" => ArgOp::Ne,
                "lt" | "SCMP_CMP_LT" => ArgOp::Lt,
                "le" | "SCMP_CMP_LE" => ArgOp::Le,
                "gt" | "SCMP_CMP_GT" => ArgOp::Gt,
                "ge" | "SCMP_CMP_GE" => ArgOp::Ge,
                "masked_eq" | "SCMP_CMP_MASKED_EQ" => ArgOp::MaskedEq,
                other => {
                    ctx.err(e, format!("unknown argument operator `{other}` (eq, ne, lt, le, gt, ge, masked_eq)"));
                    continue;
                }
            };
            let Some(slot) = seen.get_mut(a.index as usize) else {
                ctx.err(
                    e,
                    format!("argument index {} is out of range (0 to 5)", a.index),
                );
                continue;
            };
            if *slot {
                ctx.err(e, format!("two conditions on argument {}: conditions of one rule must all hold, so use masked_eq, or write a second rule for the alternative", a.index));
                continue;
            }
            *slot = true;
            args.push(ArgCond {
                index: a.index,
                op,
                value: a.value,
                value_two: a.value_two,
            });
        }
        out.push(SyscallEntry {
            rule,
            names,
            nrs,
            args,
            loc,
        });
    }
    let mut abis = vec![Abi::X86_64];
    if let Some(list) = &r.abis {
        let mut native = false;
        for a in list {
            match Abi::parse(&a.value) {
                Some(Abi::X86_64) => native = true,
                Some(x) if !abis.contains(&x) => abis.push(x),
                Some(_) => {}
                None => ctx.err(
                    a,
                    format!("unknown ABI `{}` (x86_64, i386 or x32)", a.value),
                ),
            }
        }
        if !native {
            ctx.err(
                s,
                "`abis` must list x86_64 (calls through an ABI not listed are killed)",
            );
        }
    }
    let io_uring_allowed = match &r.io_uring {
        None => false,
        Some(v) => match v.value.as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                ctx.err(
                    v,
                    format!("unknown io_uring setting `{other}` (allow or deny)"),
                );
                false
            }
        },
    };
    Some(Syscalls {
        list,
        action,
        entries: out,
        abis,
        io_uring_allowed,
        loc: ctx.loc(s),
    })
}

fn libc_eperm() -> u16 {
    1
}
