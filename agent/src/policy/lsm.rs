//! BPF-LSM: whether this host refuses denied calls in the kernel, and what each kind of rule
//! does here (the enforcement tier `palisade doctor`, `palisade policy status` and
//! `palisade policy check` show), and loading the policy object's LSM programs.
//!
//! BPF-LSM needs `bpf` among the active LSMs (`/sys/kernel/security/lsm`, set by the `lsm=`
//! boot parameter or CONFIG_LSM) and the kernel's BTF (the programs are typed by the hook).
//! Where it is missing, every rule keeps the tier it has without it, and each place that
//! shows rules says so.
use std::path::{Path, PathBuf};

use aya::{
    Btf, Endianness,
    programs::{Lsm, ProgramError, links::FdLink},
};
use palisade_common::policy::LSM_CALLS;
use palisade_policy::{
    Diagnostic, PolicySet,
    model::{ExecAction, ListKind, Mode, NetAction, Policy, SysAction, Syscalls},
};

/// Where the active LSMs are listed.
pub const LSM_FILE: &str = "/sys/kernel/security/lsm";

/// Why this host has no BPF-LSM tier.
#[derive(Debug, thiserror::Error)]
pub enum LsmUnavailable {
    #[error("cannot read {path} (securityfs): {source}")]
    SecurityFs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`bpf` is not among the active LSMs ({0}); boot with lsm=...,bpf")]
    Inactive(String),
    #[error("the kernel refused the BPF-LSM program: {0}")]
    Refused(String),
    #[error("no kernel BTF at {path}: {source}")]
    Btf {
        path: PathBuf,
        source: aya::BtfError,
    },
}

/// Whether BPF-LSM programs can refuse calls on this host, found once at start.
#[derive(Debug)]
pub struct LsmSupport {
    /// The host, and the exec program once attached.
    pub state: Result<(), LsmUnavailable>,
    /// The host, and the syscall hooks once attached.
    pub syscalls: Result<(), LsmUnavailable>,
    /// The host, and the file hooks once attached (file rules refused on the resolved path).
    pub files: Result<(), LsmUnavailable>,
}

impl LsmSupport {
    /// This host: the active LSMs and the BTF at `btf` (the agent's `policy.kernel_btf`).
    pub fn probe(btf: &Path) -> Self {
        Self::probe_at(Path::new(LSM_FILE), btf)
    }

    /// `lsm_file` lists the active LSMs (another path is for tests).
    pub fn probe_at(lsm_file: &Path, btf: &Path) -> Self {
        Self {
            state: Self::host(lsm_file, btf),
            syscalls: Self::host(lsm_file, btf),
            files: Self::host(lsm_file, btf),
        }
    }

    fn host(lsm_file: &Path, btf: &Path) -> Result<(), LsmUnavailable> {
        std::fs::read_to_string(lsm_file)
            .map_err(|source| LsmUnavailable::SecurityFs {
                path: lsm_file.to_owned(),
                source,
            })
            .and_then(|l| {
                if l.trim().split(',').any(|m| m.trim() == "bpf") {
                    Ok(())
                } else {
                    Err(LsmUnavailable::Inactive(l.trim().to_owned()))
                }
            })
            .and_then(|()| {
                if btf.exists() {
                    Ok(())
                } else {
                    Err(LsmUnavailable::Btf {
                        path: btf.to_owned(),
                        source: aya::BtfError::FileError {
                            path: btf.to_owned(),
                            error: std::io::Error::from(std::io::ErrorKind::NotFound),
                        },
                    })
                }
            })
    }

    /// `errno` exec rules are refused at exec.
    pub fn active(&self) -> bool {
        self.state.is_ok()
    }

    /// `errno` syscall rules of the calls in `LSM_CALLS` are refused by their hooks.
    pub fn syscalls_active(&self) -> bool {
        self.syscalls.is_ok()
    }

    /// File rules are refused at the BPF-LSM file hooks (`files::tier`).
    pub fn files_active(&self) -> bool {
        self.files.is_ok()
    }

    /// One sentence for people.
    pub fn describe(&self) -> String {
        match &self.state {
            Ok(()) => "BPF-LSM active: exec rules with `action: errno` refuse the exec with EPERM before it runs; syscall rules with `action: errno` refuse the calls that have an LSM hook (see the README's table); file rules are refused at file_open, path_unlink, path_chmod, ... on the resolved path".into(),
            Err(e) => format!(
                "no BPF-LSM ({e}): exec rules with `action: errno` kill the process before the new image runs instead of refusing the exec"
            ),
        }
    }

    /// The `lsm` object of `palisade policy status`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "active": self.active(),
            "reason": self.state.as_ref().err().map(ToString::to_string).unwrap_or_default(),
            "syscalls_active": self.syscalls_active(),
            "syscalls_reason": self.syscalls.as_ref().err().map(ToString::to_string).unwrap_or_default(),
            "files_active": self.files_active(),
            "files_reason": self.files.as_ref().err().map(ToString::to_string).unwrap_or_default(),
            "describe": self.describe(),
        })
    }
}

