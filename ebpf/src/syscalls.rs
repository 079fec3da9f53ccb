//! Syscall telemetry: `sys_enter`/`sys_exit` raw tracepoints, or fentry/fexit on the syscall
//! dispatcher `x64_sys_call` where the kernel has it, aggregated per (cgroup, syscall). Both
//! pairs share the maps and the bodies ([`enter`], [`exit`]); userspace attaches one pair.
//!
//! Hot path budget: at entry one helper call (the thread id), the thread's slot and the call's
//! slot; at exit the call's slot, found without a helper call (see [`call_slot`]), and the
//! count table (`SYSCALL_COUNTS`, a few array loads). The one call in `latency_sample` that is
//! timed adds two clock reads and a per-CPU hash lookup (`SYSCALL_STATS`); errors add one
//! (`SYSCALL_ERRNOS`). No atomics, no ring buffer traffic. The thread's cgroup id is cached in
//! its slot; two classic tracepoints keep the cache right when a thread changes cgroup
//! (`cgroup:cgroup_attach_task`, whose program lives in cgroups.rs and calls [`moved`]) or a
//! thread id is reused (`sched:sched_process_fork`, whose program lives in process.rs and
//! calls [`forget_slot`]).
use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
        bpf_get_prandom_u32, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{fentry, fexit, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuHashMap},
    programs::{FEntryContext, FExitContext, RawTracePointContext},
};
use palisade_common::{
    CALL_SLOT_SHIFT, CONFIG_CGROUP_CACHE, CONFIG_ENTRIES, CallSlot, CountSlot, ENTERED_UNTIMED,
    EXIT_COUNTED, ErrnoKey, LATENCY_DETAIL_ENTRIES, LATENCY_NEVER, LATENCY_OTHER, SyscallKey,
    SyscallStats, ThreadSlot, latency_bucket,
    loss::{SYSCALL_ERRNOS_FULL, SYSCALL_STATS_FULL, SYSCALL_UNTIMED},
};

use palisade_ebpf::per_cpu_entry;

use crate::loss;

/// 1: count only cgroups listed in `CGROUP_FILTER`.
#[unsafe(no_mangle)]
static FILTER_ENABLED: Global<u32> = Global::new(0);
/// `THREAD_SLOTS` size - 1 (size is a power of two; userspace sets both).
#[unsafe(no_mangle)]
static THREAD_SLOT_MASK: Global<u32> = Global::new(65535);
/// Which calls are timed: 0 every call, [`LATENCY_NEVER`] none, else a call is timed when a
/// random number ANDed with this mask is 0 (the mask is a power of two - 1: one call in
/// mask + 1, chosen at random so that no loop of calls aliases with the sample).
#[unsafe(no_mangle)]
static LATENCY_SAMPLE_MASK: Global<u32> = Global::new(0);
/// Offset of the syscall number in `struct pt_regs` (x86_64: `orig_ax`).
#[unsafe(no_mangle)]
static PT_REGS_NR_OFFSET: Global<u64> = Global::new(120);
/// Syscalls that never return; counted at entry.
#[unsafe(no_mangle)]
static NR_EXIT: Global<u32> = Global::new(60);
#[unsafe(no_mangle)]
static NR_EXIT_GROUP: Global<u32> = Global::new(231);

/// Syscalls whose child side returns through `sys_exit` without an entry (fork family).
#[unsafe(no_mangle)]
static NR_CLONE: Global<u32> = Global::new(56);
#[unsafe(no_mangle)]
static NR_FORK: Global<u32> = Global::new(57);
#[unsafe(no_mangle)]
static NR_VFORK: Global<u32> = Global::new(58);
#[unsafe(no_mangle)]
static NR_CLONE3: Global<u32> = Global::new(435);
/// Offset of `task_struct.pid` from the kernel's BTF; 0 where there is none (the thread id then
/// comes from `bpf_get_current_pid_tgid`). See [`current_tid`].
#[unsafe(no_mangle)]
static TASK_OFF_PID: Global<u32> = Global::new(0);
/// Hierarchy id of the unified hierarchy (shared with cgroups.rs).
#[unsafe(no_mangle)]
pub static UNIFIED_HIERARCHY: Global<u32> = Global::new(0);

#[map(name = "CONFIG")]
static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_ENTRIES, 0);

/// Positions per CPU region of `SYSCALL_COUNTS` - 1, and their log2 (userspace sets both).
#[unsafe(no_mangle)]
static COUNT_SLOT_MASK: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static COUNT_SLOT_BITS: Global<u32> = Global::new(0);

