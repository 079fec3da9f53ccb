//! File rules (`files:`): deny-lists of paths and the accesses refused on them, and what each
//! rule does on a given host ([`FileTier`]), as `palisade policy check` and `palisade policy
//! status` say it.
//!
//! Patterns are what the kernel matcher can do with one hash lookup per path component:
//! exact paths (`/etc/shadow`) and trees (`/root/**`: anything below `/root`, not `/root`
//! itself). Nothing else is accepted, so a rule never means less than it says. The types are
//! in [`crate::model::files`].
pub use crate::model::files::*;
use crate::model::{Diagnostic, Mode};

/// How file rules are put in place on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileTier {
    /// BPF-LSM hooks on the resolved path: `file_open`, `path_mknod`, `path_truncate`,
    /// `path_unlink`, `path_rmdir`, `path_chmod`, `mmap_file`.
    Lsm,
    /// Syscall tracepoints on the path as given: reported only.
    Audit {
        /// Why not [`FileTier::Lsm`] (for messages).
        why: String,
    },
    /// Not put in place at all (for messages: why).
    None { why: String },
}

/// Where the audit tier sees each access.
fn audit_calls(a: FileAccess) -> Option<&'static str> {
    match a {
        FileAccess::Read => Some("open, openat, openat2"),
        FileAccess::Write => Some("open, openat, openat2, creat, truncate"),
        FileAccess::Unlink => Some("unlink, unlinkat, rmdir"),
        FileAccess::Chmod => Some("chmod, fchmodat, fchmodat2"),
        FileAccess::Exec => None,
    }
}

/// Where the LSM tier refuses each access.
fn lsm_hooks(a: FileAccess) -> &'static str {
    match a {
        FileAccess::Read => "file_open",
        FileAccess::Write => {
            "file_open, path_mknod (create), path_mkdir, path_symlink, path_truncate, path_link and path_rename (a name made or replaced)"
        }
        FileAccess::Unlink => "path_unlink, path_rmdir",
        FileAccess::Chmod => "path_chmod",
        FileAccess::Exec => "file_open (execve), mmap_file (PROT_EXEC)",
    }
}

fn errno_name(n: u16) -> String {
    palisade_syscalls::errno::name(u32::from(n))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("errno {n}"))
}

/// What one rule does on a host with `tier`, in one sentence per access kind, e.g.
/// `read of /etc/shadow, /root/**: refused with EPERM at file_open (resolved path)`.
pub fn describe_rule(files: &Files, r: &FileRule, mode: Mode, tier: &FileTier) -> String {
    let paths = r
        .paths
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if let FileTier::None { why } = tier {
        let kinds: Vec<&str> = r.access.iter().map(|a| a.as_str()).collect();
        return format!(
            "rule `{}` on {paths}: {}: not enforced and not reported ({why})",
            r.rule,
            kinds.join(", ")
        );
    }
    let mut parts = Vec::new();
    for a in &r.access {
        let what = match tier {
            // said for the whole rule above
            FileTier::None { .. } => continue,
            FileTier::Audit { .. } => match audit_calls(*a) {
                None => "not seen without BPF-LSM: neither refused nor reported".to_owned(),
                Some(calls) => format!(
                    "reported only, the call runs (seen at {calls}; the path as given, relative paths and symlinks not resolved: best effort)"
                ),
            },
            FileTier::Lsm => lsm_verdict(files, mode, lsm_hooks(*a)),
        };
        parts.push(format!("{a}: {what}"));
    }
    if *tier == FileTier::Lsm {
        // a second name, or the tree moved away, would escape a rule that matches paths
        parts.push(format!(
            "rename or hard link of these files or of a directory above them: {}",
            lsm_verdict(files, mode, "path_rename, path_link")
        ));
        // the hooks resolve at most POLICY_PATH_MAX - 1 bytes: deeper files are not matched
        if r.paths.iter().any(|p| p.kind == PathKind::Tree) {
            parts.push(format!(
                "a file whose resolved path is longer than {} bytes: not matched (neither refused nor reported)",
                palisade_common::policy::POLICY_PATH_MAX - 1
            ));
        }
    }
    format!("rule `{}` on {paths}: {}", r.rule, parts.join("; "))
}

