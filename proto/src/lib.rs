//! The agent's control socket: a root-only unix socket speaking one JSON object per line.
//! The agent serves it; `palisade run` (registrations), `palisade events` (subscriptions) and
//! `palisade policy ...` (status, mode, reload, learn) are its clients, all through [`Conn`].
//!
//! Requests (`op` selects the kind) and replies:
//! - `{"op":"ping"}` → `{"ok":true,"version":"0.1.0"}`
//! - `{"op":"register","name":"web-0","cgroup_id":1234,"cgroup_path":"/palisade/web-0"}` →
//!   `{"ok":true}` once the cgroup is named `web-0` in the registry and traced by the kernel
//!   programs (also when a `--cgroup` filter would not select it: registering is opting in).
//!   The launcher waits for this reply before it execs the workload, so telemetry covers the
//!   workload's first instruction. A `register` may carry the workload's `policy`
//!   ([`LaunchPolicy`]), enforced before the reply.
//! - `{"op":"subscribe","containers":["web-*"],"types":["exec","exit"]}` → `{"ok":true}`, then
//!   one event per line (the README's event schema) until the client hangs up. Empty lists mean
//!   everything. When the subscriber falls behind, a `{"type":"events_lost","count":N}` line
//!   says how many events it missed.
//! - Policies: `{"op":"policy_status"}`, `{"op":"policy_mode","name":"web","mode":"audit"}`,
//!   `{"op":"policy_reload"}`, `{"op":"policy_learn","container":"web","duration_ms":60000}`
//!   (answers when the window is over, with a [`Learned`]) → `{"ok":true,"data":...}`;
//!   `{"op":"policy_learn_end","container":"web"}` ends the open windows of that same pattern
//!   now, as if their duration had passed (`palisade policy learn` sends it on Ctrl-C) →
//!   `{"ok":true,"data":N}`, N the windows ended.
//!
//! Errors reply `{"ok":false,"error":"..."}`; the connection stays open for further requests.
mod client;

use serde::{Deserialize, Serialize};

pub use client::{ClientError, Conn, call};

/// Where the agent listens unless configured otherwise (`control_socket`, `--agent-socket`,
/// `--socket`).
pub const DEFAULT_SOCKET: &str = "/run/palisade/agent.sock";

/// Longest workload name (a cgroup directory and a `container` label).
pub const MAX_NAME: usize = 128;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// A struct variant (not a unit one) so that `deny_unknown_fields` rejects extra keys:
    /// serde ignores unknown fields next to the tag of a unit variant.
    Ping {},
    Register {
        name: String,
        cgroup_id: u64,
        /// Path relative to the unified root, e.g. `/palisade/web-0`.
        cgroup_path: String,
        /// The workload's policies (`palisade run --policy`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<LaunchPolicy>,
    },
    Subscribe {
        /// Globs over container names and ids.
        #[serde(default)]
        containers: Vec<String>,
        /// Event types (`exec`, `exit`, `oom`, `container_start`, `container_stop`, ...).
        #[serde(default)]
        types: Vec<String>,
    },
    PolicyStatus {},
    PolicyMode {
        name: String,
        /// `audit` or `enforce`.
        mode: String,
    },
    PolicyReload {},
    PolicyLearn {
        /// Glob over container names and ids.
        container: String,
        duration_ms: u64,
    },
    /// Ends the open `policy_learn` windows whose pattern is `container` (the same string).
    PolicyLearnEnd {
        container: String,
    },
}

/// A reply on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Policy operations' answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Reply {
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            ..Self::default()
        }
    }

    /// A successful reply carrying `data` (left out when null).
    pub fn data(d: serde_json::Value) -> Self {
        Self {
            ok: true,
            data: (!d.is_null()).then_some(d),
            ..Self::default()
        }
    }

    /// The data as `T` (`T::default()`-like null when absent is the caller's choice).
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(self.data.clone().unwrap_or_default())
    }
}

/// The policies a launcher sends with a registration: the policy file's text, which of its
/// policies select the workload, and whether its seccomp filter carries their syscall rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchPolicy {
    /// The file's path (for messages).
    pub source: String,
    pub text: String,
    pub names: Vec<String>,
    pub seccomp: bool,
}

