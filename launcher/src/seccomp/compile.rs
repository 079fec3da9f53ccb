//! Compiling a [`Profile`] with libseccomp into a classic BPF program, done in the launcher
//! before any process exists; the child only hands the finished program to `seccomp(2)`.
use std::{
    io::{Read as _, Seek as _, SeekFrom},
    os::fd::{FromRawFd as _, OwnedFd},
};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};

use super::{Action, Arch, ArgCmp, Op, Profile};

/// A profile libseccomp cannot turn into a filter; `profile` is where it came from.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("seccomp profile {profile}: {step}: {source}")]
    Libseccomp {
        profile: String,
        step: CompileStep,
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp profile {profile}: cannot export the filter: {source}")]
    Export {
        profile: String,
        source: std::io::Error,
    },
    #[error(
        "seccomp profile {profile}: the filter has {instructions} instructions; the kernel accepts at most 4096"
    )]
    TooLong {
        profile: String,
        instructions: usize,
    },
}

/// What libseccomp was asked to do when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompileStep {
    Init,
    BadArchAction,
    NoNewPrivs,
    Arch(ScmpArch),
    /// The rule for this syscall name.
    Rule(String),
}

impl std::fmt::Display for CompileStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CompileStep::Init => f.write_str("libseccomp init"),
            CompileStep::BadArchAction => f.write_str("bad-architecture action"),
            CompileStep::NoNewPrivs => f.write_str("nnp"),
            CompileStep::Arch(a) => write!(f, "architecture {a:?}"),
            CompileStep::Rule(name) => write!(f, "rule for `{name}`"),
        }
    }
}

/// A ready-to-load filter.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub program: Vec<libc::sock_filter>,
    /// `SECCOMP_FILTER_FLAG_*` for seccomp(2).
    pub flags: libc::c_ulong,
    /// Syscall names libseccomp does not know (skipped).
    pub unknown: Vec<String>,
}

const IO_URING: &[&str] = &["io_uring_setup", "io_uring_enter", "io_uring_register"];
const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 4;

fn action(a: Action) -> ScmpAction {
    match a {
        Action::Allow => ScmpAction::Allow,
        Action::Log => ScmpAction::Log,
        Action::Errno(e) => ScmpAction::Errno(i32::from(e)),
        Action::Trap => ScmpAction::Trap,
        Action::Trace(t) => ScmpAction::Trace(t),
        Action::KillThread => ScmpAction::KillThread,
        Action::KillProcess => ScmpAction::KillProcess,
    }
}

fn arch(a: Arch) -> Option<ScmpArch> {
    match a {
        Arch::X86_64 => Some(ScmpArch::X8664),
        Arch::X86 => Some(ScmpArch::X86),
        Arch::X32 => Some(ScmpArch::X32),
        Arch::Aarch64 => Some(ScmpArch::Aarch64),
        Arch::Arm => Some(ScmpArch::Arm),
        Arch::Other => None,
    }
}

fn cmp(c: &ArgCmp) -> ScmpArgCompare {
    let (op, datum) = match c.op {
        Op::Ne => (ScmpCompareOp::NotEqual, c.value),
        Op::Lt => (ScmpCompareOp::Less, c.value),
        Op::Le => (ScmpCompareOp::LessOrEqual, c.value),
        Op::Eq => (ScmpCompareOp::Equal, c.value),
        Op::Ge => (ScmpCompareOp::GreaterEqual, c.value),
        Op::Gt => (ScmpCompareOp::Greater, c.value),
        // OCI: `value` is the mask, `valueTwo` the expected result
        Op::MaskedEq => (ScmpCompareOp::MaskedEqual(c.value), c.value_two),
    };
    ScmpArgCompare::new(c.index, op, datum)
}

/// A syscall by name: libseccomp's table, or for a call newer than this libseccomp (e.g.
/// `open_tree_attr` with libseccomp 2.5), its x86_64 number from Palisade's own table when
/// the filter only accepts the native ABI (numbers differ between ABIs).
fn syscall(name: &str, native_only: bool) -> Option<ScmpSyscall> {
    if let Ok(s) = ScmpSyscall::from_name(name) {
        return Some(s);
    }
    let nr =
        palisade_syscalls::number(name).filter(|_| native_only && cfg!(target_arch = "x86_64"))?;
    Some(ScmpSyscall::from(i32::try_from(nr).ok()?))
}

