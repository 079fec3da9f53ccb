//! Exec rules: the pattern tables, the path hash, what a violation carries about the exec, and
//! how the file actually executed gets its path.
//!
//! The kernel side reads the `linux_binprm` of `sched_process_exec` (a raw tracepoint): the
//! file the kernel runs, walked up through `d_parent`/`d_name` and across mounts (`struct
//! mount`: `mnt_parent`, `mnt_mountpoint`) to the process's root, so the path is the one the
//! process sees, with symlinks, `.`, `..` and repeated slashes already resolved by the kernel's
//! own lookup. Member offsets come from the kernel's BTF in userspace ([`ExecOffsets`]). The walk
//! itself is [`resolve`], generic over [`KernelMemory`] so the host tests run it on a model of
//! the kernel's objects.
//!
//! A shebang script (or a `binfmt_misc` program) is run through an interpreter: by the time of
//! `sched_process_exec` the `linux_binprm` holds the interpreter, and the script's file has been
//! released with `fput`, which queues the final release as a task work on the exec'ing task.
//! [`script_file`] finds it there: the oldest `____fput` work of this exec is the outermost
//! script.

use super::POLICY_PATH_MAX;

mod walk;

pub use walk::*;

/// [`ExecKey::kind`] values: how an exec pattern is matched.
pub mod exec_kind {
    /// The whole path (`/usr/bin/nc`).
    pub const EXACT: u32 = 1;
    /// Files directly in a directory (`/usr/bin/*`): hash of the directory.
    pub const DIR: u32 = 2;
    /// Anything below a directory (`/opt/app/**`): hash of the directory.
    pub const TREE: u32 = 3;
    /// Any path with this file name (`**/nc`): hash of the name.
    pub const BASENAME: u32 = 4;
}

/// Value of `POLICY_EXEC_CONF` (slot → exec configuration).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecConf {
    /// 1: an exec no allow pattern matches is a violation of `default_rule`.
    pub allow_list: u32,
    pub default_rule: u32,
}

/// Key of `POLICY_EXEC` (one exec pattern of a slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecKey {
    pub slot: u32,
    /// One of [`exec_kind`].
    pub kind: u32,
    /// [`fnv`] hash of the path, directory or name (see [`exec_kind`]).
    pub hash: u64,
}

/// Value of `POLICY_EXEC`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecRule {
    /// The deny rule's id (0 for an allow pattern).
    pub rule: u32,
    /// 1 for an allow pattern. A path matching both an allow and a deny pattern is denied.
    pub allow: u32,
}

/// FNV-1a, 64 bits: the exec path hash (cheap in eBPF, one multiply per byte).
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline(always)]
pub fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
}

/// FNV-1a of `bytes`.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for b in bytes {
        h = fnv_step(h, *b);
    }
    h
}

/// One pass over a path, byte by byte, producing every exec table key to look up: each
/// ancestor directory (`TREE`, at every `/`), then the whole path, its directory and its file
/// name.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct PathHasher {
    h: u64,
    base: u64,
    dir: u64,
}

impl PathHasher {
    pub const NEW: Self = Self {
        h: FNV_OFFSET,
        base: FNV_OFFSET,
        dir: FNV_OFFSET,
    };

    #[inline(always)]
    pub fn push(&mut self, b: u8, f: &mut impl FnMut(u32, u64)) {
        if b == b'/' {
            f(exec_kind::TREE, self.h);
            self.dir = self.h;
            self.base = FNV_OFFSET;
        } else {
            self.base = fnv_step(self.base, b);
        }
        self.h = fnv_step(self.h, b);
    }

    #[inline(always)]
    pub fn finish(self, f: &mut impl FnMut(u32, u64)) {
        f(exec_kind::EXACT, self.h);
        f(exec_kind::DIR, self.dir);
        f(exec_kind::BASENAME, self.base);
    }
}

/// Calls `f(kind, hash)` for every exec table key an exec of `path` looks up, as the kernel
/// does: each ancestor directory (for `DIR/**`), the whole path, the directory of the file and
/// the file name.
pub fn exec_lookups(path: &[u8], mut f: impl FnMut(u32, u64)) {
    let mut p = PathHasher::NEW;
    for &b in path.iter().take(POLICY_PATH_MAX) {
        if b == 0 {
            break;
        }
        p.push(b, &mut f);
    }
    p.finish(&mut f);
}