/// What `policy_learn` answers: what the containers did during the window.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Learned {
    /// Syscalls that ran (at least one call did not fail with EPERM).
    pub syscalls: Vec<String>,
    /// Syscalls every call of which failed with EPERM (already refused).
    pub refused: Vec<String>,
    /// Programs executed (paths).
    pub execs: Vec<String>,
    /// Peers connected to (or sent to first).
    pub egress: Vec<Peer>,
    /// Local ports that accepted connections or datagrams.
    pub ingress: Vec<Port>,
    /// Whether file writes were learned (false from an agent that does not learn them).
    pub files_learned: bool,
    /// Files written, unlinked or chmodded (see `palisade_policy::learn::Learned::files`).
    pub files: Vec<FileWrite>,
    /// Relative paths whose process was gone before they could be resolved.
    pub files_unresolved: Vec<String>,
    /// File writes not recorded (the kernel's buffer was full).
    pub files_lost: u64,
    /// Why file writes were not learned, if they were not.
    pub files_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileWrite {
    pub path: String,
    /// `write`, `unlink`, `chmod`.
    pub access: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub addr: std::net::IpAddr,
    pub port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub port: u16,
    pub protocol: String,
}

/// What `policy_status` answers (`palisade policy status --output json` prints it as is): the
/// policies in force, their modes and the cgroups each applies to. Fields may be added; none is
/// renamed or removed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyStatus {
    /// bpffs directory of the pinned enforcement state.
    pub pin_dir: String,
    /// The enforcement programs are loaded (some policy exists).
    pub loaded: bool,
    /// Hook groups attached now (`syscalls`, `seccomp`, `exec`, `egress`, `socket_create`,
    /// `packet_socket`, `ingress`).
    pub hooks: Vec<String>,
    pub policies: Vec<PolicyState>,
    /// Cgroup ids of launched workloads whose pinned state an earlier agent left (adopted).
    pub adopted_workloads: Vec<u64>,
    /// How exec rules match on this host.
    pub exec_match: ExecMatch,
    /// Whether BPF-LSM refuses denied calls on this host.
    pub lsm: Lsm,
    /// What file rules get on this host.
    pub files: FilesStatus,
    /// What is not in place, per cgroup, policy and reason (`palisade_policy_unenforced`).
    pub unenforced: Vec<PolicyUnenforced>,
    /// What will happen instead where a policy cannot be enforced as written: the notes of
    /// `palisade policy check` for the policies in force, and what this host lacks.
    pub notes: Vec<String>,
}

/// File rules on this host, in [`PolicyStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FilesStatus {
    /// `lsm` (refused in the kernel, resolved path), `audit` (reported only, the path as
    /// given) or `none` (neither).
    pub tier: String,
    /// Why the tier is weaker than `lsm`, when it is.
    pub reason: String,
    /// One line per file rule of the loaded policies: where it is and what it does here.
    pub rules: Vec<String>,
}

/// A policy not (fully) in force for one cgroup, in [`PolicyStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyUnenforced {
    pub policy: String,
    pub cgroup_id: u64,
    /// The container's name (`cgroup:ID` when the agent has not named it).
    pub container: String,
    /// `slots_full`, `cgroups_full`, `rules_full`, `network_policies`, `table_error`,
    /// `not_loaded`, `hook_<group>`, `files_reported_only`.
    pub reason: String,
    /// What failed, for people.
    pub detail: String,
}

/// BPF-LSM on this host, in [`PolicyStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Lsm {
    /// `bpf` is among the active LSMs, the kernel has BTF, and the kernel took the exec
    /// program.
    pub active: bool,
    /// Why not, when it is not.
    pub reason: String,
    /// The same for the syscall hooks.
    pub syscalls_active: bool,
    pub syscalls_reason: String,
    /// One sentence for people.
    pub describe: String,
}

/// How one rule section of a policy is enforced on running containers, in [`PolicyState`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Enforcement {
    /// `exec`, `syscalls`, `egress` or `ingress`.
    pub section: String,
    /// The action as written (`errno`, `errno EPERM`, `kill`, `log`, `deny`).
    pub action: String,
    /// The calls this entry is about (empty: the whole section, but for the calls of other
    /// entries of the same section).
    pub calls: Vec<String>,
    /// `refused with EPERM at exec`, `refused with <errno> by the kernel`, `killed before the
    /// new image runs`, `killed after the call` or `reported only`.
    pub tier: String,
    /// Why the tier is weaker than the action asks, when it is (empty otherwise).
    pub fallback: String,
}

/// How exec rules match on this host, in [`PolicyStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecMatch {
    /// `file` (the file executed, resolved by the kernel) or `path_given` (the string given to
    /// execve, best effort).
    pub mode: String,
    /// How scripts are matched: `file` or `path_given`.
    pub scripts: String,
    pub best_effort: bool,
    /// Why the matching is weaker than `file`, when it is.
    pub reason: String,
    /// One sentence for people.
    pub describe: String,
}

