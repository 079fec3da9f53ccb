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
use opentelemetry_semantic_conventions::{attribute as semconv, resource};
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
    node: &str,
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
    let provider = SdkLoggerProvider::builder()
        .with_resource(resource(node))
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

/// Who sends: `service.name` palisade, its version, and the node (`host.name`, and
/// `service.instance.id`: one agent per node, so a backend's `instance` is the node's name, as
/// the Kubernetes monitors set it for scrapes).
pub fn resource(node: &str) -> Resource {
    Resource::builder()
        .with_service_name("palisade")
        .with_attributes([
            KeyValue::new(resource::SERVICE_VERSION, env!("CARGO_PKG_VERSION")),
            KeyValue::new(resource::SERVICE_INSTANCE_ID, node.to_owned()),
            KeyValue::new(resource::HOST_NAME, node.to_owned()),
        ])
        .build()
}

fn fill(r: &mut impl opentelemetry::logs::LogRecord, ev: &Event) {
    r.set_event_name(ev.kind.as_str());
    if let Ok(t) = humantime::parse_rfc3339(&ev.time) {
        r.set_timestamp(t);
    }
    let (sev, text) = match ev.kind {
        EventType::Oom | EventType::PolicyViolation | EventType::PolicyUnenforced => {
            (Severity::Warn, "WARN")
        }
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

/// `nginx:1.25` → (`nginx`, [`1.25`]); `registry:5000/a/b:v1@sha256:…` → (`registry:5000/a/b`,
/// [`v1`]); a name without a tag has no tags. A digest is not a tag and is left out.
pub fn image_name_and_tags(image: &str) -> (&str, Vec<&str>) {
    let named = image.split_once('@').map_or(image, |(n, _)| n);
    match named.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') && !tag.is_empty() => (name, vec![tag]),
        _ => (named, Vec::new()),
    }
}

/// `network.io.direction` of a policy's network direction: egress is what the container sends
/// (`transmit`), ingress what it receives.
fn io_direction(policy_direction: &str) -> Option<&'static str> {
    match policy_direction {
        "egress" => Some("transmit"),
        "ingress" => Some("receive"),
        _ => None,
    }
}

