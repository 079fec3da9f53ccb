//! OTLP log export: every event on the Hub (flow records, exec/exit/OOM, container start/stop,
//! and whatever else is published) becomes one OpenTelemetry log record, pushed over OTLP/HTTP
//! (JSON or protobuf) in batches from an exporter thread that counts every record delivered
//! or dropped (`export`).
//!
//! A record's body is the event's JSON (the same line the event log writes), its event name the
//! event type, and the fields people filter on are attributes with OpenTelemetry semantic names
//! (`container.id`, `container.name`, `k8s.namespace.name`, `process.pid`, …).
use std::{sync::Arc, time::Duration};

use opentelemetry::{
    KeyValue,
    logs::{AnyValue, Logger as _, LoggerProvider as _, Severity},
};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{Resource, logs::SdkLoggerProvider};
use tokio::sync::broadcast::{
    self,
    error::{RecvError, TryRecvError},
};
use tracing::{info, warn};

mod export;

use crate::{
    config::{Invalid, OtlpConfig, OtlpProtocol},
    events::{Event, EventType, Hub},
};

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(transparent)]
    Config(#[from] Invalid),
    #[error("cannot build the OTLP exporter: {0}")]
    Build(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The running exporter; `shutdown` sends what is queued (or counts it dropped).
pub struct Exporter {
    provider: SdkLoggerProvider,
    task: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Exporter {
    /// Call once the producers have stopped: takes the events still queued on the hub, then
    /// sends the exporter's queue (a failure counts the rest dropped), within a bound.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .is_err()
        {
            warn!("the OTLP task did not end at shutdown");
        }
        let provider = self.provider;
        let r = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(10))
        })
        .await;
        if let Ok(Err(e)) = r {
            warn!(error = %e, "OTLP flush at shutdown failed");
        }
    }
}

/// Starts exporting when an endpoint is configured; `rx` was subscribed to the hub before
/// any event was published, so every event is either exported or counted dropped.
pub fn start(
    cfg: &OtlpConfig,
    hub: Arc<Hub>,
    rx: Option<broadcast::Receiver<Arc<Event>>>,
) -> Result<Option<Exporter>, OtlpError> {
    let types = cfg.event_types()?;
    let (Some(endpoint), Some(mut rx)) = (&cfg.endpoint, rx) else {
        return Ok(None);
    };
    let url = format!("{}/v1/logs", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::LogExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .with_protocol(match cfg.protocol {
            OtlpProtocol::Protobuf => Protocol::HttpBinary,
            OtlpProtocol::Json => Protocol::HttpJson,
        })
        .with_timeout(cfg.timeout)
        .with_headers(cfg.headers.clone().into_iter().collect())
        .build()?;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let provider = SdkLoggerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("palisade")
                .with_attributes([
                    KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                    KeyValue::new("host.name", host),
                ])
                .build(),
        )
        .with_log_processor(export::Counting::new(
            exporter,
            cfg.queue,
            cfg.max_backoff,
            hub.clone(),
        ))
        .build();
    let logger = provider.logger("palisade");
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let r = if stopping {
                match rx.try_recv() {
                    Ok(ev) => Ok(ev),
                    Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            } else {
                tokio::select! {
                    biased;
                    r = rx.recv() => r,
                    _ = &mut stopped => {
                        stopping = true;
                        continue;
                    }
                }
            };
            match r {
                Ok(ev) if types.is_empty() || types.contains(&ev.kind) => {
                    let mut r = logger.create_log_record();
                    fill(&mut r, &ev);
                    logger.emit(r);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => hub.count_dropped("otlp", n),
                Err(RecvError::Closed) => break,
            }
        }
    });
    info!(endpoint = %url, protocol = ?cfg.protocol, "exporting events as OTLP logs");
    Ok(Some(Exporter {
        provider,
        task,
        stop,
    }))
}

fn fill(r: &mut impl opentelemetry::logs::LogRecord, ev: &Event) {
    r.set_event_name(ev.kind.as_str());
    if let Ok(t) = humantime::parse_rfc3339(&ev.time) {
        r.set_timestamp(t);
    }
    let (sev, text) = match ev.kind {
        EventType::Oom | EventType::PolicyViolation => (Severity::Warn, "WARN"),
        _ => (Severity::Info, "INFO"),
    };
    r.set_severity_number(sev);
    r.set_severity_text(text);
    r.set_body(AnyValue::from(
        serde_json::to_string(ev).unwrap_or_default(),
    ));
    for (k, v) in attributes(ev) {
        r.add_attribute(k, v);
    }
}

