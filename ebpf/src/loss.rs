//! Loss counters: one per-CPU slot per place the kernel side can drop data.
use aya_ebpf::{macros::map, maps::PerCpuArray};
use palisade_common::loss::COUNT;

#[map(name = "LOSS_COUNTERS")]
static LOSS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT, 0);

/// Adds one to loss counter `index` (one of `palisade_common::loss`) on this CPU.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(p) = LOSS_COUNTERS.get_ptr_mut(index) {
        // SAFETY: `p` points into this CPU's slot of a per-CPU array; programs on one CPU do not
        // run concurrently with each other for these program types, so the plain add is race-free.
        unsafe { *p += 1 };
    }
}
