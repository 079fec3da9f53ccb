//! Parser, checks, selectors and compiler.
use std::collections::HashMap;

use palisade_common::policy::{
    NetRuleSet, VERDICT_CONDITIONAL, VERDICT_RULE, action, cgroup_flags, kind, strongest,
};

use crate::{
    check,
    compile::{self, RuleDesc},
    learn,
    model::{ExecKind, ListKind, Mode, NetAction, SysAction, Target},
    parse::{self, exec_pattern, parse_cidr},
};

const HEAD: &str = "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: t\nspec:\n  selector:\n    workload: w\n";

fn parse(text: &str) -> Result<Vec<crate::Policy>, Vec<String>> {
    parse::parse_str(text, "p.yaml").map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

fn one(body: &str) -> crate::Policy {
    let mut v = parse(&format!("{HEAD}{body}")).unwrap_or_else(|e| panic!("{e:?}"));
    v.remove(0)
}

fn err(body: &str) -> String {
    let e = parse(&format!("{HEAD}{body}")).expect_err("should be rejected");
    e.join("\n")
}

#[test]
fn the_examples_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let set = crate::load_paths(&[dir]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.policies.len(), 4);
    let web = set.get("web").unwrap();
    assert_eq!(web.mode, Mode::Enforce);
    let s = web.syscalls.as_ref().unwrap();
    assert_eq!(s.list, ListKind::Deny);
    assert_eq!(s.action, SysAction::Errno(1));
    assert_eq!(s.entries[2].rule, "no-new-namespaces");
    assert_eq!(s.entries[2].args[0].value, 0x7e02_0000);
    let e = web.exec.as_ref().unwrap();
    assert_eq!(e.allow.as_ref().unwrap().len(), 3);
    assert_eq!(e.deny[0].kind, ExecKind::Basename);
    let eg = web.network.egress.as_ref().unwrap();
    assert_eq!(eg.default, NetAction::Deny);
    assert_eq!(eg.rules[1].ports, vec![(8080, 8080), (9000, 9100)]);
    assert_eq!(web.resources.memory, Some(256 << 20));
    assert_eq!(web.resources.cpu_quota_us, Some(50_000));
    assert_eq!(set.get("docker-audit").unwrap().mode, Mode::Audit);
}

#[test]
fn errors_point_at_the_value() {
    let e = err("  syscalls:\n    deny: [mount, mnt]\n");
    assert!(e.starts_with("p.yaml:9:"), "{e}");
    assert!(e.contains("unknown syscall `mnt`"), "{e}");
    let e = err("  syscalls:\n    deny: [mout]\n");
    assert!(e.contains("did you mean `mount`"), "{e}");
    let e = err("  mode: strict\n  exec:\n    deny: [/x]\n");
    assert!(e.starts_with("p.yaml:8:9: unknown mode `strict`"), "{e}");
    let e = err("  exec:\n    deny: [\"/usr/*/nc\"]\n");
    assert!(e.starts_with("p.yaml:9:"), "{e}");
    assert!(e.contains("supported forms"), "{e}");
    let e =
        err("  network:\n    egress:\n      rules:\n        - {action: deny, cidr: 10.0.0.1/8}\n");
    assert!(e.starts_with("p.yaml:11:"), "{e}");
    assert!(e.contains("host bits"), "{e}");
    let e =
        err("  network:\n    egress:\n      rules:\n        - {action: deny, ports: [70000]}\n");
    assert!(e.contains("out of range"), "{e}");
    // unknown keys are errors with their position
    let e = err("  syscalls:\n    deny: [mount]\n    acton: kill\n");
    assert!(e.starts_with("p.yaml:10:5:"), "{e}");
    assert!(e.contains("unknown field `acton`"), "{e}");
    let e = err("  syscalls:\n    deny: [mount]\n    action: kill\n    errno: EPERM\n");
    assert!(e.contains("`errno` goes with `action: errno`"), "{e}");
    let e = err("  syscalls:\n    allow: [read]\n    deny: [mount]\n");
    assert!(e.contains("not both"), "{e}");
    let e = err(
        "  syscalls:\n    deny:\n      - names: [unshare]\n        args: [{index: 0, op: eq, value: 1}, {index: 0, op: eq, value: 2}]\n",
    );
    assert!(e.contains("two conditions on argument 0"), "{e}");
    let e = err("  resources:\n    memory: 1M\n");
    assert!(e.contains("6 MiB"), "{e}");
    // several errors at once
    let e = err("  mode: x\n  syscalls:\n    deny: [nope]\n");
    assert_eq!(e.lines().count(), 2, "{e}");
}

