//! `palisade events`: follow a running agent's event stream through its control socket.
use std::{io::Write as _, path::Path};

use palisade_proto::{ClientError, Conn, Request};

#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("{0} (start one with `palisade agent`, or point --socket at its control_socket)")]
    Connect(ClientError),
    #[error("the agent refused the subscription: {0}")]
    Refused(ClientError),
    #[error("lost the agent: {0}")]
    Agent(ClientError),
    #[error("cannot write the events: {0}")]
    Stdout(#[from] std::io::Error),
}

/// Subscribes and copies events to stdout until the agent goes away (then `Ok`).
pub fn run(socket: &Path, containers: Vec<String>, types: Vec<String>) -> Result<(), TailError> {
    let mut conn = Conn::connect(socket, None).map_err(TailError::Connect)?;
    conn.request(&Request::Subscribe { containers, types })
        .map_err(TailError::Refused)?;
    let stdout = std::io::stdout();
    for l in conn.lines() {
        let l = l.map_err(TailError::Agent)?;
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
