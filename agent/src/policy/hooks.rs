//! The policy object's hook groups: which programs each holds, and attaching them (or adopting
//! their pinned links) while some cgroup needs them.
use std::{fs::File, path::PathBuf};

use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, Lsm,
    RawTracePoint, TracePoint,
    links::{FdLink, PinnedLink},
};
use palisade_common::{
    names,
    policy::{LSM_CALLS, cgroup_flags, lsm_call_bit, lsm_index},
};

use super::bpf::{AttachError, BpfError, Kernel, links_dir};
use crate::kernel::SyscallEntry;

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
    /// BPF-LSM `bprm_check_security`: exec rules with `action: errno` refuse the exec (hosts
    /// with BPF-LSM, exec rules on the file executed).
    ExecLsm,
    /// BPF-LSM hooks of the calls in `LSM_CALLS` that enforce-mode `errno` syscall rules deny
    /// (hosts with BPF-LSM), attached hook by hook (`Kernel::want_syscall_lsm`).
    SyscallsLsm,
    /// connect4/6, sendmsg4/6 on the unified root.
    Egress,
    /// `cgroup/sock_create` on the unified root: raw and ICMP sockets (egress rules).
    SocketCreate,
    /// `syscalls:sys_enter_socket`: packet sockets (egress rules).
    PacketSocket,
    /// bind4/6 and cgroup_skb ingress on the unified root.
    Ingress,
    /// `sys_enter` raw tracepoint reading file paths (file rules without BPF-LSM).
    Files,
    /// BPF-LSM file hooks (`file_open`, `path_unlink`, ...): file rules refused on the resolved
    /// path (hosts with BPF-LSM; instead of [`Hook::Files`]).
    FilesLsm,
}

impl Hook {
    pub const ALL: [Hook; 11] = [
        Hook::Syscalls,
        Hook::SyscallsLsm,
        Hook::Seccomp,
        Hook::Exec,
        Hook::ExecLsm,
        Hook::Egress,
        Hook::SocketCreate,
        Hook::PacketSocket,
        Hook::Ingress,
        Hook::Files,
        Hook::FilesLsm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Syscalls => "syscalls",
            Hook::Seccomp => "seccomp",
            Hook::Exec => "exec",
            Hook::ExecLsm => "exec_lsm",
            Hook::SyscallsLsm => "syscalls_lsm",
            Hook::Egress => "egress",
            Hook::SocketCreate => "socket_create",
            Hook::PacketSocket => "packet_socket",
            Hook::Ingress => "ingress",
            Hook::Files => "files",
            Hook::FilesLsm => "files_lsm",
        }
    }

    /// The hook groups a cgroup with these `cgroup_flags` needs.
    pub fn needed(flags: u32) -> Vec<Hook> {
        let mut out = Vec::new();
        for (bit, hooks) in [
            (cgroup_flags::SYSCALLS, &[Hook::Syscalls][..]),
            (cgroup_flags::SECCOMP, &[Hook::Seccomp]),
            (cgroup_flags::EXEC, &[Hook::Exec]),
            (
                cgroup_flags::EGRESS,
                &[Hook::Egress, Hook::SocketCreate, Hook::PacketSocket],
            ),
            (cgroup_flags::INGRESS, &[Hook::Ingress]),
            (cgroup_flags::FILES, &[Hook::Files]),
        ] {
            if flags & bit != 0 {
                out.extend_from_slice(hooks);
            }
        }
        out
    }

    /// The `cgroup_flags` bit of the rules this group enforces.
    pub fn flag(self) -> u32 {
        match self {
            Hook::Syscalls | Hook::SyscallsLsm => cgroup_flags::SYSCALLS,
            Hook::Seccomp => cgroup_flags::SECCOMP,
            Hook::Exec | Hook::ExecLsm => cgroup_flags::EXEC,
            Hook::Egress | Hook::SocketCreate | Hook::PacketSocket => cgroup_flags::EGRESS,
            Hook::Ingress => cgroup_flags::INGRESS,
            Hook::Files | Hook::FilesLsm => cgroup_flags::FILES,
        }
    }

    /// The programs of the group; `exec_file`: exec rules see the file executed.
    fn programs(self, exec_file: bool) -> &'static [&'static str] {
        match self {
            Hook::Syscalls => &[names::PROG_POLICY_SYS_ENTER],
            Hook::Seccomp => &[names::PROG_POLICY_SYS_EXIT],
            Hook::Exec if exec_file => &[names::PROG_POLICY_EXEC],
            Hook::Exec => &[names::PROG_POLICY_EXEC_GIVEN],
            Hook::ExecLsm => &[names::PROG_POLICY_EXEC_LSM],
            // attached hook by hook (`Kernel::want_syscall_lsm`)
            Hook::SyscallsLsm => &[],
            Hook::Egress => &[
                names::PROG_POLICY_CONNECT4,
                names::PROG_POLICY_CONNECT6,
                names::PROG_POLICY_SENDMSG4,
                names::PROG_POLICY_SENDMSG6,
            ],
            Hook::SocketCreate => &[names::PROG_POLICY_SOCK_CREATE],
            Hook::PacketSocket => &[names::PROG_POLICY_PACKET],
            Hook::Ingress => &[
                names::PROG_POLICY_BIND4,
                names::PROG_POLICY_BIND6,
                names::PROG_POLICY_INGRESS,
            ],
            Hook::Files => &[names::PROG_POLICY_FILES_AUDIT],
            Hook::FilesLsm => &FILES_LSM_PROGRAMS,
        }
    }
}