#[test]
fn documents_need_version_kind_selector_and_rules() {
    let e = parse("apiVersion: palisade.dev/v2\nkind: Policy\nmetadata: {name: a}\nspec: {selector: {workload: x}, exec: {deny: [/x]}}\n").unwrap_err();
    assert!(
        e[0].starts_with("p.yaml:1:13: unsupported apiVersion"),
        "{e:?}"
    );
    let e = parse("apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: a}\nspec: {selector: {}, exec: {deny: [/x]}}\n").unwrap_err();
    assert!(e[0].contains("empty selector"), "{e:?}");
    let e = parse("apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: a}\nspec: {selector: {pod: x}}\n").unwrap_err();
    assert!(e[0].contains("no rules"), "{e:?}");
    let e = parse("").unwrap_err();
    assert!(e[0].contains("no policy"), "{e:?}");
    let e = parse("- not a mapping\n").unwrap_err();
    assert!(e[0].starts_with("p.yaml:1:"), "{e:?}");
}

#[test]
fn conflicts_are_explained() {
    let text = format!(
        "{HEAD}  network:\n    egress:\n      rules:\n        - {{action: deny, cidr: 10.0.0.0/8}}\n        - {{action: allow, cidr: 10.1.0.0/16, ports: [80]}}\n  exec:\n    allow: [/bin/*]\n    deny: [/bin/*]\n---\n{}",
        HEAD.replace("name: t", "name: u") + "  exec:\n    allow: [/usr/bin/*]\n"
    );
    let set = crate::PolicySet {
        policies: parse(&text).unwrap(),
        files: vec![],
    };
    let w: Vec<String> = check::warnings(&set)
        .iter()
        .map(ToString::to_string)
        .collect();
    let all = w.join("\n");
    assert!(
        all.contains("rule `network.egress[1]` (allow) never applies: `network.egress[0]`"),
        "{all}"
    );
    assert!(all.contains("both allowed"), "{all}");
    assert!(all.contains("both have an exec allow-list"), "{all}");
    // duplicate names are errors
    let dup = format!("{HEAD}  exec:\n    deny: [/x]\n---\n{HEAD}  exec:\n    deny: [/y]\n");
    let set = crate::PolicySet {
        policies: parse(&dup).unwrap(),
        files: vec![],
    };
    let e = check::set_errors(&set);
    assert_eq!(e.len(), 1);
    assert!(e[0].to_string().starts_with("p.yaml:"), "{}", e[0]);
}

