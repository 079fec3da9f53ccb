//! `otlp:` in the configuration: OTLP/HTTP export of every event.
use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

use super::{Invalid, duration};
use crate::events::EventType;

/// `otlp:` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Collector base URL, e.g. `http://127.0.0.1:4318` (`/v1/logs` is appended). Unset: off.
    pub endpoint: Option<String>,
    /// `http/protobuf` or `http/json`.
    pub protocol: OtlpProtocol,
    /// Extra HTTP headers (e.g. an auth token).
    pub headers: BTreeMap<String, String>,
    /// Per-request timeout.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Event types to export (empty: all).
    pub events: Vec<String>,
    /// Log records waiting for the exporter; past it records are dropped and counted
    /// (`palisade_events_dropped_total{sink="otlp"}`), so a slow or absent collector never
    /// holds anything else up.
    pub queue: usize,
    /// After a failed export the exporter waits (doubling from 100 ms) up to this long before
    /// the next request.
    #[serde(with = "duration")]
    pub max_backoff: Duration,
    /// Also export the `/metrics` families as OTLP metrics (`/v1/metrics`), for fleets that
    /// collect only OTLP (off, like the logs, while no endpoint is set).
    pub metrics: bool,
    /// How often the metrics are exported (the SDK's periodic reader).
    #[serde(with = "duration")]
    pub metrics_interval: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: OtlpProtocol::Protobuf,
            headers: BTreeMap::new(),
            timeout: Duration::from_secs(10),
            events: Vec::new(),
            queue: 2048,
            max_backoff: Duration::from_secs(30),
            metrics: false,
            metrics_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    Protobuf,
    #[serde(rename = "http/json")]
    Json,
}

impl OtlpConfig {
    /// The event types to export (empty: all), after checking the endpoint's scheme.
    pub fn event_types(&self) -> Result<Vec<EventType>, Invalid> {
        if self.queue == 0 {
            return Err(Invalid::new("otlp.queue", "must be at least 1"));
        }
        if let Some(e) = &self.endpoint
            && !e.starts_with("http://")
        {
            return Err(Invalid::new(
                "otlp.endpoint",
                format!(
                    "`{e}` must start with http:// (TLS is not supported; use a local collector)"
                ),
            ));
        }
        if self.metrics_interval < Duration::from_secs(1) {
            return Err(Invalid::new("otlp.metrics_interval", "must be at least 1s"));
        }
        self.events
            .iter()
            .map(|t| {
                EventType::parse(t).ok_or_else(|| {
                    Invalid::new(
                        "otlp.events",
                        format!(
                            "has an unknown event type `{t}` (one of: {})",
                            EventType::ALL.map(EventType::as_str).join(", ")
                        ),
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        let cfg = OtlpConfig {
            endpoint: Some("https://collector:4318".into()),
            ..OtlpConfig::default()
        };
        assert_eq!(cfg.event_types().unwrap_err().key, "otlp.endpoint");
        let cfg = OtlpConfig {
            endpoint: Some("http://127.0.0.1:4318".into()),
            events: vec!["flow".into(), "exec".into()],
            ..OtlpConfig::default()
        };
        assert_eq!(
            cfg.event_types().unwrap(),
            vec![EventType::Flow, EventType::Exec]
        );
        let cfg = OtlpConfig {
            events: vec!["flows".into()],
            ..OtlpConfig::default()
        };
        let e = cfg.event_types().unwrap_err();
        assert!(e.to_string().contains("unknown event type `flows`"), "{e}");
        let cfg = OtlpConfig {
            endpoint: Some("http://127.0.0.1:4318".into()),
            metrics: true,
            metrics_interval: Duration::from_millis(10),
            ..OtlpConfig::default()
        };
        assert_eq!(cfg.event_types().unwrap_err().key, "otlp.metrics_interval");
    }
}