/// The programs of [`Hook::FilesLsm`].
const FILES_LSM_PROGRAMS: [&str; names::PROG_POLICY_FILES_LSM.len()] = {
    let mut out = [""; names::PROG_POLICY_FILES_LSM.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = names::PROG_POLICY_FILES_LSM[i].0;
        i += 1;
    }
    out
};

/// The program on LSM hook `hook` (the syscall hooks).
fn lsm_program(hook: &str) -> Option<&'static str> {
    if hook == "task_prctl" {
        return Some(names::PROG_POLICY_LSM_TASK_PRCTL);
    }
    names::PROG_POLICY_SYSCALL_LSM
        .iter()
        .find(|(_, h)| *h == hook)
        .map(|(p, _)| *p)
}

/// The LSM hooks of x86_64 call `nr` (none when it has none).
fn hooks_of(nr: u32) -> &'static [&'static str] {
    LSM_CALLS
        .iter()
        .find(|c| c.nr == nr)
        .map_or(&[][..], |c| c.hooks)
}

/// The LSM hook of program `prog`, if it is an LSM program.
fn lsm_hook(prog: &str) -> Option<&'static str> {
    match prog {
        names::PROG_POLICY_EXEC_LSM => Some("bprm_check_security"),
        names::PROG_POLICY_LSM_TASK_PRCTL => Some("task_prctl"),
        _ => names::PROG_POLICY_SYSCALL_LSM
            .iter()
            .chain(names::PROG_POLICY_FILES_LSM.iter())
            .find(|(p, _)| *p == prog)
            .map(|(_, h)| *h),
    }
}

impl Kernel {
    /// Hook groups currently attached.
    pub fn attached(&self) -> Vec<Hook> {
        let mut out: Vec<Hook> = self.links.keys().copied().collect();
        if !self.lsm_links.is_empty() {
            out.push(Hook::SyscallsLsm);
            out.sort();
        }
        out
    }

    /// Attaches (or adopts from pins) the groups in `want` and detaches the others; returns
    /// the groups that could not be attached and why.
    pub fn want(&mut self, want: &[Hook]) -> Vec<(Hook, BpfError)> {
        let mut failed = Vec::new();
        if !want.contains(&Hook::ExecLsm) {
            // the exec programs take `errno` rules back before the LSM program goes
            self.set_exec_lsm(false, &mut failed);
        }
        for h in Hook::ALL {
            if h == Hook::SyscallsLsm {
                continue;
            }
            let has = self.links.contains_key(&h);
            if want.contains(&h) && !has {
                let started = std::time::Instant::now();
                match self.attach(h) {
                    Ok(links) => {
                        tracing::info!(
                            hook = h.as_str(),
                            ms = started.elapsed().as_millis(),
                            "policy hook attached"
                        );
                        self.links.insert(h, links);
                    }
                    Err(e) => failed.push((h, e)),
                }
            } else if !want.contains(&h) && has {
                if h == Hook::Syscalls && !self.unroute_entry() {
                    // the telemetry would lose its entry: the program stays, checking nothing
                    continue;
                }
                for l in self.links.remove(&h).unwrap_or_default() {
                    if let Err(e) = l.unpin() {
                        tracing::warn!(hook = h.as_str(), error = %e, "unpinning a link failed");
                    }
                }
            }
        }
        if self.links.contains_key(&Hook::Syscalls) {
            self.route_entry();
        }
        if self.links.contains_key(&Hook::Syscalls) || !want.contains(&Hook::Syscalls) {
            // an older agent's `sys_enter` program (it does not tail-call the telemetry): its
            // successor is in place, or none is wanted
            let pin = links_dir(&self.opts.pin_dir).join(names::PROG_POLICY_SYS_ENTER_OLD);
            if let Ok(l) = PinnedLink::from_pin(&pin) {
                tracing::info!(link = %pin.display(), "an older agent's sys_enter link removed");
                let _ = l.unpin();
            }
        }
        // once the LSM program refuses `errno` exec rules, the exec programs leave them to it
        let on = self.links.contains_key(&Hook::ExecLsm);
        self.set_exec_lsm(on, &mut failed);
        failed
    }