/// What the LSM tier does at `hooks` with the policy's action in `mode`.
fn lsm_verdict(files: &Files, mode: Mode, hooks: &str) -> String {
    match (mode, files.action) {
        (Mode::Audit, _) => format!("reported only (audit mode; seen at {hooks}, resolved path)"),
        (_, FileAction::Log) => format!("allowed and reported (seen at {hooks}, resolved path)"),
        (_, FileAction::Errno(e)) => {
            format!("refused with {} at {hooks} (resolved path)", errno_name(e))
        }
        (_, FileAction::Kill) => {
            format!("refused with EPERM at {hooks} (resolved path) and the process killed")
        }
    }
}

/// Warnings about one policy's file rules on a host with `tier`: the fallbacks, stated.
pub fn notes(files: &Files, mode: Mode, tier: &FileTier, out: &mut Vec<Diagnostic>) {
    // (without BPF-LSM `exec` is not seen at all, said below)
    if *tier == FileTier::Lsm {
        exec_without_read(files, out);
    }
    let mut note = |message: String| {
        out.push(Diagnostic {
            loc: files.loc.clone(),
            message,
        })
    };
    match tier {
        FileTier::Lsm => {}
        FileTier::None { why } => note(format!(
            "file rules are neither enforced nor reported here ({why})"
        )),
        FileTier::Audit { why } => {
            if mode == Mode::Enforce && files.action != FileAction::Log {
                note(format!(
                    "`action: {}` cannot be applied on this host ({why}): file rules are reported only, the calls run, and the policy is counted as unenforced (`files_reported_only`: a `palisade run --policy` with it is refused)",
                    files.action.as_str()
                ));
            }
            let exec: Vec<&str> = files
                .deny
                .iter()
                .filter(|r| r.access.contains(&FileAccess::Exec))
                .map(|r| r.rule.as_str())
                .collect();
            if !exec.is_empty() {
                note(format!(
                    "`exec` access (rules {}) is seen only with BPF-LSM (file_open, mmap_file): on this host it is neither refused nor reported",
                    exec.iter()
                        .map(|r| format!("`{r}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            note(
                "without BPF-LSM file rules match the path as given to the call: a relative path, a symlink or a `..` reaches a denied file unreported (best effort); `fchmod`, `ftruncate`, io_uring opens and calls through the i386 or x32 ABI are not seen".into(),
            );
        }
    }
}

/// A warning at each rule denying `exec` of paths it lets be read: a file that can be read can
/// be run (its bytes copied to an anonymous mapping or a memfd), so the denial holds only
/// with `read` denied too.
fn exec_without_read(files: &Files, out: &mut Vec<Diagnostic>) {
    for r in files
        .deny
        .iter()
        .filter(|r| r.access.contains(&FileAccess::Exec))
    {
        let readable: Vec<&str> = r
            .paths
            .iter()
            .filter(|p| {
                let probe = match p.kind {
                    PathKind::Exact => p.key.clone(),
                    PathKind::Tree => format!("{}/x", p.key.trim_end_matches('/')),
                };
                files.rule_for(&probe, FileAccess::Read).is_none()
            })
            .map(|p| p.text.as_str())
            .collect();
        if !readable.is_empty() {
            out.push(Diagnostic {
                loc: r.loc.clone(),
                message: format!(
                    "rule `{}` denies `exec` of {} but not `read`: a file that can be read can be run anyway (its bytes copied into an anonymous executable mapping or a memfd); deny `read` as well for the exec denial to hold",
                    r.rule,
                    readable.join(", ")
                ),
            });
        }
    }
}
