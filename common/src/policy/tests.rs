//! Host tests of the shared policy logic (the eBPF programs run the same code).
use super::*;

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut x = [0; 16];
    x[..4].copy_from_slice(&a);
    x
}

fn rule(addr: [u8; 4], prefix: u8, ports: (u16, u16), proto: u8, act: u32, id: u32) -> NetRule {
    NetRule {
        addr: v4(addr),
        family: 2,
        prefix,
        proto,
        port_lo: ports.0,
        port_hi: ports.1,
        action: act,
        rule: id,
    }
}

#[test]
fn first_matching_rule_decides() {
    let mut s = NetRuleSet::EMPTY;
    s.default_action = action::DENY;
    s.default_rule = 9;
    s.rules[0] = rule([10, 1, 0, 0], 16, (22, 22), 6, action::DENY, 1);
    s.rules[1] = rule([10, 0, 0, 0], 8, (1, 65535), 0, action::ALLOW, 2);
    s.count = 2;
    assert_eq!(s.evaluate(2, &v4([10, 1, 2, 3]), 22, 6), (action::DENY, 1));
    assert_eq!(
        s.evaluate(2, &v4([10, 1, 2, 3]), 22, 17),
        (action::ALLOW, 2)
    );
    assert_eq!(s.evaluate(2, &v4([10, 2, 2, 3]), 22, 6), (action::ALLOW, 2));
    assert_eq!(s.evaluate(2, &v4([11, 0, 0, 1]), 80, 6), (action::DENY, 9));
    // IPv6 never matches an IPv4 rule
    assert_eq!(s.evaluate(10, &[0; 16], 22, 6), (action::DENY, 9));
    // odd prefixes
    let r = rule([192, 168, 128, 0], 17, (0, 65535), 0, action::DENY, 3);
    assert!(r.matches_addr(2, &v4([192, 168, 200, 1])));
    assert!(!r.matches_addr(2, &v4([192, 168, 127, 1])));
    let any = NetRule { family: 0, ..r };
    assert!(any.matches_addr(10, &[0xfe; 16]));
}

#[test]
fn bind_is_allowed_when_some_source_may_connect() {
    let mut s = NetRuleSet::EMPTY;
    s.default_action = action::DENY;
    s.default_rule = 7;
    s.rules[0] = rule([10, 0, 0, 0], 8, (22, 22), 6, action::DENY, 1);
    s.rules[1] = rule([0; 4], 0, (8080, 8080), 6, action::ALLOW, 2);
    s.rules[2] = rule([0; 4], 0, (9000, 9000), 0, action::DENY, 3);
    s.rules[3] = rule([10, 0, 0, 0], 8, (9001, 9001), 0, action::ALLOW, 4);
    s.count = 4;
    assert_eq!(
        s.bind_verdict(22, 6),
        (action::DENY, 7),
        "partial deny, default"
    );
    assert_eq!(s.bind_verdict(8080, 6), (action::ALLOW, 2));
    assert_eq!(s.bind_verdict(9000, 6), (action::DENY, 3));
    assert_eq!(s.bind_verdict(9001, 17), (action::ALLOW, 4));
}

#[test]
fn rate_limit_windows() {
    let mut s = ViolationState::default();
    let burst = 3;
    let mut sent = 0;
    for i in 0..10u64 {
        if admit(&mut s, 1000 + i, burst, 100) {
            sent += 1;
        }
    }
    assert_eq!(sent, 3);
    assert!(admit(&mut s, 1100, burst, 100), "a new window");
    assert!(admit(&mut s, 1101, burst, 100));
}

#[test]
fn actions_taken() {
    let mut r = RuleInfo::EMPTY;
    r.action = action::KILL;
    r.mode = mode::ENFORCE;
    assert_eq!(r.taken_runtime(), taken::KILL);
    r.mode = mode::AUDIT;
    assert_eq!(r.taken_runtime(), taken::WOULD_BLOCK);
    r.action = action::LOG;
    assert_eq!(r.taken_runtime(), taken::LOG);
    r.mode = mode::ENFORCE;
    r.action = action::ERRNO;
    assert_eq!(r.taken_runtime(), taken::LOG, "no errno from a tracepoint");
    assert_eq!(
        r.taken_network(action::DENY, taken::ERRNO),
        Some(taken::ERRNO)
    );
    assert_eq!(r.taken_network(action::ALLOW, taken::ERRNO), None);
    r.mode = mode::AUDIT;
    assert_eq!(
        r.taken_network(action::DENY, taken::DROP),
        Some(taken::WOULD_BLOCK)
    );
    assert_eq!(taken::name(taken::WOULD_BLOCK), "would_block");
}

