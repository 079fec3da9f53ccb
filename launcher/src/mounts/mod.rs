//! The container's filesystem, built by the init inside its new mount namespace: propagation
//! made private (or what the bundle asks) before anything is mounted, the bundle's mounts
//! resolved inside the rootfs with `openat2(RESOLVE_IN_ROOT)` (a symlink in the image cannot
//! point a mount outside it), /dev populated, masked and read-only paths, then `pivot_root`.
//! Without a rootfs the workload's root is a copy of the host's mount tree, read-only with
//! every submount (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`, `mount_setattr(AT_RECURSIVE,
//! MOUNT_ATTR_RDONLY)`), attached over `/` and entered with `pivot_root`, with a fresh /proc, a
//! private /tmp and the agent's directories masked: nothing the workload does writes to the
//! host's files except through a volume.
//!
//! Every call goes through [`Sys`], so the order is unit-tested with the recording fake
//! (`tests.rs`); the init runs the same code on [`crate::sys::Linux`].
use std::{io, path::Path};

use crate::{
    plan::{Mount, MountKind, Plan},
    sys::{Loc, Sys},
};

/// What the filesystem setup was doing when a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Setting the propagation of `/` in the new mount namespace.
    MakePrivate,
    BindRootfs,
    /// Copying the host's mount tree (no rootfs).
    CloneHost,
    /// Making a tree read-only with every submount.
    TreeReadOnly,
    /// Attaching the copy of the host's tree over `/`.
    AttachHost,
    Open,
    CreateMountPoint,
    Mount(MountKind),
    /// A v1 hierarchy (with these options) under the cgroup tmpfs of a hybrid host.
    MountV1(String),
    MountUnified,
    Mknod,
    Mask,
    /// The bind of a read-only path on itself.
    BindReadOnly,
    /// Finding a read-only path again after binding it.
    Reopen,
    ReadOnly,
    EnterRootfs,
    PivotRoot,
    DetachOldRoot,
    Chdir,
    RootReadOnly,
}

impl MountOp {
    /// The words before `: <error>` (`mount Tmpfs on /dev`).
    fn describe(&self, target: &str) -> String {
        match self {
            MountOp::MakePrivate => format!("make {target} private in the new mount namespace"),
            MountOp::BindRootfs => format!("bind the rootfs {target}"),
            MountOp::CloneHost => format!("copy the host's mount tree at {target}"),
            MountOp::TreeReadOnly => {
                format!("make {target} read-only with every submount (mount_setattr)")
            }
            MountOp::AttachHost => format!("attach the read-only host tree over {target}"),
            MountOp::Open => format!("open {target}"),
            MountOp::CreateMountPoint => format!("create mount point {target}"),
            MountOp::Mount(kind) => format!("mount {kind:?} on {target}"),
            MountOp::MountV1(options) => format!("mount cgroup {options} on {target}"),
            MountOp::MountUnified => format!("mount cgroup2 on {target}"),
            MountOp::Mknod => format!("mknod {target}"),
            MountOp::Mask => format!("mask {target}"),
            MountOp::BindReadOnly => format!("bind {target}"),
            MountOp::Reopen => target.to_owned(),
            MountOp::ReadOnly => format!("make {target} read-only"),
            MountOp::EnterRootfs => "chdir to the rootfs".to_owned(),
            MountOp::PivotRoot => format!("pivot_root into {target}"),
            MountOp::DetachOldRoot => "detach the old root".to_owned(),
            MountOp::Chdir => format!("chdir {target}"),
            MountOp::RootReadOnly => "make the root read-only".to_owned(),
        }
    }
}

/// A failed step of the filesystem setup: the path (inside the container, or the rootfs on the
/// host), what was being done to it, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .op.describe(.target))]
pub struct MountError {
    pub target: String,
    pub op: MountOp,
    pub source: io::Error,
}

/// `map_err(at(op, target))`.
fn at(op: MountOp, target: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
    let target = target.into();
    move |source| MountError { target, op, source }
}

