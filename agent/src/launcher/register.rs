//! The launcher's side of the agent's control socket (see `crate::control`): one connection,
//! a ping, then one `register` per workload, each answered once the agent names and traces the
//! cgroup. Requests go out before the children are cloned and the replies are read after, so
//! the agent's work overlaps the launcher's.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::control::{Reply, Request};

/// How long the agent may take to answer (it registers in its kernel maps first).
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct AgentConn {
    path: PathBuf,
    write: UnixStream,
    read: BufReader<UnixStream>,
    pending: usize,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("path", &self.path)
            .finish()
    }
}

impl AgentConn {
    /// Connects and pings; the error is a sentence for a warning or an error.
    pub fn connect(path: &Path) -> Result<Self, String> {
        let write = UnixStream::connect(path)
            .map_err(|e| format!("no agent answers on {}: {e}", path.display()))?;
        let _ = write.set_read_timeout(Some(TIMEOUT));
        let _ = write.set_write_timeout(Some(TIMEOUT));
        let read = write
            .try_clone()
            .map_err(|e| format!("agent socket {}: {e}", path.display()))?;
        let mut conn = Self {
            path: path.to_owned(),
            write,
            read: BufReader::new(read),
            pending: 0,
        };
        conn.send(&Request::Ping {})?;
        conn.reply()?;
        Ok(conn)
    }

    fn send(&mut self, req: &Request) -> Result<(), String> {
        let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
        line.push('\n');
        self.write
            .write_all(line.as_bytes())
            .map_err(|e| format!("agent on {}: {e}", self.path.display()))?;
        self.pending += 1;
        Ok(())
    }

    /// Sends a registration; its answer is read by [`AgentConn::reply`].
    pub fn register(
        &mut self,
        name: &str,
        cgroup_id: u64,
        cgroup_path: &str,
        policy: Option<&crate::policy::LaunchPolicy>,
    ) -> Result<(), String> {
        self.send(&Request::Register {
            name: name.to_owned(),
            cgroup_id,
            cgroup_path: cgroup_path.to_owned(),
            policy: policy.cloned(),
        })
    }

    /// Reads the next answer; an error when the agent refused or did not answer in time.
    pub fn reply(&mut self) -> Result<(), String> {
        let mut line = String::new();
        let n = self
            .read
            .read_line(&mut line)
            .map_err(|e| format!("agent on {} did not answer: {e}", self.path.display()))?;
        if n == 0 {
            return Err(format!(
                "agent on {} closed the connection",
                self.path.display()
            ));
        }
        self.pending = self.pending.saturating_sub(1);
        let reply: Reply = serde_json::from_str(&line).map_err(|e| {
            format!(
                "agent on {} answered something else than palisade's protocol: {e}",
                self.path.display()
            )
        })?;
        if reply.ok {
            Ok(())
        } else {
            Err(format!(
                "agent on {} refused: {}",
                self.path.display(),
                reply.error.unwrap_or_default()
            ))
        }
    }
}