/// What a kind of rule does on this host when something breaks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tier {
    /// An exec refused at `bprm_check_security` (BPF-LSM).
    RefusedAtExec,
    /// A call refused by the kernel with this errno (seccomp at launch, cgroup socket hooks,
    /// BPF-LSM).
    Refused(String),
    /// A denied exec: the process is killed before the new image runs an instruction.
    KilledBeforeRun,
    /// A denied call runs; the process is killed before it returns to userspace.
    KilledAfterCall,
    /// Counted and reported, nothing stopped.
    ReportedOnly,
}

impl Tier {
    /// The stable label of `palisade policy status` and `palisade policy check`.
    pub fn label(&self) -> String {
        match self {
            Tier::RefusedAtExec => "refused with EPERM at exec".into(),
            Tier::Refused(errno) => format!("refused with {errno} by the kernel"),
            Tier::KilledBeforeRun => "killed before the new image runs".into(),
            Tier::KilledAfterCall => "killed after the call".into(),
            Tier::ReportedOnly => "reported only".into(),
        }
    }
}

/// How one section of a policy is enforced here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionTier {
    /// `exec`, `syscalls`, `egress` or `ingress`.
    pub section: &'static str,
    /// The action as written.
    pub action: String,
    /// The calls this entry is about (empty: the whole section).
    pub calls: Vec<String>,
    /// In running containers (the agent's hooks).
    pub tier: Tier,
    /// Why the tier is weaker than the action asks, when it is.
    pub fallback: Option<String>,
}

impl SectionTier {
    /// The `enforcement` entries of `palisade policy status`.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "section": self.section,
            "action": self.action,
            "calls": self.calls,
            "tier": self.tier.label(),
            "fallback": self.fallback.clone().unwrap_or_default(),
        })
    }
}

/// How each rule section of `p` is enforced on running containers, in mode `mode`, with the
/// BPF-LSM exec program in force (`lsm`) or not.
pub fn tiers(p: &Policy, mode: Mode, lsm: &LsmSupport) -> Vec<SectionTier> {
    let audit = mode == Mode::Audit;
    let mut out = Vec::new();
    let weak = |t: Tier| if audit { Tier::ReportedOnly } else { t };
    if let Some(e) = &p.exec {
        let (tier, fallback) = match (e.action, &lsm.state) {
            (ExecAction::Log, _) => (Tier::ReportedOnly, None),
            (ExecAction::Kill, _) => (weak(Tier::KilledBeforeRun), None),
            (ExecAction::Errno, Ok(())) => (weak(Tier::RefusedAtExec), None),
            (ExecAction::Errno, Err(why)) => (
                weak(Tier::KilledBeforeRun),
                Some(format!("no BPF-LSM on this host ({why})")),
            ),
        };
        out.push(SectionTier {
            section: "exec",
            action: e.action.as_str().into(),
            calls: vec![],
            tier,
            fallback,
        });
    }
    if let Some(s) = &p.syscalls {
        let (action, tier, fallback) = match s.action {
            SysAction::Log => ("log".to_owned(), Tier::ReportedOnly, None),
            SysAction::Kill => ("kill".to_owned(), weak(Tier::KilledAfterCall), None),
            SysAction::Errno(n) => (
                format!("errno {}", errno_name(n)),
                weak(Tier::KilledAfterCall),
                Some(format!(
                    "refused with {} only at launch (`palisade run --policy`: seccomp); in running containers a tracepoint cannot make a call fail",
                    errno_name(n)
                )),
            ),
        };
        if let (SysAction::Errno(n), Ok(()), false) = (s.action, &lsm.syscalls, audit) {
            let refused = lsm_refused(s);
            if !refused.is_empty() {
                let (by_cap, own): (Vec<String>, Vec<String>) = refused
                    .into_iter()
                    .partition(|c| c == "unshare" || c == "setns");
                for (calls, errno) in [(own, errno_name(n)), (by_cap, "EPERM".to_owned())] {
                    if calls.is_empty() {
                        continue;
                    }
                    out.push(SectionTier {
                        section: "syscalls",
                        action: action.clone(),
                        calls,
                        tier: Tier::Refused(errno),
                        fallback: None,
                    });
                }
            }
        }
        out.push(SectionTier {
            section: "syscalls",
            action,
            calls: vec![],
            tier,
            fallback,
        });
    }
    for (section, d) in [
        ("egress", &p.network.egress),
        ("ingress", &p.network.ingress),
    ] {
        let Some(d) = d else { continue };
        let denies =
            d.default == NetAction::Deny || d.rules.iter().any(|r| r.action == NetAction::Deny);
        let tier = if denies {
            weak(Tier::Refused("EPERM".into()))
        } else {
            Tier::ReportedOnly
        };
        out.push(SectionTier {
            section,
            calls: vec![],
            action: if denies { "deny" } else { "log" }.into(),
            tier,
            fallback: None,
        });
    }
    out
}