#[test]
fn selectors_combine_with_and() {
    let p = one("    runtime: palisade\n  exec:\n    deny: [/x]\n");
    let mut t = Target {
        name: "w",
        runtime: "palisade",
        path: "/palisade/w",
        workload: true,
        ..Target::default()
    };
    assert!(p.selector.matches(&t));
    t.runtime = "docker";
    assert!(!p.selector.matches(&t));
    t.runtime = "palisade";
    t.workload = false;
    assert!(
        !p.selector.matches(&t),
        "workload: selects launcher workloads only"
    );
    let p = one("  exec:\n    deny: [/x]\n").selector.clone();
    let _ = p;
    let q = parse::parse_str(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata: {name: c}\nspec:\n  selector: {container: \"3f2a*\", cgroup: \"/docker/*\"}\n  exec: {deny: [/x]}\n",
        "c.yaml",
    )
    .unwrap();
    let t = Target {
        name: "web",
        container_id: Some("3f2a9c"),
        path: "/docker/3f2a9c",
        ..Target::default()
    };
    assert!(q[0].selector.matches(&t), "container matches the id too");
}

#[test]
fn exec_patterns_match_like_the_kernel() {
    let pat = |s: &str| {
        let (kind, key) = exec_pattern(s).unwrap();
        crate::model::ExecPattern {
            text: s.into(),
            kind,
            key,
            loc: Default::default(),
        }
    };
    assert!(pat("/usr/bin/*").matches("/usr/bin/nc"));
    assert!(!pat("/usr/bin/*").matches("/usr/bin/x/nc"));
    assert!(pat("/opt/**").matches("/opt/a/b/c"));
    assert!(!pat("/opt/**").matches("/optx/a"));
    assert!(pat("**/nc").matches("/bin/nc"));
    assert!(pat("**/nc").matches("nc"));
    assert!(!pat("**/nc").matches("/bin/ncat"));
    assert!(pat("/bin/true").matches("/bin/true"));
    assert!(exec_pattern("relative").is_err());
    assert!(exec_pattern("/a/*.sh").is_err());
    // rules match resolved paths: a pattern that is not one could never match
    for p in [
        "/usr//bin/id",
        "/usr/bin/../bin/id",
        "/./x",
        "/usr/bin/./*",
        "/a//**",
        "**/..",
        "**/.",
        "//x",
    ] {
        assert!(
            matches!(
                exec_pattern(p),
                Err(parse::ExecPatternError::NotCanonical(_))
            ),
            "{p}: {:?}",
            exec_pattern(p)
        );
    }
    // the kernel's lookups find exactly these patterns' keys
    let mut keys = Vec::new();
    palisade_common::policy::exec_lookups(b"/usr/bin/nc", |k, h| keys.push((k, h)));
    for p in ["/usr/bin/*", "/usr/**", "/**", "**/nc", "/usr/bin/nc"] {
        let x = pat(p);
        let kind = match x.kind {
            ExecKind::Exact => palisade_common::policy::exec_kind::EXACT,
            ExecKind::Dir => palisade_common::policy::exec_kind::DIR,
            ExecKind::Tree => palisade_common::policy::exec_kind::TREE,
            ExecKind::Basename => palisade_common::policy::exec_kind::BASENAME,
        };
        let h = palisade_common::policy::fnv(x.key.as_bytes());
        assert!(keys.contains(&(kind, h)), "{p}");
        assert!(x.matches("/usr/bin/nc"), "{p}");
    }
}

#[test]
fn cidrs() {
    assert_eq!(parse_cidr("any").unwrap(), None);
    assert_eq!(
        parse_cidr("10.0.0.0/8").unwrap(),
        Some(("10.0.0.0".parse().unwrap(), 8))
    );
    assert_eq!(
        parse_cidr("10.1.2.3").unwrap(),
        Some(("10.1.2.3".parse().unwrap(), 32))
    );
    assert!(parse_cidr("10.1.2.3/33").is_err());
    assert!(parse_cidr("fd00::1/8").is_err());
    assert!(parse_cidr("fd00::/8").is_ok());
}

/// An id allocator for tests: sequential, remembering descriptions.
fn ids() -> (HashMap<u16, RuleDesc>, impl FnMut(&RuleDesc) -> Option<u16>) {
    let map = HashMap::new();
    let mut next = 0u16;
    let mut known: Vec<RuleDesc> = Vec::new();
    (map, move |d: &RuleDesc| {
        if let Some(i) = known.iter().position(|k| k == d) {
            return Some(i as u16 + 1);
        }
        known.push(d.clone());
        next += 1;
        Some(next)
    })
}

#[test]
fn compiles_deny_and_allow_lists_into_verdicts() {
    let nr = |n| palisade_syscalls::number(n).unwrap() as usize;
    let p = one(
        "  syscalls:\n    action: kill\n    deny:\n      - mount\n      - {names: [unshare], args: [{index: 0, op: masked_eq, value: 1, value_two: 1}]}\n",
    );
    let (_, mut id) = ids();
    let t = compile::compile(&[(&p, Mode::Enforce)], &mut id);
    assert_eq!(t.flags, cgroup_flags::SYSCALLS);
    // id 1: the ABI rule (other ABIs are not listed)
    assert_eq!(t.verdicts.abi_rule, [1, 1]);
    assert_eq!(
        t.verdicts.unmapped_rule, 0,
        "a deny-list lets unmapped calls run"
    );
    assert_eq!(t.verdicts.rule[nr("mount")], 2);
    assert_eq!(t.verdicts.rule[nr("unshare")], 3 | VERDICT_CONDITIONAL);
    assert_eq!(t.verdicts.rule[nr("read")], 0);
    assert_eq!(
        t.verdicts.rule[nr("io_uring_setup")],
        4,
        "syscalls.io_uring"
    );
    // the run-time check of the conditional verdict
    assert_eq!(t.args.len(), 1);
    let (n, r) = &t.args[0];
    assert_eq!(*n as usize, nr("unshare"));
    assert_eq!(
        (r.alts, r.match_allows, r.alt[0].rule, r.alt[0].count),
        (1, 0, 3, 1)
    );
    assert_eq!(r.violated(&[1, 0, 0, 0, 0, 0], 0), Some(3));
    assert_eq!(r.violated(&[2, 0, 0, 0, 0, 0], 0), None);

    let a = one(
        "  syscalls:\n    allow: [read, write, {names: [ioctl], args: [{index: 1, op: eq, value: 5}]}]\n",
    );
    let (_, mut id) = ids();
    let t = compile::compile(&[(&a, Mode::Enforce)], &mut id);
    assert_eq!(t.verdicts.rule[nr("read")], 0);
    assert_eq!(t.verdicts.rule[nr("mount")] & VERDICT_RULE, 1);
    assert_eq!(t.verdicts.rule[nr("ioctl")], 1 | VERDICT_CONDITIONAL);
    assert_eq!(t.verdicts.unmapped_rule, 1, "outside the allow-list");
    let (_, r) = &t.args[0];
    assert_eq!(r.match_allows, 1);
    assert_eq!(
        r.violated(&[0, 5, 0, 0, 0, 0], 1),
        None,
        "ioctl(_, 5) allowed"
    );
    assert_eq!(r.violated(&[0, 6, 0, 0, 0, 0], 1), Some(1));

    // two policies: the stronger verdict wins (kill in enforce over audit log)
    let log = one("  mode: audit\n  syscalls:\n    action: log\n    deny: [mount, chroot]\n");
    let (_, mut id) = ids();
    let t = compile::compile(&[(&log, Mode::Audit), (&p, Mode::Enforce)], &mut id);
    let mount = t.verdicts.rule[nr("mount")];
    let chroot = t.verdicts.rule[nr("chroot")];
    assert_ne!(mount, chroot);
    // ids: 1 log's ABI rule, 2 its mount, 3 its chroot, 4 its io_uring; 5 the enforce
    // policy's ABI rule, 6 its mount, ...
    assert_eq!(
        chroot, 3,
        "only the audit policy names chroot (its second rule)"
    );
    assert_eq!(mount, 6, "the enforce policy's kill rule wins for mount");
    assert_eq!(t.verdicts.abi_rule, [5, 5], "the enforcing ABI rule wins");
}

#[test]
fn implicit_rules_for_abis_and_io_uring() {
    let nr = |n| palisade_syscalls::number(n).unwrap() as usize;
    let all = std::cell::RefCell::new(Vec::<RuleDesc>::new());
    let descs = |_: &compile::Tables, id: u16, all: &std::cell::RefCell<Vec<RuleDesc>>| {
        all.borrow()[usize::from(id) - 1].clone()
    };
    let mut id = |d: &RuleDesc| {
        let mut all = all.borrow_mut();
        if let Some(i) = all.iter().position(|k: &RuleDesc| k == d) {
            return Some(i as u16 + 1);
        }
        all.push(d.clone());
        Some(all.len() as u16)
    };
    let both = one(
        "  syscalls:\n    action: errno\n    abis: [x86_64, i386, x32]\n    deny: [mount, io_uring_enter]\n",
    );
    let t = compile::compile(&[(&both, Mode::Enforce)], &mut id);
    assert_eq!(t.verdicts.abi_rule, [0, 0], "both compat ABIs considered");
    let setup = t.verdicts.rule[nr("io_uring_setup")];
    let enter = t.verdicts.rule[nr("io_uring_enter")];
    assert_ne!(setup, 0);
    assert_ne!(setup, enter, "io_uring_enter is named: its own rule");
    let d = descs(&t, setup, &all);
    assert_eq!(d.rule, "syscalls.io_uring");
    assert_eq!(
        (d.action, d.errno),
        (action::ERRNO, 1),
        "the policy's action"
    );
    let allowed =
        one("  syscalls:\n    io_uring: allow\n    abis: [x86_64, i386]\n    deny: [mount]\n");
    let t = compile::compile(&[(&allowed, Mode::Enforce)], &mut id);
    assert_eq!(t.verdicts.rule[nr("io_uring_setup")], 0);
    assert_eq!(t.verdicts.abi_rule[0], 0);
    let x32 = t.verdicts.abi_rule[1];
    let d = descs(&t, x32, &all);
    assert_eq!((d.rule.as_str(), d.action), ("syscalls.abi", action::KILL));
    // an allow-list naming io_uring_setup lets it run; the others stay denied by the implicit
    // rule
    let list = one("  syscalls:\n    allow: [read, io_uring_setup]\n");
    let t = compile::compile(&[(&list, Mode::Enforce)], &mut id);
    assert_eq!(t.verdicts.rule[nr("io_uring_setup")], 0);
    let d = descs(&t, t.verdicts.rule[nr("io_uring_register")], &all);
    assert_eq!(d.rule, "syscalls.io_uring");
    // a log policy reports other ABIs instead of killing
    let log = one("  syscalls:\n    action: log\n    deny: [mount]\n");
    let t = compile::compile(&[(&log, Mode::Enforce)], &mut id);
    let d = descs(&t, t.verdicts.abi_rule[0], &all);
    assert_eq!(d.action, action::LOG);
    // the seccomp rules of a launched workload carry the same
    let r = compile::seccomp_rules(&both).unwrap();
    assert_eq!(r.abis.len(), 3);
    assert!(
        r.rules
            .iter()
            .any(|(n, a, _)| n == &["io_uring_setup", "io_uring_register"]
                && *a == Some(SysAction::Errno(1))),
        "{r:?}"
    );
    let r = compile::seccomp_rules(&allowed).unwrap();
    assert!(
        r.rules.iter().any(|(n, a, _)| n.len() == 3 && a.is_none()),
        "io_uring allowed explicitly: {r:?}"
    );
}

#[test]
fn compiles_exec_and_network() {
    let p = one(
        "  exec:\n    action: log\n    allow: [/bin/*]\n    deny: [/bin/nc]\n  network:\n    egress:\n      default: deny\n      rules:\n        - {action: allow, cidr: 127.0.0.1, ports: [80, \"8000-8001\"], protocol: tcp}\n",
    );
    let (_, mut id) = ids();
    let t = compile::compile(&[(&p, Mode::Enforce)], &mut id);
    assert_eq!(t.flags, cgroup_flags::EXEC | cgroup_flags::EGRESS);
    assert_eq!(t.exec_conf.allow_list, 1);
    assert_eq!(t.exec.len(), 2);
    let e = &t.egress[0];
    assert_eq!(e.count, 2, "one kernel rule per port range");
    assert_eq!(e.default_action, action::DENY);
    assert_ne!(e.kind_rule, 0, "raw sockets refused");
    assert_eq!(t.egress[1], NetRuleSet::EMPTY);
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[127, 0, 0, 1]);
    assert_eq!(e.evaluate(2, &a, 8001, 6).0, action::ALLOW);
    assert_eq!(e.evaluate(2, &a, 8002, 6).0, action::DENY);
    assert_eq!(e.evaluate(2, &a, 80, 17).0, action::DENY);
    assert_eq!(e.socket_verdict(kind::RAW, kind::RAW).0, action::DENY);
}

