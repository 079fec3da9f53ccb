//! Syscall telemetry types and the latency-bucket rule shared by kernel and user side.

/// Number of latency buckets per (cgroup, syscall).
///
/// Bucket 0 holds latencies `<= 2^HIST_BASE_SHIFT` ns; bucket `i` (1 ≤ i < HIST_BUCKETS-1)
/// holds `(2^(HIST_BASE_SHIFT+i-1), 2^(HIST_BASE_SHIFT+i)]` ns; the last bucket holds everything
/// above `2^(HIST_BASE_SHIFT+HIST_BUCKETS-2)` ns (34.4 s). Upper bounds are inclusive, exactly
/// like Prometheus `le` bounds, so the conversion is lossless.
pub const HIST_BUCKETS: usize = 30;
/// log2 of the upper bound of bucket 0, in ns (128 ns).
pub const HIST_BASE_SHIFT: u32 = 7;

/// Key of `SYSCALL_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SyscallKey {
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// Syscall number (native ABI of the host).
    pub nr: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
}

impl SyscallKey {
    /// The key of syscall `nr` in cgroup `cgroup_id`.
    #[inline(always)]
    pub const fn new(cgroup_id: u64, nr: u32) -> Self {
        Self {
            cgroup_id,
            nr,
            _pad: 0,
        }
    }
}

/// Value of `SYSCALL_STATS` (one copy per CPU; userspace sums them). 256 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyscallStats {
    /// Completed calls (plus `exit`/`exit_group`, counted at entry because they never return).
    pub calls: u64,
    /// Sum of the latencies recorded in `hist`, in ns.
    pub time_ns: u64,
    /// Latency histogram, see [`HIST_BUCKETS`]. Only calls whose entry was seen are timed, so the
    /// sum of `hist` can be below `calls` (the difference is counted in `loss::SYSCALL_UNTIMED`).
    pub hist: [u64; HIST_BUCKETS],
}

impl SyscallStats {
    /// All counters zero.
    pub const ZERO: Self = Self {
        calls: 0,
        time_ns: 0,
        hist: [0; HIST_BUCKETS],
    };

    /// Adds `o`'s counters (summing CPUs or cgroups that share a name).
    pub fn merge(&mut self, o: &Self) {
        self.calls += o.calls;
        self.time_ns += o.time_ns;
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a += b;
        }
    }
}

/// One position of `SYSCALL_COUNTS`, the exact call count of (cgroup, syscall) on one CPU.
///
/// `SYSCALL_COUNTS` is an mmap-able array cut into one region per possible CPU, each an
/// open-addressing table of `COUNT_SLOT_MASK + 1` positions (a power of two) that only its CPU's
/// programs write: a key lives at the first position of its probe sequence ([`count_home`],
/// [`count_probe`]) that held it, within [`COUNT_PROBES`] positions. Finding a key is a few
/// inlined array loads, where a per-CPU hash lookup hashes and walks a bucket list (most of what
/// accounting a call cost). Every call is counted here; `SYSCALL_STATS` gets only the timed ones.
///
/// The kernel writes a new key's `nr` and `calls` before its `cgroup_id` (stores are ordered on
/// x86_64, and volatile in the program), so a reader that sees the id sees the rest. The agent
/// retires the keys of removed cgroups by writing [`COUNT_RETIRED`] as their id; the kernel
/// reuses such positions for new keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountSlot {
    /// cgroup v2 id; [`COUNT_EMPTY`] never used, [`COUNT_RETIRED`] free again.
    pub cgroup_id: u64,
    /// Syscall number.
    pub nr: u32,
    /// Always 0 (explicit padding).
    pub _pad: u32,
    /// Calls counted on this CPU since the key took the position.
    pub calls: u64,
}

/// [`CountSlot::cgroup_id`] of a position no key has taken (no cgroup has id 0).
pub const COUNT_EMPTY: u64 = 0;
/// [`CountSlot::cgroup_id`] of a position whose cgroup is gone (no cgroup has this id).
pub const COUNT_RETIRED: u64 = u64::MAX;
/// Positions of a key's probe sequence the kernel tries before counting the call lost
/// (`syscall_stats_map_full`). With triangular probing over a power-of-two table, the first
/// `n` probes of a table of `n` positions visit every position once.
pub const COUNT_PROBES: u32 = 32;

