//! Workload cgroups: `/palisade/NAME` in the unified hierarchy (its id names the workload for
//! the agent) and, on hybrid hosts, in the v1 `memory`, `cpu`, `cpuacct` and `pids`
//! hierarchies that hold the limits. On pure v2 hosts everything is the one directory, with the
//! controllers enabled in `/palisade`'s `cgroup.subtree_control`. Device rules are a
//! `BPF_PROG_TYPE_CGROUP_DEVICE` program on the unified cgroup (both layouts). The init gets
//! into the unified cgroup by `CLONE_INTO_CGROUP` and into the v1 ones by moving itself
//! ([`Cgroup::v1_tasks`]); nothing is placed by pid unless the kernel lacks clone3.
//!
//! Written against cgroupfs directly rather than with cgroups-rs (reasons checked against its
//! 0.5.1 release): its `hierarchies::auto()`, which its fs manager uses too, picks *one*
//! hierarchy kind per host, v1 on a hybrid host, ignoring the unified tree whose cgroup id
//! the agent keys on and where the device filter attaches; unless told which controllers, it
//! creates the cgroup in every mounted v1 hierarchy (cpuset included, whose cpus/mems it copies
//! from the parent, only logging a failure); it offers no file descriptor for
//! `CLONE_INTO_CGROUP`; and it brings a second `nix` (0.25) and `zbus` (D-Bus) along. The
//! host's layout comes from `palisade-cgroupfs`, shared with the agent; a dozen file writes do
//! exactly what is needed.
mod devices;

use std::{
    io::ErrorKind,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use super::plan::{DeviceRule, Resources};
use palisade_cgroupfs::{Layout as HostLayout, Mounts};

/// The parent of every workload cgroup, in every hierarchy.
pub const PARENT: &str = "palisade";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Host(#[from] palisade_cgroupfs::CgroupfsError),
    #[error(
        "a workload named {name} is already running: {} holds processes {}; stop it or pick another --name",
        path.display(),
        .pids.join(" ")
    )]
    Busy {
        name: String,
        path: PathBuf,
        pids: Vec<String>,
    },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Where the hierarchies are.
#[derive(Debug, Clone)]
pub struct Layout {
    pub unified: PathBuf,
    /// Pure cgroup v2: limits live in the unified tree.
    pub v2: bool,
    /// Mount points of the v1 hierarchies holding memory, cpu, cpuacct and pids (deduplicated).
    pub v1: Vec<PathBuf>,
}

const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids"];

impl Layout {
    /// The layout of the host whose cgroup mounts are `mounts` (`Mounts::detect`).
    pub fn of(mounts: &Mounts) -> Result<Self, CgroupError> {
        let unified = mounts.unified_root(None)?;
        let v2 = mounts.layout == HostLayout::V2;
        let mut v1 = Vec::new();
        if !v2 {
            for (mount, controllers) in &mounts.v1 {
                if controllers
                    .iter()
                    .any(|c| V1_CONTROLLERS.contains(&c.as_str()))
                    && !v1.contains(mount)
                {
                    v1.push(mount.clone());
                }
            }
        }
        Ok(Self { unified, v2, v1 })
    }

    /// Every directory a workload named `name` uses (unified first).
    pub fn dirs(&self, name: &str) -> Vec<PathBuf> {
        std::iter::once(&self.unified)
            .chain(&self.v1)
            .map(|m| m.join(PARENT).join(name))
            .collect()
    }

    fn v1_file(&self, name: &str, file: &str) -> Option<PathBuf> {
        self.v1
            .iter()
            .map(|m| m.join(PARENT).join(name).join(file))
            .find(|p| p.exists())
    }
}

