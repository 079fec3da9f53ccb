//! The kernel side of policies: the `palisade-policy` object with its maps pinned under the pin
//! directory (`maps/`), hook groups attached on demand through links pinned under `links/`.
//!
//! A new agent loads the object with every map reused from its pin (aya opens a pinned map
//! instead of creating one), and adopts the pinned links of each hook group instead of
//! attaching duplicates: enforcement never stops across an agent restart, `kill -9` included.
//! Detaching a group unpins its links; with nothing left to enforce the whole directory goes.
use std::{
    collections::BTreeMap,
    fs::File,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapInfo, PerCpuArray, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, RawTracePoint,
        TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use palisade_common::{
    names,
    policy::{
        ArgKey, ArgRule, CgroupPolicy, ExecConf, ExecKey, ExecOffsets, ExecRule, NetRuleSet,
        POLICY_ABI, RuleInfo, SyscallVerdicts, ViolationKey, ViolationState, config as cfg,
    },
};

use crate::kernel::{KernelError, describe_program_error, error_chain, take_map};

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
}

/// Hook groups, attached only while some cgroup needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `sys_enter` raw tracepoint (every syscall on the host pays a lookup).
    Syscalls,
    /// `sys_exit` raw tracepoint: seccomp denials of launched workloads.
    Seccomp,
    /// `sched_process_exec`: a raw tracepoint on the file executed (kernel BTF), or the classic
    /// tracepoint on the path given (the fallback).
    Exec,
    /// connect4/6, sendmsg4/6 on the unified root.
    Egress,
    /// bind4/6 and cgroup_skb ingress on the unified root.
    Ingress,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Syscalls,
        Hook::Seccomp,
        Hook::Exec,
        Hook::Egress,
        Hook::Ingress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Syscalls => "syscalls",
            Hook::Seccomp => "seccomp",
            Hook::Exec => "exec",
            Hook::Egress => "egress",
            Hook::Ingress => "ingress",
        }
    }

    /// The programs of the group; `exec_file`: exec rules see the file executed.
    fn programs(self, exec_file: bool) -> &'static [&'static str] {
        match self {
            Hook::Syscalls => &[names::PROG_POLICY_SYS_ENTER],
            Hook::Seccomp => &[names::PROG_POLICY_SYS_EXIT],
            Hook::Exec if exec_file => &[names::PROG_POLICY_EXEC],
            Hook::Exec => &[names::PROG_POLICY_EXEC_GIVEN],
            Hook::Egress => &[
                names::PROG_POLICY_CONNECT4,
                names::PROG_POLICY_CONNECT6,
                names::PROG_POLICY_SENDMSG4,
                names::PROG_POLICY_SENDMSG6,
            ],
            Hook::Ingress => &[
                names::PROG_POLICY_BIND4,
                names::PROG_POLICY_BIND6,
                names::PROG_POLICY_INGRESS,
            ],
        }
    }
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
    pub burst: u64,
    pub interval_ns: u64,
}

/// The loaded object, its maps and the hook groups' links.
pub struct Kernel {
    ebpf: Ebpf,
    opts: Options,
    pub cgroups: HashMap<MapData, u64, CgroupPolicy>,
    pub syscalls: Array<MapData, SyscallVerdicts>,
    pub args: HashMap<MapData, ArgKey, ArgRule>,
    pub exec_conf: Array<MapData, ExecConf>,
    pub exec: HashMap<MapData, ExecKey, ExecRule>,
    pub net: Array<MapData, NetRuleSet>,
    pub rules: Array<MapData, RuleInfo>,
    /// LRU hash, read through the hash type.
    pub violations: HashMap<MapData, ViolationKey, ViolationState>,
    pub loss: PerCpuArray<MapData, u64>,
    /// `POLICY_REPORTED`, until the reporter takes it.
    pub reported: Option<HashMap<MapData, ViolationKey, [u64; 2]>>,
    /// Kept open: programs loaded later refer to every map by its descriptor.
    _config: Array<MapData, u64>,
    links: BTreeMap<Hook, Vec<PinnedLink>>,
    /// Whether the maps existed before this agent (state adopted from a previous one).
    pub adopted: bool,
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
        names::MAP_POLICY_NET => size_of::<NetRuleSet>(),
        names::MAP_POLICY_RULES => size_of::<RuleInfo>(),
        names::MAP_POLICY_VIOLATIONS => size_of::<ViolationState>(),
        names::MAP_POLICY_REPORTED => size_of::<[u64; 2]>(),
        _ => return None,
    } as u32)
}

fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

fn links_dir(pin_dir: &Path) -> PathBuf {
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
        let mask: u32 = 16383;
        let mut loader = EbpfLoader::new();
        loader
            .btf(None)
            .override_global(names::GLOBAL_POLICY_NR_OFFSET, &nr_offset, true)
            .override_global(names::GLOBAL_POLICY_EXEC_OFF_FILENAME, &off, true)
            .override_global(names::GLOBAL_POLICY_EXEC_OFFSETS, &exec_offsets, true)
            .override_global(names::GLOBAL_POLICY_ENTER_MASK, &mask, true);
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
        let events: RingBuf<MapData> = take_map(&mut ebpf, names::MAP_POLICY_EVENTS)?;
        let k = Kernel {
            cgroups: take_map(&mut ebpf, names::MAP_POLICY_CGROUPS)?,
            syscalls: take_map(&mut ebpf, names::MAP_POLICY_SYSCALLS)?,
            args: take_map(&mut ebpf, names::MAP_POLICY_ARGS)?,
            exec_conf: take_map(&mut ebpf, names::MAP_POLICY_EXEC_CONF)?,
            exec: take_map(&mut ebpf, names::MAP_POLICY_EXEC)?,
            net: take_map(&mut ebpf, names::MAP_POLICY_NET)?,
            rules: take_map(&mut ebpf, names::MAP_POLICY_RULES)?,
            violations: take_map(&mut ebpf, names::MAP_POLICY_VIOLATIONS)?,
            loss: take_map(&mut ebpf, names::MAP_POLICY_LOSS)?,
            reported: Some(take_map(&mut ebpf, names::MAP_POLICY_REPORTED)?),
            _config: config,
            ebpf,
            opts,
            links: BTreeMap::new(),
            adopted,
        };
        Ok((k, events))
    }

    /// Hook groups currently attached.
    pub fn attached(&self) -> Vec<Hook> {
        self.links.keys().copied().collect()
    }

    /// Attaches (or adopts from pins) the groups in `want` and detaches the others.
    pub fn want(&mut self, want: &[Hook]) -> Vec<(Hook, BpfError)> {
        let mut failed = Vec::new();
        for h in Hook::ALL {
            let has = self.links.contains_key(&h);
            if want.contains(&h) && !has {
                match self.attach(h) {
                    Ok(links) => {
                        self.links.insert(h, links);
                    }
                    Err(e) => failed.push((h, e)),
                }
            } else if !want.contains(&h) && has {
                for l in self.links.remove(&h).unwrap_or_default() {
                    if let Err(e) = l.unpin() {
                        tracing::warn!(hook = h.as_str(), error = %e, "unpinning a link failed");
                    }
                }
            }
        }
        failed
    }

    /// The links of `h`: adopted from their pins, or attached and pinned now.
    fn attach(&mut self, h: Hook) -> Result<Vec<PinnedLink>, BpfError> {
        let exec_file = self.opts.exec_offsets.is_some();
        let mut out = Vec::new();
        for prog in h.programs(exec_file) {
            let pin = links_dir(&self.opts.pin_dir).join(prog);
            if pin.exists() {
                match PinnedLink::from_pin(&pin) {
                    Ok(l) => {
                        out.push(l);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(link = %pin.display(), error = %e, "stale pinned link replaced");
                        let _ = std::fs::remove_file(&pin);
                    }
                }
            }
            let link = self.attach_one(prog)?;
            let pinned = link.pin(&pin).map_err(|source| BpfError::Attach {
                program: prog,
                source: AttachError::Pin {
                    path: pin.clone(),
                    source,
                },
            })?;
            out.push(pinned);
        }
        if h == Hook::Exec {
            // a previous agent may have matched execs the other way: one exec program only,
            // the old one detached once the new one is in place
            for prog in Hook::Exec.programs(!exec_file) {
                let pin = links_dir(&self.opts.pin_dir).join(prog);
                if let Ok(l) = PinnedLink::from_pin(&pin) {
                    tracing::info!(link = %pin.display(), "the other exec program's pinned link replaced");
                    let _ = l.unpin();
                }
            }
        }
        Ok(out)
    }

    fn attach_one(&mut self, prog: &'static str) -> Result<FdLink, BpfError> {
        let att = |source| BpfError::Attach {
            program: prog,
            source,
        };
        let root = &self.opts.unified_root;
        let cg = || {
            File::open(root).map_err(|source| {
                att(AttachError::Cgroup {
                    path: root.clone(),
                    source,
                })
            })
        };
        let p = self
            .ebpf
            .program_mut(prog)
            .ok_or(att(AttachError::Missing))?;
        let perr = |e| att(AttachError::Program(e));
        let lerr = |e| att(AttachError::Link(e));
        match prog {
            names::PROG_POLICY_SYS_ENTER | names::PROG_POLICY_SYS_EXIT => {
                let p: &mut RawTracePoint = p.try_into().map_err(perr)?;
                if p.fd().is_err() {
                    p.load().map_err(perr)?;
                }
                let tp = if prog == names::PROG_POLICY_SYS_ENTER {
                    "sys_enter"
                } else {
                    "sys_exit"
                };
                let id = p.attach(tp).map_err(perr)?;
                Ok(p.take_link(id).map_err(perr)?.into())
            }
            names::PROG_POLICY_EXEC => {
                let p: &mut RawTracePoint = p.try_into().map_err(perr)?;
                if p.fd().is_err() {
                    p.load().map_err(perr)?;
                }
                let id = p.attach("sched_process_exec").map_err(perr)?;
                Ok(p.take_link(id).map_err(perr)?.into())
            }
            names::PROG_POLICY_EXEC_GIVEN => {
                if self.opts.exec_filename_offset.is_none() {
                    return Err(att(AttachError::NoTracefs));
                }
                let p: &mut TracePoint = p.try_into().map_err(perr)?;
                if p.fd().is_err() {
                    p.load().map_err(perr)?;
                }
                let id = p.attach("sched", "sched_process_exec").map_err(perr)?;
                FdLink::try_from(p.take_link(id).map_err(perr)?).map_err(lerr)
            }
            names::PROG_POLICY_INGRESS => {
                let p: &mut CgroupSkb = p.try_into().map_err(perr)?;
                if p.fd().is_err() {
                    p.load().map_err(perr)?;
                }
                let id = p
                    .attach(
                        cg()?,
                        CgroupSkbAttachType::Ingress,
                        CgroupAttachMode::Single,
                    )
                    .map_err(perr)?;
                FdLink::try_from(p.take_link(id).map_err(perr)?).map_err(lerr)
            }
            _ => {
                let p: &mut CgroupSockAddr = p.try_into().map_err(perr)?;
                if p.fd().is_err() {
                    p.load().map_err(perr)?;
                }
                let id = p.attach(cg()?, CgroupAttachMode::Single).map_err(perr)?;
                FdLink::try_from(p.take_link(id).map_err(perr)?).map_err(lerr)
            }
        }
    }

    /// Whether exec rules are attached (or will be) on the file executed.
    pub fn exec_on_file(&self) -> bool {
        self.opts.exec_offsets.is_some()
    }

    /// Exec rules on the path given from now on (the kernel refused the other program).
    pub fn exec_on_path_given(&mut self) {
        self.opts.exec_offsets = None;
    }

    /// Violation events lost to a full ring buffer.
    pub fn lost(&self) -> u64 {
        self.loss.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Detaches everything and removes the pin directory (nothing left to enforce).
    pub fn remove(mut self) -> Vec<PathBuf> {
        let _ = self.want(&[]);
        let dir = self.opts.pin_dir.clone();
        drop(self);
        crate::policy::bpffs::remove_tree(&dir)
    }
}
