//! Kernel log2 latency buckets → Prometheus cumulative buckets.
//!
//! Kernel bucket `i` has the inclusive upper bound `2^(HIST_BASE_SHIFT+i)` ns (the last one is
//! the overflow), the same "≤ le" rule Prometheus uses, so every exported bound is exact: its
//! cumulative count is the sum of the kernel buckets up to and including it.
use palisade_common::{HIST_BUCKETS, bucket_upper_bound_ns};

/// A Prometheus histogram: `(le in seconds, cumulative count)` pairs without `+Inf`, the total
/// count (the `+Inf` bucket) and the sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct PromHistogram {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

/// Converts kernel buckets, exporting every `step`-th bound (1 = all 29 finite bounds).
pub fn convert(hist: &[u64; HIST_BUCKETS], time_ns: u64, step: u32) -> PromHistogram {
    let step = step.max(1) as usize;
    let mut buckets = Vec::with_capacity(HIST_BUCKETS / step + 1);
    let mut cumulative = 0u64;
    for (i, n) in hist.iter().enumerate() {
        cumulative += n;
        if let Some(le_ns) = bucket_upper_bound_ns(i)
            && i % step == 0
        {
            buckets.push((le_ns as f64 / 1e9, cumulative));
        }
    }
    PromHistogram {
        buckets,
        count: cumulative,
        sum_seconds: time_ns as f64 / 1e9,
    }
}

/// Number of exposition lines one histogram takes (buckets + `+Inf` + `_sum` + `_count`).
pub fn series_per_histogram(step: u32) -> usize {
    exported_bounds(step) + 3
}

/// Number of finite bounds exported with `step`.
pub fn exported_bounds(step: u32) -> usize {
    let step = step.max(1) as usize;
    (0..HIST_BUCKETS - 1).filter(|i| i % step == 0).count()
}

#[cfg(test)]
mod tests {
    use palisade_common::latency_bucket;

    use super::*;

    fn hist_of(latencies: &[u64]) -> ([u64; HIST_BUCKETS], u64) {
        let mut h = [0u64; HIST_BUCKETS];
        let mut sum = 0;
        for &ns in latencies {
            h[latency_bucket(ns)] += 1;
            sum += ns;
        }
        (h, sum)
    }

    #[test]
    fn full_resolution_is_exact_at_every_bound() {
        let lat = [
            50,
            128,
            129,
            300,
            1_000,
            4_096,
            4_097,
            1_000_000,
            40_000_000_000,
        ];
        let (h, sum) = hist_of(&lat);
        let p = convert(&h, sum, 1);
        assert_eq!(p.buckets.len(), 29);
        assert_eq!(p.count, lat.len() as u64);
        assert!((p.sum_seconds - sum as f64 / 1e9).abs() < 1e-12);
        for (le, cum) in &p.buckets {
            let expect = lat
                .iter()
                .filter(|&&ns| (ns as f64) <= le * 1e9 + 1e-3)
                .count() as u64;
            assert_eq!(*cum, expect, "le={le}");
        }
        assert_eq!(p.buckets[0], (128e-9, 2));
        // 34.4 s bound holds everything but the 40 s call, which only +Inf counts
        assert_eq!(p.buckets.last().unwrap().1, lat.len() as u64 - 1);
    }

    #[test]
    fn coarse_steps_keep_exact_cumulative_counts() {
        let lat = [100, 200, 600, 3_000, 3_000_000];
        let (h, sum) = hist_of(&lat);
        let full = convert(&h, sum, 1);
        for step in 1..=4 {
            let p = convert(&h, sum, step);
            assert_eq!(p.buckets.len(), exported_bounds(step));
            assert_eq!(p.count, 5);
            for (le, cum) in &p.buckets {
                let same = full.buckets.iter().find(|(l, _)| l == le).unwrap();
                assert_eq!(*cum, same.1, "step {step} le {le}");
            }
            // cumulative counts never decrease
            assert!(
                p.buckets
                    .windows(2)
                    .all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0)
            );
        }
        assert_eq!(exported_bounds(2), 15);
        assert_eq!(series_per_histogram(2), 18);
        let p = convert(&h, sum, 2);
        assert_eq!(p.buckets[1].0, 512e-9);
    }

    #[test]
    fn empty_histogram() {
        let p = convert(&[0; HIST_BUCKETS], 0, 2);
        assert_eq!(p.count, 0);
        assert!(p.buckets.iter().all(|(_, c)| *c == 0));
    }
}
