//! What will happen instead where a policy cannot be enforced exactly as written: warnings of
//! `palisade policy check` (and, with what the host lacks, of `palisade policy status`). The
//! policy is accepted; nothing is silently weaker than the file says.
use palisade_syscalls::Abi;

use crate::model::{Diagnostic, Direction, Loc, NetAction, Policy, Proto, SysAction, Syscalls};

fn note(out: &mut Vec<Diagnostic>, loc: &Loc, message: String) {
    out.push(Diagnostic {
        loc: loc.clone(),
        message,
    });
}

/// The notes of one policy.
pub fn notes(p: &Policy, out: &mut Vec<Diagnostic>) {
    if let Some(s) = &p.syscalls {
        syscalls(s, p.network.egress.is_some(), out);
    }
    if let Some(d) = &p.network.egress {
        egress(d, p.syscalls.as_ref(), out);
    }
}

fn list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn syscalls(s: &Syscalls, egress: bool, out: &mut Vec<Diagnostic>) {
    if let SysAction::Errno(_) = s.action {
        note(
            out,
            &s.loc,
            "`action: errno` fails the call only at launch (`palisade run --policy`: seccomp); in running containers Palisade did not start, a tracepoint cannot make a call fail: the call runs and the process is killed (SIGKILL) before it returns".into(),
        );
    }
    let uring = s.implicit_io_uring();
    if !uring.is_empty() {
        note(
            out,
            &s.loc,
            format!(
                "{} are denied too (rule `{}`, this policy's action): io_uring opens, connects and reads without the syscalls these rules see; name them in an allow-list or set `io_uring: allow` to let them run",
                list(&uring),
                Syscalls::IO_URING_RULE
            ),
        );
    }
    let refused: Vec<&str> = s.refused_abis().iter().map(|a| a.as_str()).collect();
    if !refused.is_empty() {
        note(
            out,
            &s.loc,
            format!(
                "calls through the {} ABI{} are {} (rule `{}`): list them in `abis:` for these rules to hold for the same calls there",
                refused.join(" and "),
                if refused.len() > 1 { "s" } else { "" },
                if s.action == SysAction::Log {
                    "reported"
                } else {
                    "killed"
                },
                Syscalls::ABI_RULE
            ),
        );
    }
    if s.abis.contains(&Abi::I386) && s.entries.iter().any(|e| !e.args.is_empty()) {
        note(
            out,
            &s.loc,
            "i386 `socketcall` and `ipc` pass their arguments in memory: a call through them that a rule with argument conditions would check is treated as matching a deny rule, and as outside an allow-list".into(),
        );
    }
    if egress && s.abis.len() > 1 {
        note(
            out,
            &s.loc,
            "packet sockets opened through i386 or x32 calls are not seen by the egress rules (only x86_64 `socket()` is): leave those ABIs out of `abis:` to have such calls killed".into(),
        );
    }
}

fn egress(d: &Direction, s: Option<&Syscalls>, out: &mut Vec<Diagnostic>) {
    let allowed = |k: Proto| {
        d.rules
            .iter()
            .find(|r| r.proto == k)
            .is_some_and(|r| r.action != NetAction::Deny)
    };
    let refused: Vec<&str> = [
        (Proto::Raw, "raw"),
        (Proto::Packet, "packet"),
        (Proto::Icmp, "ICMP"),
    ]
    .into_iter()
    .filter(|(k, _)| !allowed(*k))
    .map(|(_, n)| n)
    .collect();
    if !refused.is_empty() {
        note(
            out,
            &d.loc,
            format!(
                "{} sockets are refused whatever the default (rule `{}`): their traffic bypasses the address rules; allow one with a rule `{{action: allow, protocol: icmp|raw|packet}}`",
                refused.join(", "),
                Direction::KIND_RULE
            ),
        );
    }
    if !allowed(Proto::Packet) {
        let compat = match s {
            None => {
                "; without syscall rules, packet sockets opened through i386 or x32 calls or io_uring are not seen (give the policy `syscalls:`, which kills those ABIs and denies io_uring)"
            }
            Some(_) => "",
        };
        note(
            out,
            &d.loc,
            format!(
                "a packet socket cannot be refused when it is created: the process is killed as it opens one (x86_64 `socket()`){compat}"
            ),
        );
    }
}
