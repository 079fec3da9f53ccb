//! The metric families `palisade agent` exports: names, types, labels and the closed sets of
//! label values: the contract every query in `dashboards/` is checked against (test
//! `dashboards`), and that a live agent's `/metrics` is checked against (test `exported_metrics`).

/// The type of an exported metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Queried as `<name>_bucket` (with `le`), `<name>_sum` and `<name>_count`.
    Histogram,
}

/// Labels with a closed set of values: a literal matcher on them must use one of these.
pub type Values = &'static [(&'static str, &'static [&'static str])];

/// An exported metric family.
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    /// Its own labels; `instance` and `job` come from the scrape.
    pub labels: &'static [&'static str],
    /// Its labels with a closed set of values. Per family: `reason` and `direction` mean
    /// different things in different families.
    pub values: Values,
}

const fn m(name: &'static str, kind: Kind, labels: &'static [&'static str]) -> Metric {
    mv(name, kind, labels, &[])
}

const fn mv(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    values: Values,
) -> Metric {
    Metric {
        name,
        kind,
        labels,
        values,
    }
}

/// Per-container palisade_* families: the container name, plus `namespace` and `pod` for
/// Kubernetes containers (absent otherwise).
const CONTAINER: &[&str] = &["container", "namespace", "pod"];
/// The cAdvisor-compatible container_* families: always all six (possibly empty). `name` is the
/// runtime's name for the container (else its id), empty for cgroups that are not containers.
const CADVISOR: &[&str] = &["container", "id", "image", "name", "namespace", "pod"];

const LOST_REASONS: &[&str] = &[
    "syscall_stats_map_full",
    "syscall_errno_map_full",
    "ringbuf_full",
    "syscall_untimed",
];
const MAPS: &[&str] = &["SYSCALL_COUNTS", "SYSCALL_STATS", "SYSCALL_ERRNOS"];
const CGROUP_STATES: &[&str] = &["live", "removed"];
const FEATURES: &[&str] = &[
    "btf",
    "raw_tracepoint",
    "tracepoint",
    "cgroup_skb",
    "cgroup_sock_addr",
    "sock_ops",
    "send_signal",
    "cgroup_ancestors",
    "fentry",
    "syscall_fentry",
    "bpf_lsm",
    "kprobe",
    "ring_buffer",
    "cgroup_v1",
    "cgroup_v2",
    "seccomp",
];
const EXIT_REASONS: &[&str] = &["exited", "failed", "signaled", "unknown"];
/// `direction` of the byte and packet families.
const NET_DIRECTIONS: &[&str] = &["tx", "rx"];
/// `direction` of `palisade_tcp_connections_total`.
const TCP_DIRECTIONS: &[&str] = &["outbound", "inbound"];
const TCP_RESULTS: &[&str] = &["established", "refused", "timeout"];
const EVENT_TYPES: &[&str] = &[
    "exec",
    "exit",
    "oom",
    "container_start",
    "container_stop",
    "flow",
    "policy_violation",
    "cgroup_move",
    "policy_unenforced",
];
const EVENT_SINKS: &[&str] = &["log", "subscriber", "otlp"];
/// `type` of `palisade_events_kernel_lost_total`: the events the kernel counts per container.
const KERNEL_LOST_TYPES: &[&str] = &["exec", "exit", "flow"];
/// `action` of `palisade_policy_violations_total`, what happened (`taken::name` in
/// `common/src/policy.rs`): errno, kill and drop were blocked (enforce mode), would_block is audit
/// mode, log was reported only.
const POLICY_ACTIONS: &[&str] = &["errno", "kill", "drop", "would_block", "log"];
const POLICY_MODES: &[&str] = &["audit", "enforce"];
/// Enforcement hook groups, attached while some policy needs them.
const POLICY_HOOKS: &[&str] = &[
    "syscalls",
    "syscalls_lsm",
    "seccomp",
    "exec",
    "exec_lsm",
    "egress",
    "socket_create",
    "packet_socket",
    "ingress",
    "files",
    "files_lsm",
];
/// `reason` of `palisade_policy_unenforced`: a full table, a hook group that does not attach,
/// the object not loading, or file rules that should refuse reported only.
const UNENFORCED_REASONS: &[&str] = &[
    "slots_full",
    "cgroups_full",
    "rules_full",
    "network_policies",
    "table_error",
    "not_loaded",
    "hook_syscalls",
    "hook_seccomp",
    "hook_exec",
    "hook_egress",
    "hook_socket_create",
    "hook_packet_socket",
    "hook_ingress",
    "hook_files",
    "files_reported_only",
];

/// Every metric family `palisade agent` exports: name, type and labels (`instance` and `job` are
/// added by Prometheus).
pub const METRICS: &[Metric] = &[
    // Syscalls (per container; `namespace` and `pod` for Kubernetes containers).
    m(
        "palisade_syscalls_total",
        Kind::Counter,
        &["container", "namespace", "pod", "syscall"],
    ),
    m(
        "palisade_syscall_errors_total",
        Kind::Counter,
        &["container", "namespace", "pod", "syscall", "errno"],
    ),
    m(
        "palisade_syscall_duration_seconds",
        Kind::Histogram,
        &["container", "namespace", "pod", "syscall"],
    ),
    // Processes and OOM kills.
    m("palisade_process_forks_total", Kind::Counter, CONTAINER),
    m("palisade_process_execs_total", Kind::Counter, CONTAINER),
    mv(
        "palisade_process_exits_total",
        Kind::Counter,
        &["container", "namespace", "pod", "reason"],
        &[("reason", EXIT_REASONS)],
    ),
    m("palisade_oom_kills_total", Kind::Counter, CONTAINER),
    // Events of a container the kernel ring buffer had no room for.
    mv(
        "palisade_events_kernel_lost_total",
        Kind::Counter,
        &["container", "namespace", "pod", "type"],
        &[("type", KERNEL_LOST_TYPES)],
    ),
    // Network.
    mv(
        "palisade_network_bytes_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction"],
        &[("direction", NET_DIRECTIONS)],
    ),
    mv(
        "palisade_network_packets_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction"],
        &[("direction", NET_DIRECTIONS)],
    ),
    mv(
        "palisade_network_icmp_packets_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction"],
        &[("direction", NET_DIRECTIONS)],
    ),
    mv(
        "palisade_tcp_connections_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction", "result"],
        &[("direction", TCP_DIRECTIONS), ("result", TCP_RESULTS)],
    ),
    m("palisade_tcp_retransmits_total", Kind::Counter, CONTAINER),
    m("palisade_tcp_rtt_seconds", Kind::Histogram, CONTAINER),
    // Opt-in (network.per_peer_metrics); `remote` is a CIDR.
    mv(
        "palisade_network_peer_bytes_total",
        Kind::Counter,
        &["container", "namespace", "pod", "direction", "remote"],
        &[("direction", NET_DIRECTIONS)],
    ),
    // cAdvisor-compatible resources.
    m("container_cpu_usage_seconds_total", Kind::Counter, CADVISOR),
    m("container_cpu_user_seconds_total", Kind::Counter, CADVISOR),
    m(
        "container_cpu_system_seconds_total",
        Kind::Counter,
        CADVISOR,
    ),
    m("container_cpu_cfs_periods_total", Kind::Counter, CADVISOR),
    m(
        "container_cpu_cfs_throttled_periods_total",
        Kind::Counter,
        CADVISOR,
    ),
    m(
        "container_cpu_cfs_throttled_seconds_total",
        Kind::Counter,
        CADVISOR,
    ),
    m("container_oom_events_total", Kind::Counter, CADVISOR),
    m("container_fs_reads_bytes_total", Kind::Counter, CADVISOR),
    m("container_fs_writes_bytes_total", Kind::Counter, CADVISOR),
    m("container_memory_usage_bytes", Kind::Gauge, CADVISOR),
    m("container_memory_working_set_bytes", Kind::Gauge, CADVISOR),
    m("container_memory_rss", Kind::Gauge, CADVISOR),
    m("container_memory_cache", Kind::Gauge, CADVISOR),
    m("container_memory_failcnt", Kind::Gauge, CADVISOR),
    m("container_memory_swap", Kind::Gauge, CADVISOR),
    m("container_memory_mapped_file", Kind::Gauge, CADVISOR),
    m("container_memory_max_usage_bytes", Kind::Gauge, CADVISOR),
    m("container_spec_cpu_shares", Kind::Gauge, CADVISOR),
    // The cgroup_skb socket counters (IP bytes, loopback included; no `interface` label).
    m(
        "container_network_receive_bytes_total",
        Kind::Counter,
        CADVISOR,
    ),
    m(
        "container_network_transmit_bytes_total",
        Kind::Counter,
        CADVISOR,
    ),
    m(
        "container_network_receive_packets_total",
        Kind::Counter,
        CADVISOR,
    ),
    m(
        "container_network_transmit_packets_total",
        Kind::Counter,
        CADVISOR,
    ),
    // 0 = unlimited.
    m("container_spec_memory_limit_bytes", Kind::Gauge, CADVISOR),
    m("container_spec_cpu_quota", Kind::Gauge, CADVISOR),
    m("container_spec_cpu_period", Kind::Gauge, CADVISOR),
    m("container_processes", Kind::Gauge, CADVISOR),
    m("container_threads", Kind::Gauge, CADVISOR),
    m("container_start_time_seconds", Kind::Gauge, CADVISOR),
    m("container_last_seen", Kind::Gauge, CADVISOR),
    // The agent itself.
    // `node`: the agent's node name (`--node-name`, NODE_NAME, else the hostname).
    m(
        "palisade_build_info",
        Kind::Gauge,
        &["version", "commit", "node"],
    ),
    mv(
        "palisade_kernel_feature",
        Kind::Gauge,
        &["feature"],
        &[("feature", FEATURES)],
    ),
    mv(
        "palisade_kernel_lost_total",
        Kind::Counter,
        &["reason"],
        &[("reason", LOST_REASONS)],
    ),
    mv(
        "palisade_bpf_map_entries",
        Kind::Gauge,
        &["map"],
        &[("map", MAPS)],
    ),
    mv(
        "palisade_bpf_map_capacity",
        Kind::Gauge,
        &["map"],
        &[("map", MAPS)],
    ),
    mv(
        "palisade_cgroups",
        Kind::Gauge,
        &["state"],
        &[("state", CGROUP_STATES)],
    ),
    m("palisade_identity_dropped_total", Kind::Counter, &[]),
    m("palisade_series_dropped", Kind::Gauge, &[]),
    m("palisade_scrape_duration_seconds", Kind::Histogram, &[]),
    m("palisade_network_flows", Kind::Gauge, &[]),
    m("palisade_network_flows_evicted_total", Kind::Counter, &[]),
    m("palisade_network_peer_series_dropped", Kind::Gauge, &[]),
    m("palisade_containers", Kind::Gauge, &["runtime"]),
    m("palisade_identity_unresolved_total", Kind::Counter, &[]),
    mv(
        "palisade_events_total",
        Kind::Counter,
        &["type"],
        &[("type", EVENT_TYPES)],
    ),
    mv(
        "palisade_events_dropped_total",
        Kind::Counter,
        &["sink"],
        &[("sink", EVENT_SINKS)],
    ),
    mv(
        "palisade_events_delivered_total",
        Kind::Counter,
        &["sink"],
        &[("sink", EVENT_SINKS)],
    ),
    m("palisade_kernel_queue_waits_total", Kind::Counter, &[]),
    m("palisade_process_table_entries", Kind::Gauge, &[]),
    m("palisade_process_table_evicted_total", Kind::Counter, &[]),
    // Policies (`policy.paths`, `palisade run --policy`). `container` is the container name only
    // (no namespace or pod). A violation series appears at its first violation; hook_attached and
    // events_lost exist while the policy programs are loaded (some policy exists).
    mv(
        "palisade_policy_violations_total",
        Kind::Counter,
        &["policy", "rule", "action", "container"],
        &[("action", POLICY_ACTIONS)],
    ),
    m("palisade_policy_reloads_total", Kind::Counter, &[]),
    m("palisade_policy_reload_errors_total", Kind::Counter, &[]),
    mv(
        "palisade_policy_cgroups",
        Kind::Gauge,
        &["policy", "mode"],
        &[("mode", POLICY_MODES)],
    ),
    mv(
        "palisade_policy_hook_attached",
        Kind::Gauge,
        &["hook"],
        &[("hook", POLICY_HOOKS)],
    ),
    m("palisade_policy_events_lost_total", Kind::Counter, &[]),
    // One series per (policy, container, reason) that cannot be put in place; none when all is.
    mv(
        "palisade_policy_unenforced",
        Kind::Gauge,
        &["policy", "container", "reason"],
        &[("reason", UNENFORCED_REASONS)],
    ),
];