/// The attributes of an event's log record.
pub fn attributes(ev: &Event) -> Vec<(&'static str, AnyValue)> {
    let c = &ev.container;
    let mut a: Vec<(&'static str, AnyValue)> = vec![
        ("event.name", ev.kind.as_str().into()),
        ("container.id", c.id.clone().into()),
        ("container.name", c.name.clone().into()),
        ("container.runtime", c.runtime.clone().into()),
        ("palisade.cgroup_id", AnyValue::Int(c.cgroup_id as i64)),
    ];
    for (k, v) in [
        ("container.image.name", &c.image),
        ("k8s.namespace.name", &c.namespace),
        ("k8s.pod.name", &c.pod),
    ] {
        if !v.is_empty() {
            a.push((k, v.clone().into()));
        }
    }
    if let Some(p) = &ev.process {
        a.push(("process.pid", AnyValue::Int(i64::from(p.pid))));
        if !p.exe.is_empty() {
            a.push(("process.executable.path", p.exe.clone().into()));
        }
    }
    if let Some(code) = ev.exit_code {
        a.push(("process.exit.code", AnyValue::Int(i64::from(code))));
    }
    if let Some(f) = &ev.flow {
        a.push(("network.transport", f.protocol.clone().into()));
        a.push(("network.io.direction", f.direction.clone().into()));
        a.push(("palisade.flow.local", f.local.clone().into()));
        a.push(("palisade.flow.remote", f.remote.clone().into()));
        a.push(("palisade.flow.bytes_out", AnyValue::Int(f.bytes_out as i64)));
        a.push(("palisade.flow.bytes_in", AnyValue::Int(f.bytes_in as i64)));
    }
    if let Some(v) = &ev.violation {
        for (k, val) in [
            ("palisade.policy.name", &v.policy),
            ("palisade.policy.rule", &v.rule),
            ("palisade.policy.action", &v.action),
            ("palisade.policy.mode", &v.mode),
            ("palisade.policy.hook", &v.hook),
        ] {
            a.push((k, val.clone().into()));
        }
        if let Some(s) = &v.syscall {
            a.push(("palisade.policy.syscall", s.clone().into()));
        }
        if let Some(e) = &v.exec {
            a.push(("palisade.policy.exec", e.clone().into()));
        }
        if let Some(n) = &v.network {
            a.push(("network.transport", n.protocol.clone().into()));
            a.push((
                "palisade.policy.network.direction",
                n.direction.clone().into(),
            ));
            if !n.remote.is_empty() {
                a.push(("palisade.policy.network.remote", n.remote.clone().into()));
            }
        }
        a.push((
            "palisade.policy.suppressed",
            AnyValue::Int(v.suppressed as i64),
        ));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ContainerRef, ProcessRef};

    #[test]
    fn attributes_use_semantic_names() {
        let ev = Event {
            process: Some(ProcessRef {
                pid: 9,
                ppid: None,
                uid: 0,
                comm: "sh".into(),
                exe: "/bin/sh".into(),
                args: vec![],
                args_truncated: false,
            }),
            exit_code: Some(2),
            ..Event::new(
                EventType::Exit,
                "2026-01-01T00:00:00Z".into(),
                ContainerRef {
                    id: "abc".into(),
                    name: "web".into(),
                    cgroup_id: 5,
                    runtime: "docker".into(),
                    image: "nginx".into(),
                    namespace: String::new(),
                    pod: String::new(),
                },
            )
        };
        let a = attributes(&ev);
        let get = |k| a.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        assert_eq!(
            get("container.name"),
            Some(AnyValue::from("web".to_owned()))
        );
        assert_eq!(
            get("container.image.name"),
            Some(AnyValue::from("nginx".to_owned()))
        );
        assert_eq!(get("process.exit.code"), Some(AnyValue::Int(2)));
        assert_eq!(get("palisade.cgroup_id"), Some(AnyValue::Int(5)));
        assert!(get("k8s.pod.name").is_none(), "empty values are left out");
    }
}
