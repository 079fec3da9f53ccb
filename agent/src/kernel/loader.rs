//! Load the programs object with this host's parameters and attach the hooks.
//!
//! Required hooks (the syscall pair: fentry/fexit on `x64_sys_call` or the raw tracepoints
//! `sys_enter`/`sys_exit`, see [`SyscallHook`]) fail the load with a one-line error.
//! Optional hook groups (classic tracepoints) are logged and skipped when the kernel refuses them
//! or their record layout cannot be read; the agent then degrades as [`Hook`] documents.
//! Everything loaded is owned by the returned [`aya::Ebpf`]; dropping it detaches every link,
//! so an error leaves nothing attached.
use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, FEntry, FExit, RawTracePoint, SockOps,
        TracePoint,
    },
    sys::SyscallError,
};
use palisade_common::{CONFIG_CGROUP_CACHE, LATENCY_DETAIL_ENTRIES, names};

use super::{KernelError, PROGRAMS_OBJECT, entry::SyscallEntry};
use crate::{
    btf::{Btf, BtfError},
    tracefs::{Format, TracefsError},
};

/// Host parameters baked into the programs at load time.
#[derive(Debug, Clone)]
pub struct LoadOptions<'a> {
    /// Count only cgroups in `CGROUP_FILTER`.
    pub filter_enabled: bool,
    pub thread_slots: u32,
    /// `LATENCY_SAMPLE_MASK`: 0 times every call, `LATENCY_NEVER` none, else one call in
    /// mask + 1, chosen at random.
    pub latency_sample_mask: u32,
    /// Syscalls with a latency histogram of their own (numbers below
    /// `LATENCY_DETAIL_ENTRIES`); the rest share one per cgroup.
    pub latency_detail: &'a [u32],
    pub stats_max_entries: u32,
    /// Entries of `SYSCALL_STATS` (latencies: about one per cgroup).
    pub latency_max_entries: u32,
    pub errno_max_entries: u32,
    /// Size of the `EVENTS` ring buffer in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// tracefs mount, for the classic tracepoints' record layouts; `None` skips them.
    pub tracefs: Option<&'a Path>,
    /// The unified hierarchy's root, where the network programs attach (`None`: no network).
    pub network_root: Option<&'a Path>,
    /// Capacity of the flow table.
    pub flow_entries: u32,
    /// The syscall hook pairs to try, in order; the first that loads and attaches carries the
    /// syscall telemetry.
    pub syscall_hooks: &'a [SyscallHook],
    /// The kernel's BTF as aya parsed it (`features::Report::btf`), for the fentry pair; `None`
    /// parses it when that pair is tried.
    pub btf: Option<&'a aya::Btf>,
}

/// The kernel hook pair that carries the syscall telemetry. Both run the same program bodies
/// on the same maps; only the attach point differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallHook {
    /// `sys_enter`/`sys_exit` raw tracepoints: every kernel, every syscall ABI.
    RawTracepoint,
    /// fentry/fexit on `x64_sys_call`, the dispatcher of 64-bit syscalls on kernels with the
    /// BHI mitigation (6.9+ and stable backports); needs kernel BTF. 32-bit (ia32) syscalls
    /// go through `ia32_sys_call` and are not seen.
    Fentry,
}

/// `syscalls.hook: auto`: the pairs in the order tried. Raw tracepoints only, for now:
/// `cargo xtask bench syscalls --vm 6.1` (README, "Which hook carries syscall telemetry") did
/// not show fentry/fexit cheaper. Its TCG runs on this project's loaded 2-CPU machine were
/// noisier than the difference (one finished round, floors below zero), so the switch waits
/// for a run with enough rounds; until then fentry is opt-in (`syscalls.hook: fentry`) and
/// raw tracepoints also see ia32 syscalls, which the dispatcher fentry does not.
pub const AUTO_SYSCALL_HOOKS: &[SyscallHook] = &[SyscallHook::RawTracepoint];

impl SyscallHook {
    pub fn as_str(self) -> &'static str {
        match self {
            SyscallHook::RawTracepoint => "raw_tracepoint",
            SyscallHook::Fentry => "fentry",
        }
    }

    /// What `palisade doctor` and the agent's log call it.
    pub fn describe(self) -> &'static str {
        match self {
            SyscallHook::RawTracepoint => "raw tracepoints sys_enter/sys_exit",
            SyscallHook::Fentry => "fentry/fexit on x64_sys_call",
        }
    }
}

