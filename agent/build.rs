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
    let out = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let skip = std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1" || v == "true");
    let shared = (!skip).then(|| shared_dir(&out)).flatten();
    let build = || {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: ebpf.name.as_str(),
                root_dir: root_dir.as_str(),
                ..Default::default()
            }],
            Toolchain::default(),
        )
        .context("building the eBPF programs failed; run `cargo xtask setup` (nightly rust-src and bpf-linker)")
    };
    match &shared {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
            // one build script at a time between the build and the copies out of it
            let lock = std::fs::File::create(dir.join(".lock"))
                .with_context(|| format!("create {}/.lock", dir.display()))?;
            lock.lock().context("lock the shared eBPF build")?;
            // SAFETY: a build script's main thread, before it starts any other thread (aya-build
            // reads OUT_DIR on this thread, and spawns its own only after); set back below.
            unsafe { std::env::set_var("OUT_DIR", dir) };
            let built = build();
            // SAFETY: as above. aya-build joins its one thread (which forwards the inner cargo's
            // stderr and reads no environment) before it returns, except on an error path.
            unsafe { std::env::set_var("OUT_DIR", &out) };
            built?;
            for name in OBJECTS {
                let (from, to) = (dir.join(name), out.join(name));
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
            }
        }
        None => build()?,
    }
    if skip {
        for name in OBJECTS {
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

/// The eBPF objects aya-build leaves in its OUT_DIR.
const OBJECTS: [&str; 3] = ["palisade", "palisade-probes", "palisade-policy"];

/// One eBPF build for every profile of the agent: `<target dir>/palisade-ebpf`, found as the
/// ancestor of OUT_DIR that holds cargo's `CACHEDIR.TAG`. aya-build builds into OUT_DIR, and
/// `cargo clippy`, `cargo build` and `cargo test` each run this script with an OUT_DIR of their
/// own (their features differ): three release builds of the same eBPF crate from scratch (the
/// second and third took 33 s and 54 s in a CI run on 2 cores). With one directory they are
/// cargo's freshness check (0.2 s). None (aya-build's own OUT_DIR) when no target dir is found.
fn shared_dir(out: &Path) -> Option<PathBuf> {
    out.ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(|t| t.join("palisade-ebpf"))
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
