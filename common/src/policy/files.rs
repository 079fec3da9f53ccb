//! File rules: the pattern table, the access bits, and which syscalls the audit hook (no
//! BPF-LSM: `sys_enter`, the path as given) reads, with how each call's arguments say what
//! access it is.
//!
//! Patterns are exact paths and trees, hashed like exec patterns ([`super::fnv`]) and keyed by
//! [`super::ExecKey`] with [`super::exec_kind::EXACT`] or [`super::exec_kind::TREE`]: one pass
//! over a path looks up every ancestor directory and the path itself ([`file_lookups`]).

use super::{POLICY_PATH_MAX, PathHasher, exec_kind};

/// Access bits (the policy crate's `FileAccess::bit`).
pub mod access {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const UNLINK: u32 = 4;
    pub const CHMOD: u32 = 8;
    pub const EXEC: u32 = 16;
    /// In the table only: a directory above a pattern (an exact key), which a rename would
    /// move the denied files below it out from under their rules.
    pub const CONTAINS: u32 = 32;
    /// How many kinds ([`super::FileEntry`] arrays are indexed by the bit's position).
    pub const KINDS: usize = 6;
    /// Named by events only: a rename of a denied file or a directory above one, or onto a
    /// denied name.
    pub const RENAME: u32 = 64;
    /// Named by events only: a hard link to a denied file, or a link made at a denied name.
    pub const LINK: u32 = 128;

    /// Stable names for events.
    pub fn name(bit: u32) -> &'static str {
        match bit {
            READ => "read",
            WRITE => "write",
            UNLINK => "unlink",
            CHMOD => "chmod",
            EXEC => "exec",
            CONTAINS => "contains",
            RENAME => "rename",
            LINK => "link",
            _ => "",
        }
    }
}

/// Value of `POLICY_FILES`: for each access kind (by bit position) the rule refusing it on
/// this pattern (0: none) and that rule's rank (its index in the policy's `files.deny`), so a
/// path matching several patterns is reported under the first rule in file order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileEntry {
    pub rule: [u16; 8],
    pub rank: [u16; 8],
}

impl FileEntry {
    /// Adds rule `rule` (rank `rank`) for the accesses in `mask`, keeping the first rule in
    /// file order per access.
    pub fn add(&mut self, mask: u32, rule: u16, rank: u16) {
        for i in 0..access::KINDS {
            if mask & (1 << i) != 0 && (self.rule[i] == 0 || rank < self.rank[i]) {
                self.rule[i] = rule;
                self.rank[i] = rank;
            }
        }
    }
}

/// The best match so far of one lookup pass: (rule, rank, access bit); `rule` 0 for none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FileMatch {
    pub rule: u32,
    pub rank: u32,
    pub access: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
}

impl FileMatch {
    /// Takes what `e` refuses of `want` (access bits) when it comes earlier in file order.
    #[inline(always)]
    pub fn consider(&mut self, e: &FileEntry, want: u32) {
        for i in 0..access::KINDS {
            if want & (1 << i) == 0 {
                continue;
            }
            let r = e.rule[i];
            if r != 0 && (self.rule == 0 || u32::from(e.rank[i]) < self.rank) {
                self.rule = u32::from(r);
                self.rank = u32::from(e.rank[i]);
                self.access = 1 << i;
            }
        }
    }
}

/// One pass over a path, byte by byte, producing the file table keys to look up: each
/// ancestor directory with something below it (`TREE`, at every `/` but a trailing one), then
/// the whole path (`EXACT`). The kernel steps it from `bpf_loop`, one byte per call.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct FileHasher {
    h: PathHasher,
}

impl FileHasher {
    pub const NEW: Self = Self { h: PathHasher::NEW };

    /// Byte `b` of the path; `next` is the byte after it (0 at the end).
    #[inline(always)]
    pub fn push(&mut self, b: u8, next: u8, f: &mut impl FnMut(u32, u64)) {
        self.h.push(b, &mut |k, h| {
            if k == exec_kind::TREE && next != 0 {
                f(k, h)
            }
        });
    }

