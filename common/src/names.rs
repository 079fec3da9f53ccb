//! Names of maps, programs and globals in the eBPF object, shared so a rename breaks the build.

/// Per-CPU hash: [`crate::SyscallKey`] → [`crate::SyscallStats`].
pub const MAP_SYSCALL_STATS: &str = "SYSCALL_STATS";
/// Array of `u32` by syscall number: 1 for a syscall with a latency key of its own, 0 for one
/// whose timed calls go to its cgroup's [`crate::LATENCY_OTHER`] key.
pub const MAP_LATENCY_DETAIL: &str = "LATENCY_DETAIL";
/// Array (mmap-able), one open-addressing region per possible CPU: [`crate::CountSlot`].
pub const MAP_SYSCALL_COUNTS: &str = "SYSCALL_COUNTS";
/// Global `u32`: positions per CPU region of `SYSCALL_COUNTS` - 1 (a power of two - 1).
pub const GLOBAL_COUNT_SLOT_MASK: &str = "COUNT_SLOT_MASK";
/// Global `u32`: log2 of the positions per CPU region of `SYSCALL_COUNTS`.
pub const GLOBAL_COUNT_SLOT_BITS: &str = "COUNT_SLOT_BITS";
/// Per-CPU hash: [`crate::ErrnoKey`] → `u64` count.
pub const MAP_SYSCALL_ERRNOS: &str = "SYSCALL_ERRNOS";
/// Array: `tid & THREAD_SLOT_MASK` → [`crate::ThreadSlot`] (cgroup cache, sampling state).
pub const MAP_THREAD_SLOTS: &str = "THREAD_SLOTS";
/// Array: `(regs >> CALL_SLOT_SHIFT) & THREAD_SLOT_MASK` → [`crate::CallSlot`] (syscalls in flight).
pub const MAP_CALL_SLOTS: &str = "CALL_SLOTS";
/// Hash: cgroup id (`u64`) → `u32` 1, the traced set when `FILTER_ENABLED` is 1.
pub const MAP_CGROUP_FILTER: &str = "CGROUP_FILTER";
/// Array of `u32` switches set by userspace at run time (see [`crate::CONFIG_CGROUP_CACHE`]).
pub const MAP_CONFIG: &str = "CONFIG";
/// Per-CPU array: [`crate::loss`] index → `u64` count.
pub const MAP_LOSS_COUNTERS: &str = "LOSS_COUNTERS";
/// Ring buffer of rare events ([`crate::CgroupEvent`], ...).
pub const MAP_EVENTS: &str = "EVENTS";

/// Raw tracepoint program on `sys_enter`.
pub const PROG_SYS_ENTER: &str = "sys_enter";
/// Raw tracepoint program on `sys_exit`.
pub const PROG_SYS_EXIT: &str = "sys_exit";
/// fentry program on `x64_sys_call` (the syscall dispatcher): `sys_enter`'s alternative.
pub const PROG_SYS_ENTER_FENTRY: &str = "sys_enter_fentry";
/// fexit program on `x64_sys_call`: `sys_exit`'s alternative.
pub const PROG_SYS_EXIT_FEXIT: &str = "sys_exit_fexit";
/// The kernel function both fentry/fexit syscall programs attach to.
pub const FN_SYSCALL_DISPATCH: &str = "x64_sys_call";
/// Classic tracepoint program on `cgroup:cgroup_mkdir`.
pub const PROG_CGROUP_MKDIR: &str = "cgroup_mkdir";
/// Classic tracepoint program on `cgroup:cgroup_rmdir`.
pub const PROG_CGROUP_RMDIR: &str = "cgroup_rmdir";

/// Classic tracepoint program on `sched:sched_process_fork` (fork counts and thread-slot cache
/// invalidation).
pub const PROG_PROCESS_FORK: &str = "process_fork";
/// Classic tracepoint program on `cgroup:cgroup_attach_task` (thread-slot cache update).
pub const PROG_SLOT_ATTACH: &str = "slot_attach";

