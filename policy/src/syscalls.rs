//! x86_64 syscall names and numbers: the agent's table (one source of truth).
#[path = "../../agent/src/syscalls/x86_64.rs"]
mod x86_64;

/// The number of syscall `name`.
pub fn number(name: &str) -> Option<u32> {
    x86_64::NAMES
        .iter()
        .position(|n| !n.is_empty() && *n == name)
        .and_then(|i| u32::try_from(i).ok())
}

/// The name of syscall `nr`, if it has one.
pub fn name(nr: u32) -> Option<&'static str> {
    x86_64::NAMES
        .get(nr as usize)
        .copied()
        .filter(|n| !n.is_empty())
}

/// Every known name.
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
