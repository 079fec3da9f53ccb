//! Checks that need the host but change nothing, run before anything is created: root, the
//! command inside the rootfs, rlimits and capabilities within what the launcher itself holds.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use super::{
    LaunchError, caps,
    plan::{Net, Plan},
};

pub fn root() -> Result<(), LaunchError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LaunchError::Usage(
            "palisade run must run as root: it creates cgroups and namespaces (try `sudo palisade run ...`)"
                .into(),
        ));
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
        return Err(LaunchError::Usage(format!(
            "linux.namespaces: the network namespace {} does not exist",
            p.display()
        )));
    }
    Ok(())
}

/// Strings handed to the kernel cannot hold NUL bytes (JSON can).
fn check_strings(plan: &Plan) -> Result<(), LaunchError> {
    let p = &plan.process;
    for (what, list) in [("process.args", &p.args), ("process.env", &p.env)] {
        if let Some(bad) = list.iter().find(|s| s.contains('\0')) {
            return Err(LaunchError::Usage(format!(
                "{what}: `{}` holds a NUL byte",
                bad.replace('\0', "\\0")
            )));
        }
    }
    if p.cwd.contains('\0') {
        return Err(LaunchError::Usage("process.cwd holds a NUL byte".into()));
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
        return Err(LaunchError::Usage("no command to run".into()));
    };
    let where_ = match &plan.root {
        Some(r) => format!(" in the rootfs {}", r.display()),
        None => String::new(),
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
    if let Some((c, mode)) = not_exec {
        return Err(LaunchError::NotExecutable(format!(
            "`{c}`{where_} is not executable (mode {mode:04o}); chmod +x it"
        )));
    }
    let searched = if prog.contains('/') {
        String::new()
    } else {
        format!(" (searched PATH={})", env_path(&plan.process.env))
    };
    Err(LaunchError::NotFound(format!(
        "command `{prog}` not found{where_}{searched}; check the name, or give its full path"
    )))
}

fn check_rlimits(plan: &Plan) -> Result<(), LaunchError> {
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
            return Err(LaunchError::Usage(format!(
                "process.rlimits {}: hard limit {} is above this launcher's own {}; raising it needs CAP_SYS_RESOURCE, which palisade run does not hold here (lower it to at most {})",
                r.name, r.hard, cur.rlim_max, cur.rlim_max
            )));
        }
    }
    Ok(())
}

fn check_caps(plan: &Plan) -> Result<(), LaunchError> {
    let missing = plan.process.caps.union() & !caps::own_permitted();
    if missing != 0 {
        return Err(LaunchError::Usage(format!(
            "process.capabilities asks for {} which palisade run does not hold itself on this host; remove them",
            caps::names(missing).join(", ")
        )));
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
