//! Checks that need the host but change nothing, run before anything is created: root, the
//! command inside the rootfs, rlimits and capabilities within what the launcher itself holds.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use super::{
    LaunchError, PlanError, caps,
    plan::{Net, Plan},
};

/// The workload's program cannot run: Docker's 127 and 126.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(
        "command `{program}` not found{}{}; check the name, or give its full path",
        in_rootfs(.rootfs),
        searched(.path)
    )]
    NotFound {
        program: String,
        /// `None`: the host's root.
        rootfs: Option<PathBuf>,
        /// The PATH searched (for a bare name).
        path: Option<String>,
    },
    #[error("`{path}`{} is not executable (mode {mode:04o}); chmod +x it", in_rootfs(.rootfs))]
    NotExecutable {
        /// As the workload would see it.
        path: String,
        rootfs: Option<PathBuf>,
        mode: u32,
    },
}

fn in_rootfs(rootfs: &Option<PathBuf>) -> String {
    rootfs
        .as_ref()
        .map(|r| format!(" in the rootfs {}", r.display()))
        .unwrap_or_default()
}

fn searched(path: &Option<String>) -> String {
    path.as_ref()
        .map(|p| format!(" (searched PATH={p})"))
        .unwrap_or_default()
}

pub fn root() -> Result<(), LaunchError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LaunchError::NotRoot);
    }
    Ok(())
}

pub fn check(plan: &Plan) -> Result<(), LaunchError> {
    check_strings(plan)?;
    check_command(plan)?;
    check_rlimits(plan)?;
    check_caps(plan)?;
    if let Net::Join(p) = &plan.ns.net
        && !p.exists()
    {
        return Err(PlanError::NoNetworkNamespace(p.clone()).into());
    }
    Ok(())
}

/// Strings handed to the kernel cannot hold NUL bytes (JSON can).
fn check_strings(plan: &Plan) -> Result<(), PlanError> {
    let p = &plan.process;
    for (field, list) in [("process.args", &p.args), ("process.env", &p.env)] {
        if let Some(bad) = list.iter().find(|s| s.contains('\0')) {
            return Err(PlanError::Nul {
                field,
                value: bad.clone(),
            });
        }
    }
    if p.cwd.contains('\0') {
        return Err(PlanError::NulInCwd);
    }
    Ok(())
}

/// Resolves `path` inside `root` as the kernel would after pivot_root: absolute symlinks
/// restart at `root`, `..` stops there. Returns the host path (which may not exist).
pub fn resolve_in_root(root: &Path, path: &str) -> PathBuf {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let host = root.join(cur.join("/")).join(&c);
        match std::fs::read_link(&host) {
            Ok(target) if hops < 40 => {
                hops += 1;
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') {
                    cur.clear();
                }
                for part in t.split('/').filter(|p| !p.is_empty()).rev() {
                    pending.push(part.to_owned());
                }
            }
            _ => cur.push(c),
        }
    }
    let mut out = root.to_path_buf();
    for c in cur {
        out.push(c);
    }
    out
}

fn env_path(env: &[String]) -> String {
    env.iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(super::plan::DEFAULT_PATH)
        .to_owned()
}

/// The program must exist and be executable inside the root the workload will see.
fn check_command(plan: &Plan) -> Result<(), LaunchError> {
    let root = plan.root.clone().unwrap_or_else(|| PathBuf::from("/"));
    let Some(prog) = plan.process.args.first() else {
        return Err(PlanError::EmptyArgs.into());
    };
    let candidates: Vec<String> = if prog.contains('/') {
        if prog.starts_with('/') {
            vec![prog.clone()]
        } else {
            vec![format!("{}/{prog}", plan.process.cwd)]
        }
    } else {
        env_path(&plan.process.env)
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{d}/{prog}"))
            .collect()
    };
    let mut not_exec = None;
    for c in &candidates {
        let host = resolve_in_root(&root, c);
        if let Ok(md) = std::fs::metadata(&host)
            && md.is_file()
        {
            if md.permissions().mode() & 0o111 != 0 {
                return Ok(());
            }
            not_exec.get_or_insert((c.clone(), md.permissions().mode() & 0o7777));
        }
    }
    if let Some((path, mode)) = not_exec {
        return Err(CommandError::NotExecutable {
            path,
            rootfs: plan.root.clone(),
            mode,
        }
        .into());
    }
    Err(CommandError::NotFound {
        program: prog.clone(),
        rootfs: plan.root.clone(),
        path: (!prog.contains('/')).then(|| env_path(&plan.process.env)),
    }
    .into())
}

fn check_rlimits(plan: &Plan) -> Result<(), PlanError> {
    let can_raise = caps::own_permitted() & (1 << 24) != 0; // CAP_SYS_RESOURCE
    for r in &plan.process.rlimits {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `cur`, a valid rlimit.
        if unsafe { libc::getrlimit(r.resource, &raw mut cur) } != 0 {
            continue;
        }
        if r.hard > cur.rlim_max && !can_raise {
            return Err(PlanError::RlimitAboveOwn {
                name: r.name,
                hard: r.hard,
                own: cur.rlim_max,
            });
        }
    }
    Ok(())
}

fn check_caps(plan: &Plan) -> Result<(), PlanError> {
    let missing = plan.process.caps.union() & !caps::own_permitted();
    if missing != 0 {
        return Err(PlanError::CapabilitiesNotHeld { missing });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_stays_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::write(r.join("bin/busybox"), "").unwrap();
        std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
        std::os::unix::fs::symlink("/bin", r.join("sbin")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", r.join("escape")).unwrap();
        assert_eq!(resolve_in_root(r, "/bin/sh"), r.join("bin/busybox"));
        assert_eq!(resolve_in_root(r, "/sbin/sh"), r.join("bin/busybox"));
        assert_eq!(resolve_in_root(r, "/escape/passwd"), r.join("etc/passwd"));
        assert_eq!(resolve_in_root(r, "/../../bin/./sh"), r.join("bin/busybox"));
    }
}
