//! Load the programs object with this host's parameters and attach the hooks.
//!
//! Required hooks (raw tracepoints `sys_enter`/`sys_exit`) fail the load with a one-line error;
//! optional ones (`cgroup:cgroup_mkdir`/`rmdir`) are logged and skipped, and the agent falls
//! back to periodic rescans of the cgroup tree. Everything loaded is owned by the returned
//! [`aya::Ebpf`]; dropping it detaches every link, so an error leaves nothing attached.
use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{RawTracePoint, TracePoint},
};
use palisade_common::{CONFIG_CGROUP_CACHE, names};

use super::{KernelError, PROGRAMS_OBJECT, describe_program_error};
use crate::tracefs::Format;

/// Host parameters baked into the programs at load time.
#[derive(Debug, Clone)]
pub struct LoadOptions<'a> {
    /// Count only cgroups in `CGROUP_FILTER`.
    pub filter_enabled: bool,
    pub thread_slots: u32,
    pub stats_max_entries: u32,
    pub errno_max_entries: u32,
    /// tracefs mount, for the cgroup tracepoints' record layout; `None` skips them.
    pub tracefs: Option<&'a Path>,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    /// Why the cgroup lifecycle tracepoints are not attached (`None` when they are).
    pub cgroup_events_unavailable: Option<String>,
    /// Why the per-thread cgroup id cache is off (`None` when it is on).
    pub cgroup_cache_unavailable: Option<String>,
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

struct CgroupOffsets {
    root: u32,
    level: u32,
    id: u32,
    path: u32,
}

fn cgroup_offsets(tracefs: &Path) -> Result<CgroupOffsets, String> {
    let mkdir = Format::read(tracefs, "cgroup", "cgroup_mkdir").map_err(|e| e.to_string())?;
    let rmdir = Format::read(tracefs, "cgroup", "cgroup_rmdir").map_err(|e| e.to_string())?;
    let get = |f: &Format, name: &str| f.offset(name).map_err(|e| e.to_string());
    let o = CgroupOffsets {
        root: get(&mkdir, "root")?,
        level: get(&mkdir, "level")?,
        id: get(&mkdir, "id")?,
        path: get(&mkdir, "path")?,
    };
    // One program body serves both events: their layouts must agree.
    for (field, off) in [
        ("root", o.root),
        ("level", o.level),
        ("id", o.id),
        ("path", o.path),
    ] {
        if get(&rmdir, field)? != off {
            return Err(format!(
                "cgroup_rmdir.{field} is not at the offset of cgroup_mkdir.{field}"
            ));
        }
    }
    Ok(o)
}

/// Offsets for the thread-slot cache tracepoints: (fork child_pid, attach dst_root, dst_id, pid).
fn slot_offsets(tracefs: &Path) -> Result<(u32, u32, u32, u32), String> {
    let fork = Format::read(tracefs, "sched", "sched_process_fork").map_err(|e| e.to_string())?;
    let attach =
        Format::read(tracefs, "cgroup", "cgroup_attach_task").map_err(|e| e.to_string())?;
    let get = |f: &Format, name: &str| f.offset(name).map_err(|e| e.to_string());
    Ok((
        get(&fork, "child_pid")?,
        get(&attach, "dst_root")?,
        get(&attach, "dst_id")?,
        get(&attach, "pid")?,
    ))
}

