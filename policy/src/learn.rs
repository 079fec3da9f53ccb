//! The smallest policy that allows what a workload was seen doing, as policy YAML and as an
//! OCI seccomp profile (`palisade policy learn`).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

/// What a learning window recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Learned {
    /// Syscall names that ran (at least one call that did not fail with EPERM).
    pub syscalls: BTreeSet<String>,
    /// Syscalls whose every call failed with EPERM: left out (denying them changes nothing the
    /// workload saw), listed in a comment.
    pub refused: BTreeSet<String>,
    /// Executables: the paths given to execve and, when known, the files they resolved to
    /// (exec rules match the file executed).
    pub execs: BTreeSet<String>,
    /// Outbound peers: (address, port, protocol `tcp`/`udp`).
    pub egress: BTreeSet<(IpAddr, u16, String)>,
    /// Local ports that accepted connections: (port, protocol).
    pub ingress: BTreeSet<(u16, String)>,
    /// Files written, unlinked or chmodded: path → the accesses (`write`, `unlink`, `chmod`).
    /// The path as given to the call; a relative one resolved against the process's working
    /// directory (or the directory fd it named) while the process was there.
    pub files: BTreeMap<String, BTreeSet<String>>,
    /// Relative paths whose process was gone before they could be resolved.
    pub files_unresolved: BTreeSet<String>,
    /// File writes not recorded (the kernel's buffer was full).
    pub files_lost: u64,
    /// Why file writes were not learned at all, if they were not.
    pub files_error: Option<String>,
}

/// The system trees a learned policy denies writes to, where the workload wrote none (the
/// CLI keeps those that are directories, not symlinks, on this host).
pub const SYSTEM_TREES: &[&str] = &[
    "/bin", "/boot", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/root", "/sbin",
    "/usr",
];

/// Where the learned `files` section goes: the system trees it may deny writes to, and
/// whether this host refuses file rules (else the section is written with `action: log`, which
/// a launch accepts, and says why).
#[derive(Debug, Clone, Copy)]
pub struct FilesOut<'a> {
    pub trees: &'a [&'a str],
    /// Why file rules are reported only on this host (`None`: they refuse).
    pub reported_only: Option<&'a str>,
}

/// At most this many written files are listed (the rest counted).
const FILES_LISTED: usize = 200;

