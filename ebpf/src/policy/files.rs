//! File rules without BPF-LSM: a `sys_enter` raw tracepoint, attached only while some cgroup
//! has file rules on such a host, reading the path given to the open, unlink and chmod calls
//! (`palisade_common::policy::audit_call`). Reported only: a tracepoint cannot make the call
//! fail, and the path is matched as given (a relative path, a symlink or `..` is not resolved:
//! best effort, said by `palisade policy check` and `status`).
//!
//! x86_64 calls only: a call through the i386 or x32 ABI is not read (said with the tier).
//!
//! Per call of a cgroup with file rules: one table of calls decides whether the call is read
//! at all; then the path is copied (at most 255 bytes) and looked up once per ancestor
//! directory and once whole (`palisade_common::policy::FileHasher`), one byte per `bpf_loop`
//! step (5.17+; where the kernel refuses the program, the `files` hook group does not attach
//! and the policies say so as unenforced, `hook_files`).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_probe_read_kernel, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes, generated,
    },
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use palisade_common::policy::{
    AuditAccess, ExecKey, ExecPaths, FileEntry, FileHasher, FileMatch, POLICY_PATH_MAX,
    X86_64_ARG_OFFSETS, abi_id, action, audit_call, cgroup_flags, mode, open_access, taken, what,
};

use crate::report::{Detail, Subject, policy_current, report, rule};

/// File patterns of every slot: (slot, exact path or tree directory hash) → the rules.
#[map(name = "POLICY_FILES")]
static POLICY_FILES: HashMap<ExecKey, FileEntry> = HashMap::with_max_entries(8192, 0);

/// Per-CPU scratch: the path as given (in `paths.given`, reported as it is) and the lookup
/// pass over it, stepped a byte at a time from `bpf_loop` so the verifier checks one step once
/// (a plain 255-byte loop took seconds to verify here, minutes under emulation).
#[repr(C)]
pub struct FileScratch {
    pub(crate) paths: ExecPaths,
    hasher: FileHasher,
    found: FileMatch,
    slot: u32,
    want: u32,
    /// The next byte and the path's length.
    i: u32,
    len: u32,
}

#[map(name = "POLICY_FILE_SCRATCH")]
pub(crate) static POLICY_FILE_SCRATCH: PerCpuArray<FileScratch> =
    PerCpuArray::with_max_entries(1, 0);

const MASK: u32 = POLICY_PATH_MAX as u32 - 1;

/// Looks up one key of `slot`, keeping the first rule in file order refusing `want`.
#[inline(always)]
fn look(slot: u32, kind: u32, hash: u64, want: u32, found: &mut FileMatch) {
    // SAFETY: read-only lookup; the value is read in place.
    if let Some(e) = unsafe { POLICY_FILES.get(ExecKey { slot, kind, hash }) } {
        found.consider(e, want);
    }
}

/// `bpf_loop` callback: one byte of the lookup pass (0: go on, 1: stop).
extern "C" fn byte_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(sc) = POLICY_FILE_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch value; the program that called bpf_loop does not touch it
    // until bpf_loop returns.
    let x = unsafe { &mut *sc };
    let i = x.i;
    if i >= x.len {
        return 1;
    }
    let b = x.paths.given[(i & MASK) as usize];
    let next = if i + 1 < x.len {
        x.paths.given[((i + 1) & MASK) as usize]
    } else {
        0
    };
    x.i = i + 1;
    let (slot, want) = (x.slot, x.want);
    let found = &mut x.found;
    x.hasher
        .push(b, next, &mut |k, h| look(slot, k, h, want, found));
    0
}

