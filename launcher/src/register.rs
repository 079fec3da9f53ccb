//! The launcher's side of the agent's control socket (`palisade_proto`): one connection,
//! a ping, then one `register` per workload, each answered once the agent names and traces the
//! cgroup. Requests go out before the children are cloned and the replies are read after, so
//! the agent's work overlaps the launcher's.
use std::{path::Path, time::Duration};

use palisade_proto::{ClientError, Conn, LaunchPolicy, Request};

/// What the launcher was doing with the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentStep {
    /// Connecting and pinging.
    Connect,
    /// Sending the registration of this workload.
    Register { workload: String },
    /// Waiting for the agent's answer to it.
    Reply { workload: String },
}

/// The agent was required (`--require-agent`, or a policy whose exec and network rules only
/// the agent enforces) and did not register the workload.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}{} ({})",
    AgentSays(.source),
    enforced_by_the_agent(.policies),
    hint(.source)
)]
pub struct AgentError {
    pub step: AgentStep,
    pub source: ClientError,
    /// Policies whose exec and network rules made the agent necessary.
    pub policies: Vec<String>,
}

/// What to do: an agent that answered and refused has said why (e.g. the workload's policies
/// cannot be put in place); one that did not answer must be started or found.
fn hint(e: &ClientError) -> &'static str {
    match e {
        ClientError::Refused { .. } => "nothing was started",
        ClientError::Timeout { .. } => {
            "nothing was started; a busy agent may need a longer --agent-timeout"
        }
        _ => "start `palisade agent`, point --agent-socket at it, or drop --require-agent",
    }
}

fn enforced_by_the_agent(policies: &[String]) -> String {
    if policies.is_empty() {
        return String::new();
    }
    format!(
        "; the exec and network rules of policy {} are enforced by the agent",
        policies.join(", ")
    )
}

/// What the agent said (or why it said nothing), as the launcher reports it.
#[derive(Debug)]
pub struct AgentSays<'a>(pub &'a ClientError);

impl std::fmt::Display for AgentSays<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            ClientError::Refused { path, message } => {
                write!(f, "agent on {} refused: {message}", path.display())
            }
            other => other.fmt(f),
        }
    }
}

/// A connection that has answered a ping.
#[derive(Debug)]
pub struct AgentConn(Conn);

impl AgentConn {
    /// Connects and pings; every answer may take up to `timeout` (`palisade run
    /// --agent-timeout`: the agent registers in its kernel maps first, and may load, verify
    /// and attach the policy programs the workload's rules need).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let mut c = Conn::connect(path, Some(timeout))?;
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