/// Resolves `path` beneath `root`, creating missing directories (and the last component as an
/// empty file when `file`). Each created entry is made in its parent's resolved node by name
/// (one component, `mkdirat` on the `O_PATH` descriptor) and looked up again from `root`, so a
/// symlink in the image resolves inside it as everywhere else. Only missing components cost
/// calls: the deepest existing ancestor is found from the end (usually the parent).
fn ensure<S: Sys>(
    sys: &mut S,
    root: &S::Node,
    path: &str,
    file: bool,
) -> Result<S::Node, MountError> {
    match sys.lookup(root, path) {
        Ok(node) => return Ok(node),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(at(MountOp::Open, path)(e)),
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let prefix = |n: usize| -> String { parts[..n].iter().map(|p| format!("/{p}")).collect() };
    let mut have = parts.len().saturating_sub(1);
    let mut dir = loop {
        match sys.lookup(root, &prefix(have)) {
            Ok(node) => break node,
            Err(e) if have > 0 && e.raw_os_error() == Some(libc::ENOENT) => have -= 1,
            Err(e) => return Err(at(MountOp::Open, format!("{}/", prefix(have)))(e)),
        }
    };
    for (i, part) in parts.iter().enumerate().skip(have) {
        let sofar = prefix(i + 1);
        let made = if i + 1 == parts.len() && file {
            sys.create_file(&dir, part, 0o644)
        } else {
            sys.mkdir(&dir, part, 0o755)
        };
        if let Err(e) = made
            && e.raw_os_error() != Some(libc::EEXIST)
        {
            return Err(at(MountOp::CreateMountPoint, sofar)(e));
        }
        dir = sys
            .lookup(root, &sofar)
            .map_err(at(MountOp::Open, sofar.as_str()))?;
    }
    Ok(dir)
}

fn fstype(kind: MountKind) -> &'static str {
    match kind {
        MountKind::Proc => "proc",
        MountKind::Sysfs => "sysfs",
        MountKind::Tmpfs => "tmpfs",
        MountKind::Devpts => "devpts",
        MountKind::Mqueue => "mqueue",
        MountKind::Cgroup => "cgroup2",
        MountKind::Bind => "none",
    }
}

/// The v1 hierarchies to show under /sys/fs/cgroup on hybrid hosts: (directory name, options).
pub type V1Mounts = Vec<(String, String)>;

