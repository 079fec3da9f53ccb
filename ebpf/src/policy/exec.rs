//! Exec rules, attached only while some cgroup has exec rules. Both programs run in the new
//! image before its first instruction, so `kill` stops a denied program before it does
//! anything (`bpf_send_signal(SIGKILL)`).
//!
//! - `policy_exec`, a raw tracepoint on `sched_process_exec` (kernel BTF): the rules see the
//!   file the kernel runs, resolved from its `struct file` to the process's root (see
//!   `palisade_common::policy::resolve`), and for a script also the script's own file; deny
//!   patterns also see the path given to execve.
//! - `policy_exec_given`, the classic tracepoint, when the kernel's BTF is missing: the rules
//!   see the path given to execve (best effort; the agent says so).
//!
//! Patterns are hashed (FNV-1a) by userspace per kind (exact path, directory, tree, file name);
//! one pass over a path computes every key to look up (`policy::PathHasher`, shared with the
//! host tests): at most one lookup per path component plus three, per path. In `policy_exec`
//! the walks and the passes run one step per `bpf_loop` call, their state in the per-CPU
//! scratch, so the verifier checks each step once whatever the path (about 5,900
//! instructions); the fallback keeps plain bounded loops for kernels without `bpf_loop`.
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
        generated,
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{RawTracePointContext, TracePointContext},
};
use palisade_common::policy::{
    Assembly, CgroupPolicy, ExecConf, ExecKey, ExecOffsets, ExecPaths, ExecRule, KernelMemory,
    POLICY_PATH_MAX, PathHasher, ScriptSearch, TASK_WORKS_MAX, WALK_MAX, cgroup_flags, exec_flags,
    exec_lookups_in, taken, unresolved, what,
};

use crate::report::{Detail, Subject, exec_lsm_on, policy_current, report, rule};

/// Offset of `filename` (a `__data_loc`) in the classic tracepoint's record, from tracefs.
#[unsafe(no_mangle)]
static POLICY_EXEC_OFF_FILENAME: Global<u32> = Global::new(8);

/// Kernel struct offsets for the raw tracepoint (from BTF; all zero when it is not used).
#[unsafe(no_mangle)]
pub(crate) static POLICY_EXEC_OFFSETS: Global<ExecOffsets> = Global::new(ExecOffsets::ZERO);

#[map(name = "POLICY_EXEC_CONF")]
static POLICY_EXEC_CONF: Array<ExecConf> = Array::with_max_entries(256, 0);

#[map(name = "POLICY_EXEC")]
static POLICY_EXEC: HashMap<ExecKey, ExecRule> = HashMap::with_max_entries(8192, 0);

/// Per-CPU scratch: what the exec is (reported as it is), the walks' state (stepped from
/// `bpf_loop`), the offsets, and what the lookups found. The findings live in map memory, not
/// in registers, so the verifier sees the same state after a hit and after a miss.
#[repr(C)]
pub struct Scratch {
    pub(crate) paths: ExecPaths,
    asm: Assembly,
    search: ScriptSearch,
    pass: Pass,
    pub(crate) o: ExecOffsets,
    /// First deny rule found (0: none).
    deny: u32,
    /// Bit 1: an allow pattern matched the program; bit 2: the interpreter.
    allowed: u32,
}

/// One lookup pass over a path, stepped a byte at a time from `bpf_loop`.
#[repr(C)]
pub struct Pass {
    hasher: PathHasher,
    slot: u32,
    /// Which path: [`PROGRAM`], [`INTERPRETER`] or 0 for the path given.
    which: u32,
    /// What an allow pattern matching it sets in `Scratch::allowed` (0: nothing).
    bit: u32,
    /// The next byte.
    i: u32,
}

#[map(name = "POLICY_SCRATCH")]
pub(crate) static POLICY_SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

