//! The parsers a fuzz target will drive, through the crate's public API and without root: any
//! input gives a plan or an error, never a panic.
use std::path::Path;

use palisade_launcher::{
    oci::{self, BundleError},
    seccomp::{self, Host, SeccompError},
};

fn host() -> Host {
    Host {
        caps: 0,
        goarch: "amd64",
        kernel: (6, 18),
    }
}

#[test]
fn config_json_from_text() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    let text = r#"{"ociVersion": "1.0.2", "root": {"path": "rootfs"},
        "process": {"args": ["/bin/true"], "cwd": "/"},
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}],
                  "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}}"#;
    let (plan, profile) = oci::parse_config(text, dir.path()).unwrap();
    assert_eq!(plan.process.args, ["/bin/true"]);
    assert!(plan.ns.pid && !plan.ns.uts);
    assert_eq!(profile.unwrap().default_action, seccomp::Action::Allow);

    for bad in [
        "",
        "{",
        "[]",
        "null",
        r#"{"process": 1}"#,
        "{\"root\": {\"path\": \"\\u0000\"}}",
    ] {
        let e = oci::parse_config(bad, dir.path()).unwrap_err();
        assert!(
            matches!(e, BundleError::Syntax { .. } | BundleError::Field { .. }),
            "{bad:?}: {e:?}"
        );
    }
    let e = oci::parse_config(r#"{"process": {"args": [], "cwd": "/"}}"#, dir.path()).unwrap_err();
    let BundleError::Field { source, .. } = e else {
        panic!("{e:?}")
    };
    assert_eq!(source.path, "process.args");
}

#[test]
fn seccomp_profile_from_text() {
    let p = seccomp::parse_profile(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}"#,
        Path::new("p.json"),
        &host(),
    )
    .unwrap();
    assert_eq!(p.rules.len(), 1);
    for bad in [
        "",
        "{}",
        r#"{"defaultAction": 7}"#,
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{}]}"#,
    ] {
        let e = seccomp::parse_profile(bad, Path::new("p.json"), &host()).unwrap_err();
        assert!(
            matches!(e, SeccompError::Syntax { .. } | SeccompError::Field { .. }),
            "{bad:?}: {e:?}"
        );
    }
}
