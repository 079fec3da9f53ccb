//! Validated policies: what the parser produces and everything else consumes.
use std::{fmt, net::IpAddr};

pub use palisade_syscalls::Abi;
pub mod files;

/// Where something was written: `file:line:column` (1-based; 0 when unknown).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loc {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// `audit` reports what would be blocked and blocks nothing; `enforce` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    Audit,
    Enforce,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "audit" => Some(Mode::Audit),
            "enforce" => Some(Mode::Enforce),
            _ => None,
        }
    }
}

/// A glob that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("empty pattern")]
    Empty,
    #[error("invalid glob `{glob}`: {kind}")]
    Invalid {
        glob: String,
        kind: globset::ErrorKind,
    },
}

/// A glob over names, ids or paths (`*` also matches `/`).
#[derive(Clone)]
pub struct Glob {
    pub source: String,
    matcher: globset::GlobMatcher,
}

impl Glob {
    pub fn new(source: &str) -> Result<Self, GlobError> {
        if source.is_empty() {
            return Err(GlobError::Empty);
        }
        let g = globset::GlobBuilder::new(source)
            .literal_separator(false)
            .build()
            .map_err(|e| GlobError::Invalid {
                glob: source.to_owned(),
                kind: e.kind().clone(),
            })?;
        Ok(Self {
            source: source.to_owned(),
            matcher: g.compile_matcher(),
        })
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl<'de> serde::Deserialize<'de> for Glob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Glob::new(&s).map_err(serde::de::Error::custom)
    }
}

impl PartialEq for Glob {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Which cgroups a policy applies to: every given field must match (AND).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Selector {
    /// Name of a `palisade run` workload.
    pub workload: Option<Glob>,
    /// Container name or id (the `container` label, or the runtime's id).
    pub container: Option<Glob>,
    /// Runtime: docker, podman, containerd, cri-o, cri, kubernetes, palisade, systemd, ...
    pub runtime: Option<Glob>,
    /// Kubernetes namespace and pod name.
    pub namespace: Option<Glob>,
    pub pod: Option<Glob>,
    /// Cgroup path relative to the unified root (`/system.slice/*.service`).
    pub cgroup: Option<Glob>,
}

/// What a policy is matched against (one cgroup as the agent knows it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub name: &'a str,
    pub container_id: Option<&'a str>,
    pub runtime: &'a str,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub path: &'a str,
    /// Started by `palisade run` (registered by the launcher).
    pub workload: bool,
}

impl Selector {
    pub fn matches(&self, t: &Target<'_>) -> bool {
        let ok = |g: &Option<Glob>, v: &str| g.as_ref().is_none_or(|g| g.is_match(v));
        self.workload
            .as_ref()
            .is_none_or(|g| t.workload && g.is_match(t.name))
            && self.container.as_ref().is_none_or(|g| {
                g.is_match(t.name) || t.container_id.is_some_and(|id| g.is_match(id))
            })
            && ok(&self.runtime, t.runtime)
            && ok(&self.namespace, t.namespace)
            && ok(&self.pod, t.pod)
            && ok(&self.cgroup, t.path)
    }

    /// The fields given, as `key=glob` (for messages).
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        for (k, g) in [
            ("workload", &self.workload),
            ("container", &self.container),
            ("runtime", &self.runtime),
            ("namespace", &self.namespace),
            ("pod", &self.pod),
            ("cgroup", &self.cgroup),
        ] {
            if let Some(g) = g {
                v.push(format!("{k}={}", g.source));
            }
        }
        v.join(", ")
    }
}

/// Allow-list (anything not listed is denied) or deny-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Allow,
    Deny,
}

/// What happens to a denied syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysAction {
    /// Fail with this errno (seccomp at launch; reported only at run time).
    Errno(u16),
    Kill,
    Log,
}

/// Argument comparison operators, as OCI seccomp has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `(arg & value) == value_two`
    MaskedEq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgCond {
    pub index: u32,
    pub op: ArgOp,
    pub value: u64,
    pub value_two: u64,
}

/// One entry of a syscall list: names and, optionally, argument conditions (all must hold).
#[derive(Debug, Clone, PartialEq)]
pub struct SyscallEntry {
    /// Rule name (the `rule` label): given, or `syscalls.deny[i]` / `syscalls.allow[i]`.
    pub rule: String,
    pub names: Vec<String>,
    /// x86_64 numbers of `names`.
    pub nrs: Vec<u32>,
    pub args: Vec<ArgCond>,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Syscalls {
    pub list: ListKind,
    pub action: SysAction,
    pub entries: Vec<SyscallEntry>,
    /// ABIs the rules hold for (`abis:`; x86_64 always): a call through i386 or x32 is checked
    /// as the x86_64 call it is. A call through an ABI not listed violates [`Self::ABI_RULE`].
    pub abis: Vec<Abi>,
    /// `io_uring: allow`: the io_uring calls run though no rule names them.
    pub io_uring_allowed: bool,
    pub loc: Loc,
}

impl Syscalls {
    /// The rule a call outside an allow-list violates.
    pub const ALLOW_RULE: &'static str = "syscalls.allow";
    /// The rule a call through an ABI the policy does not list violates (killed; reported in
    /// audit mode or by a `log` policy).
    pub const ABI_RULE: &'static str = "syscalls.abi";
    /// The rule the io_uring calls violate where no rule names them: io_uring performs
    /// operations (open, connect, ...) without the syscalls the other rules see.
    pub const IO_URING_RULE: &'static str = "syscalls.io_uring";
    pub const IO_URING: [&'static str; 3] =
        ["io_uring_setup", "io_uring_enter", "io_uring_register"];

    /// Whether any entry names syscall `name`.
    pub fn names(&self, name: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.names.iter().any(|n| n == name))
    }

