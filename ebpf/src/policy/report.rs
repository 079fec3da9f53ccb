//! What every policy hook shares: the cgroup → policy table and the resolution of a cgroup to
//! the entry that applies to it (its own or its nearest ancestor's, cached per cgroup id),
//! rule descriptions, violation counts with the event rate limiter, and the ring buffer the
//! agent reads violations from.
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_ns, bpf_skb_ancestor_cgroup_id,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use palisade_common::policy::{
    CgroupPolicy, ExecPaths, MAX_CGROUP_DEPTH, NetTuple, POLICY_EVENT_HEAD, PolicyEvent, Resolved,
    RuleInfo, ThreadResolved, ViolationKey, ViolationState, abi_id, admit, config, lsm_call_bit,
    lsm_covered, lsm_index,
};
use palisade_ebpf::{atomic_add, lru_entry};

#[map(name = "POLICY_CGROUPS")]
static POLICY_CGROUPS: HashMap<u64, CgroupPolicy> = HashMap::with_max_entries(4096, 0);

/// Resolutions per cgroup id: a hit costs one lookup (this runs for every syscall on the host
/// while syscall rules exist); a miss walks the ancestry once.
#[map(name = "POLICY_RESOLVED")]
static POLICY_RESOLVED: LruHashMap<u64, Resolved> = LruHashMap::with_max_entries(16384, 0);

/// Thread id → its last resolution ([`policy_current_thread_of`]). Not pinned: a cache.
#[map(name = "POLICY_THREADS")]
static POLICY_THREADS: Array<ThreadResolved> = Array::with_max_entries(POLICY_THREADS_MASK + 1, 0);
/// `POLICY_THREADS` size - 1 (a constant: no load on the hot path).
const POLICY_THREADS_MASK: u32 = 16383;

#[map(name = "POLICY_RULES")]
static POLICY_RULES: Array<RuleInfo> = Array::with_max_entries(4096, 0);

#[map(name = "POLICY_VIOLATIONS")]
static POLICY_VIOLATIONS: LruHashMap<ViolationKey, ViolationState> =
    LruHashMap::with_max_entries(16384, 0);

#[map(name = "POLICY_CONFIG")]
static POLICY_CONFIG: Array<u64> = Array::with_max_entries(config::COUNT, 0);

/// 256 KiB: ~600 violations between two reads (the rate limit keeps floods far below).
#[map(name = "POLICY_EVENTS")]
static POLICY_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "POLICY_LOSS")]
static POLICY_LOSS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Written by the agent only (no program reads it): how many violations of each key its
/// events have reported, and the hook that saw them. Pinned with the rest, so an agent that
/// takes over reports each violation once.
#[map(name = "POLICY_REPORTED")]
static POLICY_REPORTED: HashMap<ViolationKey, [u64; 2]> = HashMap::with_max_entries(16384, 0);

/// By `lsm_index`: whether the BPF-LSM programs refuse `errno` rules (the tracepoint programs
/// then leave those rules to them). Written by the agent after an attach, before a detach.
#[map(name = "POLICY_LSM")]
static POLICY_LSM: Array<u32> = Array::with_max_entries(lsm_index::COUNT, 0);

/// Whether `lsm::policy_exec_lsm` refuses `errno` exec rules (else the exec programs kill).
#[inline(always)]
pub fn exec_lsm_on() -> bool {
    POLICY_LSM.get(lsm_index::EXEC).copied() == Some(1)
}

/// Whether every LSM hook of x86_64 call `nr` is attached (its `errno` rules are refused
/// there; `sys_enter` leaves them to the hooks).
#[inline(always)]
pub fn lsm_refuses(nr: u64) -> bool {
    if !lsm_covered(nr) {
        return false;
    }
    let (word, bit) = lsm_call_bit(nr);
    POLICY_LSM.get(word).is_some_and(|w| w & bit != 0)
}

/// The entry of `cgroup_id` itself, if it has one.
#[inline(always)]
fn entry_of(cgroup_id: u64) -> Option<CgroupPolicy> {
    // SAFETY: read-only lookup, copied out.
    unsafe { POLICY_CGROUPS.get(cgroup_id) }.copied()
}

/// The entry that applies to `cgroup_id`: its own, else its nearest ancestor's.
/// `ancestor(level)` is the id of its ancestor at `level` (0: the root; the cgroup itself at
/// its own level; 0 past it). The answer is cached until the agent changes the table.
#[inline(always)]
fn resolve(cgroup_id: u64, ancestor: impl Fn(i32) -> u64) -> Option<CgroupPolicy> {
    applies(resolve_at(cgroup_id, generation(), ancestor))
}

