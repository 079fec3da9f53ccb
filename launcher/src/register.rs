//! The launcher's side of the agent's control socket (`palisade_proto`): one connection,
//! a ping, then one `register` per workload, each answered once the agent names and traces the
//! cgroup. Requests go out before the children are cloned and the replies are read after, so
//! the agent's work overlaps the launcher's.
use std::{path::Path, time::Duration};

use palisade_proto::{ClientError, Conn, LaunchPolicy, Request};

/// How long the agent may take to answer (it registers in its kernel maps first).
const TIMEOUT: Duration = Duration::from_secs(10);

/// A connection that has answered a ping.
#[derive(Debug)]
pub struct AgentConn(Conn);

impl AgentConn {
    /// Connects and pings.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let mut c = Conn::connect(path, Some(TIMEOUT))?;
        c.request(&Request::Ping {})?;
        Ok(Self(c))
    }

    /// Sends a registration; its answer is read by [`AgentConn::reply`].
    pub fn register(
        &mut self,
        name: &str,
        cgroup_id: u64,
        cgroup_path: &str,
        policy: Option<&LaunchPolicy>,
    ) -> Result<(), ClientError> {
        self.0.send(&Request::Register {
            name: name.to_owned(),
            cgroup_id,
            cgroup_path: cgroup_path.to_owned(),
            policy: policy.cloned(),
        })
    }

    /// Reads the next answer; an error when the agent refused or did not answer in time.
    pub fn reply(&mut self) -> Result<(), ClientError> {
        self.0.recv().map(drop)
    }
}
