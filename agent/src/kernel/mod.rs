//! The kernel side: loading and attaching Palisade's eBPF programs, and the actor that owns the
//! loaded object (nobody else touches maps). One piece leaves it at start-up: the syscall
//! telemetry's `sys_enter` entry on raw tracepoints ([`SyscallEntry`]), which the policy engine
//! owns from then on (its `sys_enter` program tail-calls it while syscall rules are in force).
mod actor;
mod batch;
mod counts;
mod entry;
pub mod events;
mod listeners;
mod loader;

pub use actor::{KernelHandle, KernelSnapshot, Output, spawn};
pub use counts::CountLayout;
pub use entry::SyscallEntry;
pub use events::{CgroupChange, KernelEvent};
/// The `/proc` parsers of the listener scan (for `crate::fuzzing`).
pub(crate) use listeners::{listening, unified_path};
pub use loader::{AUTO_SYSCALL_HOOKS, LoadOptions, SyscallHook, load};

/// The compiled eBPF objects, built by build.rs with the nightly toolchain.
pub static PROGRAMS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade"));
pub static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-probes"));
/// The enforcement programs (policies), loaded by `crate::policy::bpf`.
pub static POLICY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade-policy"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "the kernel refused Palisade's eBPF object: {} (run `palisade doctor` to see what this kernel allows)",
        error_chain(.0)
    )]
    Object(aya::EbpfError),
    #[error(
        "the eBPF object has no program `{0}` (build mismatch; rebuild with `cargo xtask run`)"
    )]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}` (build mismatch; rebuild with `cargo xtask run`)")]
    MissingMap(&'static str),
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "the kernel refused program {program}: {} (run `palisade doctor`)",
        describe_program_error(source)
    )]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error(
        "attaching {program} to {target} failed: {} (run `palisade doctor`)",
        describe_program_error(source)
    )]
    Attach {
        program: &'static str,
        target: String,
        source: aya::programs::ProgramError,
    },
    #[error("syscall telemetry cannot attach to {hook}: {cause}")]
    SyscallHook {
        hook: &'static str,
        cause: Box<KernelError>,
    },
    #[error(
        "syscalls.stats_max_entries {capacity} is too large for {regions} possible CPUs (the count table would pass 4 GiB)"
    )]
    CountsTooLarge { capacity: u32, regions: u32 },
    #[error("cannot read the possible CPUs from {path}: {source}")]
    Cpus {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot map the syscall count table: {0}")]
    CountsMap(#[source] std::io::Error),
    #[error("no kernel BTF (fentry needs /sys/kernel/btf/vmlinux): {0}")]
    Btf(#[source] aya::BtfError),
    #[error("cannot open the cgroup {}: {source}", path.display())]
    Cgroup {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the kernel actor has stopped")]
    ActorGone,
}

/// Takes map `name` out of a loaded object as the map type `T`.
pub fn take_map<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { map: name, source })
}

/// One line out of a program error: the errno and, for verifier rejections, the verifier's last
/// message (the full log goes to the debug log).
pub fn describe_program_error(e: &aya::programs::ProgramError) -> String {
    use aya::programs::ProgramError;
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!(verifier_log = %log, "verifier output");
            let last = log
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| {
                    !l.is_empty()
                        && !l.starts_with("processed ")
                        && !l.starts_with("verification time")
                        && !l.starts_with("stack depth")
                })
                .unwrap_or("");
            if last.is_empty() {
                format!("{io_error}")
            } else {
                format!("{io_error}; verifier: {last}")
            }
        }
        other => error_chain(other),
    }
}

/// An error and its sources on one line (`a: b: c`), skipping repeats.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}