/// Whether `path` is `tree` or under it.
fn under(path: &str, tree: &str) -> bool {
    path == tree
        || path
            .strip_prefix(tree)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The `files` section (and the comments before it): file rules are a deny list, so the
/// learned policy lists what the workload wrote in comments and denies writes, unlinks and
/// chmods in each system tree of `trees` it did not write to.
fn files_yaml(y: &mut String, l: &Learned, out: FilesOut<'_>) {
    let trees = out.trees;
    if let Some(e) = &l.files_error {
        let _ = writeln!(
            y,
            "  # File writes were not learned ({e}): no files section."
        );
        return;
    }
    if l.files.is_empty() {
        let _ = writeln!(
            y,
            "  # No file was written, unlinked or chmodded while learning."
        );
    } else {
        let _ = writeln!(
            y,
            "  # Files written, unlinked or chmodded while learning (the path as given to the call,\n  # a relative one resolved against the process's directory; symlinks not followed):"
        );
        for (path, access) in l.files.iter().take(FILES_LISTED) {
            let a: Vec<&str> = access.iter().map(String::as_str).collect();
            let _ = writeln!(y, "  #   {path}: {}", a.join(", "));
        }
        if l.files.len() > FILES_LISTED {
            let _ = writeln!(y, "  #   ... and {} more", l.files.len() - FILES_LISTED);
        }
    }
    if !l.files_unresolved.is_empty() {
        let v: Vec<&str> = l.files_unresolved.iter().map(String::as_str).collect();
        let _ = writeln!(
            y,
            "  # Relative paths not resolved (their process was gone; review them against the trees\n  # denied below): {}",
            v.join(", ")
        );
    }
    if l.files_lost > 0 {
        let _ = writeln!(
            y,
            "  # {} file writes were not recorded (the kernel's buffer was full): learn again, or review the trees below",
            l.files_lost
        );
    }
    let written = |t: &str| l.files.keys().any(|p| under(p, t));
    let (kept, left): (Vec<&str>, Vec<&str>) = trees.iter().copied().partition(|t| !written(t));
    if !left.is_empty() {
        let _ = writeln!(
            y,
            "  # Left out of the deny list, written to while learning: {}",
            left.join(", ")
        );
    }
    if kept.is_empty() {
        let _ = writeln!(
            y,
            "  # No system tree left to deny writes to: no files section."
        );
        return;
    }
    let _ = writeln!(
        y,
        "  # File rules are a deny list: writes, unlinks and chmods in the system trees the\n  # workload did not write to are refused."
    );
    let action = match out.reported_only {
        None => "errno",
        Some(why) => {
            let _ = writeln!(
                y,
                "  # On the host that learned this, file rules are reported only ({why}), and a\n  # launch refuses a rule it cannot apply: `action: log`. Write `action: errno` where\n  # BPF-LSM refuses file rules."
            );
            "log"
        }
    };
    let paths: Vec<String> = kept.iter().map(|t| quote(&format!("{t}/**"))).collect();
    let _ = writeln!(
        y,
        "  files:\n    action: {action}\n    deny:\n      - {{paths: [{}], access: [write, unlink, chmod]}}",
        paths.join(", ")
    );
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A policy named `name` selecting `container` (a container name), enforcing an allow-list of
/// everything learned, and denying writes to the system trees it did not write to (`files`).
pub fn policy_yaml(
    name: &str,
    container: &str,
    l: &Learned,
    window: &str,
    files: FilesOut<'_>,
) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Learned by `palisade policy learn` over {window}: the smallest policy that allows what\n# {container} did. Review it before enforcing it."
    );
    if !l.refused.is_empty() {
        let _ = writeln!(
            y,
            "# Always refused with EPERM while learning (left out, still refused): {}",
            l.refused.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let _ = writeln!(y, "apiVersion: {}", crate::parse::API_VERSION);
    let _ = writeln!(y, "kind: {}", crate::parse::KIND);
    let _ = writeln!(y, "metadata:\n  name: {}", quote(name));
    let _ = writeln!(y, "spec:\n  selector:\n    container: {}", quote(container));
    let _ = writeln!(y, "  mode: enforce");
    let _ = writeln!(
        y,
        "  syscalls:\n    action: errno\n    errno: EPERM\n    allow:"
    );
    for s in &l.syscalls {
        let _ = writeln!(y, "      - {s}");
    }
    if !l.execs.is_empty() {
        let _ = writeln!(y, "  exec:\n    action: kill\n    allow:");
        for e in &l.execs {
            let _ = writeln!(y, "      - {}", quote(e));
        }
    }
    let _ = writeln!(
        y,
        "  network:\n    egress:\n      default: deny\n      rules:"
    );
    if l.egress.is_empty() {
        y.truncate(y.len() - "      rules:\n".len());
    }
    for (addr, port, proto) in &l.egress {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let _ = writeln!(
            y,
            "        - {{action: allow, cidr: {}, ports: [{port}], protocol: {proto}}}",
            quote(&format!("{addr}/{len}"))
        );
    }
    let _ = writeln!(y, "    ingress:\n      default: deny\n      rules:");
    if l.ingress.is_empty() {
        y.truncate(y.len() - "      rules:\n".len());
    }
    for (port, proto) in &l.ingress {
        let _ = writeln!(
            y,
            "        - {{action: allow, ports: [{port}], protocol: {proto}}}"
        );
    }
    files_yaml(&mut y, l, files);
    y
}

/// The equivalent OCI `linux.seccomp` profile: native ABI, EPERM for anything not learned.
pub fn oci_seccomp(l: &Learned) -> String {
    let names: Vec<String> = l.syscalls.iter().map(|s| quote(s)).collect();
    format!(
        "{{\n  \"defaultAction\": \"SCMP_ACT_ERRNO\",\n  \"defaultErrnoRet\": 1,\n  \"architectures\": [\"SCMP_ARCH_X86_64\"],\n  \"syscalls\": [\n    {{\n      \"names\": [{}],\n      \"action\": \"SCMP_ACT_ALLOW\"\n    }}\n  ]\n}}\n",
        names.join(", ")
    )
}