#[test]
fn exec_lookup_keys() {
    let mut keys = [(0u32, 0u64); 8];
    let mut n = 0;
    exec_lookups(b"/usr/bin/nc", |k, h| {
        keys[n] = (k, h);
        n += 1;
    });
    assert_eq!(n, 6);
    assert_eq!(keys[0], (exec_kind::TREE, fnv(b"")));
    assert_eq!(keys[1], (exec_kind::TREE, fnv(b"/usr")));
    assert_eq!(keys[2], (exec_kind::TREE, fnv(b"/usr/bin")));
    assert_eq!(keys[3], (exec_kind::EXACT, fnv(b"/usr/bin/nc")));
    assert_eq!(keys[4], (exec_kind::DIR, fnv(b"/usr/bin")));
    assert_eq!(keys[5], (exec_kind::BASENAME, fnv(b"nc")));
}

#[test]
fn argument_rules() {
    let cond = |index, op, value, value_two| ArgCond {
        index,
        op,
        value,
        value_two,
    };
    let mut r = ArgRule {
        alts: 2,
        ..ArgRule::default()
    };
    r.alt[0] = ArgAlt {
        rule: 5,
        count: 2,
        conds: [
            cond(0, arg_op::MASKED_EQ, 0x10, 0x10),
            cond(1, arg_op::GT, 7, 0),
            ArgCond::default(),
            ArgCond::default(),
            ArgCond::default(),
            ArgCond::default(),
        ],
    };
    r.alt[1].rule = 6;
    r.alt[1].count = 1;
    r.alt[1].conds[0] = cond(5, arg_op::EQ, 42, 0);
    assert_eq!(r.violated(&[0x11, 8, 0, 0, 0, 0], 1), Some(5));
    assert_eq!(
        r.violated(&[0x11, 7, 0, 0, 0, 0], 1),
        None,
        "both must hold"
    );
    assert_eq!(r.violated(&[0, 0, 0, 0, 0, 42], 1), Some(6));
    r.match_allows = 1;
    assert_eq!(r.violated(&[0x11, 8, 0, 0, 0, 0], 1), None, "allowed");
    assert_eq!(r.violated(&[0, 0, 0, 0, 0, 0], 1), Some(1));
    for (op, a, b, want) in [
        (arg_op::NE, 1, 2, true),
        (arg_op::LT, 1, 2, true),
        (arg_op::LE, 2, 2, true),
        (arg_op::GE, 1, 2, false),
        (arg_op::EQ, u64::MAX, u64::MAX, true),
    ] {
        assert_eq!(cond(0, op, b, 0).holds(&[a, 0, 0, 0, 0, 0]), want, "{op}");
    }
    assert!(!cond(9, arg_op::EQ, 0, 0).holds(&[0; 6]));
}

#[test]
fn exec_actions_with_and_without_lsm() {
    let mut r = RuleInfo::EMPTY;
    r.mode = mode::ENFORCE;
    r.action = action::ERRNO;
    // with BPF-LSM the exec program leaves `errno` rules to bprm_check_security
    assert_eq!(r.taken_exec(true), None);
    assert_eq!(r.taken_exec_lsm(), Some(taken::ERRNO));
    // without it they kill before the first instruction
    assert_eq!(r.taken_exec(false), Some(taken::KILL));
    r.mode = mode::AUDIT;
    assert_eq!(r.taken_exec(true), None);
    assert_eq!(r.taken_exec_lsm(), Some(taken::WOULD_BLOCK));
    assert_eq!(r.taken_exec(false), Some(taken::WOULD_BLOCK));
    for a in [action::KILL, action::LOG] {
        r.action = a;
        assert_eq!(r.taken_exec_lsm(), None, "action {a}");
        assert_eq!(r.taken_exec(true), r.taken_exec(false));
    }
    r.mode = mode::ENFORCE;
    r.action = action::KILL;
    assert_eq!(r.taken_exec(true), Some(taken::KILL));
    r.action = action::LOG;
    assert_eq!(r.taken_exec(true), Some(taken::LOG));
}

#[test]
fn lsm_calls_and_the_covered_set_agree() {
    for nr in 0..MAX_SYSCALLS as u64 {
        assert_eq!(
            lsm_covered(nr),
            LSM_CALLS.iter().any(|c| u64::from(c.nr) == nr),
            "nr {nr}"
        );
    }
    assert!(LSM_CALLS.windows(2).all(|w| w[0].nr < w[1].nr));
    for nr in [272, 308] {
        assert!(lsm_by_capable(nr) && lsm_covered(nr));
    }
}
