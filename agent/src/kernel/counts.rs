//! `SYSCALL_COUNTS`: the exact syscall counts, read in place.
//!
//! The map is an mmap-able array with one open-addressing region per possible CPU (see
//! [`CountSlot`]). Only that CPU's programs write a region; the agent reads every region
//! through a shared mapping (no copy, no syscall per scrape) and retires the keys of removed
//! cgroups by writing [`COUNT_RETIRED`] over their id, which the kernel then reuses.

use std::{
    collections::{HashMap, HashSet},
    io,
    os::fd::AsFd as _,
    ptr::NonNull,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use aya::maps::MapData;
use palisade_common::{COUNT_EMPTY, COUNT_RETIRED, CountSlot};

use super::KernelError;

/// How `SYSCALL_COUNTS` is cut: `regions` (highest possible CPU + 1) of `positions` each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountLayout {
    pub regions: u32,
    /// A power of two, at least the configured capacity.
    pub positions: u32,
}

impl CountLayout {
    /// The layout for `capacity` keys per CPU on a host whose highest possible CPU is
    /// `max_cpu`.
    pub fn new(capacity: u32, max_cpu: u32) -> Result<Self, KernelError> {
        let positions = capacity.max(1).checked_next_power_of_two();
        let layout = positions.map(|positions| Self {
            regions: max_cpu + 1,
            positions,
        });
        match layout {
            Some(l) if l.entries().is_some() => Ok(l),
            _ => Err(KernelError::CountsTooLarge {
                capacity,
                regions: max_cpu + 1,
            }),
        }
    }

    /// The layout for `capacity` keys per CPU on this host (a CPU's number is below the
    /// highest possible one + 1, the kernel's `nr_cpu_ids`).
    pub fn for_host(capacity: u32) -> Result<Self, KernelError> {
        const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
        let err = |source| KernelError::Cpus {
            path: POSSIBLE.into(),
            source,
        };
        let text = std::fs::read_to_string(POSSIBLE).map_err(err)?;
        let max = highest_cpu(&text).ok_or_else(|| {
            err(io::Error::other(format!(
                "unreadable list {:?}",
                text.trim()
            )))
        })?;
        Self::new(capacity, max)
    }

    /// `COUNT_SLOT_MASK`.
    pub fn mask(&self) -> u32 {
        self.positions - 1
    }

    /// `COUNT_SLOT_BITS`.
    pub fn bits(&self) -> u32 {
        self.positions.trailing_zeros()
    }

    /// The map's entries, if they fit its `u32` index and a mapping's size.
    pub fn entries(&self) -> Option<u32> {
        let n = self.regions.checked_mul(self.positions)?;
        let bytes = u64::from(n) * size_of::<CountSlot>() as u64;
        (bytes < u64::from(u32::MAX)).then_some(n)
    }
}

/// The highest CPU of a kernel CPU list (`0-3,8-11`).
fn highest_cpu(list: &str) -> Option<u32> {
    let last = list.trim().rsplit(',').next()?;
    last.rsplit('-').next()?.parse().ok()
}

/// What one read of the table found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Read {
    /// Calls per (cgroup, syscall), summed over CPUs.
    pub calls: HashMap<(u64, u32), u64>,
    /// Keys in the fullest CPU region, those of the cgroups being retired left out (what the
    /// capacity is about).
    pub fullest: usize,
}

/// The table, mapped.
pub struct Counts {
    /// Keeps the map alive (the mapping holds it too).
    _map: MapData,
    base: NonNull<CountSlot>,
    len_bytes: usize,
    layout: CountLayout,
}

// SAFETY: the mapping is owned by this value alone; access to the shared memory is through
// atomics (see `Region`).
unsafe impl Send for Counts {}