/// Global `u32`: 1 = only count cgroups present in `CGROUP_FILTER`, 0 = count all.
pub const GLOBAL_FILTER_ENABLED: &str = "FILTER_ENABLED";
/// Global `u32`: `THREAD_SLOTS` size minus one (the size is a power of two).
pub const GLOBAL_THREAD_SLOT_MASK: &str = "THREAD_SLOT_MASK";
/// Global `u32`: which syscalls are timed (0 every call, `LATENCY_NEVER` none, else one in
/// mask + 1, picked at random; `syscalls.latency_sample`).
pub const GLOBAL_LATENCY_SAMPLE_MASK: &str = "LATENCY_SAMPLE_MASK";
/// Global `u64`: byte offset of the syscall number (`orig_ax`) in `struct pt_regs`.
pub const GLOBAL_PT_REGS_NR_OFFSET: &str = "PT_REGS_NR_OFFSET";
/// Global `u32`: syscall numbers that never return (`exit`, `exit_group`); counted at entry.
pub const GLOBAL_NR_EXIT: &str = "NR_EXIT";
/// See [`GLOBAL_NR_EXIT`].
pub const GLOBAL_NR_EXIT_GROUP: &str = "NR_EXIT_GROUP";
/// Global `u32`: hierarchy id of the unified (cgroup v2) hierarchy in `cgroup:*` tracepoints.
pub const GLOBAL_UNIFIED_HIERARCHY: &str = "UNIFIED_HIERARCHY";
/// Globals `u32`: field offsets in the `cgroup:cgroup_mkdir`/`rmdir` records, read from tracefs.
pub const GLOBAL_CG_OFF_ROOT: &str = "CG_OFF_ROOT";
/// See [`GLOBAL_CG_OFF_ROOT`].
pub const GLOBAL_CG_OFF_LEVEL: &str = "CG_OFF_LEVEL";
/// See [`GLOBAL_CG_OFF_ROOT`].
pub const GLOBAL_CG_OFF_ID: &str = "CG_OFF_ID";
/// See [`GLOBAL_CG_OFF_ROOT`].
pub const GLOBAL_CG_OFF_PATH: &str = "CG_OFF_PATH";
/// Globals `u32`: `clone`, `clone3`, `fork`, `vfork` numbers. A child's first return from them
/// reaches `sys_exit` without a `sys_enter`; it is not a second call and is not counted.
pub const GLOBAL_NR_CLONE: &str = "NR_CLONE";
/// See [`GLOBAL_NR_CLONE`].
pub const GLOBAL_NR_CLONE3: &str = "NR_CLONE3";
/// See [`GLOBAL_NR_CLONE`].
pub const GLOBAL_NR_FORK: &str = "NR_FORK";
/// See [`GLOBAL_NR_CLONE`].
pub const GLOBAL_NR_VFORK: &str = "NR_VFORK";
/// Global `u32`: offset of `child_pid` in `sched:sched_process_fork` records.
pub const GLOBAL_FORK_OFF_CHILD_PID: &str = "FORK_OFF_CHILD_PID";
/// Globals `u32`: offsets of `dst_root`, `dst_id`, `pid` in `cgroup:cgroup_attach_task` records.
pub const GLOBAL_ATTACH_OFF_ROOT: &str = "ATTACH_OFF_ROOT";
/// See [`GLOBAL_ATTACH_OFF_ROOT`].
pub const GLOBAL_ATTACH_OFF_ID: &str = "ATTACH_OFF_ID";
/// See [`GLOBAL_ATTACH_OFF_ROOT`].
pub const GLOBAL_ATTACH_OFF_PID: &str = "ATTACH_OFF_PID";
/// See [`GLOBAL_ATTACH_OFF_ROOT`] (`comm`, a `__data_loc` string).
pub const GLOBAL_ATTACH_OFF_COMM: &str = "ATTACH_OFF_COMM";

