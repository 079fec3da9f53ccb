//! Seccomp profiles: Palisade's default, OCI `linux.seccomp` objects and Docker/moby profile
//! files (`archMap`, `includes`/`excludes`), all read into one [`Profile`] and compiled with
//! libseccomp into a classic BPF program before anything is started.
//!
//! Rules applied to every profile (see [`compile`]):
//! - only the architectures the profile lists are accepted; a call through another ABI (x86
//!   32-bit `int 0x80`, x32) kills the process (`SIGSYS`). A profile without `architectures`
//!   allows the native one only;
//! - `io_uring_setup`, `io_uring_enter` and `io_uring_register` fail with `EPERM` unless a rule
//!   names them (io_uring performs operations without syscalls, out of the filter's sight);
//! - syscall names libseccomp does not know are skipped and listed in one warning, as runc does.
mod cache;
mod compile;
mod default;
mod file;

pub(crate) use cache::{DIR as CACHE_DIR, compile_cached};
pub(crate) use compile::load;
pub use compile::{CompileError, CompileStep, Compiled, compile};
pub use default::palisade_default;
pub use file::{SeccompError, parse_profile, read_profile};

use super::{
    caps,
    json::{Field, FieldError, Obj, Result},
};

/// What the filter does with a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Log,
    Errno(u16),
    Trap,
    Trace(u16),
    KillThread,
    KillProcess,
}

impl Action {
    /// Whether a call with this action runs.
    pub fn runs(self) -> bool {
        matches!(self, Action::Allow | Action::Log)
    }
}

/// Argument comparison operators (`SCMP_CMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Ne,
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
    /// `(arg & value) == value_two`
    MaskedEq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCmp {
    pub index: u32,
    pub value: u64,
    pub value_two: u64,
    pub op: Op,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub names: Vec<String>,
    pub action: Action,
    /// All must hold (with the OCI twist that comparisons of the same argument are alternatives;
    /// see `compile`).
    pub args: Vec<ArgCmp>,
}

/// Architectures a filter accepts, by libseccomp name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    X86,
    X32,
    Aarch64,
    Arm,
    Other,
}

/// A seccomp profile ready to compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Where it came from, for messages (`default`, a file, `config.json`).
    pub source: String,
    pub default_action: Action,
    /// Accepted ABIs; empty means the native one only.
    pub arches: Vec<Arch>,
    pub rules: Vec<Rule>,
    /// `SECCOMP_FILTER_FLAG_LOG`: log every non-allow action.
    pub log: bool,
    /// `SECCOMP_FILTER_FLAG_SPEC_ALLOW`: keep speculative store bypass mitigation off.
    pub spec_allow: bool,
}

impl Profile {
    /// Every syscall name the rules mention.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .flat_map(|r| r.names.iter().map(String::as_str))
    }
}

/// The launcher's init once it has confined itself: only the calls it makes, `EPERM` for
/// anything else, native ABI only (whatever the workload's profile is, even `unconfined`).
pub(crate) fn init_profile(names: &[&str]) -> Profile {
    Profile {
        source: "init".into(),
        default_action: Action::Errno(libc::EPERM as u16),
        arches: Vec::new(),
        rules: vec![Rule {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            action: Action::Allow,
            args: Vec::new(),
        }],
        log: false,
        spec_allow: false,
    }
}

/// What Docker's `includes`/`excludes` are evaluated against.
#[derive(Debug, Clone)]
pub struct Host {
    /// The workload's bounding capability set.
    pub caps: u64,
    /// Go's name of this architecture (`amd64`), as Docker profiles spell it.
    pub goarch: &'static str,
    /// Kernel (major, minor).
    pub kernel: (u32, u32),
}

impl Host {
    pub fn detect(caps: u64) -> Self {
        let kernel = nix::sys::utsname::uname()
            .ok()
            .and_then(|u| u.release().to_str().map(kernel_version))
            .unwrap_or((0, 0));
        Self {
            caps,
            goarch: if cfg!(target_arch = "x86_64") {
                "amd64"
            } else if cfg!(target_arch = "aarch64") {
                "arm64"
            } else {
                "unknown"
            },
            kernel,
        }
    }

