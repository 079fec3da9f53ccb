//! Syscall and errno names for labels.
mod x86_64;

use std::borrow::Cow;

/// Name of syscall `nr` on the host ABI; the decimal number where unknown.
pub fn name(nr: u32) -> Cow<'static, str> {
    match x86_64::NAMES.get(nr as usize) {
        Some(n) if !n.is_empty() => Cow::Borrowed(n),
        _ => Cow::Owned(nr.to_string()),
    }
}

/// Number of a syscall by name.
#[cfg(test)]
pub fn number(name: &str) -> Option<u32> {
    x86_64::NAMES
        .iter()
        .position(|n| !n.is_empty() && *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

/// Symbolic errno (`EBADF`); `E<n>` where the C library has no name for it.
pub fn errno_name(errno: u32) -> Cow<'static, str> {
    let e = nix::errno::Errno::from_raw(errno as i32);
    if e == nix::errno::Errno::UnknownErrno {
        return Cow::Owned(format!("E{errno}"));
    }
    Cow::Owned(format!("{e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_numbers() {
        assert_eq!(name(0), "read");
        assert_eq!(name(3), "close");
        assert_eq!(name(39), "getpid");
        assert_eq!(name(59), "execve");
        assert_eq!(name(60), "exit");
        assert_eq!(name(110), "getppid");
        assert_eq!(name(231), "exit_group");
        assert_eq!(name(257), "openat");
        assert_eq!(name(334), "rseq");
        assert_eq!(name(425), "io_uring_setup");
        assert_eq!(name(435), "clone3");
        assert_eq!(name(450), "set_mempolicy_home_node");
        assert_eq!(name(462), "mseal");
        assert_eq!(name(469), "file_setattr");
    }

    #[test]
    fn gaps_and_unknown_numbers_render_as_numbers() {
        assert_eq!(name(335), "335");
        assert_eq!(name(400), "400");
        assert_eq!(name(470), "470");
        assert_eq!(name(u32::MAX), "4294967295");
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for nr in 0..x86_64::NAMES.len() as u32 {
            let n = name(nr);
            if n.parse::<u32>().is_err() {
                assert!(seen.insert(n.to_string()), "duplicate {n}");
                assert_eq!(number(&n), Some(nr));
            }
        }
        assert!(seen.len() > 370, "{}", seen.len());
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(9), "EBADF");
        assert_eq!(errno_name(1), "EPERM");
        assert_eq!(errno_name(2), "ENOENT");
        assert_eq!(errno_name(4000), "E4000");
    }
}
