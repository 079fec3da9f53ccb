//! Who may talk to the agent: root processes in the agent's own pid namespace that do not run
//! in a cgroup the agent polices (a cgroup a policy applies to, a launched workload, or
//! anything below them). A workload must not be able to switch its own policy to audit.
use tokio::net::UnixStream;

use super::Context;

/// Why a connection was refused (sent to the peer, then the connection is closed).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("refused: the control socket answers root only (peer uid {0})")]
    NotRoot(u32),
    #[error("refused: the peer's process id is unknown")]
    NoPid,
    #[error("refused: the peer runs in another pid namespace (a container)")]
    OtherPidNamespace,
    #[error("refused: the peer runs in cgroup {0}, which Palisade polices")]
    Policed(String),
    #[error("refused: cannot check the peer: {0}")]
    Unknown(std::io::Error),
}

/// The peer's unified cgroup path (`/system.slice/x.service`), from `/proc/PID/cgroup`.
fn unified_path(pid: i32) -> std::io::Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .ok_or_else(|| std::io::Error::other("no cgroup v2 line in /proc/PID/cgroup"))
}

/// The path and each of its ancestors below the root, deepest first.
fn ancestry(path: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut p = path.trim_end_matches('/');
    while !p.is_empty() {
        out.push(p);
        p = match p.rfind('/') {
            Some(i) => &p[..i],
            None => "",
        };
    }
    out
}

/// Checks a new connection's peer.
pub async fn check(stream: &UnixStream, ctx: &Context) -> Result<(), Refused> {
    let cred = stream.peer_cred().map_err(Refused::Unknown)?;
    if cred.uid() != 0 {
        return Err(Refused::NotRoot(cred.uid()));
    }
    let pid = cred.pid().ok_or(Refused::NoPid)?;
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/pid"));
    if ns(&pid.to_string()).map_err(Refused::Unknown)? != ns("self").map_err(Refused::Unknown)? {
        return Err(Refused::OtherPidNamespace);
    }
    let path = unified_path(pid).map_err(Refused::Unknown)?;
    let ids: Vec<u64> = ancestry(&path)
        .into_iter()
        .filter_map(|p| {
            palisade_cgroupfs::cgroup_id(&palisade_cgroupfs::dir(&ctx.unified_root, p)).ok()
        })
        .collect();
    let policed = ctx
        .policy
        .snapshot()
        .managed
        .iter()
        .any(|id| ids.contains(id))
        || ctx.state.launched(ids).await.unwrap_or(true);
    if policed {
        return Err(Refused::Policed(path));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestry_deepest_first() {
        assert_eq!(ancestry("/a/b/c"), ["/a/b/c", "/a/b", "/a"]);
        assert!(ancestry("/").is_empty());
    }
}
