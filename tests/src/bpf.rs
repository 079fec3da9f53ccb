//! What the kernel has attached to a cgroup, asked with `bpf(BPF_PROG_QUERY)` (as `bpftool
//! cgroup show` does): the program and link ids per attach type.
use std::{os::fd::AsRawFd as _, path::Path};

/// The cgroup attach types Palisade uses, with the kernel's `enum bpf_attach_type` values.
pub const ATTACH_TYPES: &[(&str, u32)] = &[
    ("cgroup_inet_ingress", 0),
    ("cgroup_inet_egress", 1),
    ("cgroup_inet_sock_create", 2),
    ("cgroup_sock_ops", 3),
    ("cgroup_device", 6),
    ("cgroup_inet4_bind", 8),
    ("cgroup_inet6_bind", 9),
    ("cgroup_inet4_connect", 10),
    ("cgroup_inet6_connect", 11),
    ("cgroup_udp4_sendmsg", 14),
    ("cgroup_udp6_sendmsg", 15),
];

/// `union bpf_attr` as BPF_PROG_QUERY reads it.
#[repr(C)]
#[derive(Default)]
struct Query {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

const BPF_PROG_QUERY: libc::c_long = 16;

/// One program attached to a cgroup (directly, not inherited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attached {
    pub attach_type: &'static str,
    pub prog_id: u32,
    /// 0 when attached without a link.
    pub link_id: u32,
}

/// Every program attached to the cgroup directory `dir`, for each of [`ATTACH_TYPES`].
pub fn attached(dir: &Path) -> Vec<Attached> {
    let f = std::fs::File::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    let mut out = Vec::new();
    for (name, ty) in ATTACH_TYPES {
        let mut progs = vec![0u32; 256];
        let mut links = vec![0u32; 256];
        let mut query = |with_links: bool| {
            let mut q = Query {
                target_fd: f.as_raw_fd() as u32,
                attach_type: *ty,
                prog_ids: progs.as_mut_ptr() as u64,
                prog_cnt: progs.len() as u32,
                link_ids: if with_links {
                    links.as_mut_ptr() as u64
                } else {
                    0
                },
                ..Query::default()
            };
            // SAFETY: BPF_PROG_QUERY with an attr of the kernel's layout whose id buffers hold
            // prog_cnt entries each and outlive the call.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_PROG_QUERY,
                    &raw mut q,
                    size_of::<Query>() as u32,
                )
            };
            (r, q)
        };
        let (mut r, mut q) = query(true);
        if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
            // kernels before 6.6 know no link ids and refuse an attr that sets them
            (r, q) = query(false);
        }
        if r != 0 {
            let e = std::io::Error::last_os_error();
            // an attach type this kernel does not know
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EINVAL),
                "BPF_PROG_QUERY {name}: {e}"
            );
            continue;
        }
        for i in 0..q.prog_cnt as usize {
            out.push(Attached {
                attach_type: name,
                prog_id: progs[i],
                link_id: links[i],
            });
        }
    }
    out.sort();
    out
}