    fn native_arch(&self) -> &'static str {
        match self.goarch {
            "amd64" => "SCMP_ARCH_X86_64",
            "arm64" => "SCMP_ARCH_AARCH64",
            _ => "",
        }
    }
}

/// "6.18.44-fc" → (6, 18)
pub fn kernel_version(s: &str) -> (u32, u32) {
    let mut parts = s.split(['.', '-']).map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    });
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn parse_action(f: &Field, errno: Option<u32>) -> Result<Action> {
    let name = f.str()?;
    let needs_errno = matches!(name.as_str(), "SCMP_ACT_ERRNO" | "SCMP_ACT_TRACE");
    if errno.is_some() && !needs_errno {
        return Err(f.err(format!(
            "an errno return value is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {name}"
        )));
    }
    let ret = u16::try_from(errno.unwrap_or(libc::EPERM as u32))
        .map_err(|_| f.err("errno return value out of range (at most 65535)"))?;
    Ok(match name.as_str() {
        "SCMP_ACT_ALLOW" => Action::Allow,
        "SCMP_ACT_LOG" => Action::Log,
        "SCMP_ACT_ERRNO" => Action::Errno(ret),
        "SCMP_ACT_TRAP" => Action::Trap,
        "SCMP_ACT_TRACE" => Action::Trace(ret),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => Action::KillThread,
        "SCMP_ACT_KILL_PROCESS" => Action::KillProcess,
        "SCMP_ACT_NOTIFY" => {
            return Err(
                f.err("SCMP_ACT_NOTIFY is not supported: it needs a seccomp agent (listenerPath)")
            );
        }
        other => {
            return Err(f.err(format!(
                "unknown action `{other}` (SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL_PROCESS, ...)"
            )));
        }
    })
}

fn parse_arch(f: &Field) -> Result<Arch> {
    Ok(match f.str()?.as_str() {
        "SCMP_ARCH_X86_64" => Arch::X86_64,
        "SCMP_ARCH_X86" => Arch::X86,
        "SCMP_ARCH_X32" => Arch::X32,
        "SCMP_ARCH_AARCH64" => Arch::Aarch64,
        "SCMP_ARCH_ARM" => Arch::Arm,
        s if s.starts_with("SCMP_ARCH_") => Arch::Other,
        s => {
            return Err(f.err(format!(
                "unknown architecture `{s}` (SCMP_ARCH_X86_64, ...)"
            )));
        }
    })
}

fn parse_op(f: &Field) -> Result<Op> {
    Ok(match f.str()?.as_str() {
        "SCMP_CMP_NE" => Op::Ne,
        "SCMP_CMP_LT" => Op::Lt,
        "SCMP_CMP_LE" => Op::Le,
        "SCMP_CMP_EQ" => Op::Eq,
        "SCMP_CMP_GE" => Op::Ge,
        "SCMP_CMP_GT" => Op::Gt,
        "SCMP_CMP_MASKED_EQ" => Op::MaskedEq,
        s => {
            return Err(f.err(format!(
                "unknown operator `{s}` (SCMP_CMP_EQ, SCMP_CMP_NE, SCMP_CMP_MASKED_EQ, ...)"
            )));
        }
    })
}

fn parse_arg(f: Field) -> Result<ArgCmp> {
    let mut o = f.obj()?;
    let index_field = o.require("index")?;
    let index = index_field.u32()?;
    if index > 5 {
        return Err(index_field.err("argument index must be 0 to 5"));
    }
    let value = o.take_u64("value")?.unwrap_or(0);
    let value_two = o.take_u64("valueTwo")?.unwrap_or(0);
    let op = parse_op(&o.require("op")?)?;
    o.finish()?;
    Ok(ArgCmp {
        index,
        value,
        value_two,
        op,
    })
}

