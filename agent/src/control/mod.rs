//! The agent's side of the control socket (the protocol is `palisade_proto`'s): accepts
//! connections from root peers outside the containers it polices (`peer`), answers each
//! request, or streams events to a subscriber. Requests are bounded in size and connections in
//! number, so a flood of either costs the agent nothing but a refusal.
mod filter;
mod learn;
mod learn_files;
mod peer;
mod socket;

use std::{path::PathBuf, sync::Arc};

use palisade_proto::{Reply, Request, valid_name};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

/// How a subscription's filter is built (for `crate::fuzzing`).
pub(crate) use self::filter::filter as subscription_filter;
use self::filter::{Filter, filter};
pub use self::{
    learn::Windows as LearnWindows,
    socket::{ControlError, bind},
};
use crate::{events::Hub, policy, state::StateHandle};

/// Longest request line (a registration carries its policy file's text).
const MAX_REQUEST: usize = 4 << 20;
/// Connections served at once (subscribers included); more are told so and closed.
const MAX_CONNECTIONS: usize = 64;

/// What the control socket answers from: the state owner, the policy task, the event hub.
#[derive(Clone)]
pub struct Context {
    pub state: StateHandle,
    pub policy: policy::Handle,
    pub hub: Arc<Hub>,
    /// Where the unified hierarchy is mounted (to find a peer's cgroup).
    pub unified_root: PathBuf,
    /// The `policy_learn` windows open now (`policy_learn_end` ends them).
    pub learning: Arc<LearnWindows>,
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: UnixListener, ctx: Context) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((mut stream, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    warn!(
                        limit = MAX_CONNECTIONS,
                        "control socket: too many connections"
                    );
                    tokio::spawn(async move {
                        let _ = refuse(
                            &mut stream,
                            &format!("too many connections (at most {MAX_CONNECTIONS} at once)"),
                        )
                        .await;
                    });
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(why) = peer::check(&stream, &ctx).await {
                        warn!(reason = %why, "control connection refused");
                        let _ = refuse(&mut stream, &why.to_string()).await;
                        return;
                    }
                    if let Err(e) = connection(stream, ctx).await {
                        debug!(error = %e, "control connection ended");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// One error reply, then the connection is closed.
async fn refuse(stream: &mut UnixStream, why: &str) -> std::io::Result<()> {
    let mut out =
        serde_json::to_string(&Reply::err(why)).unwrap_or_else(|_| "{\"ok\":false}".into());
    out.push('\n');
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

async fn connection(stream: UnixStream, ctx: Context) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut read)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(());
        }
        // a line without its newline: too long, or the peer hung up in the middle of one
        if buf.last() != Some(&b'\n') && n > MAX_REQUEST {
            let mut out = serde_json::to_string(&Reply::err(format!(
                "request longer than {MAX_REQUEST} bytes"
            )))
            .unwrap_or_default();
            out.push('\n');
            write.write_all(out.as_bytes()).await?;
            return write.shutdown().await;
        }
        let line = String::from_utf8_lossy(&buf);
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply::err(format!("bad request: {e}")),
            Ok(Request::Subscribe { containers, types }) => match filter(&containers, &types) {
                Ok(f) => return stream_events(write, f, &ctx.hub).await,
                Err(e) => Reply::err(e.to_string()),
            },
            Ok(req) => handle(req, &ctx).await,
        };
        let mut out = serde_json::to_string(&reply).unwrap_or_else(|_| "{\"ok\":false}".into());
        out.push('\n');
        write.write_all(out.as_bytes()).await?;
    }
}

/// Acks a subscription, then writes matching events until the client hangs up.
async fn stream_events(
    mut write: tokio::net::unix::OwnedWriteHalf,
    filter: Filter,
    hub: &Hub,
) -> std::io::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = hub.subscribe();
    write.write_all(b"{\"ok\":true}\n").await?;
    loop {
        // (line, whether it is an event) — the `events_lost` notice is not one
        let line = match rx.recv().await {
            Ok(ev) if filter.matches(&ev) => serde_json::to_string(&*ev).ok().map(|l| (l, true)),
            Ok(_) => None,
            Err(RecvError::Lagged(n)) => {
                hub.count_dropped("subscriber", n);
                Some((format!("{{\"type\":\"events_lost\",\"count\":{n}}}"), false))
            }
            Err(RecvError::Closed) => return Ok(()),
        };
        if let Some((mut line, event)) = line {
            line.push('\n');
            write.write_all(line.as_bytes()).await?;
            if event {
                hub.count_delivered("subscriber", 1);
            }
        }
    }
}

async fn handle(req: Request, ctx: &Context) -> Reply {
    match req {
        Request::Ping {} => Reply {
            ok: true,
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            ..Reply::default()
        },
        Request::Subscribe { .. } => Reply::err("subscribe is handled by the connection"),
        Request::Register {
            name,
            cgroup_id,
            cgroup_path,
            policy,
        } => {
            if !valid_name(&name) {
                return Reply::err(format!(
                    "invalid workload name `{name}` (letters, digits, `-`, `_`, `.`; at most 128)"
                ));
            }
            if !cgroup_path.starts_with('/') {
                return Reply::err(format!(
                    "cgroup_path `{cgroup_path}` must be relative to the unified root and start with `/`"
                ));
            }
            let launched = match policy.as_ref().map(policy::launched).transpose() {
                Ok(l) => l,
                Err(e) => return Reply::err(format!("policy: {e}")),
            };
            match ctx
                .state
                .register(name, cgroup_id, cgroup_path, launched)
                .await
            {
                Ok(()) => Reply::ok(),
                Err(e) => Reply::err(e.to_string()),
            }
        }
        Request::PolicyStatus {} => data(ctx.policy.status().await),
        Request::PolicyMode { name, mode } => match palisade_policy::Mode::parse(&mode) {
            None => Reply::err(format!("unknown mode `{mode}` (audit or enforce)")),
            Some(m) => data(
                ctx.policy
                    .mode(name, m)
                    .await
                    .map(|()| serde_json::Value::Null),
            ),
        },
        Request::PolicyReload {} => data(
            ctx.policy
                .reload()
                .await
                .map(|n| serde_json::Value::from(format!("{n} policies loaded"))),
        ),
        Request::PolicyLearn {
            container,
            duration_ms,
        } => match learn::learn(
            ctx,
            &container,
            std::time::Duration::from_millis(duration_ms),
        )
        .await
        {
            Ok(l) => Reply::data(serde_json::to_value(l).unwrap_or_default()),
            Err(e) => Reply::err(e.to_string()),
        },
        Request::PolicyLearnEnd { container } => {
            Reply::data(serde_json::Value::from(ctx.learning.end(&container)))
        }
    }
}

fn data(r: Result<serde_json::Value, policy::PolicyError>) -> Reply {
    match r {
        Ok(d) => Reply::data(d),
        Err(e) => Reply::err(e.to_string()),
    }
}