/// Address and port attributes of an `addr:port` endpoint (`[v6]:port` too).
fn endpoint(
    a: &mut Vec<(&'static str, AnyValue)>,
    text: &str,
    address: &'static str,
    port: &'static str,
) {
    if let Ok(s) = text.parse::<std::net::SocketAddr>() {
        a.push((address, s.ip().to_string().into()));
        a.push((port, AnyValue::Int(i64::from(s.port()))));
    }
}

/// Runtimes whose containers are Kubernetes containers when a pod is known.
const KUBERNETES_CONTAINER_RUNTIMES: &[&str] = &["docker", "containerd", "cri-o", "cri"];

/// The attributes of an event's log record, by the OpenTelemetry semantic conventions
/// (`opentelemetry-semantic-conventions` 0.33); what they do not name is `palisade.*`. The event
/// type is the record's event name, not an attribute.
pub fn attributes(ev: &Event) -> Vec<(&'static str, AnyValue)> {
    let c = &ev.container;
    let mut a: Vec<(&'static str, AnyValue)> = vec![
        (semconv::CONTAINER_ID, c.id.clone().into()),
        (semconv::CONTAINER_NAME, c.name.clone().into()),
        (semconv::CONTAINER_RUNTIME_NAME, c.runtime.clone().into()),
        ("palisade.cgroup_id", AnyValue::Int(c.cgroup_id as i64)),
    ];
    if !c.image.is_empty() {
        let (name, tags) = image_name_and_tags(&c.image);
        a.push((semconv::CONTAINER_IMAGE_NAME, name.to_owned().into()));
        if !tags.is_empty() {
            a.push((
                semconv::CONTAINER_IMAGE_TAGS,
                AnyValue::ListAny(Box::new(
                    tags.into_iter().map(|t| t.to_owned().into()).collect(),
                )),
            ));
        }
    }
    for (k, v) in [
        (semconv::K8S_NAMESPACE_NAME, &c.namespace),
        (semconv::K8S_POD_NAME, &c.pod),
        (semconv::K8S_POD_UID, &c.pod_uid),
    ] {
        if !v.is_empty() {
            a.push((k, v.clone().into()));
        }
    }
    if !c.pod.is_empty() && KUBERNETES_CONTAINER_RUNTIMES.contains(&c.runtime.as_str()) {
        a.push((semconv::K8S_CONTAINER_NAME, c.name.clone().into()));
    }
    if let Some(p) = &ev.process {
        a.push((semconv::PROCESS_PID, AnyValue::Int(i64::from(p.pid))));
        if let Some(ppid) = p.ppid {
            a.push((semconv::PROCESS_PARENT_PID, AnyValue::Int(i64::from(ppid))));
        }
        if !p.exe.is_empty() {
            a.push((semconv::PROCESS_EXECUTABLE_PATH, p.exe.clone().into()));
        }
        if !p.args.is_empty() {
            a.push((
                semconv::PROCESS_COMMAND_ARGS,
                AnyValue::ListAny(Box::new(p.args.iter().map(|s| s.clone().into()).collect())),
            ));
        }
    }
    if let Some(code) = ev.exit_code {
        a.push((semconv::PROCESS_EXIT_CODE, AnyValue::Int(i64::from(code))));
    }
    if let Some(f) = &ev.flow {
        // A flow record carries both directions (bytes_out, bytes_in): who opened it is
        // `palisade.flow.direction`, not `network.io.direction` (transmit/receive of one count).
        a.push((semconv::NETWORK_TRANSPORT, f.protocol.clone().into()));
        a.push(("palisade.flow.direction", f.direction.clone().into()));
        endpoint(
            &mut a,
            &f.local,
            semconv::NETWORK_LOCAL_ADDRESS,
            semconv::NETWORK_LOCAL_PORT,
        );
        endpoint(
            &mut a,
            &f.remote,
            semconv::NETWORK_PEER_ADDRESS,
            semconv::NETWORK_PEER_PORT,
        );
        a.push(("palisade.flow.bytes_out", AnyValue::Int(f.bytes_out as i64)));
        a.push(("palisade.flow.bytes_in", AnyValue::Int(f.bytes_in as i64)));
    }
    if let Some(u) = &ev.unenforced {
        a.push(("palisade.policy.name", u.policy.clone().into()));
        a.push(("palisade.policy.unenforced.reason", u.reason.clone().into()));
        a.push((
            "palisade.policy.unenforced.resolved",
            AnyValue::Boolean(u.resolved),
        ));
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
        if let Some(f) = &v.file {
            a.push(("file.path", f.path.clone().into()));
            a.push(("palisade.policy.file.access", f.access.clone().into()));
        }
        if let Some(n) = &v.network {
            a.push((semconv::NETWORK_TRANSPORT, n.protocol.clone().into()));
            if let Some(d) = io_direction(&n.direction) {
                a.push((semconv::NETWORK_IO_DIRECTION, d.into()));
            }
            endpoint(
                &mut a,
                &n.local,
                semconv::NETWORK_LOCAL_ADDRESS,
                semconv::NETWORK_LOCAL_PORT,
            );
            endpoint(
                &mut a,
                &n.remote,
                semconv::NETWORK_PEER_ADDRESS,
                semconv::NETWORK_PEER_PORT,
            );
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
    use crate::events::{ContainerRef, FlowRecord, NetworkRef, ProcessRef, Violation};

    fn container(runtime: &str, image: &str, pod: &str) -> ContainerRef {
        ContainerRef {
            id: "abc".into(),
            name: "web".into(),
            cgroup_id: 5,
            runtime: runtime.into(),
            image: image.into(),
            namespace: if pod.is_empty() { "" } else { "shop" }.into(),
            pod: pod.into(),
            pod_uid: if pod.is_empty() {
                ""
            } else {
                "5c3f7e2a-1b4d-4e6f-8a9b-0c1d2e3f4a5b"
            }
            .into(),
        }
    }

    fn get(a: &[(&'static str, AnyValue)], k: &str) -> Option<AnyValue> {
        a.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    fn s(v: &str) -> Option<AnyValue> {
        Some(AnyValue::from(v.to_owned()))
    }

    fn list(v: &[&str]) -> Option<AnyValue> {
        Some(AnyValue::ListAny(Box::new(
            v.iter().map(|x| AnyValue::from((*x).to_owned())).collect(),
        )))
    }

    #[test]
    fn attributes_use_semantic_names() {
        let ev = Event {
            process: Some(ProcessRef {
                pid: 9,
                ppid: Some(4),
                uid: 0,
                comm: "sh".into(),
                exe: "/bin/sh".into(),
                args: vec!["sh".into(), "-c".into(), "true".into()],
                args_truncated: false,
            }),
            exit_code: Some(2),
            ..Event::new(
                EventType::Exit,
                "2026-01-01T00:00:00Z".into(),
                container(
                    "containerd",
                    "registry:5000/shop/nginx:1.25@sha256:00",
                    "cart",
                ),
            )
        };
        let a = attributes(&ev);
        assert_eq!(get(&a, "container.name"), s("web"));
        assert_eq!(get(&a, "container.runtime.name"), s("containerd"));
        assert_eq!(get(&a, "container.runtime"), None, "deprecated name");
        assert_eq!(
            get(&a, "container.image.name"),
            s("registry:5000/shop/nginx")
        );
        assert_eq!(get(&a, "container.image.tags"), list(&["1.25"]));
        assert_eq!(get(&a, "k8s.namespace.name"), s("shop"));
        assert_eq!(get(&a, "k8s.pod.name"), s("cart"));
        assert_eq!(
            get(&a, "k8s.pod.uid"),
            s("5c3f7e2a-1b4d-4e6f-8a9b-0c1d2e3f4a5b")
        );
        assert_eq!(get(&a, "k8s.container.name"), s("web"));
        assert_eq!(get(&a, "process.pid"), Some(AnyValue::Int(9)));
        assert_eq!(get(&a, "process.parent_pid"), Some(AnyValue::Int(4)));
        assert_eq!(get(&a, "process.command_args"), list(&["sh", "-c", "true"]));
        assert_eq!(get(&a, "process.exit.code"), Some(AnyValue::Int(2)));
        assert_eq!(get(&a, "palisade.cgroup_id"), Some(AnyValue::Int(5)));
        assert_eq!(
            get(&a, "event.name"),
            None,
            "the record's event name says it"
        );

        // not Kubernetes: no k8s.* attributes; an image without a tag has no tags
        let a = attributes(&Event::new(
            EventType::Exec,
            "2026-01-01T00:00:00Z".into(),
            container("docker", "nginx", ""),
        ));
        assert_eq!(get(&a, "container.image.name"), s("nginx"));
        assert_eq!(get(&a, "container.image.tags"), None);
        assert!(a.iter().all(|(k, _)| !k.starts_with("k8s.")), "{a:?}");
    }

    #[test]
    fn image_names_and_tags() {
        assert_eq!(image_name_and_tags("nginx:1.25"), ("nginx", vec!["1.25"]));
        assert_eq!(
            image_name_and_tags("localhost:5000/a/b"),
            ("localhost:5000/a/b", vec![])
        );
        assert_eq!(image_name_and_tags("a/b@sha256:ff"), ("a/b", vec![]));
        assert_eq!(
            image_name_and_tags("quay.io/x:v1@sha256:ff"),
            ("quay.io/x", vec!["v1"])
        );
    }

    #[test]
    fn flows_and_network_violations() {
        let mut ev = Event::new(
            EventType::Flow,
            "2026-01-01T00:00:00Z".into(),
            container("palisade", "", ""),
        );
        ev.flow = Some(FlowRecord {
            direction: "outbound".into(),
            protocol: "tcp".into(),
            local: "[fd00::1]:51042".into(),
            remote: "10.0.0.2:7000".into(),
            bytes_out: 10,
            bytes_in: 20,
            packets_out: 1,
            packets_in: 1,
            wire_bytes_out: 50,
            wire_bytes_in: 60,
            duration_seconds: 0.1,
            ended: true,
            partial: false,
            tcp: None,
            dns_query: None,
        });
        let a = attributes(&ev);
        assert_eq!(get(&a, "network.transport"), s("tcp"));
        assert_eq!(get(&a, "network.local.address"), s("fd00::1"));
        assert_eq!(get(&a, "network.local.port"), Some(AnyValue::Int(51042)));
        assert_eq!(get(&a, "network.peer.address"), s("10.0.0.2"));
        assert_eq!(get(&a, "network.peer.port"), Some(AnyValue::Int(7000)));
        assert_eq!(get(&a, "palisade.flow.direction"), s("outbound"));
        assert_eq!(get(&a, "network.io.direction"), None);

        let mut ev = Event::new(
            EventType::PolicyViolation,
            "2026-01-01T00:00:00Z".into(),
            container("palisade", "", ""),
        );
        ev.violation = Some(Violation {
            policy: "web".into(),
            rule: "network.egress[0]".into(),
            action: "errno".into(),
            mode: "enforce".into(),
            hook: "connect".into(),
            syscall: None,
            abi: None,
            checked_as: None,
            errno: None,
            exec: None,
            network: Some(NetworkRef {
                direction: "egress".into(),
                protocol: "tcp".into(),
                local: String::new(),
                remote: "10.0.0.2:7000".into(),
            }),
            exec_detail: crate::events::ExecDetail::default(),
            file: None,
            suppressed: 0,
        });
        let a = attributes(&ev);
        assert_eq!(get(&a, "network.io.direction"), s("transmit"));
        assert_eq!(get(&a, "network.peer.port"), Some(AnyValue::Int(7000)));
        assert_eq!(get(&a, "network.local.address"), None);
        assert_eq!(io_direction("ingress"), Some("receive"));
    }
}
