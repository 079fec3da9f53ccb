//! How exec rules see an exec on this host, found once at start: the file actually executed
//! (kernel struct offsets from BTF for the `sched_process_exec` raw tracepoint; the address of
//! `____fput` from kallsyms to find a script's own file), or, without BTF, the path given to
//! execve (best effort, said at load, by `palisade policy status` and `palisade policy check`).
//!
//! Also the notes `palisade policy check` adds about exec patterns on this host's layout: rules
//! match resolved paths, so a pattern through a symlinked directory (`/bin/*` where `/bin` is a
//! symlink to `usr/bin`) names nothing a container laid out like this host runs.
use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
};

use palisade_common::policy::ExecOffsets;
use palisade_policy::{
    Diagnostic, PolicySet,
    model::{ExecKind, ExecPattern},
};

use super::bpf::BpfError;
use crate::btf::{Btf, BtfError};

/// Why scripts are matched by the path given rather than by their own file.
#[derive(Debug, thiserror::Error)]
pub enum ScriptsError {
    #[error("cannot read /proc/kallsyms: {0}")]
    Kallsyms(std::io::Error),
    #[error("/proc/kallsyms gives no address for ____fput (kernel.kptr_restrict hides it)")]
    NoFput,
    #[error("no member of `struct file` holds its release work ({0})")]
    TaskWork(BtfError),
}

/// The exec matching this host allows.
#[derive(Debug)]
pub struct ExecMatch {
    /// Where the BTF was read.
    pub btf: PathBuf,
    /// The walk's offsets, or why exec rules fall back to the path given.
    pub offsets: Result<ExecOffsets, BtfError>,
    /// Whether a script's own file can be found (else scripts are matched by the path given).
    pub scripts: Result<(), ScriptsError>,
    /// Why the kernel refused the program that reads the file executed, if it did (exec rules
    /// then match the path given).
    pub refused: Option<BpfError>,
}

/// The offsets [`palisade_common::policy::resolve`] and the exec program need.
fn offsets(btf: &Btf) -> Result<ExecOffsets, BtfError> {
    let g = |t: &str, m: &str| btf.member_offset(t, m);
    let d_name = g("dentry", "d_name")?;
    let d_hash = g("dentry", "d_hash")?;
    Ok(ExecOffsets {
        fput_fn: 0,
        bprm_file: g("linux_binprm", "file")?,
        bprm_filename: g("linux_binprm", "filename")?,
        bprm_interp: g("linux_binprm", "interp")?,
        file_path: g("file", "f_path")?,
        file_inode: g("file", "f_inode")?,
        file_task_work: 0,
        path_mnt: g("path", "mnt")?,
        path_dentry: g("path", "dentry")?,
        dentry_parent: g("dentry", "d_parent")?,
        dentry_name_ptr: d_name + g("qstr", "name")?,
        dentry_name_len: d_name + g("qstr", "len")?,
        dentry_hash_pprev: d_hash + g("hlist_bl_node", "pprev")?,
        vfsmount_root: g("vfsmount", "mnt_root")?,
        mount_mnt: g("mount", "mnt")?,
        mount_parent: g("mount", "mnt_parent")?,
        mount_mountpoint: g("mount", "mnt_mountpoint")?,
        inode_ino: g("inode", "i_ino")?,
        inode_sb: g("inode", "i_sb")?,
        sb_dev: g("super_block", "s_dev")?,
        task_fs: g("task_struct", "fs")?,
        fs_root: g("fs_struct", "root")?,
        task_works: g("task_struct", "task_works")?,
        work_next: g("callback_head", "next")?,
        work_func: g("callback_head", "func")?,
        file_mode: g("file", "f_mode")?,
        file_flags: g("file", "f_flags")?,
    })
}

/// The `callback_head` a file's last `fput` queues: `f_task_work` (6.8+), `f_rcuhead` in an
/// anonymous union (6.0–6.7: Debian 12's 6.1, where only trying the other two names left
/// scripts matched by the path given), inside `f_u` before.
fn file_task_work(btf: &Btf) -> Result<u32, BtfError> {
    btf.member_offset("file", "f_task_work")
        .or_else(|_| btf.member_offset("file", "f_rcuhead"))
        .or_else(|_| btf.member_offset("file", "f_u"))
}

