//! The policy object's hook groups: which programs each holds, and attaching them (or adopting
//! their pinned links) while some cgroup needs them.
use std::{fs::File, path::PathBuf};

use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, RawTracePoint,
    TracePoint,
    links::{FdLink, PinnedLink},
};
use palisade_common::{names, policy::cgroup_flags};

use super::bpf::{AttachError, BpfError, Kernel, links_dir};

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
    /// `cgroup/sock_create` on the unified root: raw and ICMP sockets (egress rules).
    SocketCreate,
    /// `syscalls:sys_enter_socket`: packet sockets (egress rules).
    PacketSocket,
    /// bind4/6 and cgroup_skb ingress on the unified root.
    Ingress,
}

impl Hook {
    pub const ALL: [Hook; 7] = [
        Hook::Syscalls,
        Hook::Seccomp,
        Hook::Exec,
        Hook::Egress,
        Hook::SocketCreate,
        Hook::PacketSocket,
        Hook::Ingress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Syscalls => "syscalls",
            Hook::Seccomp => "seccomp",
            Hook::Exec => "exec",
            Hook::Egress => "egress",
            Hook::SocketCreate => "socket_create",
            Hook::PacketSocket => "packet_socket",
            Hook::Ingress => "ingress",
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
            Hook::Syscalls => cgroup_flags::SYSCALLS,
            Hook::Seccomp => cgroup_flags::SECCOMP,
            Hook::Exec => cgroup_flags::EXEC,
            Hook::Egress | Hook::SocketCreate | Hook::PacketSocket => cgroup_flags::EGRESS,
            Hook::Ingress => cgroup_flags::INGRESS,
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
            Hook::SocketCreate => &[names::PROG_POLICY_SOCK_CREATE],
            Hook::PacketSocket => &[names::PROG_POLICY_PACKET],
            Hook::Ingress => &[
                names::PROG_POLICY_BIND4,
                names::PROG_POLICY_BIND6,
                names::PROG_POLICY_INGRESS,
            ],
        }
    }
}

impl Kernel {
    /// Hook groups currently attached.
    pub fn attached(&self) -> Vec<Hook> {
        self.links.keys().copied().collect()
    }

    /// Attaches (or adopts from pins) the groups in `want` and detaches the others; returns
    /// the groups that could not be attached and why.
    pub fn want(&mut self, want: &[Hook]) -> Vec<(Hook, BpfError)> {
        let mut failed = Vec::new();
        for h in Hook::ALL {
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
