//! The cgroup filesystem layout of this host: v1, hybrid or pure v2, and where the unified
//! (cgroup v2) hierarchy is mounted. Cgroup ids are inode numbers in the unified hierarchy.
use std::{
    ffi::CString,
    fmt,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupfsError {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mountinfo(std::io::Error),
    #[error(
        "no cgroup v2 (unified) hierarchy is mounted; containers are identified by cgroup v2 ids (mount one: `mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 none /sys/fs/cgroup/unified`)"
    )]
    NoUnified,
    #[error("cgroup root {path} is not a cgroup2 mount: {reason}")]
    BadRoot { path: PathBuf, reason: String },
}

/// How cgroups are mounted on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Only v1 controller hierarchies.
    V1,
    /// v1 controllers plus a cgroup2 mount (usually /sys/fs/cgroup/unified).
    Hybrid,
    /// Only cgroup2.
    V2,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::V1 => "v1",
            Layout::Hybrid => "hybrid",
            Layout::V2 => "v2",
        })
    }
}

/// What /proc/self/mountinfo says about cgroups.
#[derive(Debug, Clone)]
pub struct Mounts {
    pub layout: Layout,
    /// Mount point of the unified hierarchy, if any.
    pub unified: Option<PathBuf>,
    /// v1 hierarchies: (mount point, controllers or `name=` options).
    pub v1: Vec<(PathBuf, Vec<String>)>,
}

impl Mounts {
    pub fn detect() -> Result<Self, CgroupfsError> {
        let text =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(CgroupfsError::Mountinfo)?;
        Ok(Self::parse(&text))
    }

    /// Parses mountinfo text (see proc(5)).
    pub fn parse(mountinfo: &str) -> Self {
        let mut unified = Vec::new();
        let mut v1 = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split_whitespace().collect();
            let Some(mount_point) = fields.get(4) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            let mut rfields = right.split_whitespace();
            let fstype = rfields.next().unwrap_or_default();
            let _source = rfields.next();
            let super_opts = rfields.next().unwrap_or_default();
            match fstype {
                "cgroup2" => unified.push(mount_point),
                "cgroup" => {
                    let controllers: Vec<String> = super_opts
                        .split(',')
                        .filter(|o| {
                            // mount options that are not controllers (see cgroups(7))
                            !matches!(
                                *o,
                                "rw" | "ro"
                                    | "xattr"
                                    | "noprefix"
                                    | "clone_children"
                                    | "cpuset_v2_mode"
                                    | "favordynmods"
                            ) && !o.starts_with("release_agent")
                        })
                        .map(str::to_owned)
                        .collect();
                    v1.push((mount_point, controllers));
                }
                _ => {}
            }
        }
        // Prefer the conventional locations when several cgroup2 mounts exist.
        unified.sort_by_key(|p| match p.to_str() {
            Some("/sys/fs/cgroup") => 0,
            Some("/sys/fs/cgroup/unified") => 1,
            _ => 2,
        });
        let unified = unified.into_iter().next();
        let layout = match (unified.is_some(), v1.iter().any(|(_, c)| !is_named_only(c))) {
            (true, true) => Layout::Hybrid,
            (true, false) => Layout::V2,
            (false, _) => Layout::V1,
        };
        Self {
            layout,
            unified,
            v1,
        }
    }

    /// The unified root to use: the configured one (checked) or the detected one.
    pub fn unified_root(&self, configured: Option<&Path>) -> Result<PathBuf, CgroupfsError> {
        if let Some(p) = configured {
            check_cgroup2(p)?;
            return Ok(p.to_owned());
        }
        self.unified.clone().ok_or(CgroupfsError::NoUnified)
    }
}

/// A v1 hierarchy with only `name=...` (like name=systemd) carries no controllers.
fn is_named_only(opts: &[String]) -> bool {
    opts.iter().all(|o| o.starts_with("name=") || o == "none")
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_cgroup2(p: &Path) -> Result<(), CgroupfsError> {
    let bad = |reason: String| CgroupfsError::BadRoot {
        path: p.to_owned(),
        reason,
    };
    let st = nix::sys::statfs::statfs(p).map_err(|e| bad(e.to_string()))?;
    if st.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
        return Err(bad("filesystem type is not cgroup2".into()));
    }
    Ok(())
}