    /// Gives this object the syscall telemetry's entry (`None`: the telemetry runs on fentry,
    /// or not at all), routed through the `sys_enter` program while it is attached.
    pub fn set_syscall_entry(&mut self, entry: Option<SyscallEntry>) {
        self.entry = entry;
        if self.links.contains_key(&Hook::Syscalls) {
            self.route_entry();
        }
    }

    /// With the `sys_enter` program attached: puts the telemetry's entry program in its tail
    /// call, then detaches the entry's own link. In between both run; the program counts a
    /// call once (`first_exit` in the telemetry). Without an entry, empties the slot (an
    /// earlier agent's program, left by a crash).
    fn route_entry(&mut self) {
        if self.routed {
            return;
        }
        let Some(e) = &mut self.entry else {
            let _ = self.next.clear_index(&0);
            return;
        };
        match self.next.set(0, e.program(), 0) {
            Ok(()) => {
                e.detach_direct();
                self.routed = true;
                tracing::info!(
                    "syscall telemetry entered through the policy sys_enter program (one program per syscall)"
                );
            }
            Err(error) => {
                tracing::warn!(%error, "the syscall telemetry stays a program of its own on sys_enter (one more program run per syscall)");
            }
        }
    }

    /// Before the `sys_enter` program goes: the telemetry's entry attached by its own link
    /// again, then out of the tail call. `false` when it cannot be attached (the program then
    /// stays, and keeps calling it).
    fn unroute_entry(&mut self) -> bool {
        if !self.routed {
            let _ = self.next.clear_index(&0);
            return true;
        }
        if let Some(e) = &mut self.entry
            && let Err(error) = e.attach_direct()
        {
            tracing::warn!(%error, "the syscall telemetry cannot attach to sys_enter again; the policy sys_enter program stays attached to carry it");
            return false;
        }
        let _ = self.next.clear_index(&0);
        self.routed = false;
        true
    }

    fn set_exec_lsm(&mut self, on: bool, failed: &mut Vec<(Hook, BpfError)>) {
        if let Err(source) = self.lsm.set(lsm_index::EXEC, u32::from(on), 0) {
            failed.push((
                Hook::ExecLsm,
                BpfError::Map {
                    map: names::MAP_POLICY_LSM,
                    source,
                },
            ));
        }
    }

    /// Attaches the LSM hooks of the x86_64 calls `calls` (from `LSM_CALLS`) and detaches the
    /// others, then marks in `POLICY_LSM` the calls whose every hook is attached (`sys_enter`
    /// leaves their `errno` rules to the hooks from then on; a call losing a hook is unmarked
    /// before the hook goes). Returns what failed to attach.
    pub fn want_syscall_lsm(&mut self, calls: &[u32]) -> Vec<BpfError> {
        let mut failed = Vec::new();
        let wanted: std::collections::BTreeSet<&'static str> = calls
            .iter()
            .flat_map(|nr| hooks_of(*nr).iter().filter_map(|h| lsm_program(h)))
            .collect();
        // unmark first: calls keep only hooks that stay
        let keep: Vec<u32> = calls
            .iter()
            .copied()
            .filter(|nr| self.all_attached(*nr))
            .collect();
        self.mark_calls(&keep, &mut failed);
        let gone: Vec<&'static str> = self
            .lsm_links
            .keys()
            .copied()
            .filter(|p| !wanted.contains(p))
            .collect();
        for p in gone {
            if let Some(l) = self.lsm_links.remove(p)
                && let Err(e) = l.unpin()
            {
                tracing::warn!(program = p, error = %e, "unpinning a link failed");
            }
        }
        for p in wanted {
            if self.lsm_links.contains_key(p) {
                continue;
            }
            let started = std::time::Instant::now();
            match self.attach_pinned(p) {
                Ok(l) => {
                    tracing::info!(
                        program = p,
                        ms = started.elapsed().as_millis(),
                        "policy LSM hook attached"
                    );
                    self.lsm_links.insert(p, l);
                }
                Err(e) => failed.push(e),
            }
        }
        let done: Vec<u32> = calls
            .iter()
            .copied()
            .filter(|nr| self.all_attached(*nr))
            .collect();
        self.mark_calls(&done, &mut failed);
        failed
    }