/// Optional hook groups, attached together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `sched_process_fork` + `cgroup_attach_task`: the per-thread cgroup id cache and fork
    /// counts. Without it every syscall exit asks the kernel for the cgroup id (slower).
    CgroupCache,
    /// `cgroup_mkdir`/`cgroup_rmdir`: cgroup discovery events. Without it, rescans only.
    CgroupEvents,
    /// `sched_process_exec`/`sched_process_exit`: exec and exit events and counts.
    ProcessEvents,
    /// `oom:mark_victim`: OOM kill events.
    OomEvents,
    /// `cgroup_skb` ingress/egress and `sock_ops` on the unified root: network flows, totals
    /// and TCP lifecycle.
    Network,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::CgroupCache => "cgroup_cache",
            Hook::CgroupEvents => "cgroup_events",
            Hook::ProcessEvents => "process_events",
            Hook::OomEvents => "oom_events",
            Hook::Network => "network",
        }
    }
}

pub struct Loaded {
    pub ebpf: Ebpf,
    /// The pair that carries the syscall telemetry.
    pub syscall_hook: SyscallHook,
    /// The entry program of the raw tracepoint pair (for the policy object's tail call);
    /// `None` with fentry/fexit.
    pub syscall_entry: Option<SyscallEntry>,
    /// Pairs tried before it and why each could not be used.
    pub syscall_hooks_refused: Vec<(SyscallHook, KernelError)>,
    /// Each optional hook group and why it is not attached (`None` when it is).
    pub optional: Vec<(Hook, Option<Degraded>)>,
    /// Why `task_struct`/`mm_struct` fields cannot be read (no BTF), if so: exec events then
    /// lack arguments and parent, exit events lack status and lifetime.
    pub task_offsets_unavailable: Option<BtfError>,
    /// How `SYSCALL_COUNTS` is cut into CPU regions.
    pub counts: super::CountLayout,
}

/// x86_64 ABI constants for the syscall programs.
#[cfg(not(target_arch = "x86_64"))]
compile_error!("syscall numbers, names and the pt_regs layout are only defined for x86_64");
mod abi {
    /// `offsetof(struct pt_regs, orig_ax)`: 15 registers of 8 bytes precede it.
    pub const PT_REGS_NR_OFFSET: u64 = 15 * 8;
    pub const NR_EXIT: u32 = 60;
    pub const NR_EXIT_GROUP: u32 = 231;
    pub const NR_CLONE: u32 = 56;
    pub const NR_FORK: u32 = 57;
    pub const NR_VFORK: u32 = 58;
    pub const NR_CLONE3: u32 = 435;
}

/// Hierarchy id of the unified (cgroup v2) hierarchy in `cgroup:*` tracepoint records: the
/// default hierarchy always has id 0 (v1 hierarchies are numbered from 1, see /proc/cgroups).
const UNIFIED_HIERARCHY_ID: u32 = 0;

/// Marks an optional record field that the kernel's format lacks.
const ABSENT: u32 = u32::MAX;

/// A record field a program needs: (global to set, field name, required).
type Field = (&'static str, &'static str, bool);
/// The fields of one tracepoint: (category, event, fields).
type EventFields = (&'static str, &'static str, &'static [Field]);
/// Globals to set: (global, offset).
type Globals = Vec<(&'static str, u32)>;

/// One optional group: its programs (program, category, event) and the record fields they need.
struct Group {
    hook: Hook,
    programs: &'static [(&'static str, &'static str, &'static str)],
    fields: &'static [EventFields],
}

