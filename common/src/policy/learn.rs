//! `palisade policy learn`, files: while a learning window is open, the `policy_learn_files`
//! program (a `sys_enter` raw tracepoint attached only then) sends one record per call that
//! writes, unlinks or chmods a path, in the cgroups being learned (and their children), with
//! the path as given to the call.

use super::POLICY_PATH_MAX;

/// `AT_FDCWD`: a path relative to the working directory.
pub const AT_FDCWD: i32 = -100;

/// The accesses learned (of [`super::access`]): writes, unlinks, chmods.
pub const LEARN_ACCESS: u32 = super::access::WRITE | super::access::UNLINK | super::access::CHMOD;

/// One record of the `POLICY_LEARN_FILES` ring buffer: a call that writes (unlinks, chmods)
/// `path`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnFile {
    pub cgroup_id: u64,
    /// The calling process (thread group id).
    pub pid: u32,
    /// Bits of [`super::access`] (within [`LEARN_ACCESS`]).
    pub access: u32,
    /// The directory fd a relative path is relative to ([`AT_FDCWD`]: the working directory).
    pub dirfd: i32,
    /// Bytes of `path` before its NUL (0: unreadable).
    pub len: u32,
    pub path: [u8; POLICY_PATH_MAX],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size() {
        assert_eq!(size_of::<LearnFile>(), 24 + POLICY_PATH_MAX);
    }
}