fn do_mount<S: Sys>(
    sys: &mut S,
    root: &S::Node,
    m: &Mount,
    v1: &V1Mounts,
) -> Result<(), MountError> {
    let src_is_file = m.kind == MountKind::Bind && sys.host_is_file(&m.source);
    let target = ensure(sys, root, &m.destination, src_is_file)?;
    let t = || Loc::Node(&target);
    let data = (!m.data.is_empty()).then_some(m.data.as_str());
    let what = |e| at(MountOp::Mount(m.kind), m.destination.as_str())(e);
    match m.kind {
        MountKind::Bind => {
            let rec = m.flags & libc::MS_REC;
            sys.mount(
                Some(Loc::Path(&m.source)),
                t(),
                None,
                libc::MS_BIND | rec,
                None,
            )
            .map_err(what)?;
            let rest = m.flags & !(libc::MS_BIND | libc::MS_REC);
            if rest != 0 {
                // the bind itself, not the mount point below it
                let again = sys.lookup(root, &m.destination).map_err(what)?;
                sys.mount(
                    None,
                    Loc::Node(&again),
                    None,
                    libc::MS_REMOUNT | libc::MS_BIND | rest,
                    None,
                )
                .map_err(what)?;
                if rec != 0 && rest & libc::MS_RDONLY != 0 {
                    // a remount changes the top mount only: the binds below it too
                    sys.set_tree_attrs(&again, libc::MS_RDONLY)
                        .map_err(at(MountOp::TreeReadOnly, m.destination.as_str()))?;
                }
            }
        }
        MountKind::Cgroup if !v1.is_empty() => {
            // hybrid: a tmpfs holding each v1 hierarchy and the unified one, like the host
            sys.mount(
                Some(Loc::name("cgroup")),
                t(),
                Some("tmpfs"),
                m.flags & !libc::MS_RDONLY,
                Some("mode=755"),
            )
            .map_err(what)?;
            let base = m.destination.trim_end_matches('/');
            // the tmpfs is new and empty: each hierarchy's directory is made in it directly,
            // without first looking for it
            let tmpfs = sys.lookup(root, &m.destination).map_err(what)?;
            for (dir, opts) in v1 {
                let path = format!("{base}/{dir}");
                if let Err(e) = sys.mkdir(&tmpfs, dir, 0o755)
                    && e.raw_os_error() != Some(libc::EEXIST)
                {
                    return Err(at(MountOp::CreateMountPoint, path)(e));
                }
                let sub = sys
                    .lookup(root, &path)
                    .map_err(at(MountOp::Open, path.as_str()))?;
                sys.mount(
                    Some(Loc::name("cgroup")),
                    Loc::Node(&sub),
                    Some("cgroup"),
                    m.flags,
                    Some(opts),
                )
                .map_err(at(MountOp::MountV1(opts.clone()), path))?;
            }
            let path = format!("{base}/unified");
            let uni = ensure(sys, root, &path, false)?;
            sys.mount(
                Some(Loc::name("cgroup2")),
                Loc::Node(&uni),
                Some("cgroup2"),
                m.flags,
                None,
            )
            .map_err(at(MountOp::MountUnified, path))?;
            if m.flags & libc::MS_RDONLY != 0 {
                let again = sys.lookup(root, &m.destination).map_err(what)?;
                sys.mount(
                    None,
                    Loc::Node(&again),
                    None,
                    libc::MS_REMOUNT | libc::MS_RDONLY | (m.flags & !libc::MS_RDONLY),
                    None,
                )
                .map_err(what)?;
            }
        }
        MountKind::Sysfs => {
            let source = Some(Loc::Path(&m.source));
            match sys.mount(source, t(), Some("sysfs"), m.flags, data) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() != Some(libc::EPERM) => return Err(what(e)),
                Err(_) => {
                    // sysfs of the host's network namespace may be refused; show the host's,
                    // read-only
                    sys.mount(
                        Some(Loc::name("/sys")),
                        t(),
                        None,
                        libc::MS_BIND | libc::MS_REC,
                        None,
                    )
                    .map_err(what)?;
                    // read-only with every submount of the host's /sys (cgroup, bpf,
                    // tracing, ...): a remount, even with MS_REC, would change the top only
                    let again = sys.lookup(root, &m.destination).map_err(what)?;
                    let attrs = libc::MS_RDONLY
                        | (m.flags & (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC));
                    sys.set_tree_attrs(&again, attrs)
                        .map_err(at(MountOp::TreeReadOnly, m.destination.as_str()))?;
                }
            }
        }
        MountKind::Cgroup => {
            let cgroup2 = |sys: &mut S, at: &S::Node| {
                sys.mount(
                    Some(Loc::Path(&m.source)),
                    Loc::Node(at),
                    Some("cgroup2"),
                    m.flags,
                    data,
                )
            };
            match cgroup2(sys, &target) {
                Ok(()) => {}
                // the host's tree on a pure v2 host: its /sys/fs/cgroup is the host's cgroup2,
                // and the kernel refuses a filesystem over its own root (EBUSY). A tmpfs
                // between them, hidden under the workload's own cgroup2.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    sys.mount(
                        Some(Loc::name("tmpfs")),
                        t(),
                        Some("tmpfs"),
                        m.flags & !libc::MS_RDONLY,
                        Some("mode=755"),
                    )
                    .map_err(what)?;
                    let between = sys.lookup(root, &m.destination).map_err(what)?;
                    cgroup2(sys, &between).map_err(what)?;
                }
                Err(e) => return Err(what(e)),
            }
        }
        kind => {
            sys.mount(
                Some(Loc::Path(&m.source)),
                t(),
                Some(fstype(kind)),
                m.flags,
                data,
            )
            .map_err(what)?;
        }
    }
    if m.propagation != 0 {
        let again = sys.lookup(root, &m.destination).map_err(what)?;
        sys.mount(None, Loc::Node(&again), None, m.propagation, None)
            .map_err(what)?;
    }
    Ok(())
}

/// The device nodes of a fresh /dev tmpfs (the same set the device filter allows).
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// (target, name) of the links in /dev.
const DEV_LINKS: [(&str, &str); 6] = [
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
    ("/proc/kcore", "core"),
];