/// What the kernel decides for one connection: every set of the slot, strongest outcome.
fn connect_outcome(t: &compile::Tables, infos: &[RuleDesc], port: u16) -> Option<(u32, u32)> {
    let mut out = None;
    for s in &t.egress {
        let (act, id) = s.evaluate(
            2,
            &[127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port,
            6,
        );
        let taken = match infos.get((id as usize).wrapping_sub(1)) {
            Some(d) => d
                .info()
                .taken_network(act, palisade_common::policy::taken::ERRNO),
            None => None,
        };
        out = strongest(out, taken.map(|t| (t, id)));
    }
    out
}

#[test]
fn any_deny_among_the_policies_wins_whatever_their_order() {
    let deny = "  network:\n    egress:\n      rules:\n        - {action: deny, ports: [7801], protocol: tcp}\n";
    let audit = one(&format!("  mode: audit\n{deny}"));
    let enforce = one(deny);
    let open = one(
        "  network:\n    egress:\n      default: allow\n      rules:\n        - {action: allow, ports: [7801]}\n",
    );
    for order in [
        vec![(&audit, Mode::Audit), (&enforce, Mode::Enforce)],
        vec![(&enforce, Mode::Enforce), (&audit, Mode::Audit)],
        vec![(&open, Mode::Enforce), (&enforce, Mode::Enforce)],
        vec![(&enforce, Mode::Enforce), (&open, Mode::Enforce)],
    ] {
        let mut all: Vec<RuleDesc> = Vec::new();
        let mut id = |d: &RuleDesc| {
            if let Some(i) = all.iter().position(|k| k == d) {
                return Some(i as u16 + 1);
            }
            all.push(d.clone());
            Some(all.len() as u16)
        };
        let t = compile::compile(&order, &mut id);
        assert!(t.left_out.is_empty());
        let (what, _) = connect_outcome(&t, &all, 7801).unwrap_or_else(|| panic!("{all:?}"));
        assert_eq!(what, palisade_common::policy::taken::ERRNO, "{all:?}");
        assert_eq!(connect_outcome(&t, &all, 7802), None, "other ports pass");
    }
    // more policies than sets: the rest is left out, and said so
    let ps: Vec<_> = (0..5).map(|_| one(deny)).collect();
    let order: Vec<_> = ps.iter().map(|p| (p, Mode::Enforce)).collect();
    let (_, mut id) = ids();
    let t = compile::compile(&order, &mut id);
    assert_eq!(t.left_out.len(), 1);
    assert_eq!(t.left_out[0].reason, compile::Shortfall::NetworkSets);
}

#[test]
fn socket_kinds_are_egress_rules_without_addresses() {
    let p = one(
        "  network:\n    egress:\n      default: deny\n      rules:\n        - {name: ping, action: allow, protocol: icmp}\n",
    );
    let (_, mut id) = ids();
    let t = compile::compile(&[(&p, Mode::Enforce)], &mut id);
    let e = &t.egress[0];
    assert_eq!(e.socket_verdict(kind::ICMP, kind::ICMP).0, action::ALLOW);
    assert_eq!(e.socket_verdict(kind::ICMP, kind::RAW).0, action::ALLOW);
    assert_eq!(e.socket_verdict(kind::PACKET, kind::PACKET).0, action::DENY);
    let e = err(
        "  network:\n    egress:\n      rules:\n        - {action: allow, protocol: raw, ports: [1]}\n",
    );
    assert!(e.contains("give no cidr or ports"), "{e}");
    let e = err(
        "  network:\n    ingress:\n      rules:\n        - {action: allow, protocol: packet}\n",
    );
    assert!(e.contains("egress socket kinds"), "{e}");
    let e = err("  syscalls:\n    abis: [i386]\n    deny: [mount]\n");
    assert!(e.contains("must list x86_64"), "{e}");
    let e = err("  syscalls:\n    abis: [arm]\n    deny: [mount]\n");
    assert!(e.contains("unknown ABI `arm`"), "{e}");
    let e = err("  syscalls:\n    io_uring: maybe\n    deny: [mount]\n");
    assert!(e.contains("allow or deny"), "{e}");
}

#[test]
fn check_says_what_happens_instead() {
    let text = format!(
        "{HEAD}  syscalls:\n    deny: [mount]\n  network:\n    egress:\n      rules:\n        - {{action: allow, protocol: icmp}}\n"
    );
    let set = crate::PolicySet {
        policies: parse(&text).unwrap(),
        files: vec![],
    };
    let all = check::warnings(&set)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "killed (SIGKILL) before it returns",
        "`syscalls.io_uring`",
        "i386 and x32 ABIs are killed (rule `syscalls.abi`)",
        "raw, packet sockets are refused",
        "`network.egress.raw`",
        "killed as it opens one",
    ] {
        assert!(all.contains(want), "{want}: {all}");
    }
}