/// A key's first position in its CPU's region (before the mask): the number spread by one
/// multiplication, added to the id, and the sum mixed by another; the high half of the product.
#[inline(always)]
pub const fn count_home(cgroup_id: u64, nr: u32) -> u32 {
    let x = cgroup_id.wrapping_add((nr as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    (x.wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 32) as u32
}

/// Probe `i` of the key whose home is `home`, in a region of `mask + 1` positions (triangular
/// numbers: `home`, `+1`, `+3`, `+6`, ...).
#[inline(always)]
pub const fn count_probe(home: u32, i: u32, mask: u32) -> u32 {
    home.wrapping_add(i.wrapping_mul(i + 1) / 2) & mask
}

/// Adds one call of (`cgroup_id`, `nr`) to the region of `SYSCALL_COUNTS` that starts at index
/// `base` and has `mask + 1` positions, taking a free position for a new key (the first retired
/// one of its probes, else the empty one that ends them); false when none of its
/// [`COUNT_PROBES`] positions is free. `slot` gives a position's address (`None`: out of the
/// map). The kernel's programs run this; the agent's tests run it on memory of their own.
///
/// A region's single writer is its CPU (tracepoint programs do not interleave on a CPU: they
/// run with preemption off). The id is written last, so a reader that sees it sees the rest.
#[inline(always)]
pub fn count_call(
    slot: impl Fn(u32) -> Option<*mut CountSlot>,
    base: u32,
    mask: u32,
    cgroup_id: u64,
    nr: u32,
) -> bool {
    use core::ptr::{read_volatile, write_volatile};
    let home = count_home(cgroup_id, nr);
    let mut free = u32::MAX;
    let mut i = 0;
    while i < COUNT_PROBES {
        let at = base | count_probe(home, i, mask);
        let Some(p) = slot(at) else {
            return false;
        };
        // SAFETY: `slot` gives valid positions; see above for who writes them.
        unsafe {
            let id = read_volatile(&raw const (*p).cgroup_id);
            if id == cgroup_id && (*p).nr == nr {
                (*p).calls += 1;
                return true;
            }
            if id == COUNT_EMPTY {
                if free == u32::MAX {
                    free = at;
                }
                break;
            }
            if id == COUNT_RETIRED && free == u32::MAX {
                free = at;
            }
        }
        i += 1;
    }
    if free == u32::MAX {
        return false;
    }
    let Some(p) = slot(free) else {
        return false;
    };
    // SAFETY: as above.
    unsafe {
        write_volatile(&raw mut (*p).nr, nr);
        write_volatile(&raw mut (*p).calls, 1);
        write_volatile(&raw mut (*p).cgroup_id, cgroup_id);
    }
    true
}

/// Key of `SYSCALL_ERRNOS`: a failed syscall of one cgroup with one errno.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrnoKey {
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// Syscall number.
    pub nr: u32,
    /// Positive errno (the syscall returned `-errno`).
    pub errno: u32,
}

/// One entry of `THREAD_SLOTS`: what the syscall programs keep per thread — its cgroup v2 id
/// (a cache, so the hot path skips `bpf_get_current_cgroup_id`) and the generator that picks
/// the timed calls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadSlot {
    /// Thread id owning the slot (slots are indexed by `tid & mask`; another thread taking the
    /// slot starts it afresh).
    pub tid: u32,
    /// The thread's xorshift32 state that picks the calls timed (`syscalls.latency_sample`),
    /// seeded from `bpf_get_prandom_u32` when the thread takes the slot; 0 = not seeded.
    pub rng: u32,
    /// Cached cgroup v2 id of `tid`; 0 = unknown. Kept right by the `cgroup:cgroup_attach_task`
    /// (migration) and `sched:sched_process_fork` (tid reuse) tracepoints; only used while
    /// `CONFIG[CONFIG_CGROUP_CACHE]` is 1, which userspace sets once both are attached.
    pub cgroup_id: u64,
    /// [`EXIT_COUNTED`] once the thread's `exit`/`exit_group` is counted, else 0.
    pub exit: u32,
    pub _pad: u32,
}

/// One entry of `CALL_SLOTS`: the syscall a thread is in. On the raw tracepoints it is found by
/// the saved registers' address (`regs >> 14`, the thread's kernel stack: the tracepoints at
/// entry and exit both pass it), so the exit finds it without asking which thread runs; on
/// fentry/fexit (where that address is a typed pointer no program may shift) by thread id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallSlot {
    /// The call's key: `regs >> 14` or the thread id (another value: the slot is another
    /// thread's).
    pub key: u64,
    /// `bpf_ktime_get_ns()` at entry; [`ENTERED_UNTIMED`] for a call the latency sample left
    /// out; 0 when no call is in flight.
    pub start_ns: u64,
    /// The thread's cgroup at entry: the call is counted there.
    pub cgroup_id: u64,
    /// Syscall number.
    pub nr: u32,
    pub _pad: u32,
}

/// [`CallSlot::start_ns`] of a call whose entry was seen but that the latency sample left
/// untimed (`bpf_ktime_get_ns` counts from boot: it is never 1 once programs run).
pub const ENTERED_UNTIMED: u64 = 1;

