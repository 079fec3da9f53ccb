//! The entry of the syscall telemetry on raw tracepoints: the telemetry's `sys_enter` program
//! runs either attached to the tracepoint itself (its own link) or as the tail call of the
//! policy's `sys_enter` program (`POLICY_NEXT`, while syscall rules are in force), never as a
//! third program. The telemetry loader creates it attached; the policy object moves it to its
//! tail call and back (`crate::policy::bpf`), with an instant where both run: the program
//! counts a call once even when it runs twice for it.
use std::{
    ffi::CStr,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
};

use aya::programs::ProgramFd;

/// The telemetry's `sys_enter` program and its own link to the tracepoint, if it has one.
#[derive(Debug)]
pub struct SyscallEntry {
    program: ProgramFd,
    /// Dropping it detaches the program from the tracepoint.
    link: Option<OwnedFd>,
}

impl SyscallEntry {
    /// The loaded program, attached to `sys_enter` now.
    pub fn attach(program: ProgramFd) -> std::io::Result<Self> {
        let mut e = SyscallEntry {
            program,
            link: None,
        };
        e.attach_direct()?;
        Ok(e)
    }

    /// The program, for a program array.
    pub fn program(&self) -> &ProgramFd {
        &self.program
    }

    /// Attaches the program to `sys_enter` by a link of its own (nothing if it has one).
    pub fn attach_direct(&mut self) -> std::io::Result<()> {
        if self.link.is_none() {
            self.link = Some(raw_tracepoint_open(c"sys_enter", &self.program)?);
        }
        Ok(())
    }

    /// Detaches the program's own link (the policy program tail-calls it from now on).
    pub fn detach_direct(&mut self) {
        self.link = None;
    }
}

/// `BPF_RAW_TRACEPOINT_OPEN` (`enum bpf_cmd`): aya attaches raw tracepoints only through the
/// program object the telemetry loader owns, and this needs the program's descriptor alone.
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;

/// The `raw_tracepoint` member of `union bpf_attr` (the kernel takes a shorter attr as zero
/// beyond it).
#[repr(C)]
struct RawTracepointAttr {
    name: u64,
    prog_fd: u32,
    _pad: u32,
}

/// Attaches `program` to the raw tracepoint `name`; the link lasts as long as the descriptor.
fn raw_tracepoint_open(name: &CStr, program: &ProgramFd) -> std::io::Result<OwnedFd> {
    let attr = RawTracepointAttr {
        name: name.as_ptr() as u64,
        prog_fd: program.as_fd().as_raw_fd() as u32,
        _pad: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `name` outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_RAW_TRACEPOINT_OPEN,
            &attr as *const RawTracepointAttr,
            std::mem::size_of::<RawTracepointAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