pub fn load(opts: &LoadOptions<'_>) -> Result<Loaded, KernelError> {
    let no_tracefs = || "tracefs is not available".to_owned();
    let offsets = opts
        .tracefs
        .map_or_else(|| Err(no_tracefs()), cgroup_offsets);
    let slot = opts.tracefs.map_or_else(|| Err(no_tracefs()), slot_offsets);
    let (fork_child, attach_root, attach_id, attach_pid) =
        slot.as_ref().map_or((20, 8, 16, 24), |o| *o);
    let filter: u32 = opts.filter_enabled.into();
    let mask: u32 = opts.thread_slots - 1;
    let (root, level, id, path) = match &offsets {
        Ok(o) => (o.root, o.level, o.id, o.path),
        Err(_) => (8, 12, 16, 24),
    };
    let mut loader = EbpfLoader::new();
    loader
        // No CO-RE relocations are used; skip parsing the kernel's BTF.
        .btf(None)
        .override_global(names::GLOBAL_FILTER_ENABLED, &filter, true)
        .override_global(names::GLOBAL_THREAD_SLOT_MASK, &mask, true)
        .override_global(
            names::GLOBAL_PT_REGS_NR_OFFSET,
            &abi::PT_REGS_NR_OFFSET,
            true,
        )
        .override_global(names::GLOBAL_NR_EXIT, &abi::NR_EXIT, true)
        .override_global(names::GLOBAL_NR_EXIT_GROUP, &abi::NR_EXIT_GROUP, true)
        .override_global(names::GLOBAL_UNIFIED_HIERARCHY, &UNIFIED_HIERARCHY_ID, true)
        .override_global(names::GLOBAL_CG_OFF_ROOT, &root, true)
        .override_global(names::GLOBAL_CG_OFF_LEVEL, &level, true)
        .override_global(names::GLOBAL_CG_OFF_ID, &id, true)
        .override_global(names::GLOBAL_CG_OFF_PATH, &path, true)
        .override_global(names::GLOBAL_NR_CLONE, &abi::NR_CLONE, true)
        .override_global(names::GLOBAL_NR_CLONE3, &abi::NR_CLONE3, true)
        .override_global(names::GLOBAL_NR_FORK, &abi::NR_FORK, true)
        .override_global(names::GLOBAL_NR_VFORK, &abi::NR_VFORK, true)
        .override_global(names::GLOBAL_FORK_OFF_CHILD_PID, &fork_child, true)
        .override_global(names::GLOBAL_ATTACH_OFF_ROOT, &attach_root, true)
        .override_global(names::GLOBAL_ATTACH_OFF_ID, &attach_id, true)
        .override_global(names::GLOBAL_ATTACH_OFF_PID, &attach_pid, true)
        .map_max_entries(names::MAP_THREAD_SLOTS, opts.thread_slots)
        .map_max_entries(names::MAP_SYSCALL_STATS, opts.stats_max_entries)
        .map_max_entries(names::MAP_SYSCALL_ERRNOS, opts.errno_max_entries);
    let mut ebpf = loader.load(PROGRAMS_OBJECT).map_err(KernelError::Object)?;

    // The cache keepers go first: once the syscall programs run, every fork and migration must
    // already be seen.
    let cgroup_cache_unavailable = match slot {
        Err(e) => Some(e),
        Ok(_) => attach_tracepoints(
            &mut ebpf,
            &[
                (names::PROG_SLOT_FORK, "sched", "sched_process_fork"),
                (names::PROG_SLOT_ATTACH, "cgroup", "cgroup_attach_task"),
            ],
        )
        .err(),
    };

    for (prog, tp) in [
        (names::PROG_SYS_ENTER, "sys_enter"),
        (names::PROG_SYS_EXIT, "sys_exit"),
    ] {
        let p: &mut RawTracePoint = ebpf
            .program_mut(prog)
            .ok_or(KernelError::MissingProgram(prog))?
            .try_into()
            .map_err(|e| KernelError::Program {
                program: prog,
                detail: describe_program_error(&e),
            })?;
        p.load().map_err(|e| KernelError::Program {
            program: prog,
            detail: describe_program_error(&e),
        })?;
        p.attach(tp).map_err(|e| KernelError::Attach {
            program: prog,
            target: format!("raw tracepoint {tp}"),
            detail: describe_program_error(&e),
        })?;
    }

    if cgroup_cache_unavailable.is_none() {
        let mut config: Array<_, u32> = Array::try_from(
            ebpf.map_mut(names::MAP_CONFIG)
                .ok_or(KernelError::MissingMap(names::MAP_CONFIG))?,
        )
        .map_err(|source| KernelError::Map {
            map: names::MAP_CONFIG,
            source,
        })?;
        config
            .set(CONFIG_CGROUP_CACHE, 1, 0)
            .map_err(|source| KernelError::Map {
                map: names::MAP_CONFIG,
                source,
            })?;
    }

    let cgroup_events_unavailable = match offsets {
        Err(e) => Some(e),
        Ok(_) => attach_tracepoints(
            &mut ebpf,
            &[
                (names::PROG_CGROUP_MKDIR, "cgroup", "cgroup_mkdir"),
                (names::PROG_CGROUP_RMDIR, "cgroup", "cgroup_rmdir"),
            ],
        )
        .err(),
    };
    Ok(Loaded {
        ebpf,
        cgroup_events_unavailable,
        cgroup_cache_unavailable,
    })
}

/// Loads and attaches optional classic tracepoint programs: (program, category, event).
fn attach_tracepoints(ebpf: &mut Ebpf, progs: &[(&str, &str, &str)]) -> Result<(), String> {
    for (prog, category, name) in progs {
        let p: &mut TracePoint = ebpf
            .program_mut(prog)
            .ok_or_else(|| format!("no program {prog}"))?
            .try_into()
            .map_err(|e| describe_program_error(&e))?;
        p.load()
            .map_err(|e| format!("loading {prog}: {}", describe_program_error(&e)))?;
        p.attach(category, name).map_err(|e| {
            format!(
                "attaching {category}:{name}: {}",
                describe_program_error(&e)
            )
        })?;
    }
    Ok(())
}
