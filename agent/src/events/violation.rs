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

/// What an `exec` violation says besides `exec` (absent fields are omitted).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ExecDetail {
    /// The path given to execve/execveat (`/dev/fd/N` for an fd), as the process wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_given: Option<String>,
    /// `file`: the rules saw the file executed; `path_given`: only the path given (best
    /// effort, without kernel BTF).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_match: Option<String>,
    /// Why `exec` is not a path the rules could match: `detached` (a memfd or another file no
    /// path reaches; `exec` is its name, `memfd:NAME`), `deleted`, `unreachable` (outside the
    /// process's root), `too_long`, `unreadable`, `not_found` (a script's file was not found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_unresolved: Option<String>,
    /// Device (`major:minor`) and inode of the file in `exec`, as the kernel has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_dev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_ino: Option<u64>,
    /// The interpreter the kernel ran for a script (resolved like `exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter_unresolved: Option<String>,
}

/// The file of a `file` violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The path as the rules saw it: resolved by the kernel to the process's root (`match:
    /// resolved`, BPF-LSM), or as given to the call (`match: path_given`: relative paths and
    /// symlinks not resolved).
    pub path: String,
    /// `read`, `write`, `unlink`, `chmod` or `exec`.
    pub access: String,
    /// `resolved` (the BPF-LSM tier) or `path_given` (the audit tier, without BPF-LSM).
    #[serde(rename = "match")]
    pub matched: String,
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
    /// `exec`, `connect`, `sendmsg`, `bind`, `ingress`, `socket` (a raw, packet or ICMP socket
    /// being created), `file` (a file rule).
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
    /// `exec`: the program as the process sees it: the file executed, its path resolved
    /// (symlinks, `.`, `..`, repeated slashes), a script's own file for a script; the path given
    /// to execve when `exec_match` is `path_given`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// The rest of what an `exec` violation says about the exec.
    #[serde(flatten, default)]
    pub exec_detail: ExecDetail,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileRef>,
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
    /// `hook_<group>` (a hook group that does not attach: `hook_exec`, `hook_egress`, ...),
    /// `files_reported_only` (file rules that should refuse are reported only: no BPF-LSM tier).
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
            exec_detail: ExecDetail::default(),
            network: None,
            file: None,
            suppressed: 0,
        };
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"policy":"web","rule":"syscalls.deny[0]","action":"errno","mode":"enforce","hook":"seccomp","syscall":"mount","errno":"EPERM","suppressed":0}"#
        );
    }
}
