//! Man pages from the clap definition: `palisade.1` and one page per visible subcommand, nested
//! ones named like git's (`palisade-policy-status.1`). `cargo xtask dist` packages them.
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;

use super::Cli;

#[derive(Debug, thiserror::Error)]
#[error("cannot write the man page {}: {source}", path.display())]
pub struct ManError {
    path: PathBuf,
    source: std::io::Error,
}

/// Writes every page into `dir` (created if missing); the number written.
pub fn write_all(dir: &Path) -> Result<usize, ManError> {
    std::fs::create_dir_all(dir).map_err(|source| ManError {
        path: dir.to_owned(),
        source,
    })?;
    let mut cmd = Cli::command();
    cmd.build();
    write_tree(dir, &cmd, "palisade")
}

fn write_tree(dir: &Path, cmd: &clap::Command, name: &str) -> Result<usize, ManError> {
    let path = dir.join(format!("{name}.1"));
    let page = cmd
        .clone()
        .display_name(name.to_owned())
        .bin_name(name.replace('-', " "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut buf)
        .and_then(|()| std::fs::write(&path, &buf))
        .map_err(|source| ManError {
            path: path.clone(),
            source,
        })?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        n += write_tree(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_per_visible_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let n = write_all(dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(n, names.len());
        for want in [
            "palisade.1",
            "palisade-agent.1",
            "palisade-doctor.1",
            "palisade-run.1",
            "palisade-policy.1",
            "palisade-policy-status.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("debug")), "{names:?}");
        let agent = std::fs::read_to_string(dir.path().join("palisade-agent.1")).unwrap();
        assert!(agent.contains("node\\-name"), "flags are documented");
        assert!(
            agent.contains("NODE_NAME"),
            "and their environment variables"
        );
    }
}