/// Pids in a cgroup directory (empty when it has none or cannot be read).
fn pids_in(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The cgroups directly under `dir`, for removing them first: what a nested runtime or
/// systemd made in a workload's cgroup (the workload's own view of cgroupfs is read-only, but
/// a process with the host's can make them).
fn children(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Fails when a workload of this name runs (a process anywhere in its cgroups, children
/// included); returns the stale (empty) directories a killed launcher left behind.
pub fn preflight(layout: &Layout, name: &str) -> Result<Vec<PathBuf>, CgroupError> {
    let mut stale = Vec::new();
    for dir in layout.dirs(name) {
        if !dir.exists() {
            continue;
        }
        // the directory itself (`/`) and every cgroup under it; a tree that vanished is
        // still looked at where it was
        let tree = palisade_cgroupfs::walk(&dir).unwrap_or_else(|_| vec![(0, "/".to_owned())]);
        for (_, rel) in tree {
            let d = palisade_cgroupfs::dir(&dir, &rel);
            let pids = pids_in(&d);
            if !pids.is_empty() {
                return Err(CgroupError::Busy {
                    name: name.to_owned(),
                    path: d,
                    pids,
                });
            }
        }
        stale.push(dir);
    }
    Ok(stale)
}

/// One workload's cgroups, removed by [`Cgroup::remove`].
#[derive(Debug)]
pub struct Cgroup {
    pub name: String,
    /// The unified directory.
    pub dir: PathBuf,
    /// Relative to the unified root: `/palisade/NAME`.
    pub rel: String,
    /// The cgroup v2 id (inode number of `dir`).
    pub id: u64,
    /// Every directory created (unified first).
    created: Vec<PathBuf>,
}

/// Moves the calling thread into the cgroup of each `tasks` file (see [`Cgroup::v1_tasks`]):
/// called by the single-threaded init, so the whole process moves.
pub fn join_self(tasks: &[(std::fs::File, PathBuf)]) -> Result<(), CgroupError> {
    use std::io::Write as _;
    for (f, path) in tasks {
        let mut f: &std::fs::File = f;
        f.write_all(b"0").map_err(io("join", path))?;
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io {
        what: "write",
        path: path.to_owned(),
        source,
    })
}

fn mkdir_parent(dir: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("create", dir)(e)),
    }
}

/// On pure v2, the controllers the limits need must be enabled from the root down.
fn enable_v2_controllers(layout: &Layout, res: &Resources) -> Result<(), CgroupError> {
    let mut wanted = Vec::new();
    if res.memory.is_some() || res.memory_reservation.is_some() {
        wanted.push("memory");
    }
    if res.cpu_quota.is_some() || res.cpu_shares.is_some() {
        wanted.push("cpu");
    }
    if res.pids.is_some() {
        wanted.push("pids");
    }
    for dir in [layout.unified.clone(), layout.unified.join(PARENT)] {
        let enabled =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        for c in &wanted {
            if !enabled.split_whitespace().any(|e| e == *c) {
                write(&dir.join("cgroup.subtree_control"), &format!("+{c}"))?;
            }
        }
    }
    Ok(())
}

impl Cgroup {
    /// Creates the cgroups of `name` (after removing `stale` ones) and applies the limits.
    /// On failure whatever was created is removed again.
    pub fn create(
        layout: &Layout,
        name: &str,
        stale: &[PathBuf],
        res: &Resources,
        devices: &[DeviceRule],
    ) -> Result<Self, CgroupError> {
        for dir in stale {
            remove_dir(dir)?;
        }
        if !stale.is_empty() {
            eprintln!(
                "palisade: note: removed the empty cgroups of {name} left by a launcher that was killed"
            );
        }
        let mut cg = Cgroup {
            name: name.to_owned(),
            dir: layout.unified.join(PARENT).join(name),
            rel: format!("/{PARENT}/{name}"),
            id: 0,
            created: Vec::new(),
        };
        match cg.populate(layout, res, devices) {
            Ok(()) => Ok(cg),
            Err(e) => {
                let _ = cg.remove();
                Err(e)
            }
        }
    }

    fn populate(
        &mut self,
        layout: &Layout,
        res: &Resources,
        devices: &[DeviceRule],
    ) -> Result<(), CgroupError> {
        for dir in layout.dirs(&self.name) {
            if let Some(parent) = dir.parent() {
                mkdir_parent(parent)?;
            }
            if layout.v2 && dir == self.dir {
                enable_v2_controllers(layout, res)?;
            }
            std::fs::create_dir(&dir).map_err(io("create", &dir))?;
            self.created.push(dir);
        }
        self.id = std::fs::metadata(&self.dir)
            .map_err(io("stat", &self.dir))?
            .ino();
        if layout.v2 {
            self.limits_v2(res)?;
        } else {
            self.limits_v1(layout, res)?;
        }
        Ok(devices::attach(&self.dir, devices)?)
    }

    fn limits_v1(&self, layout: &Layout, res: &Resources) -> Result<(), CgroupError> {
        let file = |f: &str| {
            layout.v1_file(&self.name, f).ok_or_else(|| CgroupError::Io {
                what: "find",
                path: PathBuf::from(format!("<v1 hierarchy>/{PARENT}/{}/{f}", self.name)),
                source: std::io::Error::new(
                    ErrorKind::NotFound,
                    "no v1 hierarchy has this controller; mount it or use a pure cgroup v2 host",
                ),
            })
        };
        if let Some(limit) = res.memory {
            write(&file("memory.limit_in_bytes")?, &limit.to_string())?;
            // swap accounting may be off (then there is no memsw file, and no swap to limit)
            if let Some(memsw) = layout.v1_file(&self.name, "memory.memsw.limit_in_bytes") {
                match res.memory_swap {
                    Some(-1) => {}
                    Some(total) => write(&memsw, &total.to_string())?,
                    None => write(&memsw, &limit.to_string())?,
                }
            }
        }
        if let Some(r) = res.memory_reservation {
            write(&file("memory.soft_limit_in_bytes")?, &r.to_string())?;
        }
        if let Some(period) = res.cpu_period {
            write(&file("cpu.cfs_period_us")?, &period.to_string())?;
        }
        if let Some(quota) = res.cpu_quota {
            write(&file("cpu.cfs_quota_us")?, &quota.to_string())?;
        }
        if let Some(shares) = res.cpu_shares {
            write(&file("cpu.shares")?, &shares.to_string())?;
        }
        if let Some(pids) = res.pids {
            write(&file("pids.max")?, &pids.to_string())?;
        }
        Ok(())
    }

    fn limits_v2(&self, res: &Resources) -> Result<(), CgroupError> {
        let f = |name: &str| self.dir.join(name);
        if let Some(limit) = res.memory {
            write(&f("memory.max"), &limit.to_string())?;
            let swap = match res.memory_swap {
                Some(-1) => "max".to_owned(),
                Some(total) => (total as u64).saturating_sub(limit).to_string(),
                None => "0".to_owned(),
            };
            if f("memory.swap.max").exists() {
                write(&f("memory.swap.max"), &swap)?;
            }
        }
        if let Some(r) = res.memory_reservation {
            write(&f("memory.low"), &r.to_string())?;
        }
        if res.cpu_quota.is_some() || res.cpu_period.is_some() {
            let quota = res
                .cpu_quota
                .map_or_else(|| "max".to_owned(), |q| q.to_string());
            let period = res.cpu_period.unwrap_or(super::plan::CPU_PERIOD_US);
            write(&f("cpu.max"), &format!("{quota} {period}"))?;
        }
        if let Some(shares) = res.cpu_shares {
            // the conversion runc and crun use
            let weight = 1 + ((shares.saturating_sub(2)) * 9999) / 262_142;
            write(&f("cpu.weight"), &weight.to_string())?;
        }
        if let Some(pids) = res.pids {
            write(&f("pids.max"), &pids.to_string())?;
        }
        Ok(())
    }

    /// The `tasks` file of each v1 cgroup (hybrid hosts), open for writing, for the init to
    /// move itself in with [`join_self`]; with its path for messages.
    ///
    /// Not `cgroup.procs` written with the init's pid by the launcher: that takes the global
    /// `cgroup_threadgroup_rwsem` for writing, whose first writer in a while waits for an RCU
    /// grace period (12–21 ms measured on this project's CI host, against 0.1 ms for the
    /// write of `0` to `tasks`, which moves the writing thread only and skips that lock). The
    /// init is single-threaded, so moving its one thread moves the process, and everything it
    /// forks starts there.
    pub fn v1_tasks(&self) -> Result<Vec<(std::fs::File, PathBuf)>, CgroupError> {
        self.created
            .iter()
            .filter(|dir| **dir != self.dir)
            .map(|dir| {
                let path = dir.join("tasks");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                Ok((f, path))
            })
            .collect()
    }

    /// Moves `pid` into the unified cgroup (where the kernel lacks `CLONE_INTO_CGROUP`).
    pub fn place_unified(&self, pid: i32) -> Result<(), CgroupError> {
        write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// Kills whatever is left and removes every directory, with any cgroups made under them.
    /// Idempotent.
    pub fn remove(&mut self) -> Result<(), CgroupError> {
        let mut first_err = None;
        for dir in self.created.drain(..).rev() {
            if let Err(e) = remove_dir(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Removes a workload cgroup directory and any cgroups made under it: its processes are gone
/// or going (the pid namespace's init has exited); `cgroup.kill` or SIGKILL takes care of
/// stragglers; dying tasks can hold the directory busy for a moment, so EBUSY is retried for
/// up to 5 s. Children are looked for only once `rmdir` fails, so the usual launch pays no
/// directory read for them.
fn remove_dir(dir: &Path) -> Result<(), CgroupError> {
    let mut delay = Duration::from_micros(200);
    let mut waited = Duration::ZERO;
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) if waited < Duration::from_secs(5) && e.raw_os_error() == Some(libc::EBUSY) => {
                for child in children(dir) {
                    remove_dir(&child)?;
                }
                if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
                    for pid in pids_in(dir).iter().filter_map(|p| p.parse::<i32>().ok()) {
                        // SAFETY: kill with a pid from this workload's own cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                std::thread::sleep(delay);
                waited += delay;
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(e) => return Err(io("remove", dir)(e)),
        }
    }
}
