//! `cargo xtask setup`: make a fresh machine able to build and test Palisade.
//!
//! Idempotent: every step checks first and only acts when something is missing, so a second
//! run takes about a second. Steps:
//! 1. Debian packages the tests and benchmarks need.
//! 2. `rust-src` for the nightly toolchain (the eBPF crate is built with `-Z build-std=core`).
//! 3. `bpf-linker` 0.13 linked against the LLVM that ships inside the nightly rustc, through a
//!    prefix of symlinks kept under `~/.local/share/palisade/` (the binary's rpath points there).
//! 4. `cargo-fuzz` (the policy parser's fuzz target runs under it) and `cargo-deb` (the
//!    Debian package of `cargo xtask dist`), from crates.io.
//! 5. A Python virtual environment with `kubernetes-validate` (PyPI), which checks the
//!    Kubernetes manifests offline, in `~/.local/share/palisade/venv`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{exec, step};

/// (package, why)
const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "prometheus",
        "promtool: the tests check /metrics with `promtool check metrics`",
    ),
    ("bpftrace", "the peer in `cargo xtask bench syscalls`"),
    ("gcc", "builds the benchmark's syscall loop"),
    ("iproute2", "network namespaces in tests"),
    (
        "iptables",
        "the retransmission test drops segments in a network namespace of its own",
    ),
    ("podman", "real named containers in the naming tests"),
    (
        "libseccomp-dev",
        "the launcher compiles seccomp profiles with libseccomp (linked through pkg-config)",
    ),
    (
        "pkg-config",
        "finds libseccomp when building the libseccomp crate",
    ),
    (
        "busybox-static",
        "the launcher tests build root filesystems from the static /bin/busybox",
    ),
    ("runc", "a peer in `cargo xtask bench launch` (OCI runtime)"),
    (
        "crun",
        "a peer in `cargo xtask bench launch` (OCI runtime, the target to beat)",
    ),
    (
        "hyperfine",
        "times the launches in bench/launch_latency.sh (the peer script)",
    ),
    (
        "jq",
        "the peer benchmark scripts read and write JSON with it",
    ),
    ("bubblewrap", "a peer in `cargo xtask bench launch` (bwrap)"),
    (
        "python3",
        "converts Docker's seccomp profile for the peer runtimes' bundles",
    ),
    (
        "python3-yaml",
        "the policy JSON Schema test reads the example policies",
    ),
    (
        "python3-jsonschema",
        "the policy JSON Schema test validates the examples against policy/schema.json",
    ),
    (
        "python3-venv",
        "the virtual environment kubernetes-validate (PyPI) is installed in",
    ),
    (
        "systemd",
        "systemd-analyze verify checks deploy/palisade.service",
    ),
    (
        "prometheus-alertmanager",
        "the alerting end-to-end test: Prometheus fires, Alertmanager delivers to a webhook",
    ),
];

/// kubernetes-validate (PyPI): Kubernetes' JSON schemas, 1.25 to 1.37, offline.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

const BPF_LINKER_VERSION: &str = "0.13";

pub fn run() -> Result<()> {
    step("setup: Debian packages");
    apt()?;
    step("setup: nightly rust-src");
    rust_src()?;
    step("setup: bpf-linker");
    bpf_linker()?;
    step("setup: cargo-fuzz");
    cargo_install("fuzz", "cargo-fuzz")?;
    step("setup: cargo-deb");
    cargo_install("deb", "cargo-deb")?;
    step("setup: Python venv with kubernetes-validate");
    venv()?;
    Ok(())
}

/// The virtual environment the deploy test runs kubernetes-validate (and the Prometheus
/// Operator schema check) from.
fn venv_dir() -> Result<PathBuf> {
    Ok(home()?.join(".local/share/palisade/venv"))
}