/// Docker's `includes`/`excludes` filter: whether a rule applies on this host.
fn applies(rule: &mut Obj, host: &Host) -> Result<bool> {
    let mut keep = true;
    for (key, include) in [("includes", true), ("excludes", false)] {
        let Some(mut cond) = rule.take_obj(key)? else {
            continue;
        };
        let arches = cond.take_strings("arches")?;
        let cap_field = cond.take("caps");
        let min_kernel = cond.take_str("minKernel")?;
        cond.finish()?;
        let mut caps_in = Vec::new();
        if let Some(cf) = cap_field {
            for c in cf.array()? {
                let name = c.str()?;
                let n = caps::number(&name)
                    .ok_or_else(|| c.err(format!("unknown capability `{name}`")))?;
                caps_in.push(host.caps & (1 << n) != 0);
            }
        }
        let arch_hit = arches.iter().any(|a| a == host.goarch);
        let kernel_ok = min_kernel
            .as_deref()
            .map(|k| host.kernel >= kernel_version(k));
        if include {
            keep &= arches.is_empty() || arch_hit;
            keep &= caps_in.iter().all(|c| *c);
            keep &= kernel_ok.unwrap_or(true);
        } else {
            keep &= !arch_hit;
            keep &= !caps_in.iter().any(|c| *c);
            keep &= !kernel_ok.unwrap_or(false);
        }
    }
    Ok(keep)
}