    #[inline(always)]
    pub fn finish(self, f: &mut impl FnMut(u32, u64)) {
        self.h.finish(&mut |k, h| {
            if k == exec_kind::EXACT {
                f(k, h)
            }
        });
    }
}

/// Calls `f(kind, hash)` for every file table key a path looks up ([`FileHasher`]), over the
/// first `len` bytes of a fixed buffer.
pub fn file_lookups_in(path: &[u8; POLICY_PATH_MAX], len: u32, mut f: impl FnMut(u32, u64)) {
    let mut p = FileHasher::NEW;
    for (i, b) in path.iter().enumerate() {
        if i as u32 >= len || *b == 0 {
            break;
        }
        let next = if i as u32 + 1 >= len {
            0
        } else {
            path.get(i + 1).copied().unwrap_or(0)
        };
        p.push(*b, next, &mut f);
    }
    p.finish(&mut f);
}

/// Open flags (x86_64 values).
pub mod open_flags {
    pub const ACCMODE: u64 = 0o3;
    pub const WRONLY: u64 = 0o1;
    pub const RDWR: u64 = 0o2;
    pub const CREAT: u64 = 0o100;
    pub const TRUNC: u64 = 0o1000;
    pub const PATH: u64 = 0o10000000;
}

/// The accesses an `open` with `flags` asks for: read and/or write by the access mode, write
/// for `O_CREAT` and `O_TRUNC`; nothing for `O_PATH`.
#[inline(always)]
pub fn open_access(flags: u64) -> u32 {
    use open_flags::*;
    if flags & PATH != 0 {
        return 0;
    }
    let mut a = match flags & ACCMODE {
        0 => access::READ,
        WRONLY => access::WRITE,
        _ => access::READ | access::WRITE,
    };
    if flags & (CREAT | TRUNC) != 0 {
        a |= access::WRITE;
    }
    a
}

/// How the audit hook reads one syscall: which argument is the path, and the access (fixed,
/// or from the open flags in argument `flags_arg`, or for `openat2` from the `struct
/// open_how` it points at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditCall {
    pub path_arg: u32,
    pub access: AuditAccess,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAccess {
    Fixed(u32),
    /// [`open_access`] of this argument.
    Flags(u32),
    /// [`open_access`] of the first `u64` of the `struct open_how` this argument points at.
    OpenHow(u32),
}

/// x86_64 syscall numbers the audit hook reads.
pub mod audit_nr {
    pub const OPEN: u64 = 2;
    pub const TRUNCATE: u64 = 76;
    pub const RMDIR: u64 = 84;
    pub const CREAT: u64 = 85;
    pub const UNLINK: u64 = 87;
    pub const CHMOD: u64 = 90;
    pub const OPENAT: u64 = 257;
    pub const UNLINKAT: u64 = 263;
    pub const FCHMODAT: u64 = 268;
    pub const OPENAT2: u64 = 437;
    pub const FCHMODAT2: u64 = 452;
}

/// The calls the audit hook reads (x86_64), `None` for every other.
#[inline(always)]
pub fn audit_call(nr: u64) -> Option<AuditCall> {
    use AuditAccess::*;
    use audit_nr::*;
    let (path_arg, access) = match nr {
        OPEN => (0, Flags(1)),
        OPENAT => (1, Flags(2)),
        OPENAT2 => (1, OpenHow(2)),
        CREAT | TRUNCATE => (0, Fixed(access::WRITE)),
        UNLINK | RMDIR => (0, Fixed(access::UNLINK)),
        UNLINKAT => (1, Fixed(access::UNLINK)),
        CHMOD => (0, Fixed(access::CHMOD)),
        FCHMODAT | FCHMODAT2 => (1, Fixed(access::CHMOD)),
        _ => return None,
    };
    Some(AuditCall { path_arg, access })
}

#[cfg(test)]
mod tests;
