//! What the fuzz targets (`fuzz/`, cargo-fuzz) reach inside the agent: the parsers that read
//! bytes the agent does not control. Each function takes the raw input and returns a summary
//! that is cheap to compare; none of them may panic, loop forever or allocate without bound,
//! whatever the input. Nothing else of the agent is public.

/// Every cgroupfs file parser the resource reader uses (`cpu.stat`, `memory.max`, `cpu.max`,
/// `io.stat`, `blkio.*`, `cgroup.procs`, …), on the same text. Returns the number of values
/// that parsed.
pub fn resource_files(text: &str) -> usize {
    use crate::resources::parse as p;
    let mut n = 0;
    for key in [
        "usage_usec",
        "user_usec",
        "nr_throttled",
        "anon",
        "oom_kill",
    ] {
        n += usize::from(p::flat_keyed(text, key).is_some());
    }
    n += usize::from(p::single(text).is_some());
    n += usize::from(p::limit_v2(text).is_some());
    n += usize::from(p::limit_v1_memory(text).is_some());
    n += usize::from(p::cpu_max(text).is_some());
    n += usize::from(p::cfs_quota_v1(text).is_some());
    let (r, w) = p::io_stat_v2(text);
    let (r1, w1) = p::blkio_v1(text);
    n += usize::from(r > 0 || w > 0 || r1 > 0 || w1 > 0);
    n += usize::from(p::count_lines(text) > 0);
    n
}

/// A `/proc/<pid>/net/tcp` (or `tcp6`) table as the listener scan reads it: the LISTEN
/// sockets found, as (family, port, inode).
pub fn proc_net_listeners(table: &str) -> Vec<(u32, u32, u64)> {
    crate::kernel::listening(table, palisade_common::net::AF_INET.into())
}

/// The unified-hierarchy line of a `/proc/<pid>/cgroup` file (`0::/path`).
pub fn proc_cgroup_path(text: &str) -> Option<&str> {
    crate::kernel::unified_path(text)
}

/// The question name of a DNS message the kernel copied from a UDP/53 packet.
pub fn dns_query_name(msg: &[u8]) -> Option<String> {
    crate::net::dns::query_name(msg)
}

/// Parses a BTF blob (as `/sys/kernel/btf/vmlinux`) and looks up the members the agent
/// needs; returns the offsets found. Errors are values, never panics.
pub fn btf_offsets(blob: &[u8]) -> Vec<u32> {
    let Ok(btf) = crate::btf::Btf::parse(blob) else {
        return Vec::new();
    };
    [
        ("task_struct", "exit_code"),
        ("task_struct", "real_parent"),
        ("mm_struct", "arg_start"),
        ("outer", "a"),
    ]
    .iter()
    .filter_map(|(t, m)| btf.member_offset(t, m).ok())
    .collect()
}

/// A control-socket request line as the agent's connection handler reads it: the protocol's
/// parse, then, for a subscription, the filter the agent builds from it (globs, type names).
/// Returns whether the request would be served.
pub fn control_request(line: &[u8]) -> bool {
    let text = String::from_utf8_lossy(line);
    match serde_json::from_str::<palisade_proto::Request>(&text) {
        Err(_) => false,
        Ok(palisade_proto::Request::Subscribe { containers, types }) => {
            crate::control::subscription_filter(&containers, &types).is_ok()
        }
        Ok(_) => true,
    }
}
