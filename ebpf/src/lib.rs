//! Helpers every Palisade kernel program shares (the programs live in the binaries: `palisade`
//! for telemetry, `palisade-policy` for enforcement, `palisade-probes` for `palisade doctor`),
//! and the panic handler they all link.
//!
//! The agent also names this crate as a build dependency, so cargo rebuilds the objects when it
//! changes; that host build is all the `not(target_arch = "bpf")` paths below are for.
#![no_std]
// BPF atomic add: core has no AtomicU64 for the bpf target.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::generated::bpf_skb_load_bytes,
    maps::{LruHashMap, PerCpuHashMap},
    programs::SkBuffContext,
};

/// Adds `v` to the u64 at `p` atomically (values of shared, not per-CPU, maps).
///
/// # Safety
/// `p` points at an aligned u64 inside a map value that lives as long as the map, and every
/// other writer updates it through this function.
#[inline(always)]
pub unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller's promise; other CPUs update it through the same atomic instruction.
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
    // SAFETY: as above; an aligned u64 is a valid AtomicU64.
    #[cfg(not(target_arch = "bpf"))]
    unsafe {
        core::sync::atomic::AtomicU64::from_ptr(p)
            .fetch_add(v, core::sync::atomic::Ordering::Relaxed)
    };
}

/// This CPU's value of `key`, inserting `zero` first when absent (a racing insert on another
/// CPU is fine: `BPF_NOEXIST` makes the loser's insert fail and the lookup finds the winner's).
/// `None`: the map is full.
#[inline(always)]
pub fn per_cpu_entry<K, V>(map: &PerCpuHashMap<K, V>, key: &K, zero: V) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = map.insert(key, zero, BPF_NOEXIST as u64);
    map.get_ptr_mut(key)
}

/// The shared value of `key` in an LRU hash, inserting `zero` first when absent (see
/// [`per_cpu_entry`]). `None` only when the insert failed outright.
#[inline(always)]
pub fn lru_entry<K, V>(map: &LruHashMap<K, V>, key: &K, zero: V) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = map.insert(key, zero, BPF_NOEXIST as u64);
    map.get_ptr_mut(key)
}

/// Copies exactly `N` bytes at `off` from the packet (a constant size, as the verifier wants).
#[inline(always)]
pub fn skb_load<const N: usize>(ctx: &SkBuffContext, off: u32, dst: *mut [u8; N]) -> Option<()> {
    // SAFETY: `dst` points at N writable bytes; the helper checks the packet bounds.
    let r = unsafe { bpf_skb_load_bytes(ctx.skb.skb as *const _, off, dst.cast(), N as u32) };
    (r == 0).then_some(())
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