/// The directory of the cgroup at `rel` (a path like `/system.slice/x.service`, as the
/// registry keeps it) under a hierarchy mounted at `mount`.
pub fn dir(mount: &Path, rel: &str) -> PathBuf {
    mount.join(rel.trim_start_matches('/'))
}

/// The cgroup v2 id of a cgroup directory (its inode number).
pub fn cgroup_id(dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(dir)?.ino())
}

/// Walks the unified hierarchy and returns (id, path relative to the root) for every cgroup,
/// the root included (as `/`). Directories that vanish during the walk are skipped.
pub fn walk(root: &Path) -> std::io::Result<Vec<(u64, String)>> {
    let mut out = vec![(cgroup_id(root)?, "/".to_owned())];
    let mut stack = vec![(root.to_owned(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let Ok(md) = entry.metadata() else { continue };
            let name = entry.file_name();
            let rel_child = format!("{rel}/{}", name.to_string_lossy());
            out.push((md.ino(), rel_child.clone()));
            stack.push((entry.path(), rel_child));
        }
    }
    Ok(out)
}

/// Finds the path of cgroup `id` without walking the tree: cgroup2 (kernfs) exports file
/// handles whose payload is the 64-bit id, so `open_by_handle_at` opens the directory directly.
/// Returns `None` when the cgroup no longer exists.
pub fn resolve_id(root: &Path, id: u64) -> Option<String> {
    const FILEID_KERNFS: i32 = 0xfe;
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    let root_c = CString::new(root.as_os_str().as_bytes()).ok()?;
    // SAFETY: `root_c` is a valid NUL-terminated path; the returned fd is owned below.
    let mount_fd = unsafe {
        libc::open(
            root_c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if mount_fd < 0 {
        return None;
    }
    // SAFETY: `mount_fd` is a fresh, valid descriptor we own.
    let mount_fd = unsafe { OwnedFd::from_raw_fd(mount_fd) };
    let mut handle = Handle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `handle` is a `struct file_handle` with 8 payload bytes, as handle_bytes says.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount_fd.as_raw_fd(),
            (&raw mut handle).cast(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_PATH,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let rel = target.strip_prefix(root).ok()?;
    Some(format!("/{}", rel.to_string_lossy()).replace("//", "/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
27 25 0:25 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
28 27 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
29 27 0:27 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
32 27 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
33 27 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
";
    const V2: &str = "\
25 30 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
27 25 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const V1: &str = "\
32 27 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory
";

    #[test]
    fn detects_layouts() {
        let m = Mounts::parse(HYBRID);
        assert_eq!(m.layout, Layout::Hybrid);
        assert_eq!(
            m.unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        let controllers = |dir: &str| {
            m.v1.iter()
                .find(|(p, _)| p == Path::new(dir))
                .map(|(_, c)| c.join(","))
        };
        assert_eq!(
            controllers("/sys/fs/cgroup/memory").as_deref(),
            Some("memory")
        );
        assert_eq!(
            controllers("/sys/fs/cgroup/cpu,cpuacct").as_deref(),
            Some("cpu,cpuacct")
        );
        assert_eq!(
            controllers("/sys/fs/cgroup/systemd").as_deref(),
            Some("name=systemd")
        );

        let m = Mounts::parse(V2);
        assert_eq!(m.layout, Layout::V2);
        assert_eq!(m.unified.as_deref(), Some(Path::new("/sys/fs/cgroup")));

        let m = Mounts::parse(V1);
        assert_eq!(m.layout, Layout::V1);
        assert!(m.unified.is_none());
        assert!(matches!(
            m.unified_root(None),
            Err(CgroupfsError::NoUnified)
        ));
    }

    #[test]
    fn a_named_v1_hierarchy_alone_does_not_make_a_host_hybrid() {
        let text = format!(
            "{V2}29 27 0:27 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n"
        );
        let m = Mounts::parse(&text);
        assert_eq!(m.layout, Layout::V2);
        assert_eq!(m.v1.len(), 1);
    }

    #[test]
    fn unescapes_mount_points() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn walk_lists_directories_with_inode_ids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::create_dir_all(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("a/file"), "x").unwrap();
        let mut got = walk(dir.path()).unwrap();
        got.sort_by(|x, y| x.1.cmp(&y.1));
        let paths: Vec<&str> = got.iter().map(|(_, p)| p.as_str()).collect();
        assert_eq!(paths, ["/", "/a", "/a/b", "/c"]);
        assert_eq!(got[2].0, cgroup_id(&dir.path().join("a/b")).unwrap());
    }
}
