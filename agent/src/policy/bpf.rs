//! The kernel side of policies: the `palisade-policy` object with its maps pinned under the pin
//! directory (`maps/`), hook groups attached on demand through links pinned under `links/`.
//!
//! A new agent loads the object with every map reused from its pin (aya opens a pinned map
//! instead of creating one), and adopts the pinned links of each hook group instead of
//! attaching duplicates: enforcement never stops across an agent restart, `kill -9` included.
//! Detaching a group unpins its links; with nothing left to enforce the whole directory goes.
use std::{
    collections::BTreeMap,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapInfo, PerCpuArray, ProgramArray, RingBuf},
    programs::links::PinnedLink,
};
use palisade_common::{
    names,
    policy::{
        ArgKey, ArgRule, CgroupPolicy, ExecConf, ExecKey, ExecOffsets, ExecRule, FileEntry,
        NetRuleSet, POLICY_ABI, Resolved, RuleInfo, SyscallVerdicts, ViolationKey, ViolationState,
        XLAT_ENTRIES, config as cfg,
    },
};

use super::hooks::Hook;
use crate::kernel::{KernelError, SyscallEntry, describe_program_error, error_chain, take_map};

/// Slots (distinct effective policies at once) the tables hold.
pub const MAX_SLOTS: u32 = 256;
/// Rule ids (`POLICY_RULES` entries); id 0 is never used.
pub const MAX_RULES: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error("cannot prepare the pin directory {}: {source}", path.display())]
    PinDir { path: PathBuf, source: PinDirError },
    #[error(
        "pinned policy state at {} is from another Palisade version ({why}); remove it with `palisade agent --cleanup`",
        path.display()
    )]
    Incompatible { path: PathBuf, why: Incompatible },
    #[error("the kernel refused the policy object: {} (see `palisade doctor`)", error_chain(.0))]
    Load(aya::EbpfError),
    #[error("policy map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("attaching {program}: {source}")]
    Attach {
        program: &'static str,
        source: AttachError,
    },
}

/// Why a pin directory cannot be used (see `bpffs`).
#[derive(Debug, thiserror::Error)]
pub enum PinDirError {
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("mount bpffs at {at}: {source}")]
    Mount {
        at: &'static str,
        source: nix::Error,
    },
    #[error(
        "{} is not on bpffs (set policy.pin_dir to a directory under a bpf mount such as /sys/fs/bpf)",
        .0.display()
    )]
    NotBpffs(PathBuf),
    #[error("no such directory")]
    Missing,
    #[error("could not remove all of it")]
    NotRemoved,
    #[error(
        "it must be root's and 0700 before an agent adopts what is pinned there (it is uid {uid}, mode {mode:o}): fix it with `chmod 700` if you trust its contents, or remove it with `palisade agent --cleanup`"
    )]
    Unsafe { uid: u32, mode: u32 },
}

/// How pinned state differs from what this agent expects.
#[derive(Debug, thiserror::Error)]
pub enum Incompatible {
    #[error("{0}")]
    Info(aya::maps::MapError),
    #[error("{map} values are {got} bytes, not {want}")]
    ValueSize {
        map: &'static str,
        got: u32,
        want: u32,
    },
    #[error("table layout {got}, this agent uses {want}")]
    Abi { got: u64, want: u32 },
}

/// Why one program of a hook group did not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{}", describe_program_error(.0))]
    Program(aya::programs::ProgramError),
    #[error(transparent)]
    Link(#[from] aya::programs::links::LinkError),
    #[error("pin {}: {source}", path.display())]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("open {}: {source}", path.display())]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("missing from the object (rebuild)")]
    Missing,
    #[error("tracefs is not available (exec record layout)")]
    NoTracefs,
    #[error("this host has no BPF-LSM (see `palisade doctor`)")]
    NoLsm,
}

