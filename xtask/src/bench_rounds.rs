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

    /// `case`'s added cost divided by `over`'s, round by round.
    pub fn ratios(&self, mode: &str, case: &str, over: &str) -> Vec<f64> {
        let a = self.added(mode, case);
        let o = self.added(mode, over);
        a.iter()
            .filter_map(|(rep, v)| o.get(rep).map(|d| v / d))
            .collect()
    }

    /// Median over rounds of `case`'s added cost divided by `over`'s in the same round.
    pub fn ratio(&self, mode: &str, case: &str, over: &str) -> f64 {
        median(&mut self.ratios(mode, case, over))
    }

    /// [`Self::ratio`] with the spread of the per-round ratios: "median (q1-q3)".
    pub fn ratio_spread(&self, mode: &str, case: &str, over: &str) -> String {
        let mut r = self.ratios(mode, case, over);
        let (q1, q3) = quartiles(&mut r);
        format!("{:.2} ({q1:.2}-{q3:.2})", median(&mut r))
    }
}

/// Reads the script's TSV (`rep case mode ns_per_call`).
pub fn read_rounds(path: &std::path::Path) -> Result<Rounds> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(parse_rounds(&text))
}

/// The script's TSV (`rep case mode ns_per_call`, one header line); lines that are not a
/// measurement are skipped.
pub fn parse_rounds(text: &str) -> Rounds {
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
    Rounds(by)
}

/// First and third quartiles (medians of the lower and upper halves; the middle value of an
/// odd count belongs to neither), NaN for fewer than two values.
pub fn quartiles(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n < 2 {
        return (f64::NAN, f64::NAN);
    }
    let half = n / 2;
    (median(&mut v[..half]), median(&mut v[n - half..]))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_are_the_medians_of_the_halves() {
        assert_eq!(quartiles(&mut [4.0, 1.0, 3.0, 2.0]), (1.5, 3.5));
        // the middle value of an odd count is in neither half
        assert_eq!(quartiles(&mut [5.0, 1.0, 3.0, 2.0, 4.0]), (1.5, 4.5));
        assert!(quartiles(&mut [1.0]).0.is_nan());
    }

    #[test]
    fn ratios_are_paired_by_round() {
        let tsv = "rep\tcase\tmode\tns_per_call\n\
                   1\tbase\tgetppid\t100\n1\tfloor\tgetppid\t120\n1\tagent\tgetppid\t140\n\
                   2\tbase\tgetppid\t200\n2\tfloor\tgetppid\t210\n2\tagent\tgetppid\t230\n\
                   3\tbase\tgetppid\t100\n3\tfloor\tgetppid\t140\n";
        let r = parse_rounds(tsv);
        // round 1: 40/20, round 2: 30/10; round 3 has no agent
        assert_eq!(r.ratios("getppid", "agent", "floor"), vec![2.0, 3.0]);
        assert_eq!(r.ratio("getppid", "agent", "floor"), 2.5);
        assert_eq!(
            r.ratio_spread("getppid", "agent", "floor"),
            "2.50 (2.00-3.00)"
        );
    }
}
