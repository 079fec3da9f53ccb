//! File rules: `palisade policy check` on bad input (every error at its `file:line:column`,
//! saying what the matcher can do) and on good input (what each rule does on this host, the
//! fallbacks stated).
use palisade_tests::palisade_bin;

const SEED: &str = "apiVersion: palisade.dev/v1
kind: Policy
metadata:
  name: files-seed
spec:
  selector:
    container: web
  files:
    action: errno
    deny:
      - {paths: [\"/etc/shadow\", \"/root/**\"], access: [read, write]}
      - {paths: [\"/usr/bin/**\"], access: [write, unlink, chmod]}
";

fn check(text: &str) -> (Option<i32>, String, String) {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let f = d.path().join("files.yaml");
    std::fs::write(&f, text).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(palisade_bin())
        .args(["policy", "check"])
        .arg(&f)
        .output()
        .unwrap_or_else(|e| panic!("palisade policy check: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_file_rules_are_errors_at_their_position() {
    let bad = SEED.replace(
        "[\"/usr/bin/**\"], access: [write, unlink, chmod]",
        "[\"usr/bin\", \"/usr/*/bin\", \"/usr/bin/*\"], access: [write, delete]",
    );
    let (code, out, err) = check(&bad);
    assert_eq!(code, Some(2), "{out}{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 5, "{err}");
    assert!(
        lines[0].ends_with("files.yaml:12:18: error: `usr/bin` is not an absolute path: file rules match the path the kernel resolves (with BPF-LSM) or the path as given to the call, never relative to a directory; the kernel matcher does exact paths (/etc/shadow) and trees (/root/**: anything below /root); list the files, or use the tree of their directory"),
        "{err}"
    );
    assert!(
        lines[1]
            .contains("files.yaml:12:29: error: `/usr/*/bin`: the kernel matcher does exact paths"),
        "{err}"
    );
    assert!(lines[2].contains("files.yaml:12:43: error: `/usr/bin/*`: `/dir/*` (files directly in a directory) is not supported"), "{err}");
    assert!(lines[3].contains("files.yaml:12:74: error: unknown access `delete` (any of read, write, unlink, chmod, exec)"), "{err}");
    assert!(
        lines[4].starts_with("4 error(s); nothing was applied"),
        "{err}"
    );

    let (code, _, err) = check(&SEED.replace("action: errno", "action: refuse"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("files.yaml:9:13: error: unknown file action `refuse` (errno, kill or log)"),
        "{err}"
    );
}

#[test]
fn check_says_what_each_file_rule_does_on_this_host() {
    let (code, out, err) = check(SEED);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("policy files-seed (enforce): selects container=web; files (2 deny entries)"),
        "{out}"
    );
    // this build has no kernel programs for file rules: said per rule and as a warning, on any
    // host, rather than accepted silently
    assert!(
        out.contains("files.yaml:11:9: policy files-seed: rule `files.deny[0]` on /etc/shadow, /root/**: read, write: not enforced and not reported ("),
        "{out}"
    );
    assert!(
        out.contains("files.yaml:12:9: policy files-seed: rule `files.deny[1]` on /usr/bin/**: write, unlink, chmod: not enforced and not reported ("),
        "{out}"
    );
    assert!(
        err.contains("files.yaml:9:5: warning: file rules are neither enforced nor reported here"),
        "{err}"
    );
    assert!(
        out.contains("ok: 1 policies in 1 file(s), 1 warning(s)"),
        "{out}"
    );
}
