//! The documents as serde reads them: positions kept ([`Spanned`]) where a value needs
//! checking, unknown keys refused.
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawDoc {
    pub(crate) api_version: Spanned<String>,
    pub(crate) kind: Spanned<String>,
    pub(crate) metadata: RawMeta,
    pub(crate) spec: Spanned<RawSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMeta {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code)]
    pub(crate) description: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSpec {
    pub(crate) selector: Spanned<RawSelector>,
    #[serde(default)]
    pub(crate) mode: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) syscalls: Option<Spanned<RawSyscalls>>,
    #[serde(default)]
    pub(crate) exec: Option<Spanned<RawExec>>,
    #[serde(default)]
    pub(crate) files: Option<Spanned<RawFiles>>,
    #[serde(default)]
    pub(crate) network: Option<RawNetwork>,
    #[serde(default)]
    pub(crate) resources: Option<RawResources>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSelector {
    pub(crate) workload: Option<Spanned<String>>,
    pub(crate) container: Option<Spanned<String>>,
    pub(crate) runtime: Option<Spanned<String>>,
    pub(crate) namespace: Option<Spanned<String>>,
    pub(crate) pod: Option<Spanned<String>>,
    pub(crate) cgroup: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSyscalls {
    pub(crate) allow: Option<Vec<Spanned<RawSyscallEntry>>>,
    pub(crate) deny: Option<Vec<Spanned<RawSyscallEntry>>>,
    pub(crate) action: Option<Spanned<String>>,
    pub(crate) errno: Option<Spanned<RawErrno>>,
    #[serde(default)]
    pub(crate) abis: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) io_uring: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawErrno {
    Number(u32),
    Name(String),
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSyscallEntry {
    Name(String),
    Rule(RawSyscallRule),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSyscallRule {
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) names: Vec<String>,
    #[serde(default)]
    pub(crate) args: Vec<RawArg>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawArg {
    pub(crate) index: u32,
    pub(crate) op: String,
    pub(crate) value: u64,
    #[serde(default, alias = "value_two")]
    pub(crate) value_two: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExec {
    #[serde(default)]
    pub(crate) allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) deny: Option<Vec<Spanned<String>>>,
    pub(crate) action: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetwork {
    pub(crate) egress: Option<Spanned<RawDirection>>,
    pub(crate) ingress: Option<Spanned<RawDirection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDirection {
    pub(crate) default: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) rules: Vec<Spanned<RawNetRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNetRule {
    #[serde(default)]
    pub(crate) name: Option<String>,
    pub(crate) action: Spanned<String>,
    #[serde(default)]
    pub(crate) cidr: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) ports: Vec<Spanned<RawPort>>,
    #[serde(default)]
    pub(crate) protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawPort {
    Number(u32),
    Range(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawResources {
    pub(crate) memory: Option<Spanned<RawSize>>,
    pub(crate) cpu: Option<Spanned<f64>>,
    pub(crate) pids: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFiles {
    #[serde(default)]
    pub(crate) action: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) errno: Option<Spanned<RawErrno>>,
    #[serde(default)]
    pub(crate) deny: Option<Vec<Spanned<RawFileRule>>>,
    /// Refused with a message of its own (file rules are deny-lists).
    #[serde(default)]
    pub(crate) allow: Option<Spanned<serde::de::IgnoredAny>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFileRule {
    #[serde(default)]
    pub(crate) name: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) paths: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) access: Option<Vec<Spanned<String>>>,
}
