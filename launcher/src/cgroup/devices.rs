//! Device rules as a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the workload's unified
//! cgroup: the cgroup v2 way, which also works on hybrid hosts (the unified hierarchy is
//! cgroup2). Rules are read last to first and the first that matches decides, so a later rule
//! overrides an earlier one, as with v1 `devices.allow`/`devices.deny` lines. A device no rule
//! matches is denied, as runc does (its cgroup v2 filter starts from "deny"): a bundle whose
//! list lacks the leading "deny all" of `runc spec` still opens only the devices it lists and
//! the default ones.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use super::super::plan::DeviceRule;

/// The device filter could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The kernel refused the program; `verifier` is the first line of its log.
    #[error("cannot load the device filter (BPF_PROG_TYPE_CGROUP_DEVICE): {source} {verifier}")]
    Load { source: io::Error, verifier: String },
    #[error("cannot open {}: {source}", dir.display())]
    Open { dir: PathBuf, source: io::Error },
    #[error("cannot attach the device filter to {}: {source}", dir.display())]
    Attach { dir: PathBuf, source: io::Error },
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const AND_K: u8 = 0x57;
const RSH_K: u8 = 0x77;
const MOV_K: u8 = 0xb7;
const JNE_K: u8 = 0x55;
const JSET_K: u8 = 0x45;
const EXIT: u8 = 0x95;

const DEVCG_DEV_BLOCK: i32 = 1;
const DEVCG_DEV_CHAR: i32 = 2;
const DEVCG_ACC_MKNOD: i32 = 1;
const DEVCG_ACC_READ: i32 = 2;
const DEVCG_ACC_WRITE: i32 = 4;

fn access_mask(access: &str) -> i32 {
    access.chars().fold(0, |m, c| {
        m | match c {
            'r' => DEVCG_ACC_READ,
            'w' => DEVCG_ACC_WRITE,
            'm' => DEVCG_ACC_MKNOD,
            _ => 0,
        }
    })
}

/// The program: r2 = type, r3 = access, r4 = major, r5 = minor from `bpf_cgroup_dev_ctx`, then
/// one block per rule (last rule first) that jumps to the next block on a mismatch.
fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    let mut p = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        // (code, dst, imm) of each mismatch test; the offset is filled in below
        let mut tests: Vec<(u8, u8, i32)> = Vec::new();
        match rule.kind {
            'c' => tests.push((JNE_K, 2, DEVCG_DEV_CHAR)),
            'b' => tests.push((JNE_K, 2, DEVCG_DEV_BLOCK)),
            _ => {}
        }
        let not_granted = !access_mask(&rule.access) & 7;
        if not_granted != 0 {
            tests.push((JSET_K, 3, not_granted));
        }
        if rule.kind != 'a' {
            if let Some(major) = rule.major {
                tests.push((JNE_K, 4, major as i32));
            }
            if let Some(minor) = rule.minor {
                tests.push((JNE_K, 5, minor as i32));
            }
        }
        let n = tests.len();
        for (i, (code, dst, imm)) in tests.into_iter().enumerate() {
            // skip the remaining tests plus the two-instruction verdict
            p.push(insn(code, dst, 0, (n - i - 1 + 2) as i16, imm));
        }
        p.push(insn(MOV_K, 0, 0, 0, i32::from(rule.allow)));
        p.push(insn(EXIT, 0, 0, 0, 0));
        if n == 0 {
            // matches everything: earlier rules are overridden (and unreachable code is
            // refused by the verifier)
            return p;
        }
    }
    // no rule matched: denied
    p.push(insn(MOV_K, 0, 0, 0, 0));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_ATTACH: i64 = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `BPF_PROG_LOAD` of a device program; a verifier log into `log` when given. Returns the
/// descriptor or -1 (errno set).
fn load(prog: &[Insn], log: Option<&mut [u8]>) -> i64 {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..12].copy_from_slice(b"palisade_dev");
    let (log_level, log_size, log_buf) = match log {
        Some(l) => (1, l.len() as u32, l.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: BPF_CGROUP_DEVICE,
    };
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute whose pointers (`prog`, `license`,
    // the log) outlive the call; the size passed is the struct's.
    unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    }
}

/// Loads the rules and attaches them to the cgroup directory `dir`. The program stays attached
/// (and alive) as long as the cgroup exists.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<(), DeviceError> {
    if rules.is_empty() {
        return Ok(());
    }
    let prog = program(rules);
    // without a verifier log first (the log costs the verifier time on every launch); with
    // one only to say why a load failed
    let mut fd = load(&prog, None);
    if fd < 0 {
        let mut log = vec![0u8; 4096];
        fd = load(&prog, Some(&mut log));
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            let msg = String::from_utf8_lossy(&log);
            let first = msg
                .trim_end_matches('\0')
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            return Err(DeviceError::Load {
                source: e,
                verifier: first,
            });
        }
    }
    // SAFETY: a fresh descriptor returned by bpf(2), owned here.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let open_err = |source| DeviceError::Open {
        dir: dir.to_owned(),
        source,
    };
    let path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| open_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: a valid NUL-terminated path; the result is checked.
    let cg = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if cg < 0 {
        return Err(open_err(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor, owned here.
    let cg = unsafe { OwnedFd::from_raw_fd(cg) };
    let attach = ProgAttachAttr {
        target_fd: cg.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    // SAFETY: a valid BPF_PROG_ATTACH attribute referring to two open descriptors.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &raw const attach,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if r != 0 {
        return Err(DeviceError::Attach {
            dir: dir.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::default_devices;

    #[test]
    fn program_shape() {
        let mut rules = vec![DeviceRule {
            allow: false,
            kind: 'a',
            major: None,
            minor: None,
            access: "rwm".into(),
        }];
        rules.extend(default_devices());
        let p = program(&rules);
        // the last rule (pty slaves: type, access? no: rwm, major) comes first
        assert_eq!(p[6].code, JNE_K);
        assert_eq!(p[6].imm, DEVCG_DEV_CHAR);
        assert_eq!(p[6].off, 3, "skip the major test and the verdict");
        assert_eq!(p[7].imm, 136);
        assert_eq!(p[8].imm, 1, "allow");
        // deny-all ends the program: nothing after it could match
        let n = p.len();
        assert_eq!((p[n - 2].code, p[n - 2].imm), (MOV_K, 0));
        assert_eq!(p[n - 1].code, EXIT);
        // without it, unmatched devices are denied all the same (as runc)
        let p = program(&default_devices());
        assert_eq!((p[p.len() - 2].code, p[p.len() - 2].imm), (MOV_K, 0));
        // an "allow all" rule still ends the program allowing
        let all = DeviceRule {
            allow: true,
            kind: 'a',
            major: None,
            minor: None,
            access: "rwm".into(),
        };
        let p = program(&[all]);
        assert_eq!((p[p.len() - 2].code, p[p.len() - 2].imm), (MOV_K, 1));
        assert_eq!(access_mask("rw"), 6);
    }
}
