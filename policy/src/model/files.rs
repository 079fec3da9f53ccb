//! File rules as validated: deny entries of paths (exact paths and `DIR/**` trees, what the
//! kernel matcher can do with one hash lookup per path component) and the accesses refused.
use std::fmt;

use super::Loc;

/// One kind of access a rule refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileAccess {
    /// Opened for reading (`O_RDONLY`, `O_RDWR`).
    Read,
    /// Opened for writing (`O_WRONLY`, `O_RDWR`, `O_TRUNC`, `O_CREAT`, `creat`), or truncated.
    Write,
    /// Removed (`unlink`, `unlinkat`, `rmdir`).
    Unlink,
    /// Mode changed (`chmod`, `fchmodat`, `fchmodat2`; with BPF-LSM any mode change).
    Chmod,
    /// Mapped executable (`mmap` with `PROT_EXEC`: shared libraries, the dynamic loader).
    /// Seen with BPF-LSM only.
    Exec,
}

impl FileAccess {
    pub const ALL: [FileAccess; 5] = [
        FileAccess::Read,
        FileAccess::Write,
        FileAccess::Unlink,
        FileAccess::Chmod,
        FileAccess::Exec,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FileAccess::Read => "read",
            FileAccess::Write => "write",
            FileAccess::Unlink => "unlink",
            FileAccess::Chmod => "chmod",
            FileAccess::Exec => "exec",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Its bit in the kernel's access masks (`palisade_common::policy::files::access`).
    pub fn bit(self) -> u32 {
        match self {
            FileAccess::Read => 1,
            FileAccess::Write => 2,
            FileAccess::Unlink => 4,
            FileAccess::Chmod => 8,
            FileAccess::Exec => 16,
        }
    }

    /// The accesses of a mask, in [`Self::ALL`] order.
    pub fn of_mask(mask: u32) -> Vec<Self> {
        Self::ALL
            .into_iter()
            .filter(|a| mask & a.bit() != 0)
            .collect()
    }
}

impl fmt::Display for FileAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a path pattern matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathKind {
    /// `/etc/shadow`: this path only.
    Exact,
    /// `/root/**`: anything below the directory (not the directory itself); `/**`: every path.
    Tree,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PathPattern {
    pub text: String,
    pub kind: PathKind,
    /// The path, or the directory of a tree (empty for `/**`).
    pub key: String,
    pub loc: Loc,
}

impl PathPattern {
    /// Whether `path` matches, exactly as the kernel decides (byte comparison, no
    /// normalisation: the kernel is given resolved paths, or with the audit tier the path as
    /// given).
    pub fn matches(&self, path: &str) -> bool {
        match self.kind {
            PathKind::Exact => path == self.key,
            PathKind::Tree => {
                path.len() > self.key.len() + 1
                    && path.starts_with(&self.key)
                    && path.as_bytes().get(self.key.len()) == Some(&b'/')
            }
        }
    }
}

/// What happens to a denied access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    /// Refused with this errno (EPERM unless `errno:` says otherwise).
    Errno(u16),
    /// Refused and the process killed (SIGKILL).
    Kill,
    /// Allowed and reported.
    Log,
}

impl FileAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FileAction::Errno(_) => "errno",
            FileAction::Kill => "kill",
            FileAction::Log => "log",
        }
    }
}

/// One entry of `files.deny`.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRule {
    /// Rule name (the `rule` label): given, or `files.deny[i]`.
    pub rule: String,
    pub paths: Vec<PathPattern>,
    /// Refused accesses, in [`FileAccess::ALL`] order, each once.
    pub access: Vec<FileAccess>,
    pub loc: Loc,
}

impl FileRule {
    pub fn mask(&self) -> u32 {
        self.access.iter().fold(0, |m, a| m | a.bit())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Files {
    pub action: FileAction,
    pub deny: Vec<FileRule>,
    pub loc: Loc,
}

impl Files {
    /// The first rule (in file order) refusing `access` to `path`: the one reported.
    pub fn rule_for(&self, path: &str, access: FileAccess) -> Option<&FileRule> {
        self.deny
            .iter()
            .find(|r| r.access.contains(&access) && r.paths.iter().any(|p| p.matches(path)))
    }
}