/// Per-CPU hash: cgroup id (`u64`) → [`crate::ProcessCounts`].
pub const MAP_PROCESS_COUNTS: &str = "PROCESS_COUNTS";
/// Classic tracepoint program on `sched:sched_process_exec`.
pub const PROG_PROCESS_EXEC: &str = "process_exec";
/// Classic tracepoint program on `sched:sched_process_exit`.
pub const PROG_PROCESS_EXIT: &str = "process_exit";
/// Classic tracepoint program on `oom:mark_victim`.
pub const PROG_OOM_VICTIM: &str = "oom_victim";

/// Global `u32`: 1 when the `TASK_OFF_*`/`MM_OFF_*` offsets below are valid (kernel BTF found).
pub const GLOBAL_HAVE_TASK_OFFSETS: &str = "HAVE_TASK_OFFSETS";
/// Globals `u32`: byte offsets in `struct task_struct`, from the kernel's BTF.
pub const GLOBAL_TASK_OFF_MM: &str = "TASK_OFF_MM";
/// See [`GLOBAL_TASK_OFF_MM`].
pub const GLOBAL_TASK_OFF_REAL_PARENT: &str = "TASK_OFF_REAL_PARENT";
/// See [`GLOBAL_TASK_OFF_MM`]. Also what the syscall programs read the thread id from (0: the
/// helper).
pub const GLOBAL_TASK_OFF_PID: &str = "TASK_OFF_PID";
/// See [`GLOBAL_TASK_OFF_MM`].
pub const GLOBAL_TASK_OFF_TGID: &str = "TASK_OFF_TGID";
/// See [`GLOBAL_TASK_OFF_MM`].
pub const GLOBAL_TASK_OFF_EXIT_CODE: &str = "TASK_OFF_EXIT_CODE";
/// See [`GLOBAL_TASK_OFF_MM`].
pub const GLOBAL_TASK_OFF_START_TIME: &str = "TASK_OFF_START_TIME";
/// Globals `u32`: byte offsets in `struct mm_struct`, from the kernel's BTF.
pub const GLOBAL_MM_OFF_ARG_START: &str = "MM_OFF_ARG_START";
/// See [`GLOBAL_MM_OFF_ARG_START`].
pub const GLOBAL_MM_OFF_ARG_END: &str = "MM_OFF_ARG_END";
/// Globals `u32`: record offsets of `sched:sched_process_exec` (filename, pid, old_pid).
pub const GLOBAL_EXEC_OFF_FILENAME: &str = "EXEC_OFF_FILENAME";
/// See [`GLOBAL_EXEC_OFF_FILENAME`].
pub const GLOBAL_EXEC_OFF_OLD_PID: &str = "EXEC_OFF_OLD_PID";
/// Global `u32`: offset of `group_dead` in `sched:sched_process_exit`, `u32::MAX` when the
/// kernel's record has no such field (then a leader's exit ends the group).
pub const GLOBAL_EXIT_OFF_GROUP_DEAD: &str = "EXIT_OFF_GROUP_DEAD";
/// Globals `u32`: record offsets of `oom:mark_victim` (pid, uid, comm).
pub const GLOBAL_OOM_OFF_PID: &str = "OOM_OFF_PID";
/// See [`GLOBAL_OOM_OFF_PID`].
pub const GLOBAL_OOM_OFF_UID: &str = "OOM_OFF_UID";
/// See [`GLOBAL_OOM_OFF_PID`].
pub const GLOBAL_OOM_OFF_COMM: &str = "OOM_OFF_COMM";