/// The calls of `LSM_CALLS` that `s` denies (deny entries with argument conditions count: the
/// hooks check them on the registers).
pub fn lsm_refused(s: &Syscalls) -> Vec<String> {
    let denies = |nr: u32| match s.list {
        ListKind::Deny => s.entries.iter().any(|e| e.nrs.contains(&nr)),
        ListKind::Allow => !s
            .entries
            .iter()
            .any(|e| e.args.is_empty() && e.nrs.contains(&nr)),
    };
    LSM_CALLS
        .iter()
        .filter(|c| denies(c.nr))
        .map(|c| c.name.to_owned())
        .collect()
}

fn errno_name(n: u16) -> String {
    palisade_syscalls::errno::label(u32::from(n)).into_owned()
}

/// Warnings of `palisade policy check` for actions this host cannot apply as written, at the
/// `action:` they are about.
pub fn host_notes(set: &PolicySet, lsm: &LsmSupport) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in &set.policies {
        if let (Some(e), Err(why)) = (&p.exec, &lsm.state)
            && e.action == ExecAction::Errno
        {
            out.push(Diagnostic {
                loc: e.action_loc.clone(),
                message: format!(
                    "exec `action: errno`: this host has no BPF-LSM ({why}), so a denied exec is not refused with EPERM: the process is killed (SIGKILL) before the new image runs"
                ),
            });
        }
    }
    out
}

/// Loads (once) and attaches the LSM program `prog` to its `hook`, typed by the BTF at `btf`.
pub fn attach(prog: &mut Lsm, hook: &str, btf: &Path) -> Result<FdLink, ProgramError> {
    if prog.fd().is_err() {
        let btf = Btf::parse_file(btf, Endianness::default()).map_err(ProgramError::Btf)?;
        prog.load(hook, &btf)?;
    }
    let id = prog.attach()?;
    Ok(prog.take_link(id)?.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  selector: {workload: w}\n";

    fn lsm(list: &str) -> LsmSupport {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("lsm");
        std::fs::write(&f, list).unwrap();
        let btf = d.path().join("vmlinux");
        std::fs::write(&btf, b"").unwrap();
        LsmSupport::probe_at(&f, &btf)
    }

    #[test]
    fn probe_reads_the_active_lsms() {
        assert!(lsm("lockdown,capability,bpf\n").active());
        let no = lsm("lockdown,capability,landlock,yama,apparmor");
        assert!(!no.active());
        assert!(
            no.describe().contains(
                "`bpf` is not among the active LSMs (lockdown,capability,landlock,yama,apparmor)"
            ),
            "{}",
            no.describe()
        );
        let gone = LsmSupport::probe_at(Path::new("/nonexistent/lsm"), Path::new("/"));
        assert!(matches!(gone.state, Err(LsmUnavailable::SecurityFs { .. })));
        assert_eq!(gone.status()["active"], false);
    }

    #[test]
    fn exec_errno_is_refused_with_lsm_and_killed_without() {
        let set = palisade_policy::parse_str(
            &format!("{HEAD}  exec:\n    action: errno\n    deny: [/usr/bin/nc]\n  syscalls:\n    action: errno\n    deny: [unshare]\n"),
            "p.yaml",
        )
        .unwrap();
        let p = &set[0];
        let with = tiers(p, Mode::Enforce, &lsm("capability,bpf"));
        assert_eq!(with[0].tier.label(), "refused with EPERM at exec");
        assert_eq!(with[0].fallback, None);
        assert_eq!(with[1].section, "syscalls");
        assert_eq!(with[1].calls, ["unshare"]);
        assert_eq!(with[1].tier.label(), "refused with EPERM by the kernel");
        assert_eq!(with[2].calls, Vec::<String>::new());
        assert_eq!(with[2].tier.label(), "killed after the call");
        let without = lsm("capability,apparmor");
        let t = tiers(p, Mode::Enforce, &without);
        assert_eq!(t[0].tier.label(), "killed before the new image runs");
        assert!(t[0].fallback.as_deref().unwrap().contains("no BPF-LSM"));
        assert_eq!(tiers(p, Mode::Audit, &without)[0].tier, Tier::ReportedOnly);
        let set = PolicySet {
            policies: set,
            files: vec![],
        };
        let notes = host_notes(&set, &without);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].loc.to_string(), "p.yaml:7:13");
        assert!(
            notes[0]
                .message
                .contains("killed (SIGKILL) before the new image runs")
        );
        assert!(host_notes(&set, &lsm("bpf")).is_empty());
    }

    #[test]
    fn the_lsm_table_names_x86_64_numbers() {
        for c in LSM_CALLS {
            assert_eq!(
                palisade_syscalls::number(c.name),
                Some(c.nr),
                "{} is {}",
                c.name,
                c.nr
            );
        }
    }
}