const SIGKILL: u32 = 9;
const MASK: u32 = POLICY_PATH_MAX as u32 - 1;
const PROGRAM: u32 = 1;
const INTERPRETER: u32 = 2;

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn policy_exec(ctx: RawTracePointContext) -> i32 {
    match try_exec_file(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn policy_exec_given(ctx: TracePointContext) -> u32 {
    match try_exec_given(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// Kernel memory through `bpf_probe_read_kernel`.
pub(crate) struct Kmem;

impl KernelMemory for Kmem {
    #[inline(always)]
    fn u64_at(&self, addr: u64) -> Option<u64> {
        // SAFETY: the helper checks the address; a fault returns an error.
        unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
    }

    #[inline(always)]
    fn u32_at(&self, addr: u64) -> Option<u32> {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel(addr as *const u32) }.ok()
    }

    #[inline(always)]
    unsafe fn copy(&self, dst: *mut u8, len: u32, src: u64) -> bool {
        // SAFETY: the caller's promise for `dst`; the helper checks `src`.
        unsafe { generated::bpf_probe_read_kernel(dst.cast(), len, src as *const _) == 0 }
    }
}

/// `bpf_loop` callback: one step of the path walk in this CPU's scratch (0: go on, 1: stop).
extern "C" fn walk_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(sc) = POLICY_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: this CPU's scratch value; the program that called bpf_loop does not touch it
    // until bpf_loop returns.
    let (a, o) = unsafe { (&mut (*sc).asm, &(*sc).o) };
    i64::from(!a.step(&Kmem, o))
}

/// `bpf_loop` callback: one task work of the search for a script's file.
extern "C" fn search_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(sc) = POLICY_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: as in `walk_step`.
    let (s, o) = unsafe { (&mut (*sc).search, &(*sc).o) };
    i64::from(!s.step(&Kmem, o))
}

/// `bpf_loop` callback: one byte of a lookup pass.
extern "C" fn hash_step(_index: u32, _ctx: *mut c_void) -> i64 {
    let Some(sc) = POLICY_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: as in `walk_step`; `look` writes other fields of the scratch than these.
    let (p, x) = unsafe { (&mut (*sc).pass, &(*sc).paths) };
    let path = match p.which {
        PROGRAM => &x.path,
        INTERPRETER => &x.interp,
        _ => &x.given,
    };
    let b = path[(p.i & MASK) as usize];
    p.i += 1;
    let (slot, bit) = (p.slot, p.bit);
    p.hasher.push(b, &mut |k, h| look(slot, k, h, bit, sc));
    0
}

/// Looks up every key of one path (`which`, `len` bytes): from `bpf_loop` in `policy_exec`,
/// as a plain loop in the fallback (kernels without `bpf_loop` may need it).
#[inline(always)]
fn pass<const LOOP: bool>(sc: *mut Scratch, slot: u32, which: u32, len: u32, bit: u32) {
    if !LOOP {
        // SAFETY: this CPU's scratch value; `look` writes other fields.
        let x = unsafe { &(*sc).paths };
        let path = match which {
            PROGRAM => &x.path,
            INTERPRETER => &x.interp,
            _ => &x.given,
        };
        exec_lookups_in(path, len, |k, h| look(slot, k, h, bit, sc));
        return;
    }
    // SAFETY: this CPU's scratch value.
    unsafe {
        (*sc).pass = Pass {
            hasher: PathHasher::NEW,
            slot,
            which,
            bit,
            i: 0,
        };
    }
    repeat(len & MASK, hash_step);
    // SAFETY: this CPU's scratch value, after the loop.
    let hasher = unsafe { (*sc).pass.hasher };
    hasher.finish(&mut |k, h| look(slot, k, h, bit, sc));
}

/// Runs `step` up to `n` times (each call verified once, whatever `n`).
#[inline(always)]
fn repeat(n: u32, step: extern "C" fn(u32, *mut c_void) -> i64) {
    // SAFETY: `step` is a static function of this program; no context pointer.
    unsafe {
        generated::bpf_loop(n, step as *mut c_void, core::ptr::null_mut(), 0);
    }
}

/// The path of the open file `file`, walked to the root in the scratch's `asm`.
#[inline(always)]
pub(crate) fn resolve(sc: *mut Scratch, file: u64, root_mnt: u64, root_dentry: u64) {
    // SAFETY: this CPU's scratch value.
    let (a, o) = unsafe { (&mut (*sc).asm, &(*sc).o) };
    a.start(&Kmem, o, file, root_mnt, root_dentry);
    repeat(WALK_MAX, walk_step);
}

/// The path of the `struct path` at `path` (or of `child`, a dentry in that directory, when not
/// 0), walked to the root in the scratch's `asm`.
#[inline(always)]
pub(crate) fn resolve_path(
    sc: *mut Scratch,
    path: u64,
    child: u64,
    root_mnt: u64,
    root_dentry: u64,
) {
    // SAFETY: this CPU's scratch value.
    let (a, o) = unsafe { (&mut (*sc).asm, &(*sc).o) };
    a.start_path(&Kmem, o, path, child, root_mnt, root_dentry);
    repeat(WALK_MAX, walk_step);
}

/// The file of the outermost script of this exec, if found.
#[inline(always)]
fn script_file(sc: *mut Scratch, task: u64) -> Option<u64> {
    // SAFETY: this CPU's scratch value.
    let (s, o) = unsafe { (&mut (*sc).search, &(*sc).o) };
    s.start(&Kmem, o, task);
    repeat(TASK_WORKS_MAX + 1, search_step);
    // SAFETY: as above, after the loop.
    unsafe { (*sc).search.file() }
}

/// The cgroup's policy when it has exec rules.
#[inline(always)]
pub(crate) fn exec_policy() -> Option<(u64, CgroupPolicy)> {
    // SAFETY: helper without preconditions.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let p = policy_current(cgroup_id)?;
    (p.flags & cgroup_flags::EXEC != 0).then_some((cgroup_id, p))
}

/// Copies a kernel string into `dst`; its length.
#[inline(always)]
pub(crate) fn read_str(src: u64, dst: &mut [u8; POLICY_PATH_MAX]) -> u32 {
    // SAFETY: the helper checks `src` and bounds the copy by `dst`.
    match unsafe { bpf_probe_read_kernel_str_bytes(src as *const u8, dst) } {
        Ok(s) => s.len() as u32 & MASK,
        Err(_) => 0,
    }
}

/// Moves the path [`resolve`] assembled in the scratch to the start of `dst`: (its length,
/// the [`unresolved`] reason).
#[inline(always)]
pub(crate) fn put(sc: *const Scratch, dst: &mut [u8; POLICY_PATH_MAX]) -> (u32, u32) {
    // SAFETY: this CPU's scratch value, not written while this reference lives.
    let a = unsafe { &(*sc).asm };
    let (start, reason) = a.walk();
    let n = a.len() & MASK;
    // SAFETY: `n` < 256 bytes from `buf[start & MASK..]` (inside its 512) into `dst` (256).
    let r = unsafe {
        generated::bpf_probe_read_kernel(
            dst.as_mut_ptr().cast(),
            n,
            a.buf.as_ptr().add((start & MASK) as usize).cast(),
        )
    };
    if r != 0 {
        return (0, unresolved::UNREADABLE);
    }
    dst[n as usize] = 0;
    (n, reason)
}

/// Device and inode of the open file `file`.
#[inline(always)]
pub(crate) fn identity(o: &ExecOffsets, file: u64, x: &mut ExecPaths) {
    let m = Kmem;
    let at = |b: u64, off: u32| b.wrapping_add(u64::from(off));
    let Some(inode) = m.u64_at(at(file, o.file_inode)) else {
        return;
    };
    let (Some(ino), Some(sb)) = (
        m.u64_at(at(inode, o.inode_ino)),
        m.u64_at(at(inode, o.inode_sb)),
    ) else {
        return;
    };
    if let Some(dev) = m.u32_at(at(sb, o.sb_dev)) {
        x.dev = dev;
        x.ino = ino;
        x.flags |= exec_flags::HAVE_ID;
    }
}

fn try_exec_file(ctx: &RawTracePointContext) -> Result<i32, i32> {
    let Some((cgroup_id, p)) = exec_policy() else {
        return Ok(0);
    };
    let m = Kmem;
    let at = |b: u64, off: u32| b.wrapping_add(u64::from(off));
    // sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let task: u64 = ctx.arg(0);
    let bprm: u64 = ctx.arg(2);
    let sc = POLICY_SCRATCH.get_ptr_mut(0).ok_or(0)?;
    // SAFETY: this CPU's scratch value; nothing else uses it while we run.
    let (x, o) = unsafe {
        (*sc).o = POLICY_EXEC_OFFSETS.load();
        (&mut (*sc).paths, &(*sc).o)
    };
    x.flags = exec_flags::RESOLVED;
    x.path_len = 0;
    x.interp_len = 0;
    x.path_unresolved = unresolved::NONE;
    x.interp_unresolved = unresolved::NONE;
    let file = m.u64_at(at(bprm, o.bprm_file)).ok_or(0)?;
    let filename = m.u64_at(at(bprm, o.bprm_filename)).unwrap_or(0);
    let interp = m.u64_at(at(bprm, o.bprm_interp)).unwrap_or(0);
    x.given_len = read_str(filename, &mut x.given);
    let fs = m.u64_at(at(task, o.task_fs)).ok_or(0)?;
    let root = at(fs, o.fs_root);
    let root_mnt = m.u64_at(at(root, o.path_mnt)).ok_or(0)?;
    let root_dentry = m.u64_at(at(root, o.path_dentry)).ok_or(0)?;
    // The file the kernel runs: the program, or the interpreter of a script (`interp` is a
    // copy of the interpreter's name once binfmt_script or binfmt_misc took over).
    resolve(sc, file, root_mnt, root_dentry);
    if interp == filename {
        (x.path_len, x.path_unresolved) = put(sc, &mut x.path);
        identity(o, file, x);
    } else {
        x.flags |= exec_flags::SCRIPT;
        (x.interp_len, x.interp_unresolved) = put(sc, &mut x.interp);
        if o.fput_fn == 0 {
            x.flags |= exec_flags::SCRIPT_BY_NAME;
            x.path_len = read_str(filename, &mut x.path);
        } else if let Some(script) = script_file(sc, task) {
            resolve(sc, script, root_mnt, root_dentry);
            (x.path_len, x.path_unresolved) = put(sc, &mut x.path);
            identity(o, script, x);
        } else {
            // reported by the name given; an allow-list does not take it
            x.path_len = read_str(filename, &mut x.path);
            x.path_unresolved = unresolved::NOT_FOUND;
        }
    }
    decide::<true>(cgroup_id, p.slot, sc);
    Ok(0)
}

fn try_exec_given(ctx: &TracePointContext) -> Result<u32, u32> {
    let Some((cgroup_id, p)) = exec_policy() else {
        return Ok(0);
    };
    let sc = POLICY_SCRATCH.get_ptr_mut(0).ok_or(0u32)?;
    // SAFETY: the offset comes from the format file; read_at uses bpf_probe_read_kernel.
    let loc: u32 =
        unsafe { ctx.read_at(POLICY_EXEC_OFF_FILENAME.load() as usize) }.map_err(|_| 0u32)?;
    // `__data_loc`: the string starts at the low 16 bits' offset in the record.
    let src = (ctx.as_ptr() as u64).wrapping_add(u64::from(loc & 0xffff));
    // SAFETY: this CPU's scratch value.
    let x = unsafe { &mut (*sc).paths };
    x.flags = 0;
    x.path_unresolved = unresolved::NONE;
    x.interp_unresolved = unresolved::NONE;
    x.interp_len = 0;
    x.path_len = read_str(src, &mut x.path);
    x.given_len = read_str(src, &mut x.given);
    decide::<false>(cgroup_id, p.slot, sc);
    Ok(0)
}

#[inline(always)]
fn look(slot: u32, kind: u32, hash: u64, bit: u32, sc: *mut Scratch) {
    let key = ExecKey { slot, kind, hash };
    // SAFETY: read-only lookup; `sc` is this CPU's scratch value.
    unsafe {
        if let Some(r) = POLICY_EXEC.get(key) {
            if r.allow == 1 {
                (*sc).allowed |= bit;
            } else if (*sc).deny == 0 {
                (*sc).deny = r.rule;
            }
        }
    }
}

/// Whether a path with this [`unresolved`] reason is a whole path (worth looking up at all).
#[inline(always)]
fn whole(reason: u32) -> bool {
    !matches!(
        reason,
        unresolved::TOO_LONG | unresolved::UNREADABLE | unresolved::NOT_FOUND
    )
}

/// The rule an exec violates (0: none): any deny pattern matching the program (`program`:
/// its path is looked at), the interpreter or the path given (once the file is resolved);
/// or, under an allow-list, a program or interpreter that is unresolved or matches no allow
/// pattern.
#[inline(always)]
pub(crate) fn violated<const LOOP: bool>(slot: u32, sc: *mut Scratch, program: bool) -> u32 {
    let conf = POLICY_EXEC_CONF.get(slot).copied().unwrap_or_default();
    // SAFETY: this CPU's scratch value.
    let x = unsafe {
        (*sc).deny = 0;
        (*sc).allowed = 0;
        &(*sc).paths
    };
    let script = x.flags & exec_flags::SCRIPT != 0;
    if program && whole(x.path_unresolved) {
        let bit = if x.path_unresolved == unresolved::NONE {
            PROGRAM
        } else {
            0
        };
        pass::<LOOP>(sc, slot, PROGRAM, x.path_len, bit);
    }
    if script && whole(x.interp_unresolved) {
        let bit = if x.interp_unresolved == unresolved::NONE {
            INTERPRETER
        } else {
            0
        };
        pass::<LOOP>(sc, slot, INTERPRETER, x.interp_len, bit);
    }
    if x.flags & exec_flags::RESOLVED != 0 {
        // deny patterns also hold for the name given (a symlink's own name, `sh` for dash)
        pass::<LOOP>(sc, slot, 0, x.given_len, 0);
    }
    let mut need = 0;
    if program {
        need |= PROGRAM;
    }
    if script {
        need |= INTERPRETER;
    }
    // SAFETY: this CPU's scratch value.
    let (deny, allowed) = unsafe { ((*sc).deny, (*sc).allowed) };
    if deny != 0 {
        deny
    } else if conf.allow_list == 1 && allowed & need != need {
        conf.default_rule
    } else {
        0
    }
}

/// Reports (and kills) the violation of an exec the kernel is running, if any; `errno`
/// rules are left to the BPF-LSM program where it is attached.
#[inline(always)]
fn decide<const LOOP: bool>(cgroup_id: u64, slot: u32, sc: *mut Scratch) {
    let id = violated::<LOOP>(slot, sc, true);
    if id == 0 {
        return;
    }
    let Some(info) = rule(id) else {
        return;
    };
    let Some(t) = info.taken_exec(exec_lsm_on()) else {
        return;
    };
    // SAFETY: this CPU's scratch value.
    let x = unsafe { &(*sc).paths };
    report(
        what::EXEC,
        id,
        t,
        cgroup_id,
        Subject::Current,
        &Detail {
            path: Some(x as *const ExecPaths),
            ..Detail::NONE
        },
    );
    if t == taken::KILL {
        // SAFETY: signals the current process, which has not run a single instruction of the
        // new image yet.
        unsafe { aya_ebpf::helpers::bpf_send_signal(SIGKILL) };
    }
}