/// `BPF_F_MMAPABLE`: the agent reads the counts in place.
const MMAPABLE: u32 = 1 << 10;

/// Exact call counts, one open-addressing region per CPU (see [`CountSlot`]). Userspace sizes it
/// (possible CPUs × positions).
#[map(name = "SYSCALL_COUNTS")]
static SYSCALL_COUNTS: Array<CountSlot> = Array::with_max_entries(1, MMAPABLE);

/// Latency of the timed calls (`time_ns`, `hist`; `calls` stays 0: the counts are in
/// `SYSCALL_COUNTS`).
#[map(name = "SYSCALL_STATS")]
static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallStats> =
    PerCpuHashMap::with_max_entries(10240, 0);

/// 1 for a syscall (below `LATENCY_DETAIL_ENTRIES`) with a latency histogram of its own
/// (`metrics.syscall_latency_detail`); the others' timed calls share the cgroup's
/// `LATENCY_OTHER` key, so the latency table holds about one entry per container.
#[map(name = "LATENCY_DETAIL")]
static LATENCY_DETAIL: Array<u32> = Array::with_max_entries(LATENCY_DETAIL_ENTRIES, 0);

#[map(name = "SYSCALL_ERRNOS")]
static SYSCALL_ERRNOS: PerCpuHashMap<ErrnoKey, u64> = PerCpuHashMap::with_max_entries(4096, 0);

#[map(name = "THREAD_SLOTS")]
static THREAD_SLOTS: Array<ThreadSlot> = Array::with_max_entries(65536, 0);

/// Calls in flight, by the address of their saved registers (see [`CallSlot`]); as many as
/// `THREAD_SLOTS`.
#[map(name = "CALL_SLOTS")]
static CALL_SLOTS: Array<CallSlot> = Array::with_max_entries(65536, 0);

#[map(name = "CGROUP_FILTER")]
static CGROUP_FILTER: HashMap<u64, u32> = HashMap::with_max_entries(4096, 0);