/// [`ThreadSlot::exit`] once the thread's `exit`/`exit_group` is counted (they never return):
/// a second run of the entry program for the same call does not count it again. Two run for
/// one call while the agent moves its `sys_enter` program between the tracepoint and the
/// policy program's tail call.
pub const EXIT_COUNTED: u32 = 1;

/// log2 of the kernel stack size below which `CALL_SLOTS` tells threads apart (x86_64's
/// `THREAD_SIZE`, 16 KiB; a stack is aligned to its size).
pub const CALL_SLOT_SHIFT: u32 = 14;

/// Syscall numbers below this have an entry in `LATENCY_DETAIL`.
pub const LATENCY_DETAIL_ENTRIES: u32 = 512;
/// `nr` of the latency key that holds a cgroup's timed calls of every syscall without a
/// histogram of its own (`LATENCY_DETAIL` 0). Numbers from `LATENCY_DETAIL_ENTRIES` up (other
/// ABIs) always keep their own key.
pub const LATENCY_OTHER: u32 = u32::MAX;

/// `LATENCY_SAMPLE_MASK` that times no call (`metrics.syscall_latency: false`).
pub const LATENCY_NEVER: u32 = u32::MAX;

/// Index in the `CONFIG` array: 1 = the per-thread cgroup cache is safe to use.
pub const CONFIG_CGROUP_CACHE: u32 = 0;
/// Entries in the `CONFIG` array.
pub const CONFIG_ENTRIES: u32 = 1;

/// Number of significant bits of `x` (`64 - x.leading_zeros()`), written as a fixed sequence of
/// compares so the BPF backend and verifier see straight-line code.
#[inline(always)]
pub const fn bit_width(mut x: u64) -> u32 {
    let mut n = 0;
    if x >= 1 << 32 {
        n += 32;
        x >>= 32;
    }
    if x >= 1 << 16 {
        n += 16;
        x >>= 16;
    }
    if x >= 1 << 8 {
        n += 8;
        x >>= 8;
    }
    if x >= 1 << 4 {
        n += 4;
        x >>= 4;
    }
    if x >= 1 << 2 {
        n += 2;
        x >>= 2;
    }
    if x >= 1 << 1 {
        n += 1;
        x >>= 1;
    }
    n + x as u32
}

/// Histogram bucket of a latency in ns (see [`HIST_BUCKETS`]).
#[inline(always)]
pub const fn latency_bucket(ns: u64) -> usize {
    if ns <= 1 << HIST_BASE_SHIFT {
        return 0;
    }
    // ceil(log2(ns)) for ns >= 2
    let b = bit_width(ns - 1) - HIST_BASE_SHIFT;
    if b as usize >= HIST_BUCKETS - 1 {
        HIST_BUCKETS - 1
    } else {
        b as usize
    }
}

/// Inclusive upper bound of bucket `i` in ns, or `None` for the overflow bucket.
pub const fn bucket_upper_bound_ns(i: usize) -> Option<u64> {
    if i >= HIST_BUCKETS - 1 {
        None
    } else {
        Some(1u64 << (HIST_BASE_SHIFT + i as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_width_matches_leading_zeros() {
        let mut x = 0u64;
        while x < 5000 {
            assert_eq!(bit_width(x), 64 - x.leading_zeros(), "{x}");
            x += 1;
        }
        for s in 0..64 {
            for d in [-1i64, 0, 1] {
                let v = (1u64 << s).wrapping_add(d as u64);
                assert_eq!(bit_width(v), 64 - v.leading_zeros(), "{v}");
            }
        }
        assert_eq!(bit_width(u64::MAX), 64);
    }

    #[test]
    fn buckets_have_inclusive_upper_bounds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(128), 0);
        assert_eq!(latency_bucket(129), 1);
        assert_eq!(latency_bucket(256), 1);
        assert_eq!(latency_bucket(257), 2);
        // every value lands in the first bucket whose bound is >= the value
        for ns in [
            1u64,
            100,
            200,
            1000,
            4096,
            4097,
            1 << 20,
            (1 << 35) - 1,
            1 << 35,
        ] {
            let b = latency_bucket(ns);
            let ub = bucket_upper_bound_ns(b).unwrap_or(u64::MAX);
            assert!(ns <= ub, "{ns} in bucket {b} above bound {ub}");
            if b > 0 {
                let prev = bucket_upper_bound_ns(b - 1).unwrap_or(0);
                assert!(ns > prev, "{ns} belongs below bucket {b}");
            }
        }
        assert_eq!(latency_bucket((1 << 35) + 1), HIST_BUCKETS - 1);
        assert_eq!(latency_bucket(u64::MAX), HIST_BUCKETS - 1);
        assert_eq!(bucket_upper_bound_ns(HIST_BUCKETS - 2), Some(1 << 35));
        assert_eq!(bucket_upper_bound_ns(HIST_BUCKETS - 1), None);
    }
}