const GROUPS: &[Group] = &[
    Group {
        hook: Hook::CgroupCache,
        programs: &[
            (names::PROG_PROCESS_FORK, "sched", "sched_process_fork"),
            (names::PROG_SLOT_ATTACH, "cgroup", "cgroup_attach_task"),
        ],
        fields: &[
            (
                "sched",
                "sched_process_fork",
                &[(names::GLOBAL_FORK_OFF_CHILD_PID, "child_pid", true)],
            ),
            (
                "cgroup",
                "cgroup_attach_task",
                &[
                    (names::GLOBAL_ATTACH_OFF_ROOT, "dst_root", true),
                    (names::GLOBAL_ATTACH_OFF_ID, "dst_id", true),
                    (names::GLOBAL_ATTACH_OFF_PID, "pid", true),
                    (names::GLOBAL_ATTACH_OFF_COMM, "comm", false),
                ],
            ),
        ],
    },
    Group {
        hook: Hook::CgroupEvents,
        programs: &[
            (names::PROG_CGROUP_MKDIR, "cgroup", "cgroup_mkdir"),
            (names::PROG_CGROUP_RMDIR, "cgroup", "cgroup_rmdir"),
        ],
        fields: &[
            (
                "cgroup",
                "cgroup_mkdir",
                &[
                    (names::GLOBAL_CG_OFF_ROOT, "root", true),
                    (names::GLOBAL_CG_OFF_LEVEL, "level", true),
                    (names::GLOBAL_CG_OFF_ID, "id", true),
                    (names::GLOBAL_CG_OFF_PATH, "path", true),
                ],
            ),
            // One program body serves both: rmdir must have the same layout (checked below).
        ],
    },
    Group {
        hook: Hook::ProcessEvents,
        programs: &[
            (names::PROG_PROCESS_EXEC, "sched", "sched_process_exec"),
            (names::PROG_PROCESS_EXIT, "sched", "sched_process_exit"),
        ],
        fields: &[
            (
                "sched",
                "sched_process_exec",
                &[
                    (names::GLOBAL_EXEC_OFF_FILENAME, "filename", true),
                    (names::GLOBAL_EXEC_OFF_OLD_PID, "old_pid", true),
                ],
            ),
            (
                "sched",
                "sched_process_exit",
                &[(names::GLOBAL_EXIT_OFF_GROUP_DEAD, "group_dead", false)],
            ),
        ],
    },
    Group {
        hook: Hook::OomEvents,
        programs: &[(names::PROG_OOM_VICTIM, "oom", "mark_victim")],
        fields: &[(
            "oom",
            "mark_victim",
            &[
                (names::GLOBAL_OOM_OFF_PID, "pid", true),
                (names::GLOBAL_OOM_OFF_UID, "uid", true),
                (names::GLOBAL_OOM_OFF_COMM, "comm", true),
            ],
        )],
    },
];