/// Builds the filter: the profile's rules, its architectures (a call through any other ABI
/// kills the process) and io_uring denied unless a rule names it.
pub fn compile(p: &Profile) -> Result<Compiled, CompileError> {
    let lib = |step: CompileStep| {
        move |source| CompileError::Libseccomp {
            profile: p.source.clone(),
            step,
            source,
        }
    };
    let default = action(p.default_action);
    let mut ctx = ScmpFilterContext::new(default).map_err(lib(CompileStep::Init))?;
    ctx.set_act_badarch(ScmpAction::KillProcess)
        .map_err(lib(CompileStep::BadArchAction))?;
    // no_new_privs is set by the launcher itself, and the program is exported, not loaded
    ctx.set_ctl_nnp(false)
        .map_err(lib(CompileStep::NoNewPrivs))?;
    let native = ScmpArch::native();
    let native_only = p
        .arches
        .iter()
        .all(|a| arch(*a).is_none_or(|a| a == native));
    for a in p.arches.iter().filter_map(|a| arch(*a)) {
        if a != native {
            ctx.add_arch(a).map_err(lib(CompileStep::Arch(a)))?;
        }
    }
    let mut rules = p.rules.clone();
    if p.default_action.runs() {
        for name in IO_URING {
            if !p.names().any(|n| n == *name) {
                rules.push(super::Rule {
                    names: vec![(*name).to_owned()],
                    action: Action::Errno(libc::EPERM as u16),
                    args: Vec::new(),
                });
            }
        }
    }
    let mut unknown = Vec::new();
    for rule in &rules {
        if rule.action == p.default_action {
            continue; // libseccomp refuses rules that repeat the default, and they change nothing
        }
        let act = action(rule.action);
        // OCI (and runc): comparisons of the same argument are alternatives, one rule each;
        // comparisons of different arguments must all hold.
        let mut seen = [false; 6];
        let repeated = rule.args.iter().any(|c| {
            let i = c.index as usize;
            let r = seen.get(i).copied().unwrap_or(false);
            if let Some(s) = seen.get_mut(i) {
                *s = true;
            }
            r
        });
        let groups: Vec<Vec<ScmpArgCompare>> = if repeated {
            rule.args.iter().map(|c| vec![cmp(c)]).collect()
        } else {
            vec![rule.args.iter().map(cmp).collect()]
        };
        for name in &rule.names {
            let Some(sys) = syscall(name, native_only) else {
                unknown.push(name.clone());
                continue;
            };
            for conds in &groups {
                let r = if conds.is_empty() {
                    ctx.add_rule(act, sys)
                } else {
                    ctx.add_rule_conditional(act, sys, conds)
                };
                r.map_err(lib(CompileStep::Rule(name.clone())))?;
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    let program = export(&ctx).map_err(|source| CompileError::Export {
        profile: p.source.clone(),
        source,
    })?;
    if program.len() > usize::from(u16::MAX) || program.len() > 4096 {
        return Err(CompileError::TooLong {
            profile: p.source.clone(),
            instructions: program.len(),
        });
    }
    let mut flags = 0;
    if p.log {
        flags |= SECCOMP_FILTER_FLAG_LOG;
    }
    if p.spec_allow {
        flags |= SECCOMP_FILTER_FLAG_SPEC_ALLOW;
    }
    Ok(Compiled {
        program,
        flags,
        unknown,
    })
}

/// libseccomp 2.5 exports to a file descriptor only; a memfd keeps it in memory.
fn export(ctx: &ScmpFilterContext) -> std::io::Result<Vec<libc::sock_filter>> {
    // SAFETY: a valid NUL-terminated name and flags; the result is checked below.
    let fd = unsafe { libc::memfd_create(c"palisade-seccomp".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    ctx.export_bpf(&fd).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::from(fd);
    file.seek(SeekFrom::Start(0))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect())
}

/// Installs the filter on the calling thread (no_new_privs or CAP_SYS_ADMIN needed).
pub(crate) fn load(c: &Compiled) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: c.program.len() as u16,
        filter: c.program.as_ptr().cast_mut(),
    };
    // SAFETY: `prog` points at `c.program`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            c.flags,
            &raw const prog,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        caps,
        json::{self, Field},
        seccomp::{Host, palisade_default, parse},
    };

    #[test]
    fn default_profile_compiles_small() {
        let c = compile(&palisade_default(0)).unwrap();
        assert!(c.unknown.is_empty(), "{:?}", c.unknown);
        assert!(
            c.program.len() > 20 && c.program.len() < 400,
            "{}",
            c.program.len()
        );
        assert_eq!(c.flags, 0);
    }

    #[test]
    fn docker_profile_compiles_and_lists_unknown_names() {
        let text = include_str!("../../../tests/data/docker-default-seccomp.json");
        let host = Host {
            caps: caps::oci_default(),
            goarch: "amd64",
            kernel: (6, 18),
        };
        let p = parse(Field::root(json::parse(text).unwrap()), "docker", &host).unwrap();
        let c = compile(&p).unwrap();
        assert!(c.program.len() > 100);
        // whatever this libseccomp lacks is listed, never a name it knows
        for n in &c.unknown {
            assert!(ScmpSyscall::from_name(n).is_err(), "{n}");
        }
    }

    #[test]
    fn unknown_names_are_collected() {
        let p = parse(
            Field::root(
                json::parse(r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["getpid","no_such_call","also_not"],"action":"SCMP_ACT_ERRNO"}]}"#)
                    .unwrap(),
            ),
            "t",
            &Host::detect(0),
        )
        .unwrap();
        let c = compile(&p).unwrap();
        assert_eq!(c.unknown, ["also_not", "no_such_call"]);
    }
}