impl crate::Agent {
    /// Ids and names of the BPF maps and programs this agent holds open.
    pub fn bpf_objects(&self) -> (Vec<(u32, String)>, Vec<u32>) {
        let mut maps = Vec::new();
        let mut progs = Vec::new();
        let dir = format!("/proc/{}/fdinfo", self.pid());
        for e in std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            for line in text.lines() {
                if let Some(id) = line.strip_prefix("map_id:") {
                    if let Ok(id) = id.trim().parse::<u32>() {
                        let name = aya::maps::MapInfo::from_id(id)
                            .ok()
                            .and_then(|i| i.name_as_str().map(str::to_owned))
                            .unwrap_or_default();
                        maps.push((id, name));
                    }
                } else if let Some(id) = line.strip_prefix("prog_id:")
                    && let Ok(id) = id.trim().parse::<u32>()
                {
                    progs.push(id);
                }
            }
        }
        maps.sort();
        maps.dedup();
        progs.sort();
        progs.dedup();
        (maps, progs)
    }

    /// The programs this agent runs at the raw tracepoint `tp`, by program id: one per link
    /// there that it holds open (its own links, and the pinned ones it attached or adopted),
    /// read from the links' fdinfo.
    pub fn raw_tracepoint_programs(&self, tp: &str) -> Vec<u32> {
        let dir = format!("/proc/{}/fdinfo", self.pid());
        let mut links = Vec::new();
        for e in std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            if field("link_type:").as_deref() == Some("raw_tracepoint")
                && field("tp_name:").as_deref() == Some(tp)
                && let (Some(link), Some(prog)) = (field("link_id:"), field("prog_id:"))
            {
                links.push((link, prog.parse::<u32>().unwrap_or(0)));
            }
        }
        links.sort();
        links.dedup();
        links.into_iter().map(|(_, prog)| prog).collect()
    }

    /// Cgroup ids that have at least one key in the agent's per-cgroup kernel maps (syscall
    /// counts and latencies, errnos, process counters).
    pub fn cgroup_ids_in_maps(&self) -> Vec<u64> {
        use aya::maps::{Array, Map, MapData, PerCpuHashMap};
        use palisade_common::{
            COUNT_EMPTY, COUNT_RETIRED, CountSlot, ErrnoKey, SyscallKey, SyscallStats, names,
        };
        let mut ids = Vec::new();
        for (id, name) in self.bpf_objects().0 {
            if name == names::MAP_SYSCALL_COUNTS {
                // every position of every CPU region, through the syscall interface (not the
                // agent's mapping)
                let data = MapData::from_id(id).unwrap_or_else(|e| panic!("open map {id}: {e}"));
                let m: Array<_, CountSlot> =
                    Array::try_from(Map::Array(data)).unwrap_or_else(|e| panic!("map {id}: {e}"));
                ids.extend(
                    m.iter()
                        .filter_map(Result::ok)
                        .map(|s| s.cgroup_id)
                        .filter(|id| *id != COUNT_EMPTY && *id != COUNT_RETIRED),
                );
                continue;
            }
            if name != names::MAP_SYSCALL_STATS
                && name != names::MAP_SYSCALL_ERRNOS
                && name != names::MAP_PROCESS_COUNTS
            {
                continue;
            }
            let data = MapData::from_id(id).unwrap_or_else(|e| panic!("open map {id}: {e}"));
            if name == names::MAP_PROCESS_COUNTS {
                let m: PerCpuHashMap<_, u64, palisade_common::ProcessCounts> =
                    PerCpuHashMap::try_from(Map::PerCpuHashMap(data))
                        .unwrap_or_else(|e| panic!("map {id}: {e}"));
                ids.extend(m.keys().filter_map(Result::ok));
            } else if name == names::MAP_SYSCALL_STATS {
                let m: PerCpuHashMap<_, SyscallKey, SyscallStats> =
                    PerCpuHashMap::try_from(Map::PerCpuHashMap(data))
                        .unwrap_or_else(|e| panic!("map {id}: {e}"));
                ids.extend(m.keys().filter_map(Result::ok).map(|k| k.cgroup_id));
            } else {
                let m: PerCpuHashMap<_, ErrnoKey, u64> =
                    PerCpuHashMap::try_from(Map::PerCpuHashMap(data))
                        .unwrap_or_else(|e| panic!("map {id}: {e}"));
                ids.extend(m.keys().filter_map(Result::ok).map(|k| k.cgroup_id));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// `union bpf_attr` as BPF_OBJ_GET and BPF_OBJ_PIN read it.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` as BPF_OBJ_GET_INFO_BY_FD reads it.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: `attr` is the kernel's `bpf_attr` layout for `cmd`; its pointers are the
    // caller's and outlive the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) }
}

fn c_path(path: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt as _;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The id of the program (or other BPF object) an open descriptor refers to.
fn object_id(fd: &std::os::fd::OwnedFd) -> u32 {
    // the head of bpf_prog_info (type, id): enough for the id
    let mut info = [0u32; 2];
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    let r = bpf(15, &mut attr);
    assert_eq!(
        r,
        0,
        "BPF_OBJ_GET_INFO_BY_FD: {}",
        std::io::Error::last_os_error()
    );
    info[1]
}

/// The id of the object pinned at `path`, if any.
pub fn pinned_id(path: &Path) -> Option<u32> {
    use std::os::fd::FromRawFd as _;
    let p = c_path(path);
    let mut attr = ObjAttr {
        pathname: p.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(7, &mut attr);
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor from BPF_OBJ_GET, owned here.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    Some(object_id(&fd))
}

/// Plants a device program that allows every device at `path` (replacing what is pinned
/// there), as a stale or hostile pin would; returns its id.
pub fn plant_allow_all_device_program(path: &Path) -> u32 {
    use std::os::fd::FromRawFd as _;
    // r0 = 1; exit
    let insns: [u64; 2] = [0x0000_0001_0000_00b7, 0x95];
    let license = c"GPL";
    #[repr(C)]
    struct Load {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        log_level: u32,
        log_size: u32,
        log_buf: u64,
        kern_version: u32,
        prog_flags: u32,
        prog_name: [u8; 16],
        prog_ifindex: u32,
        expected_attach_type: u32,
    }
    let mut load = Load {
        prog_type: 15, // BPF_PROG_TYPE_CGROUP_DEVICE
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: *b"test_allow_all\0\0",
        prog_ifindex: 0,
        expected_attach_type: 6, // BPF_CGROUP_DEVICE
    };
    let fd = bpf(5, &mut load);
    assert!(
        fd >= 0,
        "BPF_PROG_LOAD: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor from BPF_PROG_LOAD, owned here.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let _ = std::fs::remove_file(path);
    let p = c_path(path);
    let mut pin = ObjAttr {
        pathname: p.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    assert_eq!(
        bpf(6, &mut pin),
        0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    object_id(&fd)
}
