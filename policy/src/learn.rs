//! The smallest policy that allows what a workload was seen doing, as policy YAML and as an
//! OCI seccomp profile (`palisade policy learn`).
use std::{collections::BTreeSet, fmt::Write as _, net::IpAddr};

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
/// everything learned.
pub fn policy_yaml(name: &str, container: &str, l: &Learned, window: &str) -> String {
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