/// `python3 -m venv` (Debian's python3, not whatever `python3` is first on PATH) and
/// `pip install kubernetes-validate==VERSION`, unless that version is already there.
fn venv() -> Result<()> {
    let dir = venv_dir()?;
    let want = KUBERNETES_VALIDATE.rsplit("==").next().unwrap_or_default();
    let have = Command::new(dir.join("bin/kubernetes-validate"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if have.split_whitespace().any(|w| w == want) {
        eprintln!("    ok: {KUBERNETES_VALIDATE} in {}", dir.display());
        return Ok(());
    }
    if !dir.join("bin/python").exists() {
        exec(
            Command::new("/usr/bin/python3")
                .arg("-m")
                .arg("venv")
                .arg(&dir),
        )
        .context("python3 -m venv (Debian package python3-venv)")?;
    }
    exec(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(KUBERNETES_VALIDATE),
    )
    .context("pip install (network to PyPI is needed)")
}

/// `cargo install CRATE` (from crates.io) unless `cargo SUBCOMMAND` already works.
fn cargo_install(subcommand: &str, krate: &str) -> Result<()> {
    let works = Command::new("cargo")
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        eprintln!("    ok");
        return Ok(());
    }
    eprintln!("    installing {krate} (a few minutes, once)");
    exec(
        Command::new("cargo")
            .args(["install", krate, "--locked"])
            // the machine's default toolchain, not this repository's pinned one
            .current_dir(home()?),
    )
}

/// Runs `cmd` and returns its standard output; fails with its standard error.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apt() -> Result<()> {
    apt_packages(APT_PACKAGES)
}

/// True when the Debian package `name` is installed.
pub fn dpkg_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the packages of `wanted` (package, why) that are missing; quick when none is.
pub fn apt_packages(wanted: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(p, _)| !dpkg_installed(p))
        .map(|(p, _)| *p)
        .collect();
    if missing.is_empty() {
        eprintln!(
            "    ok: {}",
            wanted
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }
    for (p, why) in wanted.iter().filter(|(p, _)| missing.contains(p)) {
        eprintln!("    installing {p} ({why})");
    }
    exec(Command::new("apt-get").arg("update").arg("-q"))
        .context("apt-get update (root and network to the Debian mirror are needed)")?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install")
}

fn rustup_nightly(args: &[&str]) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly"]).args(args);
    c
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context(
        "no nightly toolchain (the eBPF crate needs it): `rustup toolchain install nightly`",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("    ok");
        return Ok(());
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// The nightly's LLVM shared library: (path, file name, major version).
fn nightly_llvm() -> Result<(PathBuf, String, u32)> {
    let sysroot = output(&mut rustup_nightly(&["rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let entries = std::fs::read_dir(&lib).with_context(|| format!("read {}", lib.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // libLLVM.so.22.1-rust-1.97.0-nightly
        if let Some(rest) = name.strip_prefix("libLLVM.so.")
            && name.ends_with("-nightly")
        {
            let major = rest
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .with_context(|| format!("cannot read the LLVM version from {name}"))?;
            return Ok((e.path(), name, major));
        }
    }
    bail!(
        "no libLLVM.so.*-nightly in {}; is the nightly toolchain complete?",
        lib.display()
    )
}

/// Where installed tools keep their state: `~/.local/share/palisade/` (bpf-linker's LLVM
/// prefix, the virtme-ng venv).
pub fn state_dir() -> Result<PathBuf> {
    Ok(home()?.join(".local/share/palisade"))
}

pub fn home() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .context("HOME is not set")
}

fn bpf_linker() -> Result<()> {
    let (llvm, llvm_name, major) = nightly_llvm()?;
    let prefix = state_dir()?.join(format!("llvm-{llvm_name}"));
    let marker = prefix.join("bpf-linker.installed");
    let want = format!("bpf-linker {BPF_LINKER_VERSION} llvm-{major} {llvm_name}\n");
    let works = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works && std::fs::read_to_string(&marker).is_ok_and(|m| m == want) {
        eprintln!("    ok: bpf-linker {BPF_LINKER_VERSION} on {llvm_name}");
        return Ok(());
    }
    // The prefix: P/lib/libLLVM.so and P/lib/<versioned name>, both pointing into the sysroot.
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("mkdir {}", lib.display()))?;
    for link in ["libLLVM.so", llvm_name.as_str()] {
        let path = lib.join(link);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(&llvm, &path)
            .with_context(|| format!("symlink {} -> {}", path.display(), llvm.display()))?;
    }
    eprintln!(
        "    building bpf-linker {BPF_LINKER_VERSION} against {} (takes a few minutes, once)",
        llvm.display()
    );
    exec(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--force", "--version"])
            .arg(format!("^{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            // build with the machine's default toolchain, not this repository's pinned one
            .current_dir(home()?),
    )?;
    std::fs::write(&marker, want).with_context(|| format!("write {}", marker.display()))?;
    Ok(())
}