/// The policy of a resolution, if one applies.
#[inline(always)]
fn applies(r: Resolved) -> Option<CgroupPolicy> {
    (r.found == 1).then_some(r.policy)
}

/// The table's [`config::GENERATION`]: resolutions cached under another one are stale.
#[inline(always)]
pub fn generation() -> u32 {
    POLICY_CONFIG.get(config::GENERATION).copied().unwrap_or(0) as u32
}

/// [`resolve`] under `generation`, as plain fields (no `Option`: see below).
#[inline(always)]
fn resolve_at(cgroup_id: u64, generation: u32, ancestor: impl Fn(i32) -> u64) -> Resolved {
    // SAFETY: read-only lookup, copied out.
    if let Some(r) = unsafe { POLICY_RESOLVED.get(cgroup_id) }.copied()
        && r.generation == generation
    {
        return r;
    }
    // plain fields, no Option: the verifier refuses to copy a `None`'s undefined payload
    let mut r = Resolved {
        policy: CgroupPolicy { slot: 0, flags: 0 },
        generation,
        found: 0,
    };
    if let Some(p) = entry_of(cgroup_id) {
        r.policy = p;
        r.found = 1;
    } else {
        for level in 0..MAX_CGROUP_DEPTH {
            let id = ancestor(level);
            if id == 0 || id == cgroup_id {
                break;
            }
            if let Some(p) = entry_of(id) {
                r.policy = p;
                r.found = 1;
            }
        }
    }
    let _ = POLICY_RESOLVED.insert(cgroup_id, r, 0);
    r
}

/// The policy that applies to the current task's cgroup `cgroup_id` (process context).
#[inline(always)]
pub fn policy_current(cgroup_id: u64) -> Option<CgroupPolicy> {
    applies(policy_current_at(cgroup_id, generation()))
}

#[inline(always)]
fn policy_current_at(cgroup_id: u64, generation: u32) -> Resolved {
    resolve_at(cgroup_id, generation, |level| {
        // SAFETY: helper without preconditions (process context).
        unsafe { bpf_get_current_ancestor_cgroup_id(level) }
    })
}

/// [`policy_current`] for the syscall hooks, which run for every call on the host: the
/// thread's last resolution (`POLICY_THREADS`, an array slot) when it is for the same cgroup
/// and generation, else the `POLICY_RESOLVED` lookup, remembered in the slot.
#[inline(always)]
pub fn policy_current_thread_of(cgroup_id: u64, tid: u32) -> Option<CgroupPolicy> {
    let generation = generation();
    let slot = POLICY_THREADS.get_ptr_mut(tid & POLICY_THREADS_MASK);
    if let Some(e) = slot {
        // SAFETY: array map value, read in place. A colliding thread may be writing it: `tid`
        // is read before and after the rest, and it writes `tid` 0 first and its own last
        // (see `ThreadResolved`), so a changed entry never matches.
        unsafe {
            if read_volatile(&raw const (*e).tid) == tid {
                let c = read_volatile(&raw const (*e).cgroup_id);
                let r = read_volatile(&raw const (*e).resolved);
                if read_volatile(&raw const (*e).tid) == tid
                    && c == cgroup_id
                    && r.generation == generation
                {
                    return applies(r);
                }
            }
        }
    }
    let r = policy_current_at(cgroup_id, generation);
    if let Some(e) = slot {
        // SAFETY: as above.
        unsafe {
            write_volatile(&raw mut (*e).tid, 0);
            write_volatile(&raw mut (*e).cgroup_id, cgroup_id);
            write_volatile(&raw mut (*e).resolved, r);
            write_volatile(&raw mut (*e).tid, tid);
        }
    }
    applies(r)
}

/// The policy that applies to the cgroup `cgroup_id` of the socket of `skb`.
#[inline(always)]
pub fn policy_skb(skb: *const __sk_buff, cgroup_id: u64) -> Option<CgroupPolicy> {
    resolve(cgroup_id, |level| {
        // SAFETY: the program's own context.
        unsafe { bpf_skb_ancestor_cgroup_id(skb as *mut _, level) }
    })
}

/// The description of rule `id`.
#[inline(always)]
pub fn rule(id: u32) -> Option<&'static RuleInfo> {
    POLICY_RULES.get(id)
}

/// Who did it: filled from the current task.
#[derive(Clone, Copy)]
pub enum Subject {
    /// Process context: pid, tid, uid and comm of the current task.
    Current,
    /// Softirq context (an incoming packet): no process.
    Packet,
}

