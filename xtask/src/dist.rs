//! `cargo xtask dist [--binary PATH]`: shell completions, man pages and a Debian package.
//!
//! Completions and man pages come from the binary's own clap definition, through its hidden
//! `palisade debug completions SHELL` and `palisade debug man-pages DIR` (no second copy of the
//! command line here). Everything the package installs is staged in `target/dist/stage/` and
//! `cargo deb --no-build` packages it as `agent/Cargo.toml`'s `[package.metadata.deb]` lists:
//! the binary (`/usr/bin/palisade`), the systemd unit (`deploy/palisade.service` with its
//! `ExecStart` pointed at `/usr/bin`), the default configuration (`/etc/palisade/palisade.yaml`,
//! a conffile), the dashboards and alert rules (`/usr/share/palisade/`), man pages and
//! completions for bash, zsh and fish. The package lands in `target/dist/`.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{agent_bin, build, exec, root, step};

/// Where the source unit runs the binary from, and where the package installs it.
const UNIT_BIN: &str = "/usr/local/bin/palisade";
const PACKAGE_BIN: &str = "/usr/bin/palisade";

pub fn run(binary: Option<PathBuf>, fast: bool) -> Result<()> {
    let bin = match binary {
        Some(b) => {
            std::fs::canonicalize(&b).with_context(|| format!("--binary {}", b.display()))?
        }
        None => {
            build(true)?;
            agent_bin(true)
        }
    };
    let dist = root().join("target/dist");
    let stage = dist.join("stage");
    step(&format!("staging {} in {}", bin.display(), stage.display()));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("rm -r {}", stage.display()))?;
    }
    std::fs::create_dir_all(stage.join("completions"))?;
    std::fs::copy(&bin, stage.join("palisade"))
        .with_context(|| format!("copy {}", bin.display()))?;

    for (shell, file) in [
        ("bash", "palisade.bash"),
        ("zsh", "_palisade"),
        ("fish", "palisade.fish"),
    ] {
        let out = output(Command::new(&bin).args(["debug", "completions", shell]))?;
        std::fs::write(stage.join("completions").join(file), out)?;
    }
    let man = stage.join("man");
    output(Command::new(&bin).args(["debug", "man-pages"]).arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        exec(Command::new("gzip").args(["-9n"]).arg(page?.path()))?;
    }

    let unit = std::fs::read_to_string(root().join("deploy/palisade.service"))?;
    if !unit.contains(&format!("ExecStart={UNIT_BIN} ")) {
        bail!("deploy/palisade.service no longer runs {UNIT_BIN}: update xtask/src/dist.rs");
    }
    std::fs::write(
        stage.join("palisade.service"),
        unit.replace(UNIT_BIN, PACKAGE_BIN),
    )?;

    step("cargo deb");
    // (cargo-deb warns that these paths are not under target/release/: they are staged on
    // purpose, nothing is for it to build)
    let mut deb = Command::new("cargo");
    deb.args(["deb", "--package", "palisade", "--no-build", "--output"])
        .arg(&dist);
    if fast {
        deb.arg("--fast");
    }
    exec(&mut deb)?;
    let deb = newest_deb(&dist)?;
    println!("{}", deb.display());
    Ok(())
}

fn output(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The `.deb` cargo-deb just wrote.
fn newest_deb(dir: &Path) -> Result<PathBuf> {
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    debs.pop()
        .map(|(_, p)| p)
        .with_context(|| format!("no .deb in {}", dir.display()))
}