/// One policy in [`PolicyStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyState {
    pub name: String,
    /// `audit` or `enforce`.
    pub mode: String,
    /// `file:line:column` of its definition, or `palisade run` for a launched workload's.
    pub source: String,
    pub cgroups: Vec<PolicyCgroup>,
    /// How each rule section is enforced on running containers on this host.
    pub enforcement: Vec<Enforcement>,
}

/// A cgroup a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyCgroup {
    pub cgroup_id: u64,
    /// The container's name (empty when the agent has not named it).
    pub container: String,
    /// The path of the ancestor cgroup whose selection holds here (the cgroup selects nothing
    /// itself: a policy holds for the subtree of what it selects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inherited_from: Option<String>,
}

/// Workload names: what a container name may hold (a cgroup directory name and a label value).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r: Request = serde_json::from_str(
            r#"{"op":"register","name":"web-0","cgroup_id":7,"cgroup_path":"/palisade/web-0"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Register {
                name: "web-0".into(),
                cgroup_id: 7,
                cgroup_path: "/palisade/web-0".into(),
                policy: None,
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"ping"}"#).unwrap(),
            Request::Ping {}
        );
        assert_eq!(
            serde_json::to_string(&Request::PolicyLearnEnd {
                container: "web-*".into()
            })
            .unwrap(),
            r#"{"op":"policy_learn_end","container":"web-*"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"ping","x":1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Reply::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::err("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::data(serde_json::Value::Null)).unwrap(),
            r#"{"ok":true}"#
        );
    }

    #[test]
    fn learned_round_trip() {
        let l = Learned {
            syscalls: vec!["read".into()],
            refused: vec![],
            execs: vec!["/bin/true".into()],
            egress: vec![Peer {
                addr: "10.0.0.1".parse().unwrap(),
                port: 53,
                protocol: "udp".into(),
            }],
            ingress: vec![Port {
                port: 80,
                protocol: "tcp".into(),
            }],
            files_learned: true,
            files: vec![FileWrite {
                path: "/tmp/x".into(),
                access: vec!["write".into()],
            }],
            files_unresolved: vec!["rel".into()],
            files_lost: 2,
            files_error: None,
        };
        let r = Reply::data(serde_json::to_value(&l).unwrap());
        let text = serde_json::to_string(&r).unwrap();
        assert!(
            text.contains(r#"{"addr":"10.0.0.1","port":53,"protocol":"udp"}"#),
            "{text}"
        );
        let back: Reply = serde_json::from_str(&text).unwrap();
        assert_eq!(back.data_as::<Learned>().unwrap(), l);
    }

    #[test]
    fn policy_status_reads_the_agents_answer() {
        // the shape agent/src/policy/engine/ops.rs writes
        let data = serde_json::json!({
            "pin_dir": "/sys/fs/bpf/palisade", "loaded": true, "hooks": ["syscalls", "egress"],
            "policies": [{"name": "web", "mode": "enforce", "source": "/etc/p.yaml:1:1",
                          "cgroups": [{"cgroup_id": 42, "container": "web-0"}]}],
            "adopted_workloads": [7],
            "unenforced": [{"policy": "web", "cgroup_id": 43, "container": "web-1",
                            "reason": "slots_full", "detail": "every slot is in use"}],
            "notes": ["this host: no kernel BTF for `thread_info.status`"],
        });
        let s: PolicyStatus = Reply::data(data).data_as().unwrap();
        assert_eq!(s.policies[0].cgroups[0].container, "web-0");
        assert_eq!(s.policies[0].cgroups[0].inherited_from, None);
        assert_eq!(s.adopted_workloads, [7]);
        assert_eq!(s.unenforced[0].reason, "slots_full");
        assert_eq!(s.notes.len(), 1);
        let text = serde_json::to_string(&s).unwrap();
        assert!(
            text.starts_with(r#"{"pin_dir":"/sys/fs/bpf/palisade","loaded":true,"hooks":["syscalls","egress"],"policies":[{"name":"web","mode":"enforce""#),
            "{text}"
        );
        // no policies at all: an empty status
        assert_eq!(Reply::ok().data_as::<PolicyStatus>().ok(), None);
    }

    #[test]
    fn workload_names() {
        assert!(valid_name("web-0"));
        assert!(valid_name("db_primary.1"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("x y"));
        assert!(!valid_name(&"a".repeat(129)));
    }
}
