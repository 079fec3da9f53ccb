//! The `violation` object of a `policy_violation` event.
use serde::{Deserialize, Serialize};

/// The 5-tuple of a network violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRef {
    /// `egress` (connect, sendmsg) or `ingress` (bind, incoming connection).
    pub direction: String,
    pub protocol: String,
    /// `addr:port` (IPv6 as `[addr]:port`); empty when not known (a bind has no remote).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub local: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote: String,
}

/// The `violation` object of a `policy_violation` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub policy: String,
    pub rule: String,
    /// What happened: `errno` (the call failed), `kill`, `log`, `drop` (an incoming connection
    /// request was dropped), `would_block` (audit mode).
    pub action: String,
    /// `audit` or `enforce` when it happened.
    pub mode: String,
    /// Which hook saw it: `syscall`, `seccomp` (refused by a launched workload's filter),
    /// `exec`, `connect`, `sendmsg`, `bind`, `ingress`.
    pub hook: String,
    /// The call by its name in its ABI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// The ABI of a call not made through x86_64 (`i386`, `x32`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<String>,
    /// The x86_64 call a compat call was checked as, where its name differs (`socketcall` →
    /// `connect`, `mmap2` → `mmap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_as: Option<String>,
    /// The errno the call got (`seccomp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// The executable, as given to execve (`exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRef>,
    /// Violations of this rule in this container not reported one by one (rate limit) since the
    /// previous event for them. An event with no `process` only carries this count.
    #[serde(default)]
    pub suppressed: u64,
}

/// The `unenforced` object of a `policy_unenforced` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unenforced {
    pub policy: String,
    /// `slots_full`, `cgroups_full`, `rules_full`, `network_policies`, `table_error`,
    /// `hook_<group>` (a hook group that does not attach: `hook_exec`, `hook_egress`, ...).
    pub reason: String,
    /// What failed, for people.
    pub detail: String,
    /// True when the policy is in place again (the earlier event's condition is over).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resolved: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_json_shape() {
        let v = Violation {
            policy: "web".into(),
            rule: "syscalls.deny[0]".into(),
            action: "errno".into(),
            mode: "enforce".into(),
            hook: "seccomp".into(),
            syscall: Some("mount".into()),
            abi: None,
            checked_as: None,
            errno: Some("EPERM".into()),
            exec: None,
            network: None,
            suppressed: 0,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"policy":"web","rule":"syscalls.deny[0]","action":"errno","mode":"enforce","hook":"seccomp","syscall":"mount","errno":"EPERM","suppressed":0}"#
        );
    }
}
