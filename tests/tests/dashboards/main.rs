//! Checks of `dashboards/`: the Prometheus alerting rules pass `promtool check rules` and their
//! unit tests, and every query in the Grafana dashboards (every `dashboards/*.json`) and the rules
//! is valid PromQL that names only metrics, labels and label values that `palisade agent` exports,
//! so a typo in a query fails here rather than showing an empty panel or an alert that never fires.
//!
//! Unprivileged: needs only `promtool` (installed by `cargo xtask setup`, Debian package
//! `prometheus`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod grafana;
mod promql;
mod rules;

use palisade_tests::catalog as exported;

use std::{
    ffi::OsStr,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::Command,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo_root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `promtool` with `args` from the repository root and panics with its output on failure.
fn promtool<S: AsRef<OsStr>>(args: &[S]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| {
            if e.kind() == ErrorKind::NotFound {
                panic!(
                    "promtool not found: install it with `cargo xtask setup` \
                     (Debian package `prometheus`)"
                )
            }
            panic!("cannot run promtool: {e}")
        });
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
    assert!(
        out.status.success(),
        "`promtool {}` failed ({}):\n--- stdout\n{}--- stderr\n{}",
        shown.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
