//! What every policy hook shares: the cgroup → policy table, rule descriptions, violation
//! counts with the event rate limiter, and the ring buffer the agent reads violations from.
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use palisade_common::policy::{
    CgroupPolicy, ExecPaths, NetTuple, PolicyEvent, RuleInfo, ViolationKey, ViolationState, admit,
    config,
};
use palisade_ebpf::{atomic_add, lru_entry};

#[map(name = "POLICY_CGROUPS")]
static POLICY_CGROUPS: HashMap<u64, CgroupPolicy> = HashMap::with_max_entries(4096, 0);

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

/// The policy of `cgroup_id`, if it has one.
#[inline(always)]
pub fn policy_of(cgroup_id: u64) -> Option<CgroupPolicy> {
    // SAFETY: read-only lookup, copied out.
    unsafe { POLICY_CGROUPS.get(cgroup_id) }.copied()
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
    pub errno: u32,
    pub net: Option<&'a NetTuple>,
    /// Exec violations: what was executed (this CPU's scratch, copied into the event).
    pub path: Option<*const ExecPaths>,
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
    let Some(mut entry) = POLICY_EVENTS.reserve::<PolicyEvent>(0) else {
        if let Some(p) = POLICY_LOSS.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a per-CPU array.
            unsafe { *p += 1 };
        }
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: a reserved record we own until submit; every field is written.
    unsafe {
        (*ev).what = what;
        (*ev).rule = rule;
        (*ev).action = action;
        (*ev).cgroup_id = cgroup_id;
        (*ev).ktime_ns = now;
        (*ev).total = total;
        (*ev).nr = detail.nr;
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
        (*ev).exec.flags = 0;
        (*ev).exec.path_len = 0;
        (*ev).exec.interp_len = 0;
        (*ev).exec.given_len = 0;
        if let Some(src) = detail.path {
            let _ = aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                (&raw mut (*ev).exec).cast(),
                size_of::<ExecPaths>() as u32,
                src.cast(),
            );
        }
    }
    entry.submit(0);
}
