//! Device rules as a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the workload's unified
//! cgroup: the cgroup v2 way, which also works on hybrid hosts (the unified hierarchy is
//! cgroup2). Rules are read last to first and the first that matches decides, so a later rule
//! overrides an earlier one, as with v1 `devices.allow`/`devices.deny` lines. A device no rule
//! matches is denied, as runc does (its cgroup v2 filter starts from "deny"): a bundle whose
//! list lacks the leading "deny all" of `runc spec` still opens only the devices it lists and
//! the default ones.
//!
//! A loaded program is pinned on bpffs under [`PIN_DIR`], named by a hash of its instructions,
//! and the next launch with the same rules attaches the pinned one: loading (the verifier and
//! the JIT) costs about 0.2 ms, as much as the rest of the cgroup set-up, and a pin is one path
//! lookup away. A pin is attached only when the kernel's copy of its instructions is the
//! program these rules make, instruction for instruction; a stale or planted one is replaced
//! by a fresh load. Where `/sys/fs/bpf` is not bpffs, nothing is pinned and every launch loads.
use std::{
    ffi::{CStr, CString},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use sha2::{Digest as _, Sha256};

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
#[derive(Debug, Clone, Copy, Default)]
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

#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_prog_info`, as far as the translated instructions (the kernel
/// fills no more than the length it is given).
#[repr(C)]
#[derive(Default)]
struct ProgInfo {
    prog_type: u32,
    id: u32,
    tag: [u8; 8],
    jited_prog_len: u32,
    xlated_prog_len: u32,
    jited_prog_insns: u64,
    xlated_prog_insns: u64,
}

const BPF_PROG_LOAD: i64 = 5;
const BPF_OBJ_PIN: i64 = 6;
const BPF_OBJ_GET: i64 = 7;
const BPF_PROG_ATTACH: i64 = 8;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
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

/// Attaches the rules' program to the cgroup directory `dir`: the pinned one when it is the
/// same program, else a fresh load (pinned for the next launch). The program stays attached
/// (and alive) as long as the cgroup exists.
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<(), DeviceError> {
    if rules.is_empty() {
        return Ok(());
    }
    let prog = program(rules);
    let pin = pin_path(&prog);
    let (prog_fd, pinned) = match pinned(&pin, &prog) {
        Pinned::Same(fd) => (fd, true),
        Pinned::Missing => {
            let fd = load_or_explain(&prog)?;
            pin_new(&fd, &pin);
            (fd, false)
        }
        Pinned::Different => {
            let fd = load_or_explain(&prog)?;
            // SAFETY: a valid NUL-terminated path; a failure leaves the old pin, unused.
            if unsafe { libc::unlink(pin.as_ptr()) } == 0 {
                pin_new(&fd, &pin);
            }
            (fd, false)
        }
        Pinned::Unverifiable => (load_or_explain(&prog)?, false),
    };
    match attach_fd(dir, &prog_fd) {
        // a pinned program the kernel will not attach here: a fresh one, as without the pin
        Err(DeviceError::Attach { .. }) if pinned => attach_fd(dir, &load_or_explain(&prog)?),
        r => r,
    }
}

/// Loads `prog`: without a verifier log first (the log costs the verifier time), with one
/// only to say why a load failed.
fn load_or_explain(prog: &[Insn]) -> Result<OwnedFd, DeviceError> {
    let mut fd = load(prog, None);
    if fd < 0 {
        let mut log = vec![0u8; 4096];
        fd = load(prog, Some(&mut log));
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
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Where loaded device programs are pinned (see the module doc).
pub const PIN_DIR: &str = "/sys/fs/bpf/palisade-devices";
/// At most this many rule sets are pinned; a launch with another one loads its program.
const PIN_LIMIT: usize = 64;

/// `PIN_DIR/dev-HASH`: the first 16 bytes of the SHA-256 of the instructions, in hex.
fn pin_path(prog: &[Insn]) -> CString {
    let digest = Sha256::digest(insn_bytes(prog));
    let mut path = format!("{PIN_DIR}/dev-");
    for b in digest.iter().take(16) {
        path.push_str(&format!("{b:02x}"));
    }
    // a path made of ASCII without NUL
    CString::new(path).unwrap_or_default()
}

/// The instructions as the kernel reads them.
fn insn_bytes(prog: &[Insn]) -> &[u8] {
    // SAFETY: `Insn` is `repr(C)` and 8 bytes without padding (u8, u8, i16, i32); the slice
    // covers exactly the instructions' memory, borrowed from `prog`.
    unsafe { std::slice::from_raw_parts(prog.as_ptr().cast(), std::mem::size_of_val(prog)) }
}

fn bpf<T>(cmd: i64, attr: &mut T) -> i64 {
    // SAFETY: `attr` is a `bpf_attr` prefix of the kernel's layout for `cmd`, valid for the
    // call, with the size passed; any pointers in it are the caller's and outlive the call.
    unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) }
}

enum Pinned {
    /// The pin is this program.
    Same(OwnedFd),
    /// Nothing pinned under the name (or no bpffs).
    Missing,
    /// Something else is pinned under the name.
    Different,
    /// A program the kernel will not show the instructions of.
    Unverifiable,
}

/// What is pinned at `path`, compared with `prog`.
fn pinned(path: &CStr, prog: &[Insn]) -> Pinned {
    let mut get = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut get);
    if fd < 0 {
        return Pinned::Missing;
    }
    // SAFETY: a fresh descriptor returned by bpf(2), owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // one more instruction than ours: a longer program does not compare equal by its prefix
    let mut xlated = vec![Insn::default(); prog.len() + 1];
    let mut info = ProgInfo {
        xlated_prog_len: std::mem::size_of_val(xlated.as_slice()) as u32,
        xlated_prog_insns: xlated.as_mut_ptr() as u64,
        ..ProgInfo::default()
    };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfo>() as u32,
        info: &raw mut info as u64,
    };
    // a map or link pinned there answers with its own info, which leaves `xlated` zeroed
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) != 0 || info.prog_type != BPF_PROG_TYPE_CGROUP_DEVICE
    {
        return Pinned::Different;
    }
    if info.xlated_prog_insns == 0 {
        // the kernel withholds instructions from this caller (bpf_dump_raw_ok)
        return Pinned::Unverifiable;
    }
    if info.xlated_prog_len as usize == std::mem::size_of_val(prog)
        && insn_bytes(&xlated[..prog.len()]) == insn_bytes(prog)
    {
        Pinned::Same(fd)
    } else {
        Pinned::Different
    }
}

