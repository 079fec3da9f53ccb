//! The audit hook's logic on the host: keys looked up, accesses from flags, the first rule in
//! file order.
extern crate std;

use std::{vec, vec::Vec};

use super::*;
use crate::policy::fnv;

fn keys(path: &str) -> Vec<(u32, u64)> {
    let mut buf = [0u8; POLICY_PATH_MAX];
    buf[..path.len()].copy_from_slice(path.as_bytes());
    let mut out = Vec::new();
    file_lookups_in(&buf, path.len() as u32, |k, h| out.push((k, h)));
    out
}

#[test]
fn a_path_looks_up_its_ancestors_and_itself() {
    assert_eq!(
        keys("/etc/shadow"),
        vec![
            (exec_kind::TREE, fnv(b"")),
            (exec_kind::TREE, fnv(b"/etc")),
            (exec_kind::EXACT, fnv(b"/etc/shadow")),
        ]
    );
    // a trailing slash names the directory itself, not something below it
    assert_eq!(
        keys("/root/"),
        vec![
            (exec_kind::TREE, fnv(b"")),
            (exec_kind::EXACT, fnv(b"/root/")),
        ]
    );
    // relative paths (best effort): never a tree key of an absolute pattern
    assert_eq!(
        keys("etc/shadow"),
        vec![
            (exec_kind::TREE, fnv(b"etc")),
            (exec_kind::EXACT, fnv(b"etc/shadow")),
        ]
    );
    // the length bounds the pass, as in the kernel
    let mut buf = [0u8; POLICY_PATH_MAX];
    buf[..11].copy_from_slice(b"/etc/shadow");
    let mut n = 0;
    file_lookups_in(&buf, 4, |_, _| n += 1);
    assert_eq!(n, 2, "`/etc`: the root tree and the exact key");
}

#[test]
fn open_flags_say_the_access() {
    use open_flags::*;
    assert_eq!(open_access(0), access::READ);
    assert_eq!(open_access(WRONLY), access::WRITE);
    assert_eq!(open_access(RDWR), access::READ | access::WRITE);
    assert_eq!(open_access(TRUNC), access::READ | access::WRITE);
    assert_eq!(open_access(WRONLY | CREAT | TRUNC), access::WRITE);
    assert_eq!(open_access(PATH), 0);
    assert_eq!(open_access(0o2000000 /* O_CLOEXEC */), access::READ);
}

#[test]
fn audit_calls() {
    assert_eq!(
        audit_call(audit_nr::OPENAT),
        Some(AuditCall {
            path_arg: 1,
            access: AuditAccess::Flags(2)
        })
    );
    assert_eq!(
        audit_call(audit_nr::OPENAT2).map(|c| c.access),
        Some(AuditAccess::OpenHow(2))
    );
    assert_eq!(
        audit_call(audit_nr::UNLINKAT).map(|c| c.access),
        Some(AuditAccess::Fixed(access::UNLINK))
    );
    assert_eq!(audit_call(0), None, "read(2) has no path");
    assert_eq!(audit_call(59), None, "execve is the exec rules' business");
}

#[test]
fn the_first_rule_in_file_order_wins() {
    let mut tree = FileEntry::default();
    tree.add(access::READ | access::WRITE, 7, 1);
    let mut exact = FileEntry::default();
    exact.add(access::READ, 5, 0);
    exact.add(access::READ | access::UNLINK, 9, 2);
    assert_eq!(exact.rule[0], 5, "rank 0 beats rank 2");
    assert_eq!(exact.rule[2], 9);
    let mut m = FileMatch::default();
    m.consider(&tree, access::READ);
    assert_eq!((m.rule, m.access), (7, access::READ));
    m.consider(&exact, access::READ);
    assert_eq!((m.rule, m.access), (5, access::READ));
    let mut m = FileMatch::default();
    m.consider(&exact, access::WRITE);
    assert_eq!(m.rule, 0, "nothing refuses writes there");
    m.consider(&tree, access::READ | access::WRITE);
    assert_eq!(
        (m.rule, m.access),
        (7, access::READ),
        "one access reported per call"
    );
}

#[test]
fn sizes() {
    assert_eq!(size_of::<FileEntry>(), 32);
    assert_eq!(size_of::<FileMatch>(), 16);
}