/// LRU hash: [`crate::net::FlowKey`] → [`crate::net::FlowStats`].
pub const MAP_FLOWS: &str = "FLOWS";
/// Per-CPU hash: cgroup id → [`crate::net::NetTotals`].
pub const MAP_NET_TOTALS: &str = "NET_TOTALS";
/// Per-CPU hash: cgroup id → [`crate::net::TcpCounts`].
pub const MAP_TCP_COUNTS: &str = "TCP_COUNTS";
/// cgroup_skb programs on the unified root: packet accounting.
pub const PROG_NET_EGRESS: &str = "net_egress";
/// See [`PROG_NET_EGRESS`].
pub const PROG_NET_INGRESS: &str = "net_ingress";
/// sock_ops program on the unified root: TCP lifecycle.
pub const PROG_TCP_OPS: &str = "tcp_ops";
/// Per-CPU array: index 0 = flows inserted into `FLOWS` (for the eviction count).
pub const MAP_NET_COUNTERS: &str = "NET_COUNTERS";
/// LRU hash: [`crate::net::ListenKey`] → the listener's cgroup id (filled by `sock_ops` at
/// `listen()`, and by the agent at start for sockets already listening).
pub const MAP_LISTENERS: &str = "LISTENERS";

// The policy object (`palisade-policy`): every map below is pinned under the pin directory.

/// Hash: cgroup id → [`crate::policy::CgroupPolicy`].
pub const MAP_POLICY_CGROUPS: &str = "POLICY_CGROUPS";
/// Array: slot → [`crate::policy::SyscallVerdicts`].
pub const MAP_POLICY_SYSCALLS: &str = "POLICY_SYSCALLS";
/// Hash: [`crate::policy::ArgKey`] → [`crate::policy::ArgRule`] (run-time argument checks).
pub const MAP_POLICY_ARGS: &str = "POLICY_ARGS";
/// Array: `tid & mask` → [`crate::policy::EnterSlot`].
pub const MAP_POLICY_ENTER: &str = "POLICY_ENTER";
/// Program array: slot 0 is what the policy `sys_enter` program tail-calls after its check
/// (the agent's syscall telemetry on raw tracepoints).
pub const MAP_POLICY_NEXT: &str = "POLICY_NEXT";
/// Array: slot → [`crate::policy::ExecConf`].
pub const MAP_POLICY_EXEC_CONF: &str = "POLICY_EXEC_CONF";
/// Hash: [`crate::policy::ExecKey`] → [`crate::policy::ExecRule`].
pub const MAP_POLICY_EXEC: &str = "POLICY_EXEC";
/// Array: [`crate::policy::net_index`] → [`crate::policy::NetRuleSet`].
pub const MAP_POLICY_NET: &str = "POLICY_NET";
/// Array: rule id → [`crate::policy::RuleInfo`].
pub const MAP_POLICY_RULES: &str = "POLICY_RULES";
/// LRU hash: [`crate::policy::ViolationKey`] → [`crate::policy::ViolationState`].
pub const MAP_POLICY_VIOLATIONS: &str = "POLICY_VIOLATIONS";
/// Array of `u64` settings ([`crate::policy::config`]).
pub const MAP_POLICY_CONFIG: &str = "POLICY_CONFIG";
/// Ring buffer of [`crate::policy::PolicyEvent`]s.
pub const MAP_POLICY_EVENTS: &str = "POLICY_EVENTS";
/// Per-CPU array: index 0 = violation events lost to a full ring buffer.
pub const MAP_POLICY_LOSS: &str = "POLICY_LOSS";
/// Hash: [`crate::policy::ViolationKey`] → `[u64; 2]` (violations reported, the hook that
/// saw them), written by the agent only: what its events have reported of each key, so the
/// next agent (after a restart, `kill -9` included) reports each violation once.
pub const MAP_POLICY_REPORTED: &str = "POLICY_REPORTED";

/// Array of `u32` by [`crate::policy::lsm_index`]: 1 while that group of BPF-LSM programs is
/// attached and refuses `errno` rules (the tracepoint programs then leave those rules to it);
/// 0 and they do without. The agent sets an entry after attaching and clears it before
/// detaching.
pub const MAP_POLICY_LSM: &str = "POLICY_LSM";
/// LRU hash: cgroup id → [`crate::policy::Resolved`] (the entry that applies, cached).
pub const MAP_POLICY_RESOLVED: &str = "POLICY_RESOLVED";
/// Array: [`crate::policy::xlat_index`] → x86_64 syscall number or [`crate::policy::xlat`].
pub const MAP_POLICY_XLAT: &str = "POLICY_XLAT";

