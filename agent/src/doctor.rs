//! `palisade doctor`: what this host offers and what the agent will use.
use std::fmt::Write as _;

use crate::{
    features::Report,
    kernel::{AUTO_SYSCALL_HOOKS, SyscallHook},
};

/// What each feature is for in the agent, and whether the agent needs it.
fn role(feature: &str) -> (&'static str, bool) {
    match feature {
        "raw_tracepoint" => ("syscall telemetry (sys_enter/sys_exit)", true),
        "tracepoint" => ("cgroup discovery events (else periodic rescans)", false),
        "ring_buffer" => ("event delivery to userspace", true),
        "cgroup_v2" => ("container identity (cgroup v2 ids)", true),
        "cgroup_v1" => ("resource readings on hybrid hosts", false),
        "cgroup_skb" => (
            "network totals and flows (else no network telemetry)",
            false,
        ),
        "cgroup_sock_addr" => ("policies: egress/bind rules (EPERM)", false),
        "sock_ops" => ("TCP connections, RTT, flow records", false),
        "send_signal" => ("policies: kill on a denied syscall or exec", false),
        "cgroup_ancestors" => ("policies: rules hold in child cgroups", false),
        "seccomp" => ("palisade run: syscall filters", false),
        "btf" => ("optional: fentry/LSM upgrades", false),
        "fentry" => ("BPF trampolines (fentry/fexit programs)", false),
        "syscall_fentry" => ("syscall telemetry on fentry/fexit (x64_sys_call)", false),
        "bpf_lsm" => (
            "policies: `errno` exec/syscall rules refused in the kernel",
            false,
        ),
        "kprobe" => ("optional; not used", false),
        _ => ("", false),
    }
}

/// The table `palisade doctor` prints.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cgroup layout: {}   unified hierarchy: {}",
        report
            .layout
            .map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
        report
            .unified_root
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string())
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<17} {:<5} {:<48} DETAIL",
        "FEATURE", "OK", "USED FOR"
    );
    let mut missing_required = Vec::new();
    for f in &report.features {
        let (role, required) = role(f.name);
        let ok = if f.available { "yes" } else { "no" };
        let _ = writeln!(out, "{:<17} {:<5} {:<48} {}", f.name, ok, role, f.detail);
        if required && !f.available {
            missing_required.push(f.name);
        }
    }
    let _ = writeln!(out);
    if missing_required.is_empty() {
        let discovery = if report.get("tracepoint").is_some_and(|f| f.available) {
            "cgroup:cgroup_mkdir/rmdir tracepoints + periodic rescans"
        } else {
            "periodic rescans only (classic tracepoints unavailable)"
        };
        let _ = writeln!(
            out,
            "agent: will run. syscalls via {} (syscalls.hook: auto); cgroup discovery via {discovery}.",
            syscall_hook(report).describe()
        );
    } else {
        let _ = writeln!(
            out,
            "agent: cannot run here; missing required features: {}",
            missing_required.join(", ")
        );
    }
    let _ = writeln!(out, "enforcement tier: {}", tier(report).1);
    let _ = writeln!(out, "(probed in {} ms)", report.elapsed_ms);
    out
}

/// The pair `syscalls.hook: auto` attaches here: the first of [`AUTO_SYSCALL_HOOKS`] whose
/// probe attached (raw tracepoints are required anyway, so they are the last resort).
pub fn syscall_hook(report: &Report) -> SyscallHook {
    AUTO_SYSCALL_HOOKS
        .iter()
        .copied()
        .find(|h| {
            let feature = match h {
                SyscallHook::RawTracepoint => "raw_tracepoint",
                SyscallHook::Fentry => "syscall_fentry",
            };
            report.get(feature).is_some_and(|f| f.available)
        })
        .unwrap_or(SyscallHook::RawTracepoint)
}

/// The enforcement tier this host gives policies: (`bpf_lsm` or `tracepoints`, a sentence).
pub fn tier(report: &Report) -> (&'static str, &'static str) {
    if report.get("bpf_lsm").is_some_and(|f| f.available) {
        (
            "bpf_lsm",
            "BPF-LSM: exec rules with `action: errno` are refused with EPERM at exec, syscall rules with `action: errno` refused by the kernel for the calls with an LSM hook (unshare, mount, ptrace, bpf, socket, ...), other calls killed after the call (seccomp refuses them at launch); file rules refused at file_open, path_unlink, path_chmod, mmap_file, ... on the resolved path",
        )
    } else {
        (
            "tracepoints",
            "no BPF-LSM: exec rules with `action: errno` kill before the new image runs, syscall rules kill after the call (seccomp refuses them at launch), file rules are reported only (the path as given, best effort)",
        )
    }
}

/// `palisade doctor --output json`: one object, documented in `palisade doctor --help` and the
/// README; fields may be added, none renamed or removed.
#[derive(Debug, serde::Serialize)]
pub struct JsonReport {
    /// `v1`, `hybrid` or `v2`; null when no cgroup mount was found.
    pub cgroup_layout: Option<String>,
    pub unified_root: Option<String>,
    pub features: Vec<JsonFeature>,
    pub agent_can_run: bool,
    pub missing_required: Vec<&'static str>,
    /// `tracepoints` (cgroup_mkdir/rmdir events and rescans) or `rescans` only.
    pub cgroup_discovery: &'static str,
    /// `bpf_lsm` (denied execs refused in the kernel) or `tracepoints`; see
    /// `enforcement_tier_describe`.
    pub enforcement_tier: &'static str,
    pub enforcement_tier_describe: &'static str,
    /// `raw_tracepoint` or `fentry`: the pair that carries syscall telemetry under
    /// `syscalls.hook: auto`.
    pub syscall_hook: &'static str,
    pub probe_ms: u128,
}