/// What the violation was about.
pub struct Detail<'a> {
    pub nr: u32,
    /// The ABI of `nr` (`abi_id`) and the x86_64 call it was checked as (`u32::MAX`: none).
    pub abi: u32,
    pub native: u32,
    pub errno: u32,
    pub net: Option<&'a NetTuple>,
    /// Exec violations: what was executed (this CPU's scratch, copied into the event).
    pub path: Option<*const ExecPaths>,
}

impl Detail<'_> {
    /// Nothing but what the event's `what` says.
    pub const NONE: Detail<'static> = Detail {
        nr: 0,
        abi: abi_id::X86_64,
        native: u32::MAX,
        errno: 0,
        net: None,
        path: None,
    };
}

/// Counts one violation of `rule` with outcome `action` in `cgroup_id` and, when the rate limit
/// admits it, sends the event.
#[inline(always)]
pub fn report(
    what: u32,
    rule: u32,
    action: u32,
    cgroup_id: u64,
    subject: Subject,
    detail: &Detail<'_>,
) {
    let key = ViolationKey {
        cgroup_id,
        rule,
        action,
    };
    let Some(state) = lru_entry(&POLICY_VIOLATIONS, &key, ViolationState::default()) else {
        return;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let burst = POLICY_CONFIG.get(config::BURST).copied().unwrap_or(10);
    let interval = POLICY_CONFIG
        .get(config::INTERVAL_NS)
        .copied()
        .unwrap_or(10_000_000_000);
    // SAFETY: `state` points into a shared map value; `total` is updated atomically, the
    // window fields with plain stores (a race between CPUs at worst lets one extra event
    // through or holds one back, and the count stays exact).
    let (send, total) = unsafe {
        atomic_add(&raw mut (*state).total, 1);
        (admit(&mut *state, now, burst, interval), (*state).total)
    };
    if !send {
        return;
    }
    // exec and file violations send their paths; the others the head alone
    match detail.path {
        Some(src) => {
            let Some(mut entry) = POLICY_EVENTS.reserve::<PolicyEvent>(0) else {
                return lost();
            };
            let ev = entry.as_mut_ptr();
            // SAFETY: a reserved record we own until submit; `fill` writes the head, the
            // paths are copied whole.
            unsafe {
                fill(
                    ev, what, rule, action, cgroup_id, now, total, subject, detail,
                );
                // empty paths should the copy fail
                (*ev).exec.flags = 0;
                (*ev).exec.path_len = 0;
                (*ev).exec.interp_len = 0;
                (*ev).exec.given_len = 0;
                let _ = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                    (&raw mut (*ev).exec).cast(),
                    size_of::<ExecPaths>() as u32,
                    src.cast(),
                );
            }
            entry.submit(0);
        }
        None => {
            let Some(mut entry) = POLICY_EVENTS.reserve::<[u8; POLICY_EVENT_HEAD]>(0) else {
                return lost();
            };
            // SAFETY: a reserved record of the head's size we own until submit; `fill` writes
            // the head's fields only.
            unsafe {
                fill(
                    entry.as_mut_ptr().cast(),
                    what,
                    rule,
                    action,
                    cgroup_id,
                    now,
                    total,
                    subject,
                    detail,
                );
            }
            entry.submit(0);
        }
    }
}

/// Counts a violation event the full ring buffer had no room for.
#[inline(always)]
fn lost() {
    if let Some(p) = POLICY_LOSS.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *p += 1 };
    }
}

/// Writes every field of `ev` before `exec`.
///
/// # Safety
/// `ev` points to at least [`POLICY_EVENT_HEAD`] writable bytes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn fill(
    ev: *mut PolicyEvent,
    what: u32,
    rule: u32,
    action: u32,
    cgroup_id: u64,
    now: u64,
    total: u64,
    subject: Subject,
    detail: &Detail<'_>,
) {
    // SAFETY: the caller's; each field below lies before `exec`.
    unsafe {
        (*ev).what = what;
        (*ev).rule = rule;
        (*ev).action = action;
        (*ev).cgroup_id = cgroup_id;
        (*ev).ktime_ns = now;
        (*ev).total = total;
        (*ev).nr = detail.nr;
        (*ev).abi = detail.abi;
        (*ev).native = detail.native;
        (*ev).errno = detail.errno;
        match subject {
            Subject::Current => {
                let pid_tgid = bpf_get_current_pid_tgid();
                (*ev).pid = (pid_tgid >> 32) as u32;
                (*ev).tid = pid_tgid as u32;
                (*ev).uid = bpf_get_current_uid_gid() as u32;
                (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
            }
            Subject::Packet => {
                (*ev).pid = 0;
                (*ev).tid = 0;
                (*ev).uid = 0;
                (*ev).comm = [0; 16];
            }
        }
        (*ev).net = match detail.net {
            Some(t) => *t,
            None => NetTuple::default(),
        };
    }
}