#[test]
fn seccomp_rules_follow_the_list_kind() {
    let p = one("  syscalls:\n    allow: [read]\n");
    let r = compile::seccomp_rules(&p).unwrap();
    assert_eq!(r.default, Some(SysAction::Errno(1)));
    assert_eq!(r.rules[0].1, None);
    let audit = one("  mode: audit\n  syscalls:\n    deny: [mount]\n");
    assert!(compile::seccomp_rules(&audit).is_none(), "audit: no filter");
}

#[test]
fn learned_policies_parse_back() {
    let mut l = learn::Learned::default();
    for s in ["read", "write", "execve", "exit_group"] {
        l.syscalls.insert(s.into());
    }
    l.refused.insert("mount".into());
    l.execs.insert("/bin/true".into());
    l.egress
        .insert(("127.0.0.1".parse().unwrap(), 8080, "tcp".into()));
    l.ingress.insert((9000, "tcp".into()));
    let y = learn::policy_yaml(
        "web-learned",
        "web",
        &l,
        "60s",
        refused(learn::SYSTEM_TREES),
    );
    let p = parse::parse_str(&y, "learned.yaml").unwrap_or_else(|e| panic!("{e}\n{y}"));
    let s = p[0].syscalls.as_ref().unwrap();
    assert_eq!(s.list, ListKind::Allow);
    assert_eq!(s.entries.len(), 4);
    assert!(y.contains("# Always refused with EPERM while learning"));
    let j: serde_json::Value = serde_json::from_str(&learn::oci_seccomp(&l)).unwrap();
    assert_eq!(j["syscalls"][0]["names"].as_array().unwrap().len(), 4);
    // nothing but syscalls learned: still a valid policy
    let mut l2 = learn::Learned::default();
    l2.syscalls.insert("read".into());
    let y = learn::policy_yaml("x", "y", &l2, "1s", refused(&["/etc"]));
    parse::parse_str(&y, "l2.yaml").unwrap_or_else(|e| panic!("{e}\n{y}"));
}