    /// The io_uring calls the implicit [`Self::IO_URING_RULE`] denies.
    pub fn implicit_io_uring(&self) -> Vec<&'static str> {
        if self.io_uring_allowed {
            return Vec::new();
        }
        Self::IO_URING
            .into_iter()
            .filter(|n| !self.names(n))
            .collect()
    }

    /// The compat ABIs whose calls violate [`Self::ABI_RULE`].
    pub fn refused_abis(&self) -> Vec<Abi> {
        [Abi::I386, Abi::X32]
            .into_iter()
            .filter(|a| !self.abis.contains(a))
            .collect()
    }
}

/// How an exec pattern is matched (see `palisade_common::policy::exec_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExecKind {
    /// `/usr/bin/nc`
    Exact,
    /// `/usr/bin/*`: files directly in the directory.
    Dir,
    /// `/opt/app/**`: anything below the directory.
    Tree,
    /// `**/nc`: any path whose file name is this.
    Basename,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecPattern {
    pub text: String,
    pub kind: ExecKind,
    /// The part that is hashed: the path, the directory or the file name.
    pub key: String,
    pub loc: Loc,
}

impl ExecPattern {
    /// Whether `path` (the resolved path of the file executed, or for deny patterns also the
    /// path given to execve) matches, exactly as the kernel decides.
    pub fn matches(&self, path: &str) -> bool {
        let (dir, base) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        };
        match self.kind {
            ExecKind::Exact => path == self.key,
            ExecKind::Dir => path.contains('/') && dir == self.key,
            ExecKind::Tree => {
                path.len() > self.key.len()
                    && path.starts_with(&self.key)
                    && path.as_bytes().get(self.key.len()) == Some(&b'/')
            }
            ExecKind::Basename => base == self.key,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecAction {
    /// Refused with EPERM at `bprm_check_security` where BPF-LSM is active; killed before the
    /// new image runs an instruction elsewhere (said at load and by `palisade policy check`).
    Errno,
    Kill,
    Log,
}

impl ExecAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ExecAction::Errno => "errno",
            ExecAction::Kill => "kill",
            ExecAction::Log => "log",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exec {
    /// An allow-list (only these may run) when given.
    pub allow: Option<Vec<ExecPattern>>,
    pub deny: Vec<ExecPattern>,
    pub action: ExecAction,
    pub loc: Loc,
    /// Where `action:` is written (the section's start when it is not).
    pub action_loc: Loc,
}

impl Exec {
    pub const ALLOW_RULE: &'static str = "exec.allow";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetAction {
    Allow,
    Deny,
    /// Allowed and reported.
    Log,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    /// Egress socket kinds, allowed or refused when the socket is created (no address or
    /// port): ICMP/ICMPv6 ("ping" and raw ICMP sockets), raw IP sockets of any protocol, packet
    /// sockets. A connection rule (`any` included) never allows them.
    Icmp,
    Raw,
    Packet,
}

impl Proto {
    pub fn number(self) -> u8 {
        use palisade_common::policy::kind;
        match self {
            Proto::Any => 0,
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => kind::ICMP,
            Proto::Raw => kind::RAW,
            Proto::Packet => kind::PACKET,
        }
    }

    /// A socket kind rather than a transport protocol.
    pub fn is_kind(self) -> bool {
        matches!(self, Proto::Icmp | Proto::Raw | Proto::Packet)
    }
}

/// One network rule. Egress: `cidr` is the remote address and `ports` the remote port;
/// ingress: `cidr` is the remote (source) address and `ports` the local port.
#[derive(Debug, Clone, PartialEq)]
pub struct NetRule {
    pub rule: String,
    pub action: NetAction,
    /// `None`: any address (IPv4 and IPv6).
    pub cidr: Option<(IpAddr, u8)>,
    /// Inclusive ranges; empty = every port.
    pub ports: Vec<(u16, u16)>,
    pub proto: Proto,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Direction {
    pub default: NetAction,
    /// `network.egress.default` / `network.ingress.default`.
    pub default_rule: String,
    /// Egress: the rule a raw, packet or ICMP socket no rule allows violates
    /// ([`Direction::KIND_RULE`]); ingress: `None`.
    pub kind_rule: Option<String>,
    pub rules: Vec<NetRule>,
    pub loc: Loc,
}

impl Direction {
    pub const KIND_RULE: &'static str = "network.egress.raw";
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Network {
    pub egress: Option<Direction>,
    pub ingress: Option<Direction>,
}

/// Cgroup limits (applied at launch, and to running containers through cgroupfs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Resources {
    pub memory: Option<u64>,
    /// CFS quota in µs per 100 ms period.
    pub cpu_quota_us: Option<u64>,
    pub pids: Option<i64>,
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu_quota_us.is_none() && self.pids.is_none()
    }

    /// The stricter of two sets of limits, field by field.
    pub fn stricter(self, o: Self) -> Self {
        fn min<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
        Self {
            memory: min(self.memory, o.memory),
            cpu_quota_us: min(self.cpu_quota_us, o.cpu_quota_us),
            pids: min(self.pids, o.pids),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    pub mode: Mode,
    pub selector: Selector,
    pub syscalls: Option<Syscalls>,
    pub exec: Option<Exec>,
    pub files: Option<files::Files>,
    pub network: Network,
    pub resources: Resources,
    /// Where the document starts.
    pub loc: Loc,
}

/// Policies from one or more files, in file and document order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    /// Files read (for messages and change detection).
    pub files: Vec<String>,
}

impl PolicySet {
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }
}

/// One problem, at a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub loc: Loc,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.loc, self.message)
    }
}

/// Why a policy file or set was rejected: every error found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct PolicyErrors(pub Vec<Diagnostic>);
