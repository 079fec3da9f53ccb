//! File rules: parsing, bad input, matching, what each rule does per tier.
use crate::{
    check,
    files::{self, FileAccess, FileAction, FileTier, PathKind},
    model::Mode,
    parse::{self, file_pattern},
};

const HEAD: &str = "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: t\nspec:\n  selector:\n    workload: w\n";

fn parse(body: &str) -> Result<crate::Policy, String> {
    parse::parse_str(&format!("{HEAD}{body}"), "p.yaml")
        .map(|mut v| v.remove(0))
        .map_err(|e| e.to_string())
}

fn err(body: &str) -> String {
    parse(body).expect_err("should be rejected")
}

const SEED: &str = "  files:
    action: errno
    deny:
      - {paths: [\"/etc/shadow\", \"/root/**\"], access: [read, write]}
      - {name: bins, paths: [\"/usr/bin/**\"], access: [write, unlink, chmod]}
";

#[test]
fn the_issue_example_parses() {
    let p = parse(SEED).unwrap_or_else(|e| panic!("{e}"));
    let f = p.files.as_ref().unwrap();
    assert_eq!(f.action, FileAction::Errno(1));
    assert_eq!(f.loc.line, 9);
    assert_eq!(f.deny.len(), 2);
    let r = &f.deny[0];
    assert_eq!(r.rule, "files.deny[0]");
    assert_eq!(r.access, vec![FileAccess::Read, FileAccess::Write]);
    assert_eq!(r.mask(), 3);
    assert_eq!(r.paths[0].kind, PathKind::Exact);
    assert_eq!(r.paths[0].key, "/etc/shadow");
    assert_eq!(r.paths[1].kind, PathKind::Tree);
    assert_eq!(r.paths[1].key, "/root");
    assert_eq!((r.paths[1].loc.line, r.paths[1].loc.column), (11, 33));
    let b = &f.deny[1];
    assert_eq!(b.rule, "bins");
    assert_eq!(
        b.access,
        vec![FileAccess::Write, FileAccess::Unlink, FileAccess::Chmod]
    );
    assert_eq!(
        f.rule_for("/root/.ssh/id_rsa", FileAccess::Read)
            .map(|r| &r.rule[..]),
        Some("files.deny[0]")
    );
    assert_eq!(
        f.rule_for("/usr/bin/ls", FileAccess::Unlink)
            .map(|r| &r.rule[..]),
        Some("bins")
    );
    assert!(f.rule_for("/usr/bin/ls", FileAccess::Read).is_none());
    assert!(f.rule_for("/etc/shadow-", FileAccess::Read).is_none());
    assert!(f.rule_for("/root", FileAccess::Read).is_none());
    // a policy with only file rules has rules
    assert!(parse("  files:\n    deny: [{paths: [/x], access: [read]}]\n").is_ok());
}

#[test]
fn actions_and_errno() {
    let p = parse("  files:\n    action: errno\n    errno: EACCES\n    deny: [{paths: [/x], access: [read]}]\n").unwrap();
    assert_eq!(p.files.unwrap().action, FileAction::Errno(13));
    let p =
        parse("  files:\n    action: kill\n    deny: [{paths: [/x], access: [read]}]\n").unwrap();
    assert_eq!(p.files.unwrap().action, FileAction::Kill);
    let p = parse("  files:\n    deny: [{paths: [/x], access: [read]}]\n").unwrap();
    assert_eq!(
        p.files.unwrap().action,
        FileAction::Errno(1),
        "EPERM by default"
    );
    let e = err("  files:\n    action: deny\n    deny: [{paths: [/x], access: [read]}]\n");
    assert!(
        e.starts_with("p.yaml:9:13: unknown file action `deny` (errno, kill or log)"),
        "{e}"
    );
    let e = err(
        "  files:\n    action: log\n    errno: EACCES\n    deny: [{paths: [/x], access: [read]}]\n",
    );
    assert!(
        e.contains("p.yaml:10:12: `errno` goes with `action: errno` only"),
        "{e}"
    );
    let e = err("  files:\n    errno: EWHAT\n    deny: [{paths: [/x], access: [read]}]\n");
    assert!(e.contains("p.yaml:9:12: unknown errno"), "{e}");
}

#[test]
fn bad_input_is_an_error_at_its_position() {
    let e = err("  files:\n    deny: [{paths: [/x], access: [read, exe]}]\n");
    assert_eq!(
        e,
        "p.yaml:9:41: unknown access `exe` (any of read, write, unlink, chmod, exec)"
    );
    let e = err("  files:\n    deny: [{paths: [etc/shadow], access: [read]}]\n");
    assert!(
        e.starts_with("p.yaml:9:21: `etc/shadow` is not an absolute path"),
        "{e}"
    );
    assert!(
        e.contains("exact paths (/etc/shadow) and trees (/root/**"),
        "{e}"
    );
    let e = err("  files:\n    deny: [{paths: [\"/etc/*.conf\"], access: [read]}]\n");
    assert!(
        e.starts_with("p.yaml:9:21: `/etc/*.conf`: the kernel matcher does exact paths"),
        "{e}"
    );
    let e = err("  files:\n    deny: [{paths: [\"/etc/*\"], access: [read]}]\n");
    assert!(
        e.contains("`/dir/*` (files directly in a directory) is not supported"),
        "{e}"
    );
    let e = err("  files:\n    deny: [{paths: [/etc/../etc/shadow], access: [read]}]\n");
    assert!(e.contains("is not a canonical path"), "{e}");
    let e = err("  files:\n    allow: [{paths: [/x], access: [read]}]\n");
    assert!(
        e.starts_with("p.yaml:9:12: file rules are deny-lists"),
        "{e}"
    );
    let e = err("  files:\n    deny: [{paths: [/x]}]\n");
    assert!(e.contains("a file rule needs `access`"), "{e}");
    let e = err("  files:\n    deny: [{paths: [], access: [read]}]\n");
    assert!(e.contains("`paths` is empty"), "{e}");
    let e = err("  files:\n    deny: [{path: [/x], access: [read]}]\n");
    assert!(e.starts_with("p.yaml:9:"), "{e}");
    assert!(e.contains("path"), "{e}");
    let e = err("  files:\n    action: log\n");
    assert!(e.contains("give `deny`"), "{e}");
    // every problem of a rule is reported, not only the first
    let e = err("  files:\n    deny: [{paths: [a, \"/b/*\"], access: [open]}]\n");
    assert_eq!(e.lines().count(), 3, "{e}");
}

#[test]
fn patterns() {
    for (text, kind, key) in [
        ("/etc/shadow", PathKind::Exact, "/etc/shadow"),
        ("/root/**", PathKind::Tree, "/root"),
        ("/**", PathKind::Tree, ""),
        ("/a b/c", PathKind::Exact, "/a b/c"),
    ] {
        assert_eq!(file_pattern(text), Ok((kind, key.to_owned())), "{text}");
    }
    for text in [
        "",
        "/",
        "shadow",
        "./x",
        "**/shadow",
        "/etc/**/x",
        "/etc/sh*",
        "/e?c",
        "/etc/",
        "/etc//x",
        "/a/./b",
        "/a/[ab]",
        "/{a,b}",
    ] {
        assert!(file_pattern(text).is_err(), "{text}");
    }
    assert!(file_pattern(&format!("/{}", "a".repeat(300))).is_err());
    let p = parse("  files:\n    deny: [{paths: [/**], access: [write]}]\n").unwrap();
    let all = &p.files.unwrap().deny[0].paths[0];
    assert!(all.matches("/etc/passwd"));
    assert!(all.matches("/x"));
    assert!(!all.matches("/"));
    assert!(!all.matches("x"));
}

#[test]
fn each_rule_says_what_happens_per_tier() {
    let p = parse(SEED).unwrap();
    let f = p.files.as_ref().unwrap();
    let lsm = files::describe_rule(f, &f.deny[0], Mode::Enforce, &FileTier::Lsm);
    assert_eq!(
        lsm,
        "rule `files.deny[0]` on /etc/shadow, /root/**: read: refused with EPERM at file_open (resolved path); write: refused with EPERM at file_open, path_mknod (create), path_mkdir, path_symlink, path_truncate, path_link and path_rename (a name made or replaced) (resolved path); rename or hard link of these files or of a directory above them: refused with EPERM at path_rename, path_link (resolved path); a file whose resolved path is longer than 255 bytes: not matched (neither refused nor reported)"
    );
    let audit = FileTier::Audit {
        why: "no BPF-LSM".into(),
    };
    let d = files::describe_rule(f, &f.deny[1], Mode::Enforce, &audit);
    assert!(d.starts_with("rule `bins` on /usr/bin/**: write: reported only, the call runs (seen at open, openat, openat2, creat, truncate; the path as given"), "{d}");
    assert!(
        d.contains("unlink: reported only, the call runs (seen at unlink, unlinkat, rmdir;"),
        "{d}"
    );
    let d = files::describe_rule(f, &f.deny[0], Mode::Audit, &FileTier::Lsm);
    assert!(
        d.contains("read: reported only (audit mode; seen at file_open"),
        "{d}"
    );

    let mut notes = Vec::new();
    files::notes(f, Mode::Enforce, &audit, &mut notes);
    let text: Vec<String> = notes.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 2, "{text:?}");
    assert_eq!(
        text[0],
        "p.yaml:9:5: `action: errno` cannot be applied on this host (no BPF-LSM): file rules are reported only, the calls run, and the policy is counted as unenforced (`files_reported_only`: a `palisade run --policy` with it is refused)"
    );
    assert!(text[1].contains("best effort"), "{text:?}");
    let mut notes = Vec::new();
    files::notes(f, Mode::Enforce, &FileTier::Lsm, &mut notes);
    assert!(notes.is_empty(), "{notes:?}");

    // exec access without LSM: said, not silently dropped
    let p = parse("  files:\n    action: log\n    deny: [{paths: [/opt/**], access: [exec]}]\n")
        .unwrap();
    let mut notes = Vec::new();
    files::notes(p.files.as_ref().unwrap(), Mode::Enforce, &audit, &mut notes);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes[0]
            .message
            .contains("`exec` access (rules `files.deny[0]`) is seen only with BPF-LSM"),
        "{notes:?}"
    );
}

#[test]
fn check_warns_about_file_rules_on_a_host() {
    let set = crate::PolicySet {
        policies: vec![parse(SEED).unwrap()],
        files: vec!["p.yaml".into()],
    };
    let audit = FileTier::Audit {
        why: "no BPF-LSM".into(),
    };
    let w = check::file_notes(&set, &audit);
    assert!(
        w.iter()
            .any(|d| d.message.contains("`action: errno` cannot be applied")),
        "{w:?}"
    );
    assert!(check::file_notes(&set, &FileTier::Lsm).is_empty());
}

#[test]
fn compiles_to_the_kernel_table_and_matches_like_the_model() {
    use palisade_common::policy::{FileMatch, POLICY_PATH_MAX, exec_kind, file_lookups_in, fnv};
    let p = parse(SEED).unwrap();
    let mut descs = Vec::new();
    let mut notes = Vec::new();
    let table = crate::compile::files::compile(
        &[(&p, Mode::Enforce)],
        &mut |d| {
            descs.push(d.clone());
            Some(descs.len() as u16)
        },
        &mut notes,
    );
    assert!(notes.is_empty(), "{notes:?}");
    assert_eq!(descs.len(), 2);
    assert_eq!(descs[0].rule, "files.deny[0]");
    assert_eq!(descs[0].action, palisade_common::policy::action::ERRNO);
    assert_eq!(descs[0].errno, 1);
    // three patterns, and the four directories a rename would take them out from under:
    // /etc, /root (a tree's own directory), /usr and /usr/bin
    assert_eq!(table.len(), 7);
    let contains = |dir: &str| {
        table
            .iter()
            .find(|(k, h, _)| *k == exec_kind::EXACT && *h == fnv(dir.as_bytes()))
            .map(|(_, _, e)| {
                let mut m = FileMatch::default();
                m.consider(e, palisade_common::policy::access::CONTAINS);
                m.rule
            })
    };
    assert_eq!(contains("/etc"), Some(1));
    assert_eq!(contains("/root"), Some(1));
    assert_eq!(contains("/usr"), Some(2));
    assert_eq!(contains("/usr/bin"), Some(2));
    assert_eq!(contains("/usr/lib"), None);
    assert!(
        table
            .iter()
            .any(|(k, h, _)| *k == exec_kind::EXACT && *h == fnv(b"/etc/shadow"))
    );
    assert!(
        table
            .iter()
            .any(|(k, h, _)| *k == exec_kind::TREE && *h == fnv(b"/usr/bin"))
    );
    let f = p.files.as_ref().unwrap();
    // what the kernel finds for a path is what the model says
    for path in [
        "/etc/shadow",
        "/root/x",
        "/root/",
        "/root",
        "/usr/bin/ls",
        "/usr/binx",
        "etc/shadow",
        "/etc/shadow/x",
        "/etc",
        "/usr",
    ] {
        for a in FileAccess::ALL {
            let mut buf = [0u8; POLICY_PATH_MAX];
            buf[..path.len()].copy_from_slice(path.as_bytes());
            let mut m = FileMatch::default();
            file_lookups_in(&buf, path.len() as u32, |k, h| {
                if let Some((_, _, e)) = table.iter().find(|(kk, hh, _)| *kk == k && *hh == h) {
                    m.consider(e, a.bit());
                }
            });
            let kernel = (m.rule != 0).then(|| descs[m.rule as usize - 1].rule.clone());
            let model = f.rule_for(path, a).map(|r| r.rule.clone());
            assert_eq!(kernel, model, "{path} {a}");
        }
    }
}

#[test]
fn an_exec_denial_without_a_read_denial_is_warned() {
    // a file that can be read can be run: its bytes copied to an anonymous mapping or a memfd
    let body = "  files:
    action: errno
    deny:
      - {name: tools, paths: [\"/opt/tools/**\"], access: [exec]}
      - {name: nc, paths: [\"/usr/bin/nc\"], access: [exec, read]}
      - {name: sh, paths: [\"/bin/sh\"], access: [exec]}
      - {name: sh-read, paths: [\"/bin/**\"], access: [read]}
";
    let set = crate::PolicySet {
        policies: vec![parse(body).unwrap()],
        files: vec!["p.yaml".into()],
    };
    let w = check::file_notes(&set, &FileTier::Lsm);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!((w[0].loc.line, w[0].loc.column), (11, 9), "{w:?}");
    assert!(
        w[0].message
            .contains("rule `tools` denies `exec` of /opt/tools/** but not `read`"),
        "{w:?}"
    );
}
