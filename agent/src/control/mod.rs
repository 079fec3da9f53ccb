//! The agent's side of the control socket (the protocol is `palisade_proto`'s): accepts
//! connections and answers each request, or streams events to a subscriber.
mod filter;
mod learn;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use palisade_proto::{Reply, Request, valid_name};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use self::filter::{Filter, filter};
use crate::{events::Hub, policy, state::StateHandle};

/// What the control socket answers from: the state owner, the policy task, the event hub.
#[derive(Clone)]
pub struct Context {
    pub state: StateHandle,
    pub policy: policy::Handle,
    pub hub: Arc<Hub>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another agent answers on the control socket {0} (stop it, or set `control_socket` in the config)"
    )]
    InUse(PathBuf),
    #[error("cannot create the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Binds the socket (root-only, 0600). A stale socket file is replaced; a live one is an error.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves connections until the task is dropped.
pub async fn serve(listener: UnixListener, ctx: Context) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, ctx).await {
                        debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, ctx: Context) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
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
    Ok(())
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
        let line = match rx.recv().await {
            Ok(ev) if filter.matches(&ev) => serde_json::to_string(&*ev).ok(),
            Ok(_) => None,
            Err(RecvError::Lagged(n)) => {
                hub.count_dropped("subscriber", n);
                Some(format!("{{\"type\":\"events_lost\",\"count\":{n}}}"))
            }
            Err(RecvError::Closed) => return Ok(()),
        };
        if let Some(mut line) = line {
            line.push('\n');
            write.write_all(line.as_bytes()).await?;
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
    }
}

fn data(r: Result<serde_json::Value, policy::PolicyError>) -> Reply {
    match r {
        Ok(d) => Reply::data(d),
        Err(e) => Reply::err(e.to_string()),
    }
}
