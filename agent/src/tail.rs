//! `palisade events`: follow a running agent's event stream through its control socket.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use crate::control::{Reply, Request};

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(
        "no agent answers on {path}: {source} (start one with `palisade agent`, or point --socket at its control_socket)"
    )]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent refused the subscription: {0}")]
    Refused(String),
    #[error("lost the agent: {0}")]
    Io(#[from] std::io::Error),
}

/// Subscribes and copies events to stdout until the agent goes away (then `Ok`).
pub fn run(socket: &Path, containers: Vec<String>, types: Vec<String>) -> Result<(), TailError> {
    let mut s = UnixStream::connect(socket).map_err(|source| TailError::Connect {
        path: socket.display().to_string(),
        source,
    })?;
    let req = Request::Subscribe { containers, types };
    let mut line = serde_json::to_string(&req).map_err(|e| TailError::Refused(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut lines = BufReader::new(s).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let reply: Reply = serde_json::from_str(&first)
        .map_err(|e| TailError::Refused(format!("unexpected reply `{first}`: {e}")))?;
    if !reply.ok {
        return Err(TailError::Refused(reply.error.unwrap_or_default()));
    }
    let stdout = std::io::stdout();
    for l in lines {
        let l = l?;
        if l.starts_with("{\"type\":\"events_lost\"") {
            eprintln!("palisade: warning: this subscriber fell behind and missed events: {l}");
            continue;
        }
        let mut out = stdout.lock();
        writeln!(out, "{l}")?;
        out.flush()?;
    }
    eprintln!("palisade: the agent closed the stream");
    Ok(())
}