/// Hash: [`crate::policy::ExecKey`] (exact path or tree) → [`crate::policy::FileEntry`].
pub const MAP_POLICY_FILES: &str = "POLICY_FILES";

/// Not pinned (learning ends with the agent): hash of the cgroup ids `palisade policy learn`
/// watches, the ring buffer of [`crate::policy::LearnFile`] records, and the per-CPU count of
/// records lost to a full ring.
pub const MAP_POLICY_LEARN: &str = "POLICY_LEARN";
pub const MAP_POLICY_LEARN_FILES: &str = "POLICY_LEARN_FILES";
pub const MAP_POLICY_LEARN_LOST: &str = "POLICY_LEARN_LOST";

/// Every pinned map of the policy object.
pub const POLICY_MAPS: [&str; 18] = [
    MAP_POLICY_CGROUPS,
    MAP_POLICY_NEXT,
    MAP_POLICY_SYSCALLS,
    MAP_POLICY_ARGS,
    MAP_POLICY_ENTER,
    MAP_POLICY_EXEC_CONF,
    MAP_POLICY_EXEC,
    MAP_POLICY_NET,
    MAP_POLICY_RULES,
    MAP_POLICY_VIOLATIONS,
    MAP_POLICY_CONFIG,
    MAP_POLICY_EVENTS,
    MAP_POLICY_LOSS,
    MAP_POLICY_REPORTED,
    MAP_POLICY_LSM,
    MAP_POLICY_RESOLVED,
    MAP_POLICY_XLAT,
    MAP_POLICY_FILES,
];