#[derive(Debug, serde::Serialize)]
pub struct JsonFeature {
    pub name: &'static str,
    pub available: bool,
    /// The agent cannot run without it.
    pub required: bool,
    pub used_for: &'static str,
    pub detail: String,
}

/// The report as [`JsonReport`].
pub fn json_report(report: &Report) -> JsonReport {
    let features: Vec<JsonFeature> = report
        .features
        .iter()
        .map(|f| {
            let (used_for, required) = role(f.name);
            JsonFeature {
                name: f.name,
                available: f.available,
                required,
                used_for,
                detail: f.detail.clone(),
            }
        })
        .collect();
    let missing_required: Vec<&'static str> = features
        .iter()
        .filter(|f| f.required && !f.available)
        .map(|f| f.name)
        .collect();
    JsonReport {
        cgroup_layout: report.layout.map(|l| l.to_string()),
        unified_root: report
            .unified_root
            .as_ref()
            .map(|p| p.display().to_string()),
        agent_can_run: missing_required.is_empty(),
        missing_required,
        cgroup_discovery: if report.get("tracepoint").is_some_and(|f| f.available) {
            "tracepoints"
        } else {
            "rescans"
        },
        probe_ms: report.elapsed_ms,
        enforcement_tier: tier(report).0,
        enforcement_tier_describe: tier(report).1,
        syscall_hook: syscall_hook(report).as_str(),
        features,
    }
}

/// The JSON line `palisade doctor --output json` prints.
pub fn json(report: &Report) -> String {
    serde_json::to_string(&json_report(report)).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

/// Exit status for `palisade doctor`: 0 when the agent can run.
pub fn exit_code(report: &Report) -> i32 {
    let ok = report
        .features
        .iter()
        .all(|f| f.available || !role(f.name).1);
    if ok { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Feature;

    fn report(available: &[(&'static str, bool)]) -> Report {
        Report {
            features: available
                .iter()
                .map(|(n, a)| Feature {
                    name: n,
                    available: *a,
                    detail: "d".into(),
                })
                .collect(),
            btf: None,
            layout: Some(palisade_cgroupfs::Layout::Hybrid),
            unified_root: Some("/sys/fs/cgroup/unified".into()),
            elapsed_ms: 3,
        }
    }

    #[test]
    fn required_features_decide_the_verdict() {
        let ok = report(&[
            ("raw_tracepoint", true),
            ("ring_buffer", true),
            ("cgroup_v2", true),
            ("fentry", false),
            ("tracepoint", true),
        ]);
        assert_eq!(exit_code(&ok), 0);
        let text = render(&ok);
        assert!(text.contains("cgroup layout: hybrid"), "{text}");
        assert!(text.contains("agent: will run"), "{text}");
        assert!(text.contains("fentry            no"), "{text}");
        assert!(
            text.contains("enforcement tier: no BPF-LSM: exec rules with `action: errno` kill"),
            "{text}"
        );
        let lsm = report(&[("raw_tracepoint", true), ("bpf_lsm", true)]);
        assert!(
            render(&lsm).contains("enforcement tier: BPF-LSM: exec rules with `action: errno` are refused with EPERM at exec"),
            "{}",
            render(&lsm)
        );
        assert_eq!(json_report(&lsm).enforcement_tier, "bpf_lsm");

        let bad = report(&[("raw_tracepoint", false), ("ring_buffer", true)]);
        assert_eq!(exit_code(&bad), 1);
        assert!(render(&bad).contains("missing required features: raw_tracepoint"));

        let j: serde_json::Value = serde_json::from_str(&json(&ok)).unwrap();
        assert_eq!(j["cgroup_layout"], "hybrid");
        assert_eq!(j["unified_root"], "/sys/fs/cgroup/unified");
        assert_eq!(j["agent_can_run"], true);
        assert_eq!(j["cgroup_discovery"], "tracepoints");
        assert_eq!(j["features"][0]["name"], "raw_tracepoint");
        assert_eq!(j["features"][0]["required"], true);
        assert_eq!(j["features"][3]["available"], false);
        let j: serde_json::Value = serde_json::from_str(&json(&bad)).unwrap();
        assert_eq!(j["agent_can_run"], false);
        assert_eq!(j["missing_required"], serde_json::json!(["raw_tracepoint"]));
    }

    #[test]
    fn doctor_names_the_pair_that_carries_syscall_telemetry() {
        let raw_only = report(&[("raw_tracepoint", true), ("syscall_fentry", false)]);
        assert!(
            render(&raw_only).contains("syscalls via raw tracepoints sys_enter/sys_exit"),
            "{}",
            render(&raw_only)
        );
        assert_eq!(json_report(&raw_only).syscall_hook, "raw_tracepoint");
        // both attach: auto's first choice
        let both = report(&[("raw_tracepoint", true), ("syscall_fentry", true)]);
        let first = AUTO_SYSCALL_HOOKS[0];
        assert!(
            render(&both).contains(&format!("syscalls via {} ", first.describe())),
            "{}",
            render(&both)
        );
        assert_eq!(json_report(&both).syscall_hook, first.as_str());
    }
}
