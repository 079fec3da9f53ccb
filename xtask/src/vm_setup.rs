//! What `cargo xtask vm-test` needs on the host, installed when missing and quick when not:
//! qemu (TCG is enough), Debian's 6.1 and 6.12 kernels (the `-unsigned` images, modules
//! included: 9p and overlayfs are modules there) and virtme-ng from PyPI in a venv kept with
//! bpf-linker's state (`~/.local/share/palisade/virtme-ng`).
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{exec, setup, step};

const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "qemu-system-x86",
        "boots the test kernels (TCG: a KVM guest hangs at boot on this project's machines)",
    ),
    (
        "python3-venv",
        "the venv that holds virtme-ng (Debian's python3, not a pyenv one)",
    ),
];

/// virtme-ng release from PyPI, pinned so every machine boots guests the same way.
const VIRTME_NG_VERSION: &str = "1.42";

/// A Debian kernel series the matrix boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// What `--kernel` takes and the tables show: `6.1`, `6.12`.
    pub label: &'static str,
    /// A release of the series is `{prefix}N{suffix}` (N = Debian's ABI or stable number).
    prefix: &'static str,
    suffix: &'static str,
}

/// Debian bookworm's kernel (6.1) and its backport of 6.12.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        label: "6.1",
        prefix: "6.1.0-",
        suffix: "-amd64",
    },
    Kernel {
        label: "6.12",
        prefix: "6.12.",
        suffix: "+deb12-amd64",
    },
];

impl Kernel {
    pub fn by_label(label: &str) -> Option<Self> {
        KERNELS.iter().copied().find(|k| k.label == label)
    }

    /// N of a release of this series (`6.1.0-57-amd64` → 57); `None` for other series and
    /// flavours (`-cloud-amd64`, `-rt-amd64`).
    pub fn number(&self, release: &str) -> Option<u32> {
        let n = release
            .strip_prefix(self.prefix)?
            .strip_suffix(self.suffix)?;
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        n.parse().ok()
    }

    /// The newest release of this series among `releases`.
    pub fn newest<'a>(&self, releases: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
        releases
            .into_iter()
            .filter_map(|r| self.number(r).map(|n| (n, r)))
            .max_by_key(|(n, _)| *n)
            .map(|(_, r)| r)
    }
}

/// The kernel image and modules of `release`, when both are installed.
fn installed(release: &str) -> bool {
    Path::new("/boot")
        .join(format!("vmlinuz-{release}"))
        .is_file()
        && Path::new("/lib/modules").join(release).is_dir()
}

/// Releases with a kernel image in /boot.
fn boot_releases() -> Vec<String> {
    std::fs::read_dir("/boot")
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Releases of the `linux-image-RELEASE-unsigned` packages in `apt-cache search` output.
pub fn candidates(search: &str) -> Vec<&str> {
    search
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| p.strip_prefix("linux-image-")?.strip_suffix("-unsigned"))
        .collect()
}

/// Everything the VM matrix needs; returns the release to boot for each kernel asked for.
pub fn run(kernels: &[Kernel]) -> Result<Vec<(Kernel, String)>> {
    step("vm setup: Debian packages");
    setup::apt_packages(APT_PACKAGES)?;
    step("vm setup: kernels");
    let mut updated = false;
    let mut out = Vec::new();
    for k in kernels {
        let boot = boot_releases();
        let have = k.newest(boot.iter().map(String::as_str).filter(|r| installed(r)));
        let release = match have {
            Some(r) => {
                eprintln!("    ok: {} ({r})", k.label);
                r.to_owned()
            }
            None => {
                if !updated {
                    exec(Command::new("apt-get").args(["update", "-q"]))
                        .context("apt-get update")?;
                    updated = true;
                }
                let search = setup::output(Command::new("apt-cache").args([
                    "search",
                    "--names-only",
                    "^linux-image-.*-unsigned$",
                ]))?;
                let Some(r) = k.newest(candidates(&search)) else {
                    bail!(
                        "apt-cache offers no linux-image-{}N{}-unsigned package (is this Debian bookworm with its backports?)",
                        k.prefix,
                        k.suffix
                    );
                };
                let package = format!("linux-image-{r}-unsigned");
                eprintln!("    installing {package} (the {} guest kernel)", k.label);
                exec(
                    Command::new("apt-get")
                        .args(["install", "-y", "-q", "--no-install-recommends"])
                        .arg(&package)
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                )
                .with_context(|| format!("apt-get install {package}"))?;
                r.to_owned()
            }
        };
        out.push((*k, release));
    }
    step("vm setup: virtme-ng");
    virtme_ng()?;
    Ok(out)
}

/// The venv holding virtme-ng; its `bin/` goes first on `vng`'s PATH (vng runs virtme-run).
pub fn venv() -> Result<PathBuf> {
    Ok(setup::state_dir()?.join("virtme-ng"))
}

fn virtme_ng() -> Result<()> {
    let venv = venv()?;
    let marker = venv.join("virtme-ng.installed");
    let want = format!("virtme-ng {VIRTME_NG_VERSION}\n");
    let works = Command::new(venv.join("bin/vng"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && std::fs::read_to_string(&marker).is_ok_and(|m| m == want) {
        eprintln!(
            "    ok: virtme-ng {VIRTME_NG_VERSION} in {}",
            venv.display()
        );
        return Ok(());
    }
    eprintln!(
        "    installing virtme-ng {VIRTME_NG_VERSION} into {}",
        venv.display()
    );
    // Debian's interpreter: a pyenv or other python on PATH may lack venv or move away.
    exec(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    exec(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q"])
            .arg(format!("virtme-ng=={VIRTME_NG_VERSION}")),
    )?;
    std::fs::write(&marker, want).with_context(|| format!("write {}", marker.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_release_of_each_series() {
        let search = "\
linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-58-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.1.0-58-rt-amd64-unsigned - Linux 6.1 for 64-bit PCs, PREEMPT_RT
linux-image-6.12.118+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.99+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.119+deb12-cloud-amd64-unsigned - Linux 6.12 for x86-64 cloud
linux-image-amd64-unsigned - Linux for 64-bit PCs (meta-package)
";
        let c = candidates(search);
        let k61 = Kernel::by_label("6.1").unwrap();
        let k612 = Kernel::by_label("6.12").unwrap();
        assert_eq!(k61.newest(c.iter().copied()), Some("6.1.0-57-amd64"));
        assert_eq!(k612.newest(c.iter().copied()), Some("6.12.118+deb12-amd64"));
        assert_eq!(k61.number("6.12.118+deb12-amd64"), None);
        assert_eq!(k612.number("6.1.0-57-amd64"), None);
        assert_eq!(Kernel::by_label("5.10"), None);
    }
}