/// Host parameters for the programs.
#[derive(Debug, Clone)]
pub struct Options {
    pub pin_dir: PathBuf,
    /// Root of the unified hierarchy (network hooks attach there).
    pub unified_root: PathBuf,
    /// Offset of `filename` in `sched:sched_process_exec` records (the fallback's input).
    pub exec_filename_offset: Option<u32>,
    /// Kernel struct offsets for exec rules on the file executed (`None`: no kernel BTF, exec
    /// rules fall back to the path given).
    pub exec_offsets: Option<ExecOffsets>,
    /// Offset of `family` in `syscalls:sys_enter_socket` records (`None`: packet sockets
    /// cannot be seen).
    pub socket_family_offset: Option<u32>,
    /// Offset of `thread_info.status` in `task_struct`, from BTF (`None`: i386 calls cannot be
    /// told from x86_64 ones).
    pub task_status_offset: Option<u32>,
    /// The current thread's id and cgroup id in its task, from BTF (`None`: the syscall hooks
    /// ask the helpers).
    pub task_offsets: Option<palisade_common::policy::TaskOffsets>,
    /// `POLICY_XLAT`: compat call → x86_64 call.
    pub xlat: Vec<(u32, u32)>,
    /// The kernel BTF the LSM programs are typed by (`None`: no BPF-LSM on this host).
    pub lsm_btf: Option<PathBuf>,
    pub burst: u64,
    pub interval_ns: u64,
    /// Size of `POLICY_EVENTS` in bytes (a power of two, at least one page).
    pub events_bytes: u32,
}

/// The loaded object, its maps and the hook groups' links.
pub struct Kernel {
    pub(super) ebpf: Ebpf,
    pub(super) opts: Options,
    pub cgroups: HashMap<MapData, u64, CgroupPolicy>,
    pub syscalls: Array<MapData, SyscallVerdicts>,
    pub args: HashMap<MapData, ArgKey, ArgRule>,
    pub exec_conf: Array<MapData, ExecConf>,
    pub exec: HashMap<MapData, ExecKey, ExecRule>,
    pub files: HashMap<MapData, ExecKey, FileEntry>,
    pub net: Array<MapData, NetRuleSet>,
    pub rules: Array<MapData, RuleInfo>,
    /// LRU hash, read through the hash type.
    pub violations: HashMap<MapData, ViolationKey, ViolationState>,
    pub loss: PerCpuArray<MapData, u64>,
    /// `POLICY_REPORTED`, until the reporter takes it.
    pub reported: Option<HashMap<MapData, ViolationKey, [u64; 2]>>,
    /// Settings; also kept open because programs loaded later refer to every map by its
    /// descriptor.
    config: Array<MapData, u64>,
    /// Kept open (see `config`).
    _resolved: HashMap<MapData, u64, Resolved>,
    _xlat: Array<MapData, u32>,
    pub(super) links: BTreeMap<Hook, Vec<PinnedLink>>,
    /// The syscall LSM programs attached, by program.
    pub(super) lsm_links: BTreeMap<&'static str, PinnedLink>,
    /// By `lsm_index` (see `names::MAP_POLICY_LSM`).
    pub(super) lsm: Array<MapData, u32>,
    /// `POLICY_NEXT`: what the `sys_enter` program tail-calls after its check.
    pub(super) next: ProgramArray<MapData>,
    /// The syscall telemetry's entry (raw tracepoints only), while this object holds it.
    pub(super) entry: Option<SyscallEntry>,
    /// Whether `next` holds the telemetry's entry program (and its own link is detached).
    pub(super) routed: bool,
    /// Whether the maps existed before this agent (state adopted from a previous one).
    pub adopted: bool,
    /// Whether the object was loaded with the kernel's struct offsets (the path walks of the
    /// exec and file LSM programs need them).
    offsets_loaded: bool,
}

/// The expected value size of each pinned map (a pinned map of another layout is refused).
fn expected_value_size(map: &str) -> Option<u32> {
    use std::mem::size_of;
    Some(match map {
        names::MAP_POLICY_CGROUPS => size_of::<CgroupPolicy>(),
        names::MAP_POLICY_SYSCALLS => size_of::<SyscallVerdicts>(),
        names::MAP_POLICY_ARGS => size_of::<ArgRule>(),
        names::MAP_POLICY_EXEC_CONF => size_of::<ExecConf>(),
        names::MAP_POLICY_EXEC => size_of::<ExecRule>(),
        names::MAP_POLICY_FILES => size_of::<FileEntry>(),
        names::MAP_POLICY_NET => size_of::<NetRuleSet>(),
        names::MAP_POLICY_RULES => size_of::<RuleInfo>(),
        names::MAP_POLICY_VIOLATIONS => size_of::<ViolationState>(),
        names::MAP_POLICY_REPORTED => size_of::<[u64; 2]>(),
        names::MAP_POLICY_RESOLVED => size_of::<Resolved>(),
        names::MAP_POLICY_XLAT => size_of::<u32>(),
        _ => return None,
    } as u32)
}

fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

pub(super) fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

impl Kernel {
    /// Loads the object, reusing pinned maps; adopts pinned links lazily (see [`Kernel::want`]).
    pub fn load(opts: Options) -> Result<(Self, RingBuf<MapData>), BpfError> {
        crate::policy::bpffs::ensure(&opts.pin_dir)?;
        let maps = maps_dir(&opts.pin_dir);
        let pin_err = |source| BpfError::PinDir {
            path: opts.pin_dir.clone(),
            source: PinDirError::Io {
                what: "create",
                source,
            },
        };
        crate::policy::bpffs::check_pin_dir(&opts.pin_dir)?;
        for d in [maps.clone(), links_dir(&opts.pin_dir)] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(pin_err)?;
        }
        let adopted = maps.join(names::MAP_POLICY_CGROUPS).exists();
        for m in names::POLICY_MAPS {
            let path = maps.join(m);
            if let (true, Some(want)) = (path.exists(), expected_value_size(m)) {
                let info = MapInfo::from_pin(&path).map_err(|e| BpfError::Incompatible {
                    path: path.clone(),
                    why: Incompatible::Info(e),
                })?;
                if info.value_size() != want {
                    return Err(BpfError::Incompatible {
                        path,
                        why: Incompatible::ValueSize {
                            map: m,
                            got: info.value_size(),
                            want,
                        },
                    });
                }
            }
        }
        let nr_offset: u64 = 15 * 8;
        let off = opts.exec_filename_offset.unwrap_or(8);
        let exec_offsets = opts.exec_offsets.unwrap_or(ExecOffsets::ZERO);
        let family = opts.socket_family_offset.unwrap_or(16);
        let status = opts.task_status_offset.unwrap_or(0);
        let task = opts
            .task_offsets
            .unwrap_or(palisade_common::policy::TaskOffsets::ZERO);
        let mask: u32 = 16383;
        let mut loader = EbpfLoader::new();
        loader
            .btf(None)
            .override_global(names::GLOBAL_POLICY_NR_OFFSET, &nr_offset, true)
            .override_global(names::GLOBAL_POLICY_EXEC_OFF_FILENAME, &off, true)
            .override_global(names::GLOBAL_POLICY_EXEC_OFFSETS, &exec_offsets, true)
            .override_global(names::GLOBAL_POLICY_SOCKET_OFF_FAMILY, &family, true)
            .override_global(names::GLOBAL_POLICY_TASK_OFF_STATUS, &status, true)
            .override_global(names::GLOBAL_POLICY_TASK_OFFSETS, &task, true)
            .override_global(names::GLOBAL_POLICY_ENTER_MASK, &mask, true)
            .map_max_entries(names::MAP_POLICY_EVENTS, opts.events_bytes);
        let paths: Vec<(&str, PathBuf)> = names::POLICY_MAPS
            .iter()
            .map(|m| (*m, maps.join(m)))
            .collect();
        for (m, p) in &paths {
            loader.map_pin_path(m, p.as_path());
        }
        let mut ebpf = loader
            .load(crate::kernel::POLICY_OBJECT)
            .map_err(BpfError::Load)?;
        let mut config: Array<MapData, u64> = take_map(&mut ebpf, names::MAP_POLICY_CONFIG)?;
        let map_err = |map, source| BpfError::Map { map, source };
        let abi = config
            .get(&cfg::ABI, 0)
            .map_err(|e| map_err(names::MAP_POLICY_CONFIG, e))?;
        if abi != 0 && abi != u64::from(POLICY_ABI) {
            return Err(BpfError::Incompatible {
                path: opts.pin_dir.clone(),
                why: Incompatible::Abi {
                    got: abi,
                    want: POLICY_ABI,
                },
            });
        }
        for (i, v) in [
            (cfg::ABI, u64::from(POLICY_ABI)),
            (cfg::BURST, opts.burst),
            (cfg::INTERVAL_NS, opts.interval_ns),
        ] {
            config
                .set(i, v, 0)
                .map_err(|e| map_err(names::MAP_POLICY_CONFIG, e))?;
        }
        let mut xlat: Array<MapData, u32> = take_map(&mut ebpf, names::MAP_POLICY_XLAT)?;
        for (i, v) in &opts.xlat {
            if *i < XLAT_ENTRIES {
                xlat.set(*i, v, 0)
                    .map_err(|e| map_err(names::MAP_POLICY_XLAT, e))?;
            }
        }
        let events: RingBuf<MapData> = take_map(&mut ebpf, names::MAP_POLICY_EVENTS)?;
        let mut k = Kernel {
            cgroups: take_map(&mut ebpf, names::MAP_POLICY_CGROUPS)?,
            syscalls: take_map(&mut ebpf, names::MAP_POLICY_SYSCALLS)?,
            args: take_map(&mut ebpf, names::MAP_POLICY_ARGS)?,
            exec_conf: take_map(&mut ebpf, names::MAP_POLICY_EXEC_CONF)?,
            exec: take_map(&mut ebpf, names::MAP_POLICY_EXEC)?,
            files: take_map(&mut ebpf, names::MAP_POLICY_FILES)?,
            net: take_map(&mut ebpf, names::MAP_POLICY_NET)?,
            rules: take_map(&mut ebpf, names::MAP_POLICY_RULES)?,
            violations: take_map(&mut ebpf, names::MAP_POLICY_VIOLATIONS)?,
            loss: take_map(&mut ebpf, names::MAP_POLICY_LOSS)?,
            reported: Some(take_map(&mut ebpf, names::MAP_POLICY_REPORTED)?),
            _resolved: take_map(&mut ebpf, names::MAP_POLICY_RESOLVED)?,
            _xlat: xlat,
            lsm: take_map(&mut ebpf, names::MAP_POLICY_LSM)?,
            next: take_map(&mut ebpf, names::MAP_POLICY_NEXT)?,
            entry: None,
            routed: false,
            lsm_links: BTreeMap::new(),
            config,
            ebpf,
            opts,
            links: BTreeMap::new(),
            offsets_loaded: exec_offsets != ExecOffsets::ZERO,
            adopted,
        };
        // whatever an earlier agent's programs cached is looked up again
        k.bump_generation()?;
        Ok((k, events))
    }

    /// Makes every hook look up cgroups again (after a change of `POLICY_CGROUPS`).
    pub fn bump_generation(&mut self) -> Result<(), BpfError> {
        let map_err = |source| BpfError::Map {
            map: names::MAP_POLICY_CONFIG,
            source,
        };
        let g = self.config.get(&cfg::GENERATION, 0).map_err(map_err)?;
        self.config
            .set(cfg::GENERATION, g.wrapping_add(1) & 0xffff_ffff, 0)
            .map_err(map_err)
    }

    /// Whether exec rules are attached (or will be) on the file executed.
    pub fn exec_on_file(&self) -> bool {
        self.opts.exec_offsets.is_some()
    }

    /// Whether the programs know the kernel's struct offsets (BTF), which the BPF-LSM file
    /// hooks need to walk a file's path.
    pub fn has_exec_offsets(&self) -> bool {
        self.offsets_loaded
    }

    /// Exec rules on the path given from now on (the kernel refused the other program).
    pub fn exec_on_path_given(&mut self) {
        self.opts.exec_offsets = None;
    }

    /// Violation events lost to a full ring buffer.
    pub fn lost(&self) -> u64 {
        self.loss.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Detaches everything and removes the pin directory (nothing left to enforce); gives the
    /// syscall telemetry's entry back, attached by its own link again.
    pub fn remove(mut self) -> (Vec<PathBuf>, Option<SyscallEntry>) {
        let _ = self.want_syscall_lsm(&[]);
        let _ = self.want(&[]);
        let dir = self.opts.pin_dir.clone();
        let entry = self.entry.take();
        drop(self);
        (crate::policy::bpffs::remove_tree(&dir), entry)
    }
}

impl Drop for Kernel {
    /// The agent is going: its telemetry program leaves the tail call (the pinned `sys_enter`
    /// program goes on checking alone).
    fn drop(&mut self) {
        if self.routed {
            let _ = self.next.clear_index(&0);
        }
    }
}
