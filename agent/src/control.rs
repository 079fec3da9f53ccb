//! The agent's control socket: a root-only unix socket speaking one JSON object per line.
//!
//! Requests (`op` selects the kind) and replies:
//! - `{"op":"ping"}` → `{"ok":true,"version":"0.1.0"}`
//! - `{"op":"register","name":"web-0","cgroup_id":1234,"cgroup_path":"/palisade/web-0"}` →
//!   `{"ok":true}` once the cgroup is named `web-0` in the registry and traced by the kernel
//!   programs (also when a `--cgroup` filter would not select it: registering is opting in).
//!   The launcher waits for this reply before it execs the workload, so telemetry covers the
//!   workload's first instruction.
//!
//! - `{"op":"subscribe","containers":["web-*"],"types":["exec","exit"]}` → `{"ok":true}`, then
//!   one event per line (the README's event schema) until the client hangs up. Empty lists mean
//!   everything. When the subscriber falls behind, a `{"type":"events_lost","count":N}` line
//!   says how many events it missed.
//!
//! - Policies: `{"op":"policy_status"}`, `{"op":"policy_mode","name":"web","mode":"audit"}`,
//!   `{"op":"policy_reload"}`, `{"op":"policy_learn","container":"web","duration_ms":60000}`
//!   (answers when the window is over) → `{"ok":true,"data":...}`. A `register` may carry the
//!   workload's `policy` (see `crate::policy::LaunchPolicy`), enforced before the reply.
//!
//! Errors reply `{"ok":false,"error":"..."}`; the connection stays open for further requests.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, info, warn};

use crate::{
    config::Pattern,
    events::{EventType, Filter},
    state::Shared,
};

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

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// A struct variant (not a unit one) so that `deny_unknown_fields` rejects extra keys:
    /// serde ignores unknown fields next to the tag of a unit variant.
    Ping {},
    Register {
        name: String,
        cgroup_id: u64,
        /// Path relative to the unified root, e.g. `/palisade/web-0`.
        cgroup_path: String,
        /// The workload's policies (`palisade run --policy`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        policy: Option<crate::policy::LaunchPolicy>,
    },
    Subscribe {
        /// Globs over container names and ids.
        #[serde(default)]
        containers: Vec<String>,
        /// Event types (`exec`, `exit`, `oom`, `container_start`, `container_stop`).
        #[serde(default)]
        types: Vec<String>,
    },
    PolicyStatus {},
    PolicyMode {
        name: String,
        /// `audit` or `enforce`.
        mode: String,
    },
    PolicyReload {},
    PolicyLearn {
        /// Glob over container names and ids.
        container: String,
        duration_ms: u64,
    },
}

/// Builds an event filter from a subscribe request.
pub fn filter(containers: &[String], types: &[String]) -> Result<Filter, String> {
    let containers = containers
        .iter()
        .map(|g| Pattern::new(g))
        .collect::<Result<Vec<_>, _>>()?;
    let types = types
        .iter()
        .map(|t| {
            EventType::parse(t).ok_or_else(|| {
                format!(
                    "unknown event type `{t}` (one of: {})",
                    EventType::ALL.map(EventType::as_str).join(", ")
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Filter { containers, types })
}

/// A reply on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Policy operations' answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Reply {
    fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }

    fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            ..Self::default()
        }
    }
}

/// Workload names: what a container name may hold.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !name.starts_with('.')
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
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, shared).await {
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

async fn connection(stream: UnixStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => Reply::err(format!("bad request: {e}")),
            Ok(Request::Subscribe { containers, types }) => match filter(&containers, &types) {
                Ok(f) => return stream_events(write, f, &shared).await,
                Err(e) => Reply::err(e),
            },
            Ok(req) => handle(req, &shared).await,
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
    shared: &Shared,
) -> std::io::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = shared.hub.subscribe();
    write.write_all(b"{\"ok\":true}\n").await?;
    loop {
        let line = match rx.recv().await {
            Ok(ev) if filter.matches(&ev) => serde_json::to_string(&*ev).ok(),
            Ok(_) => None,
            Err(RecvError::Lagged(n)) => {
                shared.hub.count_dropped("subscriber", n);
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

async fn handle(req: Request, shared: &Shared) -> Reply {
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
            match shared
                .register_workload(cgroup_id, &cgroup_path, &name)
                .await
            {
                Ok(()) => {
                    if let Err(e) =
                        crate::policy::on_register(shared, cgroup_id, policy.as_ref()).await
                    {
                        return Reply::err(format!("policy: {e}"));
                    }
                    info!(container = %name, cgroup_id, cgroup_path, "workload registered");
                    Reply::ok()
                }
                Err(e) => Reply::err(e.to_string()),
            }
        }
        Request::PolicyStatus {} => data(shared.policy.status().await),
        Request::PolicyMode { name, mode } => match palisade_policy::Mode::parse(&mode) {
            None => Reply::err(format!("unknown mode `{mode}` (audit or enforce)")),
            Some(m) => data(
                shared
                    .policy
                    .mode(name, m)
                    .await
                    .map(|()| serde_json::Value::Null),
            ),
        },
        Request::PolicyReload {} => data(shared.policy.reload().await.map(serde_json::Value::from)),
        Request::PolicyLearn {
            container,
            duration_ms,
        } => data(
            crate::policy::learn::learn(
                shared,
                &container,
                std::time::Duration::from_millis(duration_ms),
            )
            .await
            .map(|l| crate::policy::learn::to_json(&l)),
        ),
    }
}

fn data(r: Result<serde_json::Value, String>) -> Reply {
    match r {
        Ok(d) => Reply {
            ok: true,
            data: (!d.is_null()).then_some(d),
            ..Reply::default()
        },
        Err(e) => Reply::err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format() {
        let r: Request = serde_json::from_str(
            r#"{"op":"register","name":"web-0","cgroup_id":7,"cgroup_path":"/palisade/web-0"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Request::Register {
                name: "web-0".into(),
                cgroup_id: 7,
                cgroup_path: "/palisade/web-0".into(),
                policy: None,
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"ping"}"#).unwrap(),
            Request::Ping {}
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"ping","x":1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&Reply::ok()).unwrap(),
            r#"{"ok":true}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::err("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
    }

    #[test]
    fn workload_names() {
        assert!(valid_name("web-0"));
        assert!(valid_name("db_primary.1"));
        assert!(!valid_name(""));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("x y"));
        assert!(!valid_name(&"a".repeat(129)));
    }
}
