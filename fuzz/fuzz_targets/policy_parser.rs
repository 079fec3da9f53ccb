//! Any bytes into the policy parser: it must answer (policies or positioned errors), never
//! panic, hang or blow the stack. Valid inputs also go through the checks, the compiler and
//! the seccomp rule builder, as the agent and the launcher would use them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::{Mode, PolicySet, check, compile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policies) = palisade_policy::parse_str(text, "fuzz.yaml") else {
        return;
    };
    let set = PolicySet {
        policies,
        files: Vec::new(),
    };
    let _ = check::set_errors(&set);
    let _ = check::warnings(&set);
    let mut next = 0u16;
    let mut id = |_: &compile::RuleDesc| {
        next = next.wrapping_add(1) & 0x7fff;
        Some(next.max(1))
    };
    let all: Vec<(&palisade_policy::Policy, Mode)> =
        set.policies.iter().map(|p| (p, p.mode)).collect();
    let _ = compile::compile(&all, &mut id);
    for p in &set.policies {
        let _ = compile::seccomp_rules(p);
    }
});