/// The first rule in file order refusing one of `want` (access bits) to the path in this
/// CPU's scratch (`paths.given`, `paths.given_len` bytes) under `slot`'s patterns: one lookup
/// per ancestor directory and one of the whole path, a byte per `bpf_loop` step. Shared by the
/// audit program (the path as given) and the BPF-LSM programs (the resolved path).
#[inline(always)]
pub(crate) fn matched(sc: *mut FileScratch, slot: u32, want: u32) -> FileMatch {
    {
        // SAFETY: this CPU's scratch value, used by the calling program only (and the loop
        // it calls), start to end.
        let x = unsafe { &mut *sc };
        x.hasher = FileHasher::NEW;
        x.found = FileMatch::default();
        x.slot = slot;
        x.want = want;
        x.i = 0;
        x.len = x.paths.given_len & MASK;
    }
    // SAFETY: `byte_step` is a static function of this program; no context pointer.
    unsafe {
        generated::bpf_loop(
            POLICY_PATH_MAX as u32,
            byte_step as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    // SAFETY: this CPU's scratch value, after the loop.
    let x = unsafe { &mut *sc };
    let (slot, hasher) = (x.slot, x.hasher);
    let found = &mut x.found;
    hasher.finish(&mut |k, h| look(slot, k, h, want, found));
    *found
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn policy_files_audit(ctx: RawTracePointContext) -> i32 {
    match try_audit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// Argument `i` (0 to 2) of the call entering (x86_64 registers at `sys_enter`).
#[inline(always)]
pub(crate) fn arg(regs: u64, i: u32) -> u64 {
    let off = match i {
        0 => X86_64_ARG_OFFSETS[0],
        1 => X86_64_ARG_OFFSETS[1],
        _ => X86_64_ARG_OFFSETS[2],
    };
    // SAFETY: bpf_probe_read_kernel checks the address; a fault reads as 0.
    unsafe { bpf_probe_read_kernel((regs + off) as *const u64) }.unwrap_or(0)
}

fn try_audit(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let Some(p) = policy_current(cgroup_id) else {
        return Ok(0);
    };
    if p.flags & cgroup_flags::FILES == 0 {
        return Ok(0);
    }
    // sys_enter(struct pt_regs *regs, long id)
    let nr: i64 = ctx.arg(1);
    if nr < 0 {
        return Ok(0);
    }
    let Some(call) = audit_call(nr as u64) else {
        return Ok(0);
    };
    let regs: u64 = ctx.arg(0);
    let want = match call.access {
        AuditAccess::Fixed(a) => a,
        AuditAccess::Flags(i) => open_access(arg(regs, i)),
        AuditAccess::OpenHow(i) => {
            // SAFETY: bpf_probe_read_user checks the address; a fault reads as no flags.
            let flags = unsafe { bpf_probe_read_user(arg(regs, i) as *const u64) }.unwrap_or(0);
            open_access(flags)
        }
    };
    if want == 0 {
        return Ok(0);
    }
    let path = arg(regs, call.path_arg);
    let sc = POLICY_FILE_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    {
        // SAFETY: this CPU's scratch value, used by this program only (and the loop it
        // calls), start to end.
        let x = unsafe { &mut *sc };
        // SAFETY: the helper checks the user address and bounds the copy to the buffer.
        let len =
            match unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut x.paths.given) } {
                Ok(s) => s.len() as u32,
                Err(_) => return Ok(0),
            };
        let y = &mut x.paths;
        y.flags = 0;
        y.path_unresolved = 0;
        y.interp_unresolved = 0;
        y.dev = 0;
        y.ino = 0;
        y.path_len = 0;
        y.interp_len = 0;
        y.given_len = len;
    }
    let m = matched(sc, p.slot, want);
    if m.rule == 0 {
        return Ok(0);
    }
    let Some(info) = rule(m.rule) else {
        return Ok(0);
    };
    // reported only: the call runs whatever the action (`log` unless in audit mode)
    let t = if info.action != action::LOG && info.mode == mode::AUDIT {
        taken::WOULD_BLOCK
    } else {
        taken::LOG
    };
    report(
        what::FILE,
        m.rule,
        t,
        cgroup_id,
        Subject::Current,
        &Detail {
            nr: nr as u32,
            abi: abi_id::X86_64,
            native: nr as u32,
            errno: m.access,
            net: None,
            // SAFETY: the scratch's `paths`, copied into the event by `report`.
            path: Some(unsafe { &raw const (*sc).paths }),
        },
    );
    Ok(0)
}