/// Policy programs: raw tracepoints, exec tracepoint, cgroup_sock_addr and cgroup_skb.
/// `sys_enter`: the syscall rules' check, then a tail call into [`MAP_POLICY_NEXT`].
pub const PROG_POLICY_SYS_ENTER: &str = "policy_enter";
/// The name of the `sys_enter` program before it tail-called the telemetry: its pinned link,
/// left by an older agent, is replaced.
pub const PROG_POLICY_SYS_ENTER_OLD: &str = "policy_sys_enter";
pub const PROG_POLICY_SYS_EXIT: &str = "policy_sys_exit";
/// Raw tracepoint on `sched_process_exec`: exec rules on the file executed (kernel BTF).
pub const PROG_POLICY_EXEC: &str = "policy_exec";
/// Classic tracepoint on `sched:sched_process_exec`: exec rules on the path given to execve
/// (the best-effort fallback without kernel BTF).
pub const PROG_POLICY_EXEC_GIVEN: &str = "policy_exec_given";
/// BPF-LSM program on `bprm_check_security`: exec rules with `action: errno` refuse the exec
/// with EPERM before it runs (hosts with BPF-LSM active).
pub const PROG_POLICY_EXEC_LSM: &str = "policy_exec_lsm";
/// BPF-LSM programs refusing syscall rules with `action: errno` of the calls in
/// [`crate::policy::LSM_CALLS`]: (program, hook).
pub const PROG_POLICY_SYSCALL_LSM: [(&str, &str); 16] = [
    ("policy_lsm_userns_create", "userns_create"),
    ("policy_lsm_capable", "capable"),
    ("policy_lsm_task_alloc", "task_alloc"),
    ("policy_lsm_sb_mount", "sb_mount"),
    ("policy_lsm_move_mount", "move_mount"),
    ("policy_lsm_sb_pivotroot", "sb_pivotroot"),
    ("policy_lsm_ptrace_access_check", "ptrace_access_check"),
    ("policy_lsm_ptrace_traceme", "ptrace_traceme"),
    ("policy_lsm_bpf", "bpf"),
    ("policy_lsm_perf_event_open", "perf_event_open"),
    ("policy_lsm_socket_create", "socket_create"),
    ("policy_lsm_kernel_load_data", "kernel_load_data"),
    ("policy_lsm_kernel_read_file", "kernel_read_file"),
    ("policy_lsm_task_fix_setuid", "task_fix_setuid"),
    ("policy_lsm_key_permission", "key_permission"),
    ("policy_lsm_key_alloc", "key_alloc"),
];
/// And `task_prctl`, whose programs must answer -ENOSYS to let a call through.
pub const PROG_POLICY_LSM_TASK_PRCTL: &str = "policy_lsm_task_prctl";
pub const PROG_POLICY_CONNECT4: &str = "policy_connect4";
pub const PROG_POLICY_CONNECT6: &str = "policy_connect6";
pub const PROG_POLICY_SENDMSG4: &str = "policy_sendmsg4";
pub const PROG_POLICY_SENDMSG6: &str = "policy_sendmsg6";
pub const PROG_POLICY_BIND4: &str = "policy_bind4";
pub const PROG_POLICY_BIND6: &str = "policy_bind6";
pub const PROG_POLICY_INGRESS: &str = "policy_ingress";
/// `cgroup/sock_create`: raw and ICMP sockets where egress rules apply.
pub const PROG_POLICY_SOCK_CREATE: &str = "policy_sock_create";
/// `syscalls:sys_enter_socket`: packet sockets where egress rules apply.
pub const PROG_POLICY_PACKET: &str = "policy_packet";
/// Raw tracepoint on `sys_enter`, attached while `palisade policy learn` runs: the paths the
/// learned cgroups write, unlink and chmod.
pub const PROG_POLICY_LEARN_FILES: &str = "policy_learn_files";
/// Raw tracepoint on `sys_enter`: file rules on the path given (no BPF-LSM), reported only.
pub const PROG_POLICY_FILES_AUDIT: &str = "policy_files_audit";
/// BPF-LSM programs refusing file rules on the resolved path (hosts with BPF-LSM active):
/// (program, hook).
pub const PROG_POLICY_FILES_LSM: [(&str, &str); 11] = [
    ("policy_files_open", "file_open"),
    ("policy_files_mknod", "path_mknod"),
    ("policy_files_truncate", "path_truncate"),
    ("policy_files_unlink", "path_unlink"),
    ("policy_files_rmdir", "path_rmdir"),
    ("policy_files_chmod", "path_chmod"),
    ("policy_files_mmap", "mmap_file"),
    ("policy_files_mkdir", "path_mkdir"),
    ("policy_files_symlink", "path_symlink"),
    ("policy_files_link", "path_link"),
    ("policy_files_rename", "path_rename"),
];

/// Globals of the policy object.
pub const GLOBAL_POLICY_NR_OFFSET: &str = "POLICY_NR_OFFSET";
pub const GLOBAL_POLICY_EXEC_OFF_FILENAME: &str = "POLICY_EXEC_OFF_FILENAME";
/// Global [`crate::policy::ExecOffsets`]: kernel struct offsets for the exec walk.
pub const GLOBAL_POLICY_EXEC_OFFSETS: &str = "POLICY_EXEC_OFFSETS";
pub const GLOBAL_POLICY_ENTER_MASK: &str = "POLICY_ENTER_MASK";
/// Offset of `thread_info.status` in `task_struct` (0: unknown, i386 calls cannot be told).
pub const GLOBAL_POLICY_TASK_OFF_STATUS: &str = "POLICY_TASK_OFF_STATUS";
/// Global [`crate::policy::TaskOffsets`]: the current thread's id and cgroup id by loads.
pub const GLOBAL_POLICY_TASK_OFFSETS: &str = "POLICY_TASK_OFFSETS";
/// Offset of `family` in `syscalls:sys_enter_socket` records.
pub const GLOBAL_POLICY_SOCKET_OFF_FAMILY: &str = "POLICY_SOCKET_OFF_FAMILY";