/// Pins `fd` at `path`, creating [`PIN_DIR`] on bpffs first; quietly does nothing where
/// `/sys/fs/bpf` is not bpffs, [`PIN_LIMIT`] rule sets are pinned, or another launch pinned
/// the same program first.
fn pin_new(fd: &OwnedFd, path: &CStr) {
    let dir = Path::new(PIN_DIR);
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            if entries.count() >= PIN_LIMIT {
                return;
            }
        }
        Err(_) => {
            let Some(parent) = dir
                .parent()
                .and_then(|p| CString::new(p.as_os_str().as_bytes()).ok())
            else {
                return;
            };
            // SAFETY: `statfs` fills a zeroed local; the path is NUL-terminated.
            let on_bpffs = unsafe {
                let mut st: libc::statfs = std::mem::zeroed();
                libc::statfs(parent.as_ptr(), &raw mut st) == 0 && st.f_type == BPF_FS_MAGIC
            };
            if !on_bpffs {
                return;
            }
            use std::os::unix::fs::DirBuilderExt as _;
            if std::fs::DirBuilder::new().mode(0o700).create(dir).is_err() && !dir.is_dir() {
                return;
            }
        }
    }
    let mut attr = ObjAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    // EEXIST: another launch won the race with the same program
    let _ = bpf(BPF_OBJ_PIN, &mut attr);
}

/// Attaches the device program `prog_fd` to the cgroup directory `dir`.
fn attach_fd(dir: &Path, prog_fd: &OwnedFd) -> Result<(), DeviceError> {
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