impl Counts {
    /// Maps `map`, which the loader sized by `layout`.
    pub fn open(map: MapData, layout: CountLayout) -> io::Result<Self> {
        let entries = layout
            .entries()
            .ok_or_else(|| io::Error::other("table too large"))?;
        let max = map
            .info()
            .map_err(|e| io::Error::other(e.to_string()))?
            .max_entries();
        if max != entries {
            return Err(io::Error::other(format!(
                "the map has {max} entries, the layout {entries}"
            )));
        }
        let len_bytes = entries as usize * size_of::<CountSlot>();
        let fd = map.fd().as_fd();
        // SAFETY: a shared mapping of the map's value area (mmap-able arrays map it from offset
        // 0); the kernel checks the length against the map. The mapping lives until `drop`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            _map: map,
            base: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len_bytes,
            layout,
        })
    }

    fn region(&self) -> Region {
        Region {
            base: self.base.as_ptr(),
            len: self.len_bytes / size_of::<CountSlot>(),
            positions: self.layout.positions as usize,
        }
    }

    /// Every key's calls, summed over CPUs; `retiring` only matters to [`Read::fullest`].
    pub fn read(&self, retiring: &HashSet<u64>) -> Read {
        self.region().read(retiring)
    }

    /// Frees the positions of the cgroups in `dead` (read them first: their counts go).
    pub fn retire(&self, dead: &HashSet<u64>) {
        self.region().retire(dead)
    }
}

impl Drop for Counts {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len_bytes) };
    }
}

/// The table's memory: `len` slots, regions of `positions`. The kernel writes it concurrently:
/// every access is an atomic one of the slot's fields.
struct Region {
    base: *mut CountSlot,
    len: usize,
    positions: usize,
}

impl Region {
    fn id(&self, i: usize) -> &AtomicU64 {
        // SAFETY: i < len; `cgroup_id` is an aligned u64 of slot i, shared with the kernel.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.base.add(i)).cgroup_id) }
    }

    fn nr(&self, i: usize) -> u32 {
        // SAFETY: as in `id`.
        unsafe { AtomicU32::from_ptr(&raw mut (*self.base.add(i)).nr) }.load(Ordering::Relaxed)
    }

    fn calls(&self, i: usize) -> u64 {
        // SAFETY: as in `id`.
        unsafe { AtomicU64::from_ptr(&raw mut (*self.base.add(i)).calls) }.load(Ordering::Relaxed)
    }

    fn read(&self, retiring: &HashSet<u64>) -> Read {
        let mut out = Read::default();
        for start in (0..self.len).step_by(self.positions.max(1)) {
            let mut keys = 0;
            for i in start..(start + self.positions).min(self.len) {
                // Acquire: the kernel writes a new key's number and count before its id.
                let id = self.id(i).load(Ordering::Acquire);
                if id == COUNT_EMPTY || id == COUNT_RETIRED {
                    continue;
                }
                if !retiring.contains(&id) {
                    keys += 1;
                }
                *out.calls.entry((id, self.nr(i))).or_default() += self.calls(i);
            }
            out.fullest = out.fullest.max(keys);
        }
        out
    }