const MAX_ERRNO: i64 = 4095;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    match try_sys_enter(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    match try_sys_exit(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

/// `long x64_sys_call(const struct pt_regs *regs, unsigned int nr)`: the x86_64 dispatcher
/// (kernels with the BHI mitigation: 6.9+, and stable backports such as Debian's 6.1.0-2x+),
/// called for every 64-bit syscall with a valid number. `do_syscall_64` itself is `noinstr`.
#[fentry(function = "x64_sys_call")]
pub fn sys_enter_fentry(ctx: FEntryContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    // The registers' address is a typed pointer here, which the verifier lets no program
    // shift: the call is found by the thread id instead.
    match enter(nr as u32, u64::from(current_tid())) {
        Ok(v) | Err(v) => v,
    }
}

/// The same function's return: the arguments as at entry, then the return value.
#[fexit(function = "x64_sys_call")]
pub fn sys_exit_fexit(ctx: FExitContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    let ret: i64 = ctx.arg(2);
    // A fork child starts in ret_from_fork and never returns through the dispatcher: every
    // return seen here is a call of its own, and the number is the argument.
    match exit(ret, nr as u32, 0, u64::from(current_tid())) {
        Ok(v) | Err(v) => v,
    }
}

/// The current thread's id: `task->pid`, one load the verifier checks against BTF, where the
/// kernel has BTF; `bpf_get_current_pid_tgid` without. Either is one helper call (6.18's JIT
/// does not inline `bpf_get_current_task_btf`), and the two measured within noise. On the raw
/// tracepoints only the entry asks: the exit finds its call by the registers' address.
#[inline(always)]
fn current_tid() -> u32 {
    let off = TASK_OFF_PID.load();
    if off == 0 {
        return bpf_get_current_pid_tgid() as u32;
    }
    // SAFETY: `off` is the offset of `pid` (i32) in `task_struct`, from BTF; the verifier
    // types the task pointer and checks the load against the kernel's BTF (a fault reads 0).
    unsafe {
        let task = bpf_get_current_task_btf() as *const u8;
        core::ptr::read_volatile(task.add(off as usize).cast::<i32>()) as u32
    }
}

#[inline(always)]
fn selected(cgroup_id: u64) -> bool {
    // SAFETY: read-only lookup; the value is not kept.
    FILTER_ENABLED.load() == 0 || unsafe { CGROUP_FILTER.get(cgroup_id) }.is_some()
}

fn try_sys_enter(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // sys_enter(struct pt_regs *regs, long id)
    let regs: u64 = ctx.arg(0);
    let nr: i64 = ctx.arg(1);
    if nr < 0 {
        return Ok(0);
    }
    enter(nr as u32, regs >> CALL_SLOT_SHIFT)
}

/// The `CALL_SLOTS` slot of the call of `key`: on the raw tracepoints the thread's kernel stack
/// (`regs >> CALL_SLOT_SHIFT`: no call to find it), on fentry/fexit its thread id.
#[inline(always)]
fn call_slot(key: u64) -> Option<*mut CallSlot> {
    CALL_SLOTS.get_ptr_mut((key as u32) & THREAD_SLOT_MASK.load())
}

/// The cgroup of the thread of `slot` (its own, claimed): the cached id, else the helper's
/// (cached when the cache is on).
///
/// # Safety
/// `slot` points at a `THREAD_SLOTS` value (see `try_sys_enter`).
#[inline(always)]
unsafe fn thread_cgroup(slot: *mut ThreadSlot) -> u64 {
    let cache = cache_enabled();
    // SAFETY: the caller's.
    unsafe {
        if cache && (*slot).cgroup_id != 0 {
            return (*slot).cgroup_id;
        }
        let id = bpf_get_current_cgroup_id();
        if cache {
            (*slot).cgroup_id = id;
        }
        id
    }
}

/// Syscall entry: records the call in flight in its `CALL_SLOTS` slot, with the thread's
/// cgroup and, for the calls the sample picks, the time (or counts `exit`/`exit_group` now).
#[inline(always)]
fn enter(nr: u32, key: u64) -> Result<i32, i32> {
    if nr == NR_EXIT.load() || nr == NR_EXIT_GROUP.load() {
        // These never reach sys_exit: count them now, untimed and without errno.
        // SAFETY: helper without preconditions.
        let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        if selected(cgroup_id) && first_exit() {
            account(cgroup_id, nr, UNTIMED);
        }
        return Ok(0);
    }
    let tid = current_tid();
    let slot = THREAD_SLOTS
        .get_ptr_mut(tid & THREAD_SLOT_MASK.load())
        .ok_or(0)?;
    let call = call_slot(key).ok_or(0)?;
    // SAFETY: `slot` and `call` point into array map values owned by their maps for the
    // program's lifetime. Two threads whose ids (or stacks) collide modulo the slot count may
    // race on one; the exit checks the key, so a collision at worst makes one call untimed
    // (counted in SYSCALL_UNTIMED).
    unsafe {
        claim(slot, tid);
        let cgroup_id = thread_cgroup(slot);
        if !selected(cgroup_id) {
            return Ok(0);
        }
        (*call).key = key;
        (*call).nr = nr;
        (*call).cgroup_id = cgroup_id;
        (*call).start_ns = if sampled(&mut (*slot).rng) {
            bpf_ktime_get_ns()
        } else {
            ENTERED_UNTIMED
        };
    }
    Ok(0)
}

/// Makes `slot` thread `tid`'s: taken over from another thread, what it cached (cgroup,
/// generator) is not ours.
///
/// # Safety
/// `slot` points at a `THREAD_SLOTS` value (see `try_sys_enter`).
#[inline(always)]
unsafe fn claim(slot: *mut ThreadSlot, tid: u32) {
    // SAFETY: the caller's.
    unsafe {
        if (*slot).tid != tid {
            (*slot).tid = tid;
            (*slot).cgroup_id = 0;
            (*slot).rng = 0;
            (*slot).exit = 0;
        }
    }
}

/// Whether this is the first run of the entry program for the current thread's
/// `exit`/`exit_group` (marks its slot [`EXIT_COUNTED`]). Two programs run it for the same call
/// while the agent hands its entry over to the policy program's tail call or back (see
/// `policy::syscalls`); the call is counted once. The thread makes no call after it, and a new
/// thread with its id gets the slot cleared (`forget_slot`).
#[inline(always)]
fn first_exit() -> bool {
    let tid = current_tid();
    let Some(slot) = THREAD_SLOTS.get_ptr_mut(tid & THREAD_SLOT_MASK.load()) else {
        return true;
    };
    // SAFETY: see try_sys_enter.
    unsafe {
        if (*slot).tid == tid && (*slot).exit == EXIT_COUNTED {
            return false;
        }
        claim(slot, tid);
        (*slot).exit = EXIT_COUNTED;
    }
    true
}

/// Whether this call is timed (see [`LATENCY_SAMPLE_MASK`]), from the thread's generator
/// `rng`. The clock reads are most of what timing a call costs (one at entry, one at exit);
/// a xorshift step in the slot is cheaper than the `bpf_get_prandom_u32` helper, which only
/// seeds it.
#[inline(always)]
fn sampled(rng: &mut u32) -> bool {
    let mask = LATENCY_SAMPLE_MASK.load();
    if mask == 0 {
        return true;
    }
    if mask == LATENCY_NEVER {
        return false;
    }
    let mut x = *rng;
    if x == 0 {
        // SAFETY: helper without preconditions.
        x = unsafe { bpf_get_prandom_u32() } | 1;
    }
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *rng = x;
    // the high bits: xorshift's low bits are its weakest
    (x >> 16) & mask == 0
}

#[inline(always)]
fn cache_enabled() -> bool {
    CONFIG.get(CONFIG_CGROUP_CACHE).is_some_and(|v| *v == 1)
}

/// A new thread may reuse the id of a dead one: forget what its slot cached. Called from the
/// `sched:sched_process_fork` program (process.rs) before the child runs.
#[inline(always)]
pub fn forget_slot(child: u32) {
    if let Some(slot) = THREAD_SLOTS.get_ptr_mut(child & THREAD_SLOT_MASK.load()) {
        // SAFETY: array map value; see try_sys_enter. The child has not run yet.
        unsafe {
            if (*slot).tid == child {
                (*slot).tid = 0;
                (*slot).cgroup_id = 0;
                (*slot).exit = 0;
                (*slot).rng = 0;
            }
        }
    }
}

/// A thread moved to `id` (unified hierarchy): update its cached cgroup id. Called by the
/// `cgroup:cgroup_attach_task` program (cgroups.rs).
#[inline(always)]
pub fn moved(pid: u32, id: u64) {
    if let Some(slot) = THREAD_SLOTS.get_ptr_mut(pid & THREAD_SLOT_MASK.load()) {
        // SAFETY: array map value; see try_sys_enter.
        unsafe {
            if (*slot).tid == pid {
                (*slot).cgroup_id = id;
            }
        }
    }
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<i32, i32> {
    // sys_exit(struct pt_regs *regs, long ret)
    let ret: i64 = ctx.arg(1);
    let regs: u64 = ctx.arg(0);
    exit(ret, NR_FROM_REGS, regs, regs >> CALL_SLOT_SHIFT)
}

/// `exit`'s `nr` when only the saved registers have the syscall number.
const NR_FROM_REGS: u32 = u32::MAX;

/// Syscall return: accounts the call its entry recorded (in the cgroup it entered from, timed
/// when the sample picked it), or untimed when the entry was missed. `regs` is the address of
/// the saved registers (`sys_exit(struct pt_regs *regs, long ret)`; 0 on fexit) and `key` the
/// call's (see [`call_slot`]); `known_nr` is the syscall number when the hook passes it
/// (fexit), else [`NR_FROM_REGS`]. (Plain integers, not an enum: an enum's unused payload
/// reached the verifier as an uninitialized register, "R3 !read_ok", on 6.1.)
#[inline(always)]
fn exit(ret: i64, known_nr: u32, regs: u64, key: u64) -> Result<i32, i32> {
    if let Some(call) = call_slot(key) {
        // SAFETY: see `enter`.
        unsafe {
            let start = (*call).start_ns;
            if start != 0 && (*call).key == key {
                (*call).start_ns = 0;
                let latency = if start > ENTERED_UNTIMED {
                    bpf_ktime_get_ns().saturating_sub(start)
                } else {
                    UNTIMED
                };
                // selected at entry
                account_return((*call).cgroup_id, (*call).nr, latency, ret);
                return Ok(0);
            }
        }
    }
    exit_unseen(ret, known_nr, regs)
}

/// A return whose entry was not seen (the programs attached in between, or another thread's
/// call took the slot): counted untimed, in the thread's cgroup now.
#[inline(always)]
fn exit_unseen(ret: i64, known_nr: u32, regs: u64) -> Result<i32, i32> {
    let nr = match known_nr {
        NR_FROM_REGS => {
            // Read the syscall number from the saved registers (arch ABI layout).
            // SAFETY: bpf_probe_read_kernel checks the address; a fault returns an error.
            let raw: i64 =
                unsafe { bpf_probe_read_kernel((regs + PT_REGS_NR_OFFSET.load()) as *const i64) }
                    .map_err(|_| 0)?;
            if raw < 0 {
                return Ok(0);
            }
            let nr = raw as u32;
            // A new child's first return from the fork family is not a call of its own.
            if ret == 0
                && (nr == NR_CLONE.load()
                    || nr == NR_CLONE3.load()
                    || nr == NR_FORK.load()
                    || nr == NR_VFORK.load())
            {
                return Ok(0);
            }
            nr
        }
        n => n,
    };
    let tid = current_tid();
    let cgroup_id = match THREAD_SLOTS.get_ptr_mut(tid & THREAD_SLOT_MASK.load()) {
        // SAFETY: see `enter`.
        Some(slot) => unsafe {
            claim(slot, tid);
            thread_cgroup(slot)
        },
        // SAFETY: helper without preconditions.
        None => unsafe { bpf_get_current_cgroup_id() },
    };
    if !selected(cgroup_id) {
        return Ok(0);
    }
    loss::count(SYSCALL_UNTIMED);
    account_return(cgroup_id, nr, UNTIMED, ret);
    Ok(0)
}

/// Counts a call that returned `ret` ([`account`]), and its errno when it failed.
#[inline(always)]
fn account_return(cgroup_id: u64, nr: u32, latency_ns: u64, ret: i64) {
    account(cgroup_id, nr, latency_ns);
    if (-MAX_ERRNO..0).contains(&ret) {
        count_errno(cgroup_id, nr, (-ret) as u32);
    }
}

/// `account`'s latency of a call that was not timed. (A plain integer, not an `Option`: `None`'s
/// unset payload reached the verifier as an uninitialized register, "R3 !read_ok".)
const UNTIMED: u64 = u64::MAX;

/// Counts one call of `nr` in `cgroup_id`, with its latency unless [`UNTIMED`]. A call whose
/// count or latency finds no room is one `syscall_stats_map_full` loss.
#[inline(always)]
fn account(cgroup_id: u64, nr: u32, latency_ns: u64) {
    let counted = count_call(cgroup_id, nr);
    let timed = latency_ns == UNTIMED || record_latency(cgroup_id, nr, latency_ns);
    if !counted || !timed {
        loss::count(SYSCALL_STATS_FULL);
    }
}

/// Adds one call to (`cgroup_id`, `nr`) in this CPU's region of `SYSCALL_COUNTS` (see
/// [`palisade_common::count_call`]); false when it has no room for a new key.
#[inline(always)]
fn count_call(cgroup_id: u64, nr: u32) -> bool {
    // SAFETY: helper without preconditions.
    let base = unsafe { bpf_get_smp_processor_id() } << COUNT_SLOT_BITS.load();
    palisade_common::count_call(
        |at| SYSCALL_COUNTS.get_ptr_mut(at),
        base,
        COUNT_SLOT_MASK.load(),
        cgroup_id,
        nr,
    )
}

/// Adds a timed call's latency to its histogram in `SYSCALL_STATS` (its syscall's, or its
/// cgroup's `LATENCY_OTHER` one, see `LATENCY_DETAIL`); false when the map is full.
#[inline(always)]
fn record_latency(cgroup_id: u64, nr: u32, latency_ns: u64) -> bool {
    let own = nr >= LATENCY_DETAIL_ENTRIES || LATENCY_DETAIL.get(nr).is_some_and(|d| *d != 0);
    let key = SyscallKey::new(cgroup_id, if own { nr } else { LATENCY_OTHER });
    let Some(stats) = per_cpu_entry(&SYSCALL_STATS, &key, SyscallStats::ZERO) else {
        return false;
    };
    // SAFETY: `stats` is this CPU's copy of a per-CPU hash value; nothing else writes it while
    // this program runs on this CPU.
    unsafe {
        (*stats).time_ns += latency_ns;
        let b = latency_bucket(latency_ns);
        if let Some(slot) = (*stats).hist.get_mut(b) {
            *slot += 1;
        }
    }
    true
}

#[inline(always)]
fn count_errno(cgroup_id: u64, nr: u32, errno: u32) {
    let key = ErrnoKey {
        cgroup_id,
        nr,
        errno,
    };
    let Some(count) = per_cpu_entry(&SYSCALL_ERRNOS, &key, 0) else {
        loss::count(SYSCALL_ERRNOS_FULL);
        return;
    };
    // SAFETY: per-CPU value, see `account`.
    unsafe { *count += 1 };
}
