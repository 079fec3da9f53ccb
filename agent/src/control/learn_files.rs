//! `palisade policy learn`, files: a private load of the policy object (nothing pinned, no
//! other program attached) whose `policy_learn_files` program, on `sys_enter` while the
//! window is open, records the paths the learned cgroups write, unlink and chmod. The agent
//! drains its ring buffer every 200 ms and resolves relative paths against the process's
//! directory (`/proc/PID/cwd`, or the directory fd it named) while the process is there.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Component, Path, PathBuf},
};

use aya::{
    EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint},
};
use palisade_common::{
    names,
    policy::{AT_FDCWD, LearnFile, POLICY_PATH_MAX},
};
use palisade_policy::model::files::FileAccess;

/// Why file writes cannot be learned here.
#[derive(Debug, thiserror::Error)]
pub enum LearnFilesError {
    #[error("loading the policy object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the policy object has no {0}")]
    Missing(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the kernel refused the sys_enter program: {0}")]
    Program(#[from] ProgramError),
}

/// What the window recorded so far.
#[derive(Debug, Default)]
pub struct FileWrites {
    /// Path → accesses.
    pub files: BTreeMap<String, BTreeSet<String>>,
    /// Relative paths whose process was gone.
    pub unresolved: BTreeSet<String>,
}

/// An open learning window over file writes (detached when dropped).
pub struct FileLearner {
    // the maps before the object: dropped first, the object (and its link) last
    ring: RingBuf<MapData>,
    cgroups: HashMap<MapData, u64, u32>,
    lost: PerCpuArray<MapData, u64>,
    ebpf: aya::Ebpf,
    seen: FileWrites,
}

impl FileLearner {
    /// Loads the program and starts recording for `cgroups` (and their children).
    pub fn start(cgroups: &[u64]) -> Result<Self, LearnFilesError> {
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .load(crate::kernel::POLICY_OBJECT)?;
        let map = |ebpf: &mut aya::Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(LearnFilesError::Missing(name))
        };
        let err = |map: &'static str| move |source| LearnFilesError::Map { map, source };
        let ring = RingBuf::try_from(map(&mut ebpf, names::MAP_POLICY_LEARN_FILES)?)
            .map_err(err(names::MAP_POLICY_LEARN_FILES))?;
        let cgs = HashMap::try_from(map(&mut ebpf, names::MAP_POLICY_LEARN)?)
            .map_err(err(names::MAP_POLICY_LEARN))?;
        let lost = PerCpuArray::try_from(map(&mut ebpf, names::MAP_POLICY_LEARN_LOST)?)
            .map_err(err(names::MAP_POLICY_LEARN_LOST))?;
        let mut l = Self {
            ring,
            cgroups: cgs,
            lost,
            ebpf,
            seen: FileWrites::default(),
        };
        for cg in cgroups {
            l.add(*cg);
        }
        let prog: &mut RawTracePoint = l
            .ebpf
            .program_mut(names::PROG_POLICY_LEARN_FILES)
            .ok_or(LearnFilesError::Missing(names::PROG_POLICY_LEARN_FILES))?
            .try_into()?;
        prog.load()?;
        // the link lives as long as the object
        let _ = prog.attach("sys_enter")?;
        Ok(l)
    }

    /// Records cgroup `id` too (a container seen during the window).
    pub fn add(&mut self, id: u64) {
        if let Err(e) = self.cgroups.insert(id, 1, 0) {
            tracing::warn!(cgroup_id = id, error = %e, "learning: cannot watch the files of a cgroup");
        }
    }

    /// Takes in what the ring buffer holds.
    pub fn drain(&mut self) {
        while let Some(item) = self.ring.next() {
            if item.len() < std::mem::size_of::<LearnFile>() {
                continue;
            }
            // SAFETY: the record is a `LearnFile` written by the program (size checked);
            // read unaligned from the ring's bytes.
            let r: LearnFile = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let n = (r.len as usize).min(POLICY_PATH_MAX);
            if n == 0 {
                continue;
            }
            let given = String::from_utf8_lossy(&r.path[..n]).into_owned();
            let access: BTreeSet<String> = FileAccess::of_mask(r.access)
                .into_iter()
                .map(|a| a.as_str().to_owned())
                .collect();
            match resolve(&given, r.pid, r.dirfd) {
                Some(p) => self.seen.files.entry(p).or_default().extend(access),
                None => {
                    self.seen.unresolved.insert(given);
                }
            }
        }
    }

    /// Records lost to a full ring buffer.
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|v| v.iter().sum::<u64>())
            .unwrap_or_default()
    }

    /// Stops (the program detaches with the object) and answers with the lot.
    pub fn finish(mut self) -> (FileWrites, u64) {
        self.drain();
        let lost = self.lost();
        (std::mem::take(&mut self.seen), lost)
    }
}

/// `given` as an absolute path without `.`, `..` or repeated slashes: relative to the
/// directory of `dirfd` in process `pid` (`AT_FDCWD`: its working directory); `None` when
/// the process is gone.
fn resolve(given: &str, pid: u32, dirfd: i32) -> Option<String> {
    let p = Path::new(given);
    let full = if p.is_absolute() {
        p.to_owned()
    } else {
        let link = if dirfd == AT_FDCWD {
            format!("/proc/{pid}/cwd")
        } else {
            format!("/proc/{pid}/fd/{dirfd}")
        };
        let dir = std::fs::read_link(link).ok()?;
        if !dir.is_absolute() {
            return None;
        }
        dir.join(p)
    };
    Some(normalize(&full))
}

/// Lexical normalization (`..` of the root is the root; symlinks not followed).
fn normalize(p: &Path) -> String {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_and_relative_ones_resolved() {
        assert_eq!(normalize(Path::new("/a//b/./c/../d")), "/a/b/d");
        assert_eq!(normalize(Path::new("/../x")), "/x");
        let me = std::process::id();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            resolve("sub/../f", me, AT_FDCWD).unwrap(),
            cwd.join("f").to_string_lossy()
        );
        assert_eq!(resolve("/etc/x", 0, AT_FDCWD).unwrap(), "/etc/x");
        assert_eq!(resolve("f", u32::MAX, AT_FDCWD), None, "no such process");
    }
}
