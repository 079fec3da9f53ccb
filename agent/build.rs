//! Builds the eBPF objects (`palisade`, `palisade-probes`, `palisade-policy`) with the nightly
//! toolchain through aya-build and leaves them in OUT_DIR, where `include_bytes_aligned!` picks
//! them up; and records the git commit for `palisade_build_info{commit}`.
//!
//! `AYA_BUILD_SKIP=1` (aya-build's switch) skips the eBPF build and leaves empty objects: the
//! fuzz targets link the agent's parsers and never load a program. An agent built that way
//! cannot start (the kernel refuses an empty object), and the build says so.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    git_commit();
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "palisade-ebpf")
        .ok_or_else(|| anyhow!("palisade-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src and bpf-linker)")?;
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true") {
        let out = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        for name in ["palisade", "palisade-probes", "palisade-policy"] {
            let p = out.join(name);
            if !p.exists() {
                std::fs::write(&p, b"").with_context(|| format!("write {}", p.display()))?;
            }
        }
        println!(
            "cargo:warning=AYA_BUILD_SKIP: empty eBPF objects; this agent cannot load its programs (fuzzing and lint only)"
        );
    }
    Ok(())
}

/// `PALISADE_GIT_COMMIT`: the commit this build comes from (12 hex digits), from
/// `$PALISADE_GIT_COMMIT` when set (builds from a tarball), else from git. Without either the
/// metric says `unknown`. Uncommitted changes are not detected (that would rerun this script
/// on every edit).
fn git_commit() {
    println!("cargo:rerun-if-env-changed=PALISADE_GIT_COMMIT");
    if let Some(c) = std::env::var_os("PALISADE_GIT_COMMIT") {
        println!(
            "cargo:rustc-env=PALISADE_GIT_COMMIT={}",
            c.to_string_lossy()
        );
        return;
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&manifest)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "HEAD"]).filter(|h| h.len() >= 12) else {
        println!("cargo:warning=no git checkout: palisade_build_info{{commit=\"unknown\"}}");
        return;
    };
    println!("cargo:rustc-env=PALISADE_GIT_COMMIT={}", &head[..12]);
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points at (a commit),
    // and packed refs.
    for dir_arg in ["--git-dir", "--git-common-dir"] {
        let Some(dir) = git(&["rev-parse", dir_arg]) else {
            continue;
        };
        let dir = manifest.join(dir);
        rerun_if_exists(&dir.join("HEAD"));
        rerun_if_exists(&dir.join("packed-refs"));
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            rerun_if_exists(&dir.join(r));
        }
    }
}

fn rerun_if_exists(p: &Path) {
    if p.exists() {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}