fn refused<'a>(trees: &'a [&'a str]) -> learn::FilesOut<'a> {
    learn::FilesOut {
        trees,
        reported_only: None,
    }
}

#[test]
fn learned_file_writes_deny_the_system_trees_not_written_to() {
    let mut l = learn::Learned::default();
    l.syscalls.insert("openat".into());
    let w = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect();
    l.files.insert("/tmp/app/out.log".into(), w(&["write"]));
    l.files
        .insert("/etc/app.conf".into(), w(&["chmod", "write"]));
    l.files_unresolved.insert("rel.txt".into());
    l.files_lost = 3;
    let trees = ["/etc", "/etcetera", "/usr", "/root"];
    let y = learn::policy_yaml("a", "b", &l, "5s", refused(&trees));
    assert!(y.contains("  #   /tmp/app/out.log: write\n"), "{y}");
    assert!(y.contains("  #   /etc/app.conf: chmod, write\n"), "{y}");
    assert!(y.contains("written to while learning: /etc\n"), "{y}");
    assert!(y.contains("rel.txt"), "{y}");
    assert!(y.contains("3 file writes were not recorded"), "{y}");
    assert!(
        y.contains("- {paths: [\"/etcetera/**\", \"/usr/**\", \"/root/**\"], access: [write, unlink, chmod]}"),
        "{y}"
    );
    let p = parse::parse_str(&y, "learned.yaml").unwrap_or_else(|e| panic!("{e}\n{y}"));
    assert!(p[0].files.is_some(), "{y}");
    // every tree written to: no files section, still a valid policy
    let y = learn::policy_yaml("a", "b", &l, "5s", refused(&["/etc"]));
    assert!(!y.contains("  files:"), "{y}");
    parse::parse_str(&y, "l.yaml").unwrap_or_else(|e| panic!("{e}\n{y}"));
    // not learned at all: said, no section
    // a host that reports file rules only: `action: log`, said
    let y = learn::policy_yaml(
        "a",
        "b",
        &l,
        "5s",
        learn::FilesOut {
            trees: &trees,
            reported_only: Some("no BPF-LSM on this host"),
        },
    );
    assert!(y.contains("  files:\n    action: log\n"), "{y}");
    assert!(y.contains("reported only (no BPF-LSM on this host)"), "{y}");
    parse::parse_str(&y, "l.yaml").unwrap_or_else(|e| panic!("{e}\n{y}"));
    l.files_error = Some("no BPF".into());
    let y = learn::policy_yaml("a", "b", &l, "5s", refused(&trees));
    assert!(y.contains("File writes were not learned (no BPF)"), "{y}");
    assert!(!y.contains("  files:"), "{y}");
}

#[test]
fn exec_action_errno_compiles_to_eperm() {
    let p = one("  exec:\n    action: errno\n    deny: [/usr/bin/nc]\n    allow: [/usr/bin/*]\n");
    let e = p.exec.as_ref().unwrap();
    assert_eq!(e.action, crate::model::ExecAction::Errno);
    assert_eq!(e.action_loc.to_string(), "p.yaml:9:13");
    let seen = std::cell::RefCell::new(Vec::new());
    let mut id = |d: &RuleDesc| {
        seen.borrow_mut().push(d.clone());
        Some(seen.borrow().len() as u16)
    };
    let t = compile::compile(&[(&p, Mode::Enforce)], &mut id);
    assert_eq!(t.flags, cgroup_flags::EXEC);
    let seen = seen.borrow();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for d in seen.iter() {
        assert_eq!(
            (d.action, d.errno),
            (palisade_common::policy::action::ERRNO, 1),
            "{d:?}"
        );
    }
    let e = err("  exec:\n    action: refuse\n    deny: [/x]\n");
    assert!(
        e.contains("unknown exec action `refuse` (errno, kill or log)"),
        "{e}"
    );
}