    fn retire(&self, dead: &HashSet<u64>) {
        if dead.is_empty() {
            return;
        }
        for i in 0..self.len {
            let id = self.id(i);
            if dead.contains(&id.load(Ordering::Relaxed)) {
                id.store(COUNT_RETIRED, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use palisade_common::count_home;

    use super::*;

    /// The kernel's `count_call`, on CPU `cpu` of a table in memory.
    fn count_call(t: &mut [CountSlot], positions: u32, cpu: u32, cgroup_id: u64, nr: u32) -> bool {
        let len = t.len() as u32;
        let p = t.as_mut_ptr();
        palisade_common::count_call(
            // SAFETY: in bounds.
            |at| (at < len).then(|| unsafe { p.add(at as usize) }),
            cpu * positions,
            positions - 1,
            cgroup_id,
            nr,
        )
    }

    fn region(t: &mut [CountSlot], positions: u32) -> Region {
        Region {
            base: t.as_mut_ptr(),
            len: t.len(),
            positions: positions as usize,
        }
    }

    #[test]
    fn counts_are_summed_over_cpus_and_the_fullest_region_is_reported() {
        let positions = 16;
        let mut t = vec![CountSlot::default(); 2 * positions as usize];
        for _ in 0..5 {
            assert!(count_call(&mut t, positions, 0, 100, 39));
        }
        for _ in 0..3 {
            assert!(count_call(&mut t, positions, 1, 100, 39));
        }
        assert!(count_call(&mut t, positions, 1, 100, 0));
        assert!(count_call(&mut t, positions, 1, 200, 39));
        let r = region(&mut t, positions).read(&HashSet::new());
        assert_eq!(r.calls.get(&(100, 39)), Some(&8));
        assert_eq!(r.calls.get(&(100, 0)), Some(&1));
        assert_eq!(r.calls.get(&(200, 39)), Some(&1));
        assert_eq!(r.calls.len(), 3);
        assert_eq!(r.fullest, 3);
        let r = region(&mut t, positions).read(&HashSet::from([200]));
        assert_eq!(
            r.calls.get(&(200, 39)),
            Some(&1),
            "a retiring cgroup's final count"
        );
        assert_eq!(r.fullest, 2);
    }

    #[test]
    fn a_full_region_refuses_new_keys_and_retired_positions_are_reused() {
        let positions = 16;
        let mut t = vec![CountSlot::default(); positions as usize];
        for cg in 1..=16 {
            assert!(count_call(&mut t, positions, 0, cg, 1), "key {cg} of 16");
        }
        assert!(
            !count_call(&mut t, positions, 0, 17, 1),
            "a 17th key has no room"
        );
        // the kept keys still count
        assert!(count_call(&mut t, positions, 0, 5, 1));
        region(&mut t, positions).retire(&HashSet::from([3, 9]));
        let r = region(&mut t, positions).read(&HashSet::new());
        assert_eq!(r.fullest, 14);
        assert!(!r.calls.contains_key(&(3, 1)));
        assert_eq!(r.calls.get(&(5, 1)), Some(&2));
        // two new keys take the retired positions, starting from one call
        assert!(count_call(&mut t, positions, 0, 17, 1));
        assert!(count_call(&mut t, positions, 0, 18, 1));
        assert!(!count_call(&mut t, positions, 0, 19, 1));
        let r = region(&mut t, positions).read(&HashSet::new());
        assert_eq!(r.fullest, 16);
        assert_eq!(r.calls.get(&(17, 1)), Some(&1));
        assert_eq!(r.calls.get(&(18, 1)), Some(&1));
    }

    #[test]
    fn a_key_behind_a_retired_position_is_found_not_duplicated() {
        let positions = 64;
        let mut t = vec![CountSlot::default(); positions as usize];
        // two keys with the same home: the second sits behind the first
        let home = count_home(1, 7) & (positions - 1);
        let twin = (2..100_000u64)
            .find(|cg| count_home(*cg, 7) & (positions - 1) == home)
            .expect("a key with the same home");
        assert!(count_call(&mut t, positions, 0, 1, 7));
        assert!(count_call(&mut t, positions, 0, twin, 7));
        region(&mut t, positions).retire(&HashSet::from([1]));
        for _ in 0..4 {
            assert!(count_call(&mut t, positions, 0, twin, 7));
        }
        let r = region(&mut t, positions).read(&HashSet::new());
        assert_eq!(r.calls.get(&(twin, 7)), Some(&5));
        assert_eq!(r.fullest, 1);
    }

    #[test]
    fn layouts_are_powers_of_two_and_too_large_ones_are_refused() {
        let l = CountLayout::new(10_240, 1).unwrap();
        assert_eq!(
            (l.regions, l.positions, l.mask(), l.bits()),
            (2, 16_384, 16_383, 14)
        );
        assert_eq!(l.entries(), Some(32_768));
        assert_eq!(CountLayout::new(16, 0).unwrap().positions, 16);
        assert!(CountLayout::new(1 << 24, 4095).is_err());
        assert_eq!(highest_cpu("0-1\n"), Some(1));
        assert_eq!(highest_cpu("0\n"), Some(0));
        assert_eq!(highest_cpu("0-3,8-11\n"), Some(11));
        assert_eq!(highest_cpu(""), None);
    }
}
