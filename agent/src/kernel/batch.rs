//! Whole reads of per-CPU hash maps with `BPF_MAP_LOOKUP_BATCH` (kernel 5.6+): one `bpf()` call
//! per few hundred entries, where aya's iterator makes two per entry (next key, then lookup)
//! and allocates the per-CPU values of each. At 1,000 containers the syscall maps hold ~30,000
//! entries: that was a sixth of a scrape. Kernels without batch operations fall back to aya.
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{IterableMap as _, MapData, PerCpuHashMap},
};

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per call.
const BATCH: usize = 512;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of `map`, its per-CPU values summed with `add`. `Ok(None)`: this kernel has no
/// batch lookup (the caller reads the map the slow way).
pub fn read_summed<K: Pod, V: Pod + Default>(
    map: &PerCpuHashMap<MapData, K, V>,
    add: &impl Fn(&mut V, &V),
) -> io::Result<Option<Vec<(K, V)>>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    // the kernel lays out each key's values one per possible CPU, 8-byte aligned
    let stride = size_of::<V>().next_multiple_of(8);
    let mut cap = BATCH;
    let mut keys: Vec<K> = Vec::with_capacity(cap);
    let mut values: Vec<u64> = vec![0; cap * cpus * stride / 8];
    // the position token: a bucket index (u32) for hash maps; room for any key anyway
    let mut token = vec![0u64; size_of::<K>().div_ceil(8).max(1)];
    let fd = map.map().fd().as_fd().as_raw_fd() as u32;
    let mut out = Vec::new();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: cap as u32,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers with room for `cap` keys and `cap × cpus`
        // values of `stride` bytes, and at a token of at least the key's size; the kernel
        // writes no more than that and reads `size_of::<BatchAttr>()` bytes of `attr`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let done = if r == 0 {
            false
        } else {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                // the last (possibly partial) batch
                Some(libc::ENOENT) => true,
                // one hash bucket holds more than BATCH entries: ask for a bigger batch
                Some(libc::ENOSPC) if cap < 1 << 16 => {
                    cap *= 4;
                    keys = Vec::with_capacity(cap);
                    values = vec![0; cap * cpus * stride / 8];
                    continue;
                }
                Some(libc::EINVAL | libc::ENOTSUP | libc::ENOSYS | libc::EOPNOTSUPP) if first => {
                    return Ok(None);
                }
                _ => return Err(e),
            }
        };
        let n = (attr.count as usize).min(cap);
        // SAFETY: the kernel wrote `n` keys.
        unsafe { keys.set_len(n) };
        let bytes = values.as_ptr().cast::<u8>();
        for (i, key) in keys.iter().enumerate() {
            let mut sum = V::default();
            for cpu in 0..cpus {
                // SAFETY: within the values buffer (entry i, cpu < cpus); V is Pod, any bytes
                // are a valid V, and read_unaligned needs no alignment.
                let v: V = unsafe {
                    bytes
                        .add((i * cpus + cpu) * stride)
                        .cast::<V>()
                        .read_unaligned()
                };
                add(&mut sum, &v);
            }
            out.push((*key, sum));
        }
        keys.clear();
        first = false;
        if done {
            return Ok(Some(out));
        }
    }
}
