//! Process lifecycle types: per-cgroup counters and ring-buffer events.

/// Per-cgroup process counters (value of `PROCESS_COUNTS`, one copy per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessCounts {
    /// Tasks created (processes and threads: `sched_process_fork` does not tell them apart).
    pub forks: u64,
    /// Successful execs.
    pub execs: u64,
    /// Processes that exited with status 0.
    pub exits_ok: u64,
    /// Processes that exited with a non-zero status.
    pub exits_error: u64,
    /// Processes killed by a signal.
    pub exits_signal: u64,
    /// Processes whose exit status could not be read (no kernel BTF).
    pub exits_unknown: u64,
    /// Exec events the ring buffer had no room for (the exec is still counted in `execs`).
    pub exec_events_lost: u64,
    /// Exit events the ring buffer had no room for (the exit is still counted above).
    pub exit_events_lost: u64,
}

impl ProcessCounts {
    /// Adds `o`'s counters (summing CPUs or cgroups that share a name).
    pub fn merge(&mut self, o: &Self) {
        self.forks += o.forks;
        self.execs += o.execs;
        self.exits_ok += o.exits_ok;
        self.exits_error += o.exits_error;
        self.exits_signal += o.exits_signal;
        self.exits_unknown += o.exits_unknown;
        self.exec_events_lost += o.exec_events_lost;
        self.exit_events_lost += o.exit_events_lost;
    }
}

/// Longest exec filename kept (bytes, NUL included); longer ones are cut and flagged.
pub const EXEC_FILENAME_MAX: usize = 256;
/// Most bytes of the NUL-separated argument block kept; longer ones are cut and flagged.
pub const EXEC_ARGS_MAX: usize = 1024;

/// [`ExecEvent::flags`] bits.
pub mod exec_flags {
    /// The filename was longer than [`crate::EXEC_FILENAME_MAX`].
    pub const FILENAME_TRUNCATED: u32 = 1;
    /// The arguments were longer than [`crate::EXEC_ARGS_MAX`].
    pub const ARGS_TRUNCATED: u32 = 2;
    /// The arguments could not be read (no kernel BTF, or the read faulted).
    pub const ARGS_MISSING: u32 = 4;
    /// The parent pid could not be read.
    pub const PPID_MISSING: u32 = 8;
}

/// A successful exec (`sched:sched_process_exec`), seen from the new image.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExecEvent {
    /// `event_kind::EXEC`.
    pub kind: u32,
    /// Thread group id (the process id).
    pub pid: u32,
    /// Thread id before the exec (differs from `pid` when a non-leader thread execs).
    pub old_pid: u32,
    /// Parent's thread group id.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the exec.
    pub ktime_ns: u64,
    /// Bytes of `filename` used (without NUL).
    pub filename_len: u32,
    /// Bytes of `args` used (NUL-separated, as in /proc/PID/cmdline).
    pub args_len: u32,
    /// [`exec_flags`] bits.
    pub flags: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
    /// `comm` after the exec.
    pub comm: [u8; 16],
    pub filename: [u8; EXEC_FILENAME_MAX],
    pub args: [u8; EXEC_ARGS_MAX],
}

/// A process ended (`sched:sched_process_exit` of the last thread of the group).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExitEvent {
    /// `event_kind::EXIT`.
    pub kind: u32,
    pub pid: u32,
    /// The thread that ended the group.
    pub tid: u32,
    /// `task_struct.exit_code` in wait(2) encoding (status << 8 | signal); see `flags`.
    pub exit_code: u32,
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// Start of the exiting task (CLOCK_MONOTONIC ns), 0 when unknown.
    pub start_ns: u64,
    /// 1 when `exit_code` and `start_ns` could not be read (no kernel BTF).
    pub flags: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// A task was moved into a cgroup of the unified hierarchy (`cgroup:cgroup_attach_task`: a
/// write to `cgroup.procs` or `cgroup.threads`, `clone3(CLONE_INTO_CGROUP)` does not fire it).
/// One per task moved: a process's threads each send one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MoveEvent {
    /// `event_kind::CGROUP_MOVE`.
    pub kind: u32,
    /// The task moved (its thread id).
    pub pid: u32,
    /// Destination cgroup.
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// The moved task's command name.
    pub comm: [u8; 16],
}

/// The OOM killer marked a victim (`oom:mark_victim`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomEvent {
    /// `event_kind::OOM`.
    pub kind: u32,
    /// Victim process id.
    pub pid: u32,
    /// Victim's uid.
    pub uid: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
    /// cgroup of the task that ran into the limit (the victim's when it is in the same memcg;
    /// userspace prefers the victim's own cgroup from its process table).
    pub cgroup_id: u64,
    pub ktime_ns: u64,
    /// Victim's command name.
    pub comm: [u8; 16],
}