/// Reads an OCI `linux.seccomp` object or a Docker/moby profile.
pub fn parse(field: Field, source: &str, host: &Host) -> Result<Profile> {
    let mut o = field.obj()?;
    let default_errno = o.take("defaultErrnoRet").map(|f| f.u32()).transpose()?;
    let default_action = parse_action(&o.require("defaultAction")?, default_errno)?;
    let mut arches = o
        .take_array("architectures")?
        .iter()
        .map(parse_arch)
        .collect::<Result<Vec<_>>>()?;
    // Docker: the entry for this machine's architecture and its sub-architectures.
    for entry in o.take_array("archMap")? {
        let mut e = entry.obj()?;
        let arch = e.require("architecture")?;
        let subs = e.take_array("subArchitectures")?;
        e.finish()?;
        if arch.str()? == host.native_arch() {
            arches.push(parse_arch(&arch)?);
            for s in &subs {
                arches.push(parse_arch(s)?);
            }
        }
    }
    let mut log = false;
    let mut spec_allow = false;
    for flag in o.take_array("flags")? {
        match flag.str()?.as_str() {
            "SECCOMP_FILTER_FLAG_LOG" => log = true,
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => spec_allow = true,
            // one thread when the filter is loaded: synchronising threads changes nothing
            "SECCOMP_FILTER_FLAG_TSYNC" => {}
            other => return Err(flag.err(format!("unsupported seccomp flag `{other}`"))),
        }
    }
    o.unsupported(
        "listenerPath",
        "seccomp notification agents (SCMP_ACT_NOTIFY) are not implemented",
    )?;
    o.unsupported("listenerMetadata", "no seccomp notification agent")?;
    let mut rules = Vec::new();
    for entry in o.take_array("syscalls")? {
        let mut r = entry.obj()?;
        r.ignore("comment");
        let mut names = r.take_strings("names")?;
        if let Some(one) = r.take_str("name")? {
            names.push(one); // old Docker profiles
        }
        let errno = r.take("errnoRet").map(|f| f.u32()).transpose()?;
        let action = parse_action(&r.require("action")?, errno)?;
        let args = r
            .take_array("args")?
            .into_iter()
            .map(parse_arg)
            .collect::<Result<Vec<_>>>()?;
        let keep = applies(&mut r, host)?;
        let path = r.path().to_owned();
        r.finish()?;
        if names.is_empty() {
            return Err(FieldError {
                path: format!("{path}.names"),
                message: "a rule needs at least one syscall name".into(),
                value: None,
            });
        }
        if keep {
            rules.push(Rule {
                names,
                action,
                args,
            });
        }
    }
    o.finish()?;
    Ok(Profile {
        source: source.to_owned(),
        default_action,
        arches,
        rules,
        log,
        spec_allow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json;

    fn host(caps: u64) -> Host {
        Host {
            caps,
            goarch: "amd64",
            kernel: (6, 18),
        }
    }

    fn parse_str(text: &str, h: &Host) -> Result<Profile> {
        parse(Field::root(json::parse(text).unwrap()), "test", h)
    }

    #[test]
    fn oci_profile_with_args() {
        let p = parse_str(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38,
                "architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
                "flags":["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
                  {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                   "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                  {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
            &host(0),
        )
        .unwrap();
        assert_eq!(p.default_action, Action::Errno(38));
        assert_eq!(p.arches, [Arch::X86_64, Arch::X86]);
        assert!(p.log);
        assert_eq!(p.rules.len(), 3);
        assert_eq!(
            p.rules[1].args,
            [ArgCmp {
                index: 0,
                value: 8,
                value_two: 0,
                op: Op::Eq
            }]
        );
        assert_eq!(p.rules[2].action, Action::Errno(13));
    }

    #[test]
    fn errors_name_the_field() {
        let h = host(0);
        let e = parse_str(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#, &h).unwrap_err();
        assert_eq!(e.path, "defaultAction");
        let e = parse_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ERRNO","args":[{"index":7,"op":"SCMP_CMP_EQ"}]}]}"#,
            &h,
        )
        .unwrap_err();
        assert_eq!(e.path, "syscalls[0].args[0].index");
        let e = parse_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["x"],"action":"SCMP_ACT_ALLOW","errnoRet":1}]}"#,
            &h,
        )
        .unwrap_err();
        assert_eq!(e.path, "syscalls[0].action");
        let e = parse_str(r#"{"defaultAction":"SCMP_ACT_ALLOW","bogus":1}"#, &h).unwrap_err();
        assert_eq!(e.path, "bogus");
        let e = parse_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/x.sock"}"#,
            &h,
        )
        .unwrap_err();
        assert_eq!(e.path, "listenerPath");
    }

    #[test]
    fn docker_includes_and_excludes() {
        let text = r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[
              {"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86","SCMP_ARCH_X32"]},
              {"architecture":"SCMP_ARCH_AARCH64","subArchitectures":["SCMP_ARCH_ARM"]}],
            "syscalls":[
              {"names":["ptrace"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"4.8"}},
              {"names":["future"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"9.1"}},
              {"names":["arm_only"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm","arm64"]}},
              {"names":["arch_prctl"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["amd64","x32"]}},
              {"names":["bpf"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"]}},
              {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38,"excludes":{"caps":["CAP_SYS_ADMIN"]}}]}"#;
        let names = |p: &Profile| p.names().map(str::to_owned).collect::<Vec<_>>();
        let p = parse_str(text, &host(caps::oci_default())).unwrap();
        assert_eq!(p.arches, [Arch::X86_64, Arch::X86, Arch::X32]);
        assert_eq!(names(&p), ["ptrace", "arch_prctl", "clone3"]);
        assert_eq!(p.default_action, Action::Errno(1), "EPERM by default");
        let admin = 1 << caps::number("CAP_SYS_ADMIN").unwrap();
        let p = parse_str(text, &host(admin)).unwrap();
        assert_eq!(names(&p), ["ptrace", "arch_prctl", "bpf"]);
    }

    #[test]
    fn the_shipped_docker_profile_parses() {
        let text = include_str!("../../../tests/data/docker-default-seccomp.json");
        let p = parse_str(text, &host(caps::oci_default())).unwrap();
        assert_eq!(p.default_action, Action::Errno(libc::EPERM as u16));
        assert!(p.names().any(|n| n == "execve"));
        assert!(!p.names().any(|n| n == "mount"));
        assert!(
            p.rules
                .iter()
                .any(|r| r.names == ["clone3"] && r.action == Action::Errno(libc::ENOSYS as u16))
        );
    }

    #[test]
    fn the_init_profile_is_an_allow_list() {
        let p = init_profile(&["wait4", "kill"]);
        assert_eq!(p.default_action, Action::Errno(1));
        assert_eq!(p.rules[0].names, ["wait4", "kill"]);
        assert!(p.arches.is_empty(), "native ABI only");
        assert!(compile(&p).unwrap().instructions() < 20);
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), (6, 18));
        assert_eq!(kernel_version("4.8"), (4, 8));
        assert_eq!(kernel_version("5"), (5, 0));
    }
}
