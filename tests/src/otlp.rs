//! A minimal OTLP/HTTP collector for tests of the agent's OpenTelemetry export: it takes
//! `http/json` bodies and real `http/protobuf` ones (decoded with the upstream
//! `opentelemetry-proto` types), and can answer slowly, like a collector under load.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
};
use prost::Message as _;

/// (request path, content type, body as OTLP JSON)
type Bodies = Arc<Mutex<Vec<(String, String, serde_json::Value)>>>;

/// A minimal OTLP/HTTP collector on loopback: it answers every POST with 200 (after `delay`)
/// and keeps the bodies, JSON or protobuf (both kept in the OTLP JSON shape).
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    bodies: Bodies,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl OtlpReceiver {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0", Duration::ZERO)
    }

    /// A collector on `addr` (`127.0.0.1:0` for any port) that waits `delay` before each
    /// answer.
    pub fn start_on(addr: &str, delay: Duration) -> Self {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let bodies: Bodies = Arc::default();
        let b = bodies.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return; // the listener closes: the port refuses connections
                }
                let b = b.clone();
                std::thread::spawn(move || serve_otlp(conn, &b, delay));
            }
        });
        Self { addr, bodies, stop }
    }

    /// Stops listening (connections already accepted are still answered).
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // wake the accept loop
        let _ = TcpStream::connect(self.addr);
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request body received so far (JSON), with its path.
    pub fn bodies(&self) -> Vec<(String, serde_json::Value)> {
        let bodies = self.bodies.lock().map(|b| b.clone()).unwrap_or_default();
        bodies.into_iter().map(|(p, _, v)| (p, v)).collect()
    }

    /// Every log record received so far: (request path, record JSON, resource JSON).
    pub fn records(&self) -> Vec<(String, serde_json::Value, serde_json::Value)> {
        let bodies = self.bodies.lock().map(|b| b.clone()).unwrap_or_default();
        let mut out = Vec::new();
        for (path, _, body) in bodies {
            for rl in body["resourceLogs"].as_array().into_iter().flatten() {
                for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                    for r in sl["logRecords"].as_array().into_iter().flatten() {
                        out.push((path.clone(), r.clone(), rl["resource"].clone()));
                    }
                }
            }
        }
        out
    }

    /// The content types of the requests received so far.
    pub fn content_types(&self) -> Vec<String> {
        let bodies = self.bodies.lock().map(|b| b.clone()).unwrap_or_default();
        bodies.into_iter().map(|(_, t, _)| t).collect()
    }
}

/// The string value of attribute `key` of an OTLP JSON log record or resource.
pub fn otlp_attr(v: &serde_json::Value, key: &str) -> Option<serde_json::Value> {
    v["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| {
            let val = &a["value"];
            val.get("stringValue")
                .or_else(|| val.get("intValue"))
                .cloned()
                .unwrap_or(serde_json::Value::Null)
        })
}

/// An `AnyValue` in OTLP JSON form (64-bit integers as strings, as the JSON encoding has them).
fn any(v: Option<&AnyValue>) -> serde_json::Value {
    use serde_json::json;
    match v.and_then(|v| v.value.as_ref()) {
        Some(Any::StringValue(s)) => json!({"stringValue": s}),
        Some(Any::IntValue(i)) => json!({"intValue": i.to_string()}),
        Some(Any::BoolValue(b)) => json!({"boolValue": b}),
        Some(Any::DoubleValue(d)) => json!({"doubleValue": d}),
        Some(other) => json!({"other": format!("{other:?}")}),
        None => serde_json::Value::Null,
    }
}

fn attrs(kv: &[KeyValue]) -> serde_json::Value {
    kv.iter()
        .map(|a| serde_json::json!({"key": a.key, "value": any(a.value.as_ref())}))
        .collect()
}

/// A protobuf `ExportLogsServiceRequest` in the OTLP JSON shape the tests read.
fn protobuf_as_json(body: &[u8]) -> serde_json::Value {
    let req = ExportLogsServiceRequest::decode(body)
        .unwrap_or_else(|e| panic!("not an OTLP protobuf logs request: {e}"));
    let rls: Vec<serde_json::Value> = req
        .resource_logs
        .iter()
        .map(|rl| {
            let sls: Vec<serde_json::Value> = rl
                .scope_logs
                .iter()
                .map(|sl| {
                    let recs: Vec<serde_json::Value> = sl
                        .log_records
                        .iter()
                        .map(|r| {
                            serde_json::json!({
                                "timeUnixNano": r.time_unix_nano.to_string(),
                                "severityNumber": r.severity_number,
                                "severityText": r.severity_text,
                                "eventName": r.event_name,
                                "body": any(r.body.as_ref()),
                                "attributes": attrs(&r.attributes),
                            })
                        })
                        .collect();
                    serde_json::json!({"logRecords": recs})
                })
                .collect();
            let resource = rl
                .resource
                .as_ref()
                .map(|r| serde_json::json!({"attributes": attrs(&r.attributes)}))
                .unwrap_or(serde_json::Value::Null);
            serde_json::json!({"resource": resource, "scopeLogs": sls})
        })
        .collect();
    serde_json::json!({ "resourceLogs": rls })
}

fn serve_otlp(
    conn: TcpStream,
    bodies: &Mutex<Vec<(String, String, serde_json::Value)>>,
    delay: Duration,
) {
    use std::io::BufRead as _;
    let mut r = std::io::BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut len = 0usize;
        let mut content_type = String::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                } else if k.eq_ignore_ascii_case("content-type") {
                    content_type = v.trim().to_owned();
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        // protobuf is decoded for logs only (the metric tests export http/json)
        let parsed = if content_type == "application/x-protobuf" {
            path.ends_with("/v1/logs").then(|| protobuf_as_json(&body))
        } else {
            serde_json::from_slice(&body).ok()
        };
        std::thread::sleep(delay);
        if let Some(v) = parsed
            && let Ok(mut b) = bodies.lock()
        {
            b.push((path, content_type.clone(), v));
        }
        let reply: &[u8] = if content_type == "application/x-protobuf" {
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        };
        if w.write_all(reply).is_err() {
            return;
        }
    }
}