/// The address of `____fput` in `/proc/kallsyms`.
fn fput_address(kallsyms: &Path) -> Result<u64, ScriptsError> {
    let f = std::fs::File::open(kallsyms).map_err(ScriptsError::Kallsyms)?;
    for line in std::io::BufReader::new(f).lines() {
        let line = line.map_err(ScriptsError::Kallsyms)?;
        let mut it = line.split_ascii_whitespace();
        let (Some(addr), Some(_kind), Some("____fput")) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        return match u64::from_str_radix(addr, 16) {
            Ok(a) if a != 0 => Ok(a),
            _ => Err(ScriptsError::NoFput),
        };
    }
    Err(ScriptsError::NoFput)
}

impl ExecMatch {
    /// What this host allows, from the BTF at `btf` and /proc/kallsyms.
    pub fn probe(btf: &Path) -> Self {
        Self::with_btf(btf, Btf::from_file(btf))
    }

    /// [`ExecMatch::probe`] with the BTF at `path` already read (or why it could not be).
    pub fn with_btf(path: &Path, btf: Result<Btf, BtfError>) -> Self {
        let (offsets, scripts) = match btf.and_then(|b| Ok((offsets(&b)?, b))) {
            Err(e) => (Err(e), Ok(())),
            Ok((mut o, b)) => {
                let scripts = file_task_work(&b)
                    .map_err(ScriptsError::TaskWork)
                    .and_then(|w| {
                        o.file_task_work = w;
                        fput_address(Path::new("/proc/kallsyms"))
                    })
                    .map(|a| o.fput_fn = a);
                (Ok(o), scripts)
            }
        };
        Self {
            btf: path.to_owned(),
            offsets,
            scripts,
            refused: None,
        }
    }

    /// The offsets to load the raw tracepoint with (`None`: the classic fallback).
    pub fn file_offsets(&self) -> Option<ExecOffsets> {
        self.offsets.as_ref().ok().copied()
    }

    /// Whether exec rules see the file executed.
    fn on_file(&self) -> bool {
        self.offsets.is_ok() && self.refused.is_none()
    }

    pub fn best_effort(&self) -> bool {
        !self.on_file() || self.scripts.is_err()
    }

    /// One sentence for people: what exec rules match here.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.refused {
            return format!(
                "exec rules match the path given to execve (best effort: the kernel refused the program that reads the file executed: {e}); other names of a file (`//`, `..`, symlinks, fds) are not seen"
            );
        }
        match (&self.offsets, &self.scripts) {
            (Ok(_), Ok(())) => "exec rules match the file executed: its resolved path as the process sees it (symlinks, `.`, `..` resolved), for scripts the script's own file and its interpreter".into(),
            (Ok(_), Err(e)) => format!(
                "exec rules match the file executed: its resolved path as the process sees it; scripts by the path given to execve (best effort: {e})"
            ),
            (Err(e), _) => format!(
                "exec rules match the path given to execve (best effort: no kernel BTF offsets from {}: {e}); other names of a file (`//`, `..`, symlinks, fds) are not seen",
                self.btf.display()
            ),
        }
    }

    /// The `exec_match` object of `palisade policy status`.
    pub fn status(&self) -> serde_json::Value {
        let reason = match (&self.refused, &self.offsets, &self.scripts) {
            (Some(e), _, _) => e.to_string(),
            (None, Err(e), _) => format!("{}: {e}", self.btf.display()),
            (None, Ok(_), Err(e)) => e.to_string(),
            _ => String::new(),
        };
        let on_file = self.on_file();
        serde_json::json!({
            "mode": if on_file { "file" } else { "path_given" },
            "scripts": if on_file && self.scripts.is_ok() { "file" } else { "path_given" },
            "best_effort": self.best_effort(),
            "reason": reason,
            "describe": self.describe(),
        })
    }
}

/// The first symlink on the way to `path` on this host: (the prefix, where it points, `path`
/// with the prefix resolved).
fn symlinked_prefix(root: &Path, path: &str) -> Option<(String, String, String)> {
    let mut prefix = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        let host = root.join(prefix.trim_start_matches('/'));
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            return None;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host).ok()?;
            let real = std::fs::canonicalize(&host).ok()?;
            let real = Path::new("/").join(real.strip_prefix(root).ok()?);
            let rest = &path[prefix.len()..];
            return Some((
                prefix,
                target.display().to_string(),
                format!("{}{rest}", real.display()),
            ));
        }
    }
    None
}

