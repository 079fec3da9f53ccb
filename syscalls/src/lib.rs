//! Syscall and errno names and numbers: the one table the agent (metric labels, violations),
//! the launcher and the policy language (`syscalls:` rules) share.
//!
//! Numbers are x86_64's, the ABI Palisade's telemetry and policies are written in; [`abi`] has
//! the i386 and x32 tables and how their calls map to x86_64's.
pub mod abi;
pub mod errno;
mod i386;
mod x32;
mod x86_64;

pub use abi::{Abi, Native, name_in, native, number_in};

use std::borrow::Cow;

/// The name of x86_64 syscall `nr`, if it has one.
pub fn name(nr: u32) -> Option<&'static str> {
    x86_64::NAMES
        .get(nr as usize)
        .copied()
        .filter(|n| !n.is_empty())
}

/// The name, or the decimal number where unknown (a metric label).
pub fn label(nr: u32) -> Cow<'static, str> {
    match name(nr) {
        Some(n) => Cow::Borrowed(n),
        None => Cow::Owned(nr.to_string()),
    }
}

/// The x86_64 number of syscall `name`.
pub fn number(name: &str) -> Option<u32> {
    x86_64::NAMES
        .iter()
        .position(|n| !n.is_empty() && *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

/// Every known name, in number order.
pub fn all() -> impl Iterator<Item = &'static str> {
    x86_64::NAMES.iter().copied().filter(|n| !n.is_empty())
}

/// The known name closest to `name` (for "did you mean"), when it is close.
pub fn closest(name: &str) -> Option<&'static str> {
    all()
        .map(|n| (distance(n, name), n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_numbers() {
        for (nr, n) in [
            (0, "read"),
            (3, "close"),
            (39, "getpid"),
            (59, "execve"),
            (60, "exit"),
            (110, "getppid"),
            (231, "exit_group"),
            (257, "openat"),
            (334, "rseq"),
            (425, "io_uring_setup"),
            (435, "clone3"),
            (450, "set_mempolicy_home_node"),
            (462, "mseal"),
            (469, "file_setattr"),
        ] {
            assert_eq!(label(nr), n);
        }
    }

    #[test]
    fn gaps_and_unknown_numbers_render_as_numbers() {
        assert_eq!(label(335), "335");
        assert_eq!(label(400), "400");
        assert_eq!(label(470), "470");
        assert_eq!(label(u32::MAX), "4294967295");
        assert_eq!(name(335), None);
    }

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for nr in 0..x86_64::NAMES.len() as u32 {
            if let Some(n) = name(nr) {
                assert!(seen.insert(n), "duplicate {n}");
                assert_eq!(number(n), Some(nr));
            }
        }
        assert!(seen.len() > 370, "{}", seen.len());
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("ptrac"), Some("ptrace"));
        assert_eq!(closest("completely_wrong"), None);
    }
}