/// Why an optional hook group is not attached (the agent runs degraded, `palisade doctor`
/// says what is missing).
#[derive(Debug, thiserror::Error)]
pub enum Degraded {
    #[error("tracefs is not available")]
    NoTracefs,
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("cgroup_rmdir.{0} is not where cgroup_mkdir.{0} is")]
    Layout(&'static str),
    #[error("network telemetry is disabled in the config")]
    Disabled,
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// Reads the record offsets of a group: the globals to set, or why the group cannot run.
fn group_offsets(tracefs: Option<&Path>, g: &Group) -> Result<Globals, Degraded> {
    let tracefs = tracefs.ok_or(Degraded::NoTracefs)?;
    let mut out = Vec::new();
    for (category, event, fields) in g.fields {
        let f = Format::read(tracefs, category, event)?;
        for (global, field, required) in *fields {
            match f.offset(field) {
                Ok(off) => out.push((*global, off)),
                Err(e) if *required => return Err(e.into()),
                Err(_) => out.push((*global, ABSENT)),
            }
        }
    }
    if g.hook == Hook::CgroupEvents {
        let rmdir = Format::read(tracefs, "cgroup", "cgroup_rmdir")?;
        for (global, field) in [
            (names::GLOBAL_CG_OFF_ROOT, "root"),
            (names::GLOBAL_CG_OFF_LEVEL, "level"),
            (names::GLOBAL_CG_OFF_ID, "id"),
            (names::GLOBAL_CG_OFF_PATH, "path"),
        ] {
            let mkdir = out.iter().find(|(g, _)| *g == global).map(|(_, o)| *o);
            if rmdir.offset(field).ok() != mkdir {
                return Err(Degraded::Layout(field));
            }
        }
    }
    Ok(out)
}

/// `task_struct`/`mm_struct` member offsets from the kernel's BTF.
fn task_offsets() -> Result<Globals, BtfError> {
    let btf = Btf::from_sys_fs()?;
    let get = |ty: &str, m: &str| btf.member_offset(ty, m);
    Ok(vec![
        (names::GLOBAL_TASK_OFF_MM, get("task_struct", "mm")?),
        (
            names::GLOBAL_TASK_OFF_REAL_PARENT,
            get("task_struct", "real_parent")?,
        ),
        (names::GLOBAL_TASK_OFF_PID, get("task_struct", "pid")?),
        (names::GLOBAL_TASK_OFF_TGID, get("task_struct", "tgid")?),
        (
            names::GLOBAL_TASK_OFF_EXIT_CODE,
            get("task_struct", "exit_code")?,
        ),
        (
            names::GLOBAL_TASK_OFF_START_TIME,
            get("task_struct", "start_time")?,
        ),
        (
            names::GLOBAL_MM_OFF_ARG_START,
            get("mm_struct", "arg_start")?,
        ),
        (names::GLOBAL_MM_OFF_ARG_END, get("mm_struct", "arg_end")?),
    ])
}

pub fn load(opts: &LoadOptions<'_>) -> Result<Loaded, KernelError> {
    let groups: Vec<(Hook, Result<Globals, Degraded>)> = GROUPS
        .iter()
        .map(|g| (g.hook, group_offsets(opts.tracefs, g)))
        .collect();
    let task = task_offsets();
    let have_task: u32 = task.is_ok().into();

    let counts = super::CountLayout::for_host(opts.stats_max_entries)?;
    let (count_mask, count_bits) = (counts.mask(), counts.bits());
    let count_entries = counts.entries().unwrap_or(1);
    let filter: u32 = opts.filter_enabled.into();
    let mask: u32 = opts.thread_slots - 1;
    // aya 0.14's EbpfLoader::new() reads and parses the kernel's BTF itself (aya-rs/aya#1172),
    // whatever `.btf()` says next: the three loaders (probes, telemetry, policy) cost a debug
    // agent about 0.2 s of CPU at start-up on the CI machine. No CO-RE relocations are used,
    // so that parse is not used either.
    let mut loader = EbpfLoader::new();
    loader
        .btf(None)
        .override_global(names::GLOBAL_FILTER_ENABLED, &filter, true)
        .override_global(names::GLOBAL_THREAD_SLOT_MASK, &mask, true)
        .override_global(
            names::GLOBAL_LATENCY_SAMPLE_MASK,
            &opts.latency_sample_mask,
            true,
        )
        .override_global(
            names::GLOBAL_PT_REGS_NR_OFFSET,
            &abi::PT_REGS_NR_OFFSET,
            true,
        )
        .override_global(names::GLOBAL_NR_EXIT, &abi::NR_EXIT, true)
        .override_global(names::GLOBAL_NR_EXIT_GROUP, &abi::NR_EXIT_GROUP, true)
        .override_global(names::GLOBAL_NR_CLONE, &abi::NR_CLONE, true)
        .override_global(names::GLOBAL_NR_CLONE3, &abi::NR_CLONE3, true)
        .override_global(names::GLOBAL_NR_FORK, &abi::NR_FORK, true)
        .override_global(names::GLOBAL_NR_VFORK, &abi::NR_VFORK, true)
        .override_global(names::GLOBAL_UNIFIED_HIERARCHY, &UNIFIED_HIERARCHY_ID, true)
        .override_global(names::GLOBAL_HAVE_TASK_OFFSETS, &have_task, true)
        .map_max_entries(names::MAP_THREAD_SLOTS, opts.thread_slots)
        .map_max_entries(names::MAP_CALL_SLOTS, opts.thread_slots)
        .override_global(names::GLOBAL_COUNT_SLOT_MASK, &count_mask, true)
        .override_global(names::GLOBAL_COUNT_SLOT_BITS, &count_bits, true)
        .map_max_entries(names::MAP_SYSCALL_COUNTS, count_entries)
        .map_max_entries(names::MAP_SYSCALL_STATS, opts.latency_max_entries)
        .map_max_entries(names::MAP_SYSCALL_ERRNOS, opts.errno_max_entries)
        .map_max_entries(names::MAP_EVENTS, opts.ring_buffer_bytes)
        .map_max_entries(names::MAP_FLOWS, opts.flow_entries);
    // Offsets of groups that cannot run keep the programs' defaults; those programs stay
    // unattached anyway.
    for (_, offsets) in &groups {
        for (global, off) in offsets.iter().flatten() {
            loader.override_global(global, off, true);
        }
    }
    for (global, off) in task.iter().flatten() {
        loader.override_global(global, off, true);
    }
    let mut ebpf = loader.load(PROGRAMS_OBJECT).map_err(KernelError::Object)?;
    set_latency_detail(&mut ebpf, opts.latency_detail)?;

    // Optional groups first: once the syscall programs run, every fork and migration must
    // already be seen by the cgroup cache keepers.
    let mut optional = Vec::new();
    for (g, (hook, offsets)) in GROUPS.iter().zip(groups) {
        let why = match offsets {
            Err(e) => Some(e),
            Ok(_) => attach_tracepoints(&mut ebpf, g.programs)
                .err()
                .map(Degraded::from),
        };
        optional.push((hook, why));
    }

    let mut syscall_hooks_refused = Vec::new();
    let mut syscall_hook = None;
    let mut syscall_entry = None;
    for hook in opts.syscall_hooks {
        match attach_syscalls(&mut ebpf, *hook, opts.btf) {
            Ok(entry) => {
                syscall_hook = Some(*hook);
                syscall_entry = entry;
                break;
            }
            Err(e) => syscall_hooks_refused.push((*hook, e)),
        }
    }
    let Some(syscall_hook) = syscall_hook else {
        return Err(match syscall_hooks_refused.pop() {
            Some((hook, e)) => KernelError::SyscallHook {
                hook: hook.describe(),
                cause: Box::new(e),
            },
            None => KernelError::MissingProgram(names::PROG_SYS_ENTER),
        });
    };

    optional.push((
        Hook::Network,
        match opts.network_root {
            None => Some(Degraded::Disabled),
            Some(root) => attach_network(&mut ebpf, root)
                .map(|()| super::listeners::seed(&mut ebpf, root))
                .err()
                .map(Degraded::from),
        },
    ));

    let cache_on = optional
        .iter()
        .any(|(h, why)| *h == Hook::CgroupCache && why.is_none());
    if cache_on {
        set_ones(&mut ebpf, names::MAP_CONFIG, &[CONFIG_CGROUP_CACHE])?;
    }
    Ok(Loaded {
        ebpf,
        syscall_hook,
        syscall_entry,
        syscall_hooks_refused,
        optional,
        task_offsets_unavailable: task.err(),
        counts,
    })
}

/// Marks the syscalls with a latency histogram of their own, before any program runs.
fn set_latency_detail(ebpf: &mut Ebpf, detail: &[u32]) -> Result<(), KernelError> {
    let detail: Vec<u32> = detail
        .iter()
        .copied()
        .filter(|nr| *nr < LATENCY_DETAIL_ENTRIES)
        .collect();
    set_ones(ebpf, names::MAP_LATENCY_DETAIL, &detail)
}

/// Sets the entries at `indexes` of the `u32` array `name` to 1.
fn set_ones(ebpf: &mut Ebpf, name: &'static str, indexes: &[u32]) -> Result<(), KernelError> {
    let map_err = |source| KernelError::Map { map: name, source };
    let mut map: Array<_, u32> =
        Array::try_from(ebpf.map_mut(name).ok_or(KernelError::MissingMap(name))?)
            .map_err(map_err)?;
    for i in indexes {
        map.set(*i, 1, 0).map_err(map_err)?;
    }
    Ok(())
}

/// Loads and attaches the syscall pair of `hook`, with the entry of the raw tracepoint pair.
/// On error nothing of it stays attached (the next pair must not count the same calls twice).
fn attach_syscalls(
    ebpf: &mut Ebpf,
    hook: SyscallHook,
    btf: Option<&aya::Btf>,
) -> Result<Option<SyscallEntry>, KernelError> {
    match hook {
        SyscallHook::RawTracepoint => {
            let r = attach_raw_syscalls(ebpf).map(Some);
            if r.is_err() {
                for prog in [names::PROG_SYS_ENTER, names::PROG_SYS_EXIT] {
                    if let Ok(p) = program::<RawTracePoint>(ebpf, prog) {
                        let _ = p.unload();
                    }
                }
            }
            r
        }
        SyscallHook::Fentry => {
            let r = attach_fentry_syscalls(ebpf, btf).map(|()| None);
            if r.is_err() {
                if let Ok(p) = program::<FEntry>(ebpf, names::PROG_SYS_ENTER_FENTRY) {
                    let _ = p.unload();
                }
                if let Ok(p) = program::<FExit>(ebpf, names::PROG_SYS_EXIT_FEXIT) {
                    let _ = p.unload();
                }
            }
            r
        }
    }
}

/// `sys_exit` first (as for fentry/fexit below); `sys_enter` by a link the returned entry owns
/// (the policy object may take it over, see `SyscallEntry`).
fn attach_raw_syscalls(ebpf: &mut Ebpf) -> Result<SyscallEntry, KernelError> {
    let attach_err = |program, tp: &str, source| KernelError::Attach {
        program,
        target: format!("raw tracepoint {tp}"),
        source,
    };
    let prog = names::PROG_SYS_EXIT;
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    p.load().map_err(refused(prog))?;
    p.attach("sys_exit")
        .map_err(|e| attach_err(prog, "sys_exit", e))?;
    let prog = names::PROG_SYS_ENTER;
    let p: &mut RawTracePoint = program(ebpf, prog)?;
    p.load().map_err(refused(prog))?;
    let syscall = |call| {
        move |io_error| aya::programs::ProgramError::SyscallError(SyscallError { call, io_error })
    };
    let fd = p
        .fd()
        .and_then(|fd| fd.try_clone().map_err(syscall("dup")))
        .map_err(refused(prog))?;
    SyscallEntry::attach(fd)
        .map_err(|e| attach_err(prog, "sys_enter", syscall("bpf_raw_tracepoint_open")(e)))
}

/// fexit first: an exit without its entry is counted untimed, an entry without its exit not
/// at all.
fn attach_fentry_syscalls(ebpf: &mut Ebpf, btf: Option<&aya::Btf>) -> Result<(), KernelError> {
    let parsed;
    let btf = match btf {
        Some(btf) => btf,
        None => {
            parsed = aya::Btf::from_sys_fs().map_err(KernelError::Btf)?;
            &parsed
        }
    };
    let target = || format!("fexit/fentry {}", names::FN_SYSCALL_DISPATCH);
    let prog = names::PROG_SYS_EXIT_FEXIT;
    let p: &mut FExit = program(ebpf, prog)?;
    p.load(names::FN_SYSCALL_DISPATCH, btf)
        .map_err(refused(prog))?;
    p.attach().map_err(|source| KernelError::Attach {
        program: prog,
        target: target(),
        source,
    })?;
    let prog = names::PROG_SYS_ENTER_FENTRY;
    let p: &mut FEntry = program(ebpf, prog)?;
    p.load(names::FN_SYSCALL_DISPATCH, btf)
        .map_err(refused(prog))?;
    p.attach().map_err(|source| KernelError::Attach {
        program: prog,
        target: target(),
        source,
    })?;
    Ok(())
}

/// Attaches the packet and TCP programs to the unified root, covering every cgroup below it,
/// present and future. aya attaches through bpf links on this kernel; the kernel always gives
/// cgroup links multi-attach semantics (other users' programs keep running) and rejects any
/// flag, hence `Single`.
fn attach_network(ebpf: &mut Ebpf, root: &Path) -> Result<(), KernelError> {
    let cg = std::fs::File::open(root).map_err(|source| KernelError::Cgroup {
        path: root.to_owned(),
        source,
    })?;
    let target = || format!("the cgroup {}", root.display());
    for (prog, attach) in [
        (names::PROG_NET_EGRESS, CgroupSkbAttachType::Egress),
        (names::PROG_NET_INGRESS, CgroupSkbAttachType::Ingress),
    ] {
        let p: &mut CgroupSkb = program(ebpf, prog)?;
        p.load().map_err(refused(prog))?;
        p.attach(&cg, attach, CgroupAttachMode::Single)
            .map_err(|source| KernelError::Attach {
                program: prog,
                target: target(),
                source,
            })?;
    }
    let prog = names::PROG_TCP_OPS;
    let p: &mut SockOps = program(ebpf, prog)?;
    p.load().map_err(refused(prog))?;
    p.attach(&cg, CgroupAttachMode::Single)
        .map_err(|source| KernelError::Attach {
            program: prog,
            target: target(),
            source,
        })?;
    Ok(())
}

/// Program `name` of the object, as the program type `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(KernelError::MissingProgram(name))?
        .try_into()
        .map_err(refused(name))
}

fn refused(program: &'static str) -> impl Fn(aya::programs::ProgramError) -> KernelError {
    move |source| KernelError::Program { program, source }
}

/// Loads and attaches classic tracepoint programs: (program, category, event).
fn attach_tracepoints(
    ebpf: &mut Ebpf,
    progs: &[(&'static str, &str, &str)],
) -> Result<(), KernelError> {
    for (prog, category, name) in progs {
        let p: &mut TracePoint = program(ebpf, prog)?;
        p.load().map_err(refused(prog))?;
        p.attach(category, name)
            .map_err(|source| KernelError::Attach {
                program: prog,
                target: format!("{category}:{name}"),
                source,
            })?;
    }
    Ok(())
}