    /// Whether every hook of call `nr` is attached.
    fn all_attached(&self, nr: u32) -> bool {
        let hooks = hooks_of(nr);
        !hooks.is_empty()
            && hooks
                .iter()
                .all(|h| lsm_program(h).is_some_and(|p| self.lsm_links.contains_key(p)))
    }

    fn mark_calls(&mut self, calls: &[u32], failed: &mut Vec<BpfError>) {
        let mut words = [0u32; (lsm_index::COUNT - lsm_index::CALLS) as usize];
        for nr in calls {
            let (w, bit) = lsm_call_bit(u64::from(*nr));
            if let Some(x) = words.get_mut((w - lsm_index::CALLS) as usize) {
                *x |= bit;
            }
        }
        for (i, w) in words.iter().enumerate() {
            if let Err(source) = self.lsm.set(lsm_index::CALLS + i as u32, *w, 0) {
                failed.push(BpfError::Map {
                    map: names::MAP_POLICY_LSM,
                    source,
                });
                return;
            }
        }
    }

    /// The link of `prog`: adopted from its pin, or attached and pinned now.
    fn attach_pinned(&mut self, prog: &'static str) -> Result<PinnedLink, BpfError> {
        let pin = links_dir(&self.opts.pin_dir).join(prog);
        if pin.exists() {
            match PinnedLink::from_pin(&pin) {
                Ok(l) => return Ok(l),
                Err(e) => {
                    tracing::warn!(link = %pin.display(), error = %e, "stale pinned link replaced");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let link = self.attach_one(prog)?;
        link.pin(&pin).map_err(|source| BpfError::Attach {
            program: prog,
            source: AttachError::Pin {
                path: pin.clone(),
                source,
            },
        })
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
            let pinned = self.attach_one(prog).and_then(|link| {
                link.pin(&pin).map_err(|source| BpfError::Attach {
                    program: prog,
                    source: AttachError::Pin {
                        path: pin.clone(),
                        source,
                    },
                })
            });
            match pinned {
                Ok(l) => out.push(l),
                Err(e) => {
                    // all or nothing: a group half attached would enforce what its tier
                    // says it does not (the file hooks' fallback is the audit program)
                    for l in out {
                        let _ = l.unpin();
                    }
                    return Err(e);
                }
            }
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
        let root: PathBuf = self.opts.unified_root.clone();
        let cg = || {
            File::open(&root).map_err(|source| {
                att(AttachError::Cgroup {
                    path: root.clone(),
                    source,
                })
            })
        };
        let (exec_off, socket_off) = (
            self.opts.exec_filename_offset,
            self.opts.socket_family_offset,
        );
        let p = self
            .ebpf
            .program_mut(prog)
            .ok_or(att(AttachError::Missing))?;
        let perr = |e| att(AttachError::Program(e));
        let lerr = |e| att(AttachError::Link(e));
        let lsm_btf = self.opts.lsm_btf.clone();
        match prog {
            _ if lsm_hook(prog).is_some() => {
                let btf = lsm_btf.ok_or(att(AttachError::NoLsm))?;
                let hook = lsm_hook(prog).unwrap_or_default();
                let p: &mut Lsm = p.try_into().map_err(perr)?;
                crate::policy::lsm::attach(p, hook, &btf).map_err(perr)
            }
            names::PROG_POLICY_SYS_ENTER
            | names::PROG_POLICY_SYS_EXIT
            | names::PROG_POLICY_FILES_AUDIT => {
                let p: &mut RawTracePoint = p.try_into().map_err(perr)?;
                if p.fd().is_err() {
                    p.load().map_err(perr)?;
                }
                let tp = if prog == names::PROG_POLICY_SYS_EXIT {
                    "sys_exit"
                } else {
                    "sys_enter"
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
            names::PROG_POLICY_EXEC_GIVEN | names::PROG_POLICY_PACKET => {
                let (category, name, offset) = if prog == names::PROG_POLICY_EXEC_GIVEN {
                    ("sched", "sched_process_exec", exec_off)
                } else {
                    ("syscalls", "sys_enter_socket", socket_off)
                };
                if offset.is_none() {
                    return Err(att(AttachError::NoTracefs));
                }
                let p: &mut TracePoint = p.try_into().map_err(perr)?;
                if p.fd().is_err() {
                    p.load().map_err(perr)?;
                }
                let id = p.attach(category, name).map_err(perr)?;
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
            names::PROG_POLICY_SOCK_CREATE => {
                let p: &mut CgroupSock = p.try_into().map_err(perr)?;
                if p.fd().is_err() {
                    p.load().map_err(perr)?;
                }
                let id = p.attach(cg()?, CgroupAttachMode::Single).map_err(perr)?;
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
}