/// Device nodes and links in a fresh /dev tmpfs.
fn populate_dev<S: Sys>(sys: &mut S, root: &S::Node) -> Result<(), MountError> {
    let dev = sys
        .lookup(root, "/dev")
        .map_err(at(MountOp::Open, "/dev"))?;
    let dev = sys.reopen_dir(&dev).map_err(at(MountOp::Open, "/dev"))?;
    for (name, major, minor) in DEVICES {
        if let Err(e) = sys.mknod(&dev, name, 0o666, major, minor)
            && e.raw_os_error() != Some(libc::EEXIST)
        {
            return Err(at(MountOp::Mknod, format!("/dev/{name}"))(e));
        }
        // mknod's mode went through the umask; a failure leaves the node as it is
        let _ = sys.chmod(&dev, name, 0o666);
    }
    for (target, name) in DEV_LINKS {
        // best effort, as runc: a link that exists (or cannot be made) is left alone
        let _ = sys.symlink(target, &dev, name);
    }
    Ok(())
}

/// Masks (tmpfs or /dev/null over it) and read-only remounts, on paths inside `root`; paths
/// that do not exist are skipped.
fn protect_paths<S: Sys>(sys: &mut S, root: &S::Node, plan: &Plan) -> Result<(), MountError> {
    for p in &plan.masked_paths {
        let Ok(node) = sys.lookup(root, p) else {
            continue;
        };
        let r = if sys.is_dir(&node) {
            let tmpfs = Some(Loc::name("tmpfs"));
            sys.mount(
                tmpfs,
                Loc::Node(&node),
                Some("tmpfs"),
                libc::MS_RDONLY,
                None,
            )
        } else {
            let null = Some(Loc::name("/dev/null"));
            sys.mount(null, Loc::Node(&node), None, libc::MS_BIND, None)
        };
        r.map_err(at(MountOp::Mask, p.as_str()))?;
    }
    for p in &plan.readonly_paths {
        let Ok(node) = sys.lookup(root, p) else {
            continue;
        };
        let bind = libc::MS_BIND | libc::MS_REC;
        sys.mount(Some(Loc::Node(&node)), Loc::Node(&node), None, bind, None)
            .map_err(at(MountOp::BindReadOnly, p.as_str()))?;
        let again = sys
            .lookup(root, p)
            .map_err(at(MountOp::Reopen, p.as_str()))?;
        let ro = libc::MS_REMOUNT
            | libc::MS_BIND
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC;
        sys.mount(None, Loc::Node(&again), None, ro, None)
            .map_err(at(MountOp::ReadOnly, p.as_str()))?;
    }
    Ok(())
}

/// Builds the filesystem, without a gate (see [`setup_gated`]).
#[cfg(test)]
pub fn setup<S: Sys>(sys: &mut S, plan: &Plan, v1: &V1Mounts) -> Result<(), MountError> {
    setup_gated(sys, plan, v1, &mut |_: &mut S| Ok(()))
}

/// Builds the filesystem. Called in the init, in its own mount namespace, while the agent
/// registers its cgroup: `gate` (waiting for that, then the cgroup namespace) runs once, right
/// before the first mount that shows cgroups, which must see the workload's cgroup as its
/// root. Without such a mount `gate` is not called here (the caller passes it last).
pub fn setup_gated<S: Sys, E: From<MountError>>(
    sys: &mut S,
    plan: &Plan,
    v1: &V1Mounts,
    gate: &mut dyn FnMut(&mut S) -> Result<(), E>,
) -> Result<(), E> {
    sys.mount(None, Loc::name("/"), None, plan.rootfs_propagation, None)
        .map_err(at(MountOp::MakePrivate, "/"))?;
    let Some(rootfs) = &plan.root else {
        return host_tree(sys, plan, v1, gate);
    };
    let shown = rootfs.display().to_string();
    let bind = libc::MS_BIND | libc::MS_REC;
    sys.mount(Some(Loc::Path(rootfs)), Loc::Path(rootfs), None, bind, None)
        .map_err(at(MountOp::BindRootfs, shown.as_str()))?;
    let root = sys
        .open_dir(rootfs)
        .map_err(at(MountOp::Open, shown.as_str()))?;
    mount_all(sys, &root, plan, v1, gate)?;
    if plan
        .mounts
        .iter()
        .any(|m| m.destination.trim_end_matches('/') == "/dev" && m.kind == MountKind::Tmpfs)
    {
        populate_dev(sys, &root)?;
    }
    protect_paths(sys, &root, plan)?;
    enter(sys, &root, shown)?;
    if plan.root_readonly {
        let ro = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY;
        sys.mount(None, Loc::name("/"), None, ro, None)
            .map_err(at(MountOp::RootReadOnly, "/"))?;
    }
    Ok(())
}

