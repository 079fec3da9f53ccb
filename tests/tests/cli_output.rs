//! `--output json` of `palisade doctor` and `palisade policy status`: one JSON object of the
//! documented shape, agreeing with the text output and with what the agent enforces.
//!
//! Privileged: root (the probes, a real agent with a policy).
use std::process::Command;

use palisade_tests::{
    TestCgroup, palisade_bin,
    policy::{Setup, cli, wait_applied},
    require_root,
};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(palisade_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("palisade {args:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn doctor_json_is_the_text_report_as_one_object() {
    require_root();
    let (code, text, _) = run(&["doctor"]);
    let (jcode, json, err) = run(&["doctor", "--output", "json"]);
    assert_eq!(jcode, code, "the same verdict: {err}");
    assert_eq!(json.lines().count(), 1, "one line: {json}");
    let j: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    assert_eq!(j["agent_can_run"], code == 0, "{j}");
    let layout = j["cgroup_layout"].as_str().unwrap_or("unknown");
    assert!(
        text.contains(&format!("cgroup layout: {layout} ")),
        "{layout} in\n{text}"
    );
    let features = j["features"]
        .as_array()
        .unwrap_or_else(|| panic!("no features: {j}"));
    assert!(features.len() >= 10, "{j}");
    for f in features {
        let name = f["name"].as_str().unwrap_or_default();
        let ok = if f["available"] == true { "yes" } else { "no" };
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in the text report:\n{text}"));
        assert_eq!(line.split_whitespace().nth(1), Some(ok), "{line} vs {f}");
        for key in ["required", "used_for", "detail"] {
            assert!(f.get(key).is_some(), "{key} missing in {f}");
        }
    }
    let discovery = j["cgroup_discovery"].as_str().unwrap_or_default();
    assert!(["tracepoints", "rescans"].contains(&discovery), "{j}");
    assert!(j["probe_ms"].is_u64(), "{j}");
    assert!(j["missing_required"].is_array(), "{j}");
}

#[test]
fn policy_status_json_is_what_the_agent_enforces() {
    let cg = TestCgroup::new("status-json");
    let policy = format!(
        "apiVersion: palisade.dev/v1\nkind: Policy\nmetadata:\n  name: status-json\nspec:\n  selector:\n    cgroup: \"{}\"\n  mode: audit\n  syscalls:\n    action: kill\n    deny: [getppid]\n",
        cg.rel
    );
    let setup = Setup::new(&policy);
    let agent = setup.agent("");
    wait_applied(&agent, "status-json", cg.id, &["syscalls"]);

    let (code, json, err) = cli(&agent, &["status", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json.lines().count(), 1, "one line: {json}");
    let j: serde_json::Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
    assert_eq!(j["pin_dir"], setup.pins.0.display().to_string(), "{j}");
    assert_eq!(j["loaded"], true, "{j}");
    assert!(
        j["hooks"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h == "syscalls")),
        "{j}"
    );
    let p = &j["policies"][0];
    assert_eq!(p["name"], "status-json", "{j}");
    assert_eq!(p["mode"], "audit", "{j}");
    assert!(
        p["source"]
            .as_str()
            .is_some_and(|s| s.starts_with(&setup.policy_file().display().to_string())),
        "{j}"
    );
    assert_eq!(p["cgroups"][0]["cgroup_id"], cg.id, "{j}");
    assert_eq!(p["cgroups"][0]["container"], cg.rel, "{j}");
    assert!(j["adopted_workloads"].is_array(), "{j}");

    let (code, text, err) = cli(&agent, &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("policy status-json (audit) from "), "{text}");
    assert!(
        text.contains(&format!("  {} (cgroup {})", cg.rel, cg.id)),
        "{text}"
    );
    // an unknown format is bad usage
    let (code, _, err) = cli(&agent, &["status", "--output", "yaml"]);
    assert_eq!(code, 2, "{err}");
}
