//! `cargo xtask image [--binary PATH] [--tag TAG]`: the agent's container image, built offline
//! with podman from `deploy/Containerfile` (from scratch). The build context holds only
//! `rootfs/`: the binary at `/usr/bin/palisade` and every shared library `ldd` lists for it, at
//! the path `ldd` resolves (symlinks followed: the files themselves). Without `--binary`, the
//! release binary is built first; the tag defaults to the one the DaemonSet runs,
//! `ghcr.io/palisade-dev/palisade:<version>`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{agent_bin, build, exec, root, step};

pub const CONTAINERFILE: &str = "deploy/Containerfile";

/// The tag the DaemonSet's image names.
pub fn default_tag() -> String {
    format!(
        "ghcr.io/palisade-dev/palisade:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The shared libraries `ldd` lists for `bin`, as absolute paths (the vDSO has none).
pub fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("cannot run ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
        if line.contains("=> not found") {
            bail!("ldd {}: {}", bin.display(), line.trim());
        }
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        libs.extend(path.map(PathBuf::from));
    }
    Ok(libs)
}

/// Copies `from` (symlinks followed) to `rootfs` + `at`, creating the directories.
fn install(rootfs: &Path, from: &Path, at: &Path) -> Result<()> {
    let to = rootfs.join(at.strip_prefix("/").unwrap_or(at));
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    }
    std::fs::copy(from, &to)
        .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

pub fn run(binary: Option<PathBuf>, tag: Option<String>) -> Result<()> {
    let binary = match binary {
        Some(b) => b,
        None => {
            build(true)?;
            agent_bin(true)
        }
    };
    let tag = tag.unwrap_or_else(default_tag);
    step(&format!("image {tag} from {}", binary.display()));
    // One build context per tag, so two builds (a test's and yours) do not share one.
    let dir: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let context = root().join("target/image").join(dir);
    if context.exists() {
        std::fs::remove_dir_all(&context)
            .with_context(|| format!("remove {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    install(&rootfs, &binary, Path::new("/usr/bin/palisade"))?;
    for lib in shared_libraries(&binary)? {
        eprintln!("    {}", lib.display());
        install(&rootfs, &lib, &lib)?;
    }
    exec(
        Command::new("podman")
            .args(["build", "--pull=never", "--network=none", "--file"])
            .arg(root().join(CONTAINERFILE))
            .arg("--build-arg")
            .arg(format!("VERSION={}", env!("CARGO_PKG_VERSION")))
            .arg("--tag")
            .arg(&tag)
            .arg(&context),
    )
    .context("podman build (Debian package podman)")?;
    eprintln!("    built {tag}");
    Ok(())
}