/// Families only exported when turned on in the agent config: a panel showing one says so.
pub const OPT_IN: &[(&str, &str)] = &[
    (
        "palisade_network_peer_bytes_total",
        "network.per_peer_metrics",
    ),
    (
        "palisade_network_peer_series_dropped",
        "network.per_peer_metrics",
    ),
];

/// Labels every series gets from the Prometheus scrape.
pub const TARGET_LABELS: &[&str] = &["instance", "job"];
/// The exported family a queried series name belongs to, and whether it is a histogram bucket.
pub fn family(name: &str) -> Option<(&'static Metric, bool)> {
    if let Some(m) = METRICS
        .iter()
        .find(|m| m.name == name && m.kind != Kind::Histogram)
    {
        return Some((m, false));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some(m) = METRICS
                .iter()
                .find(|m| m.name == base && m.kind == Kind::Histogram)
        {
            return Some((m, suffix == "_bucket"));
        }
    }
    None
}

/// The labels a queried series name may carry and the closed value sets among them, or `None`
/// when the agent does not export it. `extra` names non-Palisade metrics (with only target
/// labels).
pub fn labels_of(metric: &str, extra: &[&str]) -> Option<(Vec<&'static str>, Values)> {
    if extra.contains(&metric) {
        return Some((TARGET_LABELS.to_vec(), &[]));
    }
    let (family, bucket) = family(metric)?;
    let mut l: Vec<&str> = family.labels.iter().chain(TARGET_LABELS).copied().collect();
    if bucket {
        l.push("le");
    }
    Some((l, family.values))
}
