//! `bench/syscall_overhead.sh`'s rounds (raw TSV) and their medians and paired ratios: shared by
//! `bench syscalls` on this host and in the VMs.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result};

/// ns per call of `bench/syscall_overhead.sh`'s raw output, by (mode, case), then round.
pub struct Rounds(BTreeMap<(String, String), BTreeMap<String, f64>>);

impl Rounds {
    /// ns per call of `case` in `mode`, by round.
    pub fn series(&self, mode: &str, case: &str) -> BTreeMap<String, f64> {
        self.0
            .get(&(mode.to_owned(), case.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// `case`'s cost over `base` in each round.
    pub fn added(&self, mode: &str, case: &str) -> BTreeMap<String, f64> {
        let base = self.series(mode, "base");
        self.series(mode, case)
            .into_iter()
            .filter_map(|(rep, v)| base.get(&rep).map(|b| (rep, v - b)))
            .collect()
    }

    /// Median over rounds of `case`'s added cost divided by `over`'s in the same round.
    pub fn ratio(&self, mode: &str, case: &str, over: &str) -> f64 {
        let a = self.added(mode, case);
        let o = self.added(mode, over);
        median(
            &mut a
                .iter()
                .filter_map(|(rep, v)| o.get(rep).map(|d| v / d))
                .collect::<Vec<_>>(),
        )
    }
}

/// Reads the script's TSV (`rep case mode ns_per_call`).
pub fn read_rounds(path: &std::path::Path) -> Result<Rounds> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut by: BTreeMap<(String, String), BTreeMap<String, f64>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if let [rep, case, mode, ns] = f.as_slice()
            && let Ok(ns) = ns.parse::<f64>()
        {
            by.entry(((*mode).to_owned(), (*case).to_owned()))
                .or_default()
                .insert((*rep).to_owned(), ns);
        }
    }
    Ok(Rounds(by))
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