/// [`exec_lookups`] over the first `len` bytes of a fixed buffer (the kernel's form: a loop
/// the verifier can bound).
#[inline(always)]
pub fn exec_lookups_in(path: &[u8; POLICY_PATH_MAX], len: u32, mut f: impl FnMut(u32, u64)) {
    let mut p = PathHasher::NEW;
    for (i, b) in path.iter().enumerate() {
        if i as u32 >= len {
            break;
        }
        p.push(*b, &mut f);
    }
    p.finish(&mut f);
}

/// [`ExecPaths::flags`] bits.
pub mod exec_flags {
    /// `path` (and `interp`) are the files executed, resolved in the kernel; without it `path`
    /// is the string given to execve (the best-effort fallback without kernel BTF).
    pub const RESOLVED: u32 = 1;
    /// An interpreter runs a script: `path` is the script, `interp` the interpreter.
    pub const SCRIPT: u32 = 2;
    /// The script is known only by the path given (this host does not show where the kernel
    /// released the script's file): `path` is that string.
    pub const SCRIPT_BY_NAME: u32 = 4;
    /// `dev` and `ino` identify the file in `path`.
    pub const HAVE_ID: u32 = 8;
}

/// Why a file executed has no path the rules can match ([`ExecPaths::path_unresolved`]).
pub mod unresolved {
    pub const NONE: u32 = 0;
    /// Not reachable by name: a memfd or another pseudo file (`path` is its name,
    /// `memfd:NAME`).
    pub const DETACHED: u32 = 1;
    /// Unlinked (`path` is the name it had).
    pub const DELETED: u32 = 2;
    /// Outside the process's root (an fd from another mount namespace or a chroot's outside, a
    /// lazily unmounted file system); `path` is relative to the root of its mount tree.
    pub const UNREACHABLE: u32 = 3;
    /// Longer than the path buffer or deeper than the walk goes; `path` is its tail.
    pub const TOO_LONG: u32 = 4;
    /// A kernel object could not be read.
    pub const UNREADABLE: u32 = 5;
    /// The script's file was not found among the task's pending releases.
    pub const NOT_FOUND: u32 = 6;

    /// Stable names for events.
    pub fn name(r: u32) -> &'static str {
        match r {
            DETACHED => "detached",
            DELETED => "deleted",
            UNREACHABLE => "unreachable",
            TOO_LONG => "too_long",
            UNREADABLE => "unreadable",
            NOT_FOUND => "not_found",
            _ => "",
        }
    }
}

/// What an exec violation carries (part of [`super::PolicyEvent`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecPaths {
    /// [`exec_flags`] bits.
    pub flags: u32,
    /// [`unresolved`] reasons for `path` and `interp`.
    pub path_unresolved: u32,
    pub interp_unresolved: u32,
    /// The kernel's `dev_t` of the file in `path` (`major << 20 | minor`, not the userspace
    /// encoding of `st_dev`) and its inode number.
    pub dev: u32,
    pub ino: u64,
    /// Bytes used in each buffer below.
    pub path_len: u32,
    pub interp_len: u32,
    pub given_len: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
    /// The program: the file executed (a script's own file for scripts), as the process sees
    /// it; the string given without [`exec_flags::RESOLVED`].
    pub path: [u8; POLICY_PATH_MAX],
    /// The interpreter the kernel runs for a script ([`exec_flags::SCRIPT`]).
    pub interp: [u8; POLICY_PATH_MAX],
    /// The path given to execve/execveat (`/dev/fd/N` for an fd).
    pub given: [u8; POLICY_PATH_MAX],
}

impl ExecPaths {
    pub const EMPTY: Self = Self {
        flags: 0,
        path_unresolved: 0,
        interp_unresolved: 0,
        dev: 0,
        ino: 0,
        path_len: 0,
        interp_len: 0,
        given_len: 0,
        _pad: 0,
        path: [0; POLICY_PATH_MAX],
        interp: [0; POLICY_PATH_MAX],
        given: [0; POLICY_PATH_MAX],
    };

    /// The major and minor numbers of the kernel's `dev_t` in [`ExecPaths::dev`].
    pub fn dev_numbers(&self) -> (u32, u32) {
        (self.dev >> 20, self.dev & ((1 << 20) - 1))
    }
}

#[cfg(test)]
mod tests;
