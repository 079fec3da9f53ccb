//! A minimal OTLP/HTTP collector for tests of the agent's OpenTelemetry export.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
};

/// A minimal OTLP/HTTP collector on loopback: it answers every POST with 200 and keeps the
/// JSON bodies (use `protocol: http/json` in the agent's `otlp:` config).
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

impl OtlpReceiver {
    pub fn start() -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let b = bodies.clone();
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let b = b.clone();
                std::thread::spawn(move || serve_otlp(conn, &b));
            }
        });
        Self { addr, bodies }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request body received so far (JSON), with its path.
    pub fn bodies(&self) -> Vec<(String, serde_json::Value)> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Every log record received so far: (request path, record JSON, resource JSON).
    pub fn records(&self) -> Vec<(String, serde_json::Value, serde_json::Value)> {
        let bodies = self.bodies.lock().map(|b| b.clone()).unwrap_or_default();
        let mut out = Vec::new();
        for (path, body) in bodies {
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

fn serve_otlp(conn: TcpStream, bodies: &std::sync::Mutex<Vec<(String, serde_json::Value)>>) {
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
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if let Ok(v) = serde_json::from_slice(&body)
            && let Ok(mut b) = bodies.lock()
        {
            b.push((path, v));
        }
        let _ = w.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        );
    }
}
