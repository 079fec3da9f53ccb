//! Host tests of the shared policy logic (the eBPF programs run the same code).
extern crate std;

use std::{vec, vec::Vec};

use super::*;

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut x = [0; 16];
    x[..4].copy_from_slice(&a);
    x
}

fn rule(addr: [u8; 4], prefix: u8, ports: (u16, u16), proto: u8, act: u32, id: u32) -> NetRule {
    NetRule {
        addr: v4(addr),
        mask: prefix_mask(prefix),
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
    assert_eq!(prefix_mask(17)[..4], [255, 255, 128, 0]);
    assert_eq!(prefix_mask(128), [255; 16]);
    assert_eq!(prefix_mask(0), [0; 16]);
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
    assert_eq!(
        r.taken_runtime(),
        taken::KILL,
        "no errno from a tracepoint: killed after the fact"
    );
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
    // in audit mode the exec program reports them (bprm_check_security sees a script twice)
    r.mode = mode::AUDIT;
    assert_eq!(r.taken_exec(true), Some(taken::WOULD_BLOCK));
    assert_eq!(r.taken_exec_lsm(), None);
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

#[test]
fn socket_kinds_need_a_rule_naming_them() {
    let mut s = NetRuleSet::EMPTY;
    assert_eq!(
        s.socket_verdict(kind::RAW, kind::RAW),
        (action::ALLOW, 0),
        "no egress rules: nothing to refuse"
    );
    s.kind_rule = 8;
    s.default_action = action::ALLOW;
    s.rules[0] = rule([0; 4], 0, (0, 65535), 0, action::ALLOW, 1);
    s.count = 1;
    assert_eq!(
        s.socket_verdict(kind::ICMP, kind::RAW),
        (action::DENY, 8),
        "an allow-everything rule does not name a socket kind"
    );
    s.rules[1] = NetRule {
        family: 0,
        proto: kind::ICMP,
        action: action::ALLOW,
        rule: 2,
        ..NetRule::default()
    };
    s.count = 2;
    assert_eq!(s.socket_verdict(kind::ICMP, kind::ICMP), (action::ALLOW, 2));
    assert_eq!(
        s.socket_verdict(kind::ICMP, kind::RAW),
        (action::ALLOW, 2),
        "a raw ICMP socket"
    );
    assert_eq!(s.socket_verdict(kind::RAW, kind::RAW), (action::DENY, 8));
    assert_eq!(
        s.socket_verdict(kind::PACKET, kind::PACKET),
        (action::DENY, 8)
    );
    // a kind rule never matches a connection
    assert_eq!(s.evaluate(2, &v4([1, 2, 3, 4]), 80, 6), (action::ALLOW, 1));
}

#[test]
fn any_deny_wins_whatever_the_order() {
    let log = Some((taken::LOG, 1));
    let audit = Some((taken::WOULD_BLOCK, 2));
    let deny = Some((taken::ERRNO, 3));
    assert_eq!(strongest(None, None), None);
    assert_eq!(strongest(audit, deny), deny);
    assert_eq!(strongest(deny, audit), deny);
    assert_eq!(strongest(log, audit), audit);
    assert_eq!(
        strongest(deny, Some((taken::ERRNO, 9))),
        deny,
        "first among equals"
    );
    assert_eq!(strongest(None, log), log);
}

/// An IPv6 packet's bytes after the fixed header: `headers` (next header, payload bytes).
fn ext_chain(headers: &[(u8, usize)]) -> Vec<u8> {
    let mut p = vec![0u8; 40];
    for (next, len) in headers {
        let mut h = vec![0u8; *len];
        h[0] = *next;
        h[1] = (*len / 8 - 1) as u8;
        p.extend(h);
    }
    p
}

fn walk(first: u8, p: &[u8]) -> Transport {
    ipv6_transport(first, |off| {
        let o = off as usize;
        p.get(o..o + 4).map(|b| [b[0], b[1], b[2], b[3]])
    })
}

#[test]
fn ipv6_extension_headers_are_walked_to_tcp() {
    use ipv6_next::*;
    assert_eq!(walk(TCP, &[0; 40]), Transport::Tcp(40));
    assert_eq!(walk(17, &[0; 40]), Transport::Other);
    let p = ext_chain(&[(DESTINATION, 8), (TCP, 16)]);
    assert_eq!(walk(HOP_BY_HOP, &p), Transport::Tcp(40 + 8 + 16));
    let p = ext_chain(&[(TCP, 24)]);
    assert_eq!(walk(ROUTING, &p), Transport::Tcp(64));
    // AH counts 4-byte words, plus 2
    let mut p = vec![0u8; 40];
    p.extend([
        TCP, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    assert_eq!(walk(AH, &p), Transport::Tcp(40 + 24));
    // a first fragment is walked over, a later one cannot be parsed
    let mut p = vec![0u8; 40];
    p.extend([TCP, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(walk(FRAGMENT, &p), Transport::Tcp(48));
    let mut p = vec![0u8; 40];
    p.extend([TCP, 0, 0, 8, 0, 0, 0, 1]);
    assert_eq!(walk(FRAGMENT, &p), Transport::Unparsed);
    assert_eq!(walk(ESP, &[0; 48]), Transport::Unparsed);
    // truncated
    assert_eq!(walk(DESTINATION, &[0; 42]), Transport::Unparsed);
    // as many headers as the bound, then TCP: parsed; one more: not
    let chain = |n: usize| {
        let mut h: Vec<(u8, usize)> = (1..n).map(|_| (DESTINATION, 8)).collect();
        h.push((TCP, 8));
        ext_chain(&h)
    };
    assert_eq!(
        walk(DESTINATION, &chain(MAX_EXT_HEADERS)),
        Transport::Tcp(40 + 8 * MAX_EXT_HEADERS as u32)
    );
    assert_eq!(
        walk(DESTINATION, &chain(MAX_EXT_HEADERS + 1)),
        Transport::Unparsed
    );
    assert_eq!(walk(59, &[0; 40]), Transport::Other, "no next header");
}