/// The plan's mounts in order, `gate` before the first cgroup mount.
fn mount_all<S: Sys, E: From<MountError>>(
    sys: &mut S,
    root: &S::Node,
    plan: &Plan,
    v1: &V1Mounts,
    gate: &mut dyn FnMut(&mut S) -> Result<(), E>,
) -> Result<(), E> {
    let mut gated = false;
    for m in &plan.mounts {
        if m.kind == MountKind::Cgroup && !gated {
            gate(sys)?;
            gated = true;
        }
        do_mount(sys, root, m, v1)?;
    }
    Ok(())
}

/// fchdir, then pivot_root(".", ".") stacks the old root on the new one and the lazy unmount
/// of "." removes it (mounts are private: nothing propagates to the host).
fn enter<S: Sys>(sys: &mut S, root: &S::Node, shown: String) -> Result<(), MountError> {
    sys.fchdir(root)
        .map_err(at(MountOp::EnterRootfs, shown.as_str()))?;
    sys.pivot_root(".", ".")
        .map_err(at(MountOp::PivotRoot, shown))?;
    sys.umount2(".", libc::MNT_DETACH)
        .map_err(at(MountOp::DetachOldRoot, "."))?;
    sys.chdir("/").map_err(at(MountOp::Chdir, "/"))
}

/// No rootfs: the host's files, read-only. A copy of the whole mount tree (the init's private
/// one) is made read-only and nosuid, every submount included, before anything is mounted on
/// it, so only what the plan mounts afterwards (/proc, /tmp, volumes) can be written; then the
/// masks, and the copy becomes the root.
fn host_tree<S: Sys, E: From<MountError>>(
    sys: &mut S,
    plan: &Plan,
    v1: &V1Mounts,
    gate: &mut dyn FnMut(&mut S) -> Result<(), E>,
) -> Result<(), E> {
    let tree = sys
        .clone_tree(Path::new("/"))
        .map_err(at(MountOp::CloneHost, "/"))?;
    sys.set_tree_attrs(&tree, libc::MS_RDONLY | libc::MS_NOSUID)
        .map_err(at(MountOp::TreeReadOnly, "/"))?;
    sys.attach_tree(&tree, Path::new("/"))
        .map_err(at(MountOp::AttachHost, "/"))?;
    mount_all(sys, &tree, plan, v1, gate)?;
    protect_paths(sys, &tree, plan)?;
    Ok(enter(sys, &tree, "the host's tree".to_owned())?)
}

/// The host's v1 hierarchies in which the workload has cgroups of its own (mount points in
/// `own`), as directory name under /sys/fs/cgroup and mount options. The others are not shown:
/// in those the workload sits in the launcher's cgroup, and inside a cgroup namespace their
/// mount would show that cgroup and everything below it (other workloads' names, stats and
/// limits).
pub fn host_v1_mounts(mounts: &palisade_cgroupfs::Mounts, own: &[std::path::PathBuf]) -> V1Mounts {
    mounts
        .v1
        .iter()
        .filter(|(path, _)| own.contains(path))
        .filter_map(|(path, opts)| {
            let dir = path.file_name()?.to_string_lossy().into_owned();
            let opts = if opts.iter().all(|o| o.starts_with("name=")) {
                format!("none,{}", opts.join(","))
            } else {
                opts.join(",")
            };
            Some((dir, opts))
        })
        .collect()
}

#[cfg(test)]
mod tests;