/// Warnings for exec patterns that go through a symlink on this host (`root` is `/`; another
/// root is for tests, where absolute symlink targets are not followed inside it): the rules see
/// resolved paths, so such a pattern names nothing there.
pub fn host_notes(set: &PolicySet, root: &Path) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for p in &set.policies {
        let Some(e) = &p.exec else { continue };
        for (list, allow) in [
            (e.allow.as_deref().unwrap_or_default(), true),
            (&e.deny[..], false),
        ] {
            for x in list {
                if let Some(d) = note(x, list, allow, root) {
                    out.push(d);
                }
            }
        }
    }
    out
}

fn note(x: &ExecPattern, list: &[ExecPattern], allow: bool, root: &Path) -> Option<Diagnostic> {
    let path = match x.kind {
        ExecKind::Basename => return None,
        ExecKind::Exact => x.key.clone(),
        ExecKind::Dir | ExecKind::Tree => format!("{}/", x.key),
    };
    let (prefix, target, real) = symlinked_prefix(root, &path)?;
    let suggest = match x.kind {
        ExecKind::Dir => format!("{}/*", real.trim_end_matches('/')),
        ExecKind::Tree => format!("{}/**", real.trim_end_matches('/')),
        _ => real,
    };
    if list.iter().any(|y| y.text == suggest) {
        return None;
    }
    let what = if allow {
        "so on a host laid out like this one it allows nothing"
    } else {
        "so on a host laid out like this one it denies only execs that name it this way"
    };
    Some(Diagnostic {
        loc: x.loc.clone(),
        message: format!(
            "exec pattern `{}`: {prefix} is a symlink to {target} on this host and exec rules match the file's resolved path, {what}; write `{suggest}`",
            x.text
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_through_symlinks_get_the_resolved_form() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/bin")).unwrap();
        std::fs::create_dir_all(d.path().join("opt/real")).unwrap();
        std::os::unix::fs::symlink("usr/bin", d.path().join("bin")).unwrap();
        // relative targets: under a root other than `/` absolute ones would leave it
        std::os::unix::fs::symlink("real", d.path().join("opt/app")).unwrap();
        let set = palisade_policy::parse_str(
            "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: p}\nspec:\n  selector: {workload: w}\n  exec:\n    allow: [/bin/*, /usr/bin/true, /opt/app/**, \"**/sh\"]\n    deny: [/bin/nc, /usr/bin/nc]\n",
            "p.yaml",
        )
        .unwrap();
        let set = PolicySet {
            policies: set,
            files: vec![],
        };
        let notes = host_notes(&set, d.path());
        let text: Vec<&str> = notes.iter().map(|n| n.message.as_str()).collect();
        assert_eq!(notes.len(), 2, "{text:#?}");
        assert!(
            text[0].contains("/bin is a symlink to usr/bin"),
            "{}",
            text[0]
        );
        assert!(text[0].contains("write `/usr/bin/*`"), "{}", text[0]);
        assert!(text[1].contains("write `/opt/real/**`"), "{}", text[1]);
        // `/bin/nc` is denied next to `/usr/bin/nc`: nothing to say
    }

    #[test]
    fn this_host_allows_file_matching() {
        let m = ExecMatch::probe(Path::new("/nonexistent/vmlinux"));
        assert!(m.file_offsets().is_none() && m.best_effort());
        assert!(
            m.describe().contains("/nonexistent/vmlinux"),
            "{}",
            m.describe()
        );
        assert_eq!(m.status()["mode"], "path_given");
        // the development and CI kernels ship BTF; elsewhere there is nothing more to check
        let m = ExecMatch::probe(Path::new("/sys/kernel/btf/vmlinux"));
        if let Some(o) = m.file_offsets() {
            assert!(
                o.bprm_file > 0 && o.mount_mnt > 0 && o.task_works > 0,
                "{o:?}"
            );
            assert_eq!(m.status()["mode"], "file");
        }
    }
}
