//! Syscall argument conditions checked at run time (`POLICY_ARGS`).

/// Alternatives and conditions of one syscall's argument rule.
pub const MAX_ARG_ALTS: usize = 4;
pub const MAX_ARG_CONDS: usize = 6;

/// [`ArgCond::op`] values (OCI seccomp's comparisons, on the full 64-bit register).
pub mod arg_op {
    pub const EQ: u32 = 1;
    pub const NE: u32 = 2;
    pub const LT: u32 = 3;
    pub const LE: u32 = 4;
    pub const GT: u32 = 5;
    pub const GE: u32 = 6;
    /// `(arg & value) == value_two`
    pub const MASKED_EQ: u32 = 7;
}

/// One comparison of syscall argument `index`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgCond {
    pub index: u32,
    pub op: u32,
    pub value: u64,
    pub value_two: u64,
}

impl ArgCond {
    #[inline(always)]
    pub fn holds(&self, args: &[u64; 6]) -> bool {
        let a = match self.index {
            0 => args[0],
            1 => args[1],
            2 => args[2],
            3 => args[3],
            4 => args[4],
            5 => args[5],
            _ => return false,
        };
        match self.op {
            arg_op::EQ => a == self.value,
            arg_op::NE => a != self.value,
            arg_op::LT => a < self.value,
            arg_op::LE => a <= self.value,
            arg_op::GT => a > self.value,
            arg_op::GE => a >= self.value,
            arg_op::MASKED_EQ => a & self.value == self.value_two,
            _ => false,
        }
    }
}

/// One alternative: all its conditions must hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgAlt {
    /// The rule reported when this alternative denies (deny-lists).
    pub rule: u32,
    pub count: u32,
    pub conds: [ArgCond; MAX_ARG_CONDS],
}

/// Key of `POLICY_ARGS`: one syscall of one slot whose verdict is conditional.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ArgKey {
    pub slot: u32,
    pub nr: u32,
}

/// Value of `POLICY_ARGS`: the run-time check of a conditional verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArgRule {
    pub alts: u32,
    /// 1 (allow-list): a matching alternative allows the call, none matching is a violation
    /// of the verdict's rule. 0 (deny-list): a matching alternative is a violation of its rule.
    pub match_allows: u32,
    pub alt: [ArgAlt; MAX_ARG_ALTS],
}

impl ArgRule {
    /// The rule a call with `args` violates, if any (`default_rule`: the verdict's).
    #[inline(always)]
    pub fn violated(&self, args: &[u64; 6], default_rule: u32) -> Option<u32> {
        let n = self.alts as usize;
        for i in 0..MAX_ARG_ALTS {
            if i >= n {
                break;
            }
            let alt = &self.alt[i];
            let c = alt.count as usize;
            let mut all = true;
            for j in 0..MAX_ARG_CONDS {
                if j >= c {
                    break;
                }
                if !alt.conds[j].holds(args) {
                    all = false;
                    break;
                }
            }
            if all {
                return if self.match_allows == 1 {
                    None
                } else {
                    Some(alt.rule)
                };
            }
        }
        if self.match_allows == 1 {
            Some(default_rule)
        } else {
            None
        }
    }
}
