use super::*;

fn bundle(
    config: &str,
) -> (
    tempfile::TempDir,
    std::result::Result<(Plan, Option<Profile>), BundleError>,
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let r = load(dir.path());
    (dir, r)
}

fn runc_spec() -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(include_str!("../../../tests/data/runc-spec-config.json")).unwrap();
    v["process"]["terminal"] = false.into();
    v
}

fn err(v: &serde_json::Value) -> String {
    let (_d, r) = bundle(&v.to_string());
    r.unwrap_err().to_string()
}

#[test]
fn runc_spec_output_is_understood() {
    let (_d, r) = bundle(&runc_spec().to_string());
    let (plan, profile) = r.unwrap();
    assert!(profile.is_none());
    assert_eq!(plan.process.args, ["sh"]);
    let oci = caps::oci_default();
    let c = plan.process.caps;
    assert_eq!(
        (c.bounding, c.effective, c.permitted, c.ambient),
        (oci, oci, oci, oci)
    );
    assert_eq!(c.inheritable, 0);
    assert!(plan.process.no_new_privs);
    assert_eq!(plan.process.rlimits[0].name, "RLIMIT_NOFILE");
    assert!(plan.root_readonly);
    assert_eq!(plan.hostname.as_deref(), Some("runc"));
    assert_eq!(plan.mounts.len(), 7);
    assert_eq!(plan.mounts[6].kind, MountKind::Cgroup);
    assert_eq!(plan.mounts[1].data, "mode=755,size=65536k");
    assert!(plan.ns.pid && plan.ns.uts && plan.ns.ipc && !plan.ns.cgroup);
    assert_eq!(plan.ns.net, Net::New);
    assert_eq!(plan.devices[0].v1_line(), "a *:* rwm");
    assert!(!plan.devices[0].allow);
    assert_eq!(plan.masked_paths.len(), 10);
    assert_eq!(plan.readonly_paths.len(), 5);
}

#[test]
fn invalid_json_has_line_and_column() {
    let (_d, r) = bundle("{\n  \"process\": {\n    \"args\": [\"sh\",]\n  }\n}");
    let e = r.unwrap_err().to_string();
    assert!(e.contains("config.json:3:"), "{e}");
    assert!(e.contains("invalid JSON"), "{e}");
}

#[test]
fn unsupported_fields_are_named() {
    let mut v = runc_spec();
    v["process"]["terminal"] = true.into();
    assert!(
        err(&v).contains("process.terminal: a terminal"),
        "{}",
        err(&v)
    );
    let mut v = runc_spec();
    v["linux"]["resources"]["blockIO"] = serde_json::json!({"weight": 10});
    assert!(err(&v).contains("linux.resources.blockIO: not supported"));
    let mut v = runc_spec();
    v["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
    assert!(err(&v).contains("linux.sysctl: not supported"));
    let mut v = runc_spec();
    v["mounts"][0]["type"] = "overlay".into();
    assert!(err(&v).contains("mounts[0].type: mount type `overlay`"));
    let mut v = runc_spec();
    v["linux"]["namespaces"][0] = serde_json::json!({"type":"user"});
    assert!(err(&v).contains("linux.namespaces[0].type: user namespaces"));
    let mut v = runc_spec();
    v["process"]["capabilities"]["bounding"][0] = "CAP_FLY".into();
    assert!(err(&v).contains("process.capabilities.bounding[0]: unknown capability"));
    let mut v = runc_spec();
    v["linux"]["resources"]["memory"] = serde_json::json!({"limit": 1024});
    assert!(
        err(&v).contains("linux.resources.memory.limit: limit 1 KiB is below the 6 MiB minimum"),
        "{}",
        err(&v)
    );
    let mut v = runc_spec();
    v["linux"]["resources"]["cpu"] = serde_json::json!({"quota": 10, "period": 100000});
    assert!(err(&v).contains("linux.resources.cpu.quota: below the kernel's minimum"));
    let mut v = runc_spec();
    v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "SCMP_CMP_LIKE"}]}]});
    assert!(
        err(&v).contains("linux.seccomp.syscalls[0].args[0].op: unknown operator"),
        "{}",
        err(&v)
    );
}

#[test]
fn unknown_properties_are_ignored_and_named() {
    let mut v = runc_spec();
    v["process"]["colour"] = "blue".into();
    v["x-vendor"] = serde_json::json!({"tuning": true});
    v["linux"]["resources"]["memory"] = serde_json::json!({"limit": 67108864, "futureKnob": 1});
    v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "newField": 1,
        "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "priority": 3}]});
    v["mounts"][0]["newMountField"] = "x".into();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    let (plan, profile, ignored) =
        parse_config_ignoring_unknown(&v.to_string(), dir.path()).unwrap();
    assert_eq!(plan.resources.memory, Some(64 << 20));
    assert_eq!(plan.process.args, ["sh"]);
    assert_eq!(profile.unwrap().rules.len(), 1);
    let mut ignored = ignored;
    ignored.sort();
    assert_eq!(
        ignored,
        [
            "linux.resources.memory.futureKnob",
            "linux.seccomp.newField",
            "linux.seccomp.syscalls[0].priority",
            "mounts[0].newMountField",
            "process.colour",
            "x-vendor",
        ]
    );
    // a property the spec defines and palisade does not support is still refused by name
    v["process"]["ioPriority"] = serde_json::json!({"class": "IOPRIO_CLASS_IDLE", "priority": 0});
    assert!(
        err(&v).contains("process.ioPriority: not supported"),
        "{}",
        err(&v)
    );
}

#[test]
fn missing_bundle_and_config() {
    let e = load(Path::new("/nonexistent/bundle"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bundle /nonexistent/bundle"), "{e}");
    let d = tempfile::tempdir().unwrap();
    let e = load(d.path()).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn resources_and_seccomp() {
    let mut v = runc_spec();
    v["linux"]["resources"]["memory"] = serde_json::json!({"limit": 67108864, "swap": 67108864});
    v["linux"]["resources"]["cpu"] =
        serde_json::json!({"quota": 50000, "period": 100000, "shares": 512});
    v["linux"]["resources"]["pids"] = serde_json::json!({"limit": 64});
    v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]});
    let (_d, r) = bundle(&v.to_string());
    let (plan, profile) = r.unwrap();
    assert_eq!(plan.resources.memory, Some(64 << 20));
    assert_eq!(plan.resources.cpu_quota, Some(50_000));
    assert_eq!(plan.resources.cpu_shares, Some(512));
    assert_eq!(plan.resources.pids, Some(64));
    assert_eq!(profile.unwrap().rules[0].action, seccomp::Action::Errno(13));
}
