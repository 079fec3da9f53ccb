//! Helpers of the fleet tests (`tests/tests/fleet.rs`, `tests/tests/dist.rs`): an agent started
//! from any binary with its own environment (as a DaemonSet or a systemd unit starts it), and
//! the OTLP metrics a receiver got, as data points.
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A `palisade agent` started from `bin` with `args` and `env`, on an ephemeral loopback port;
/// SIGTERM and a wait on drop.
pub struct RawAgent {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl RawAgent {
    /// `args` follow `agent --listen 127.0.0.1:0 --ready-file F --control-socket S`.
    pub fn start(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        crate::require_root();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let ready = dir.path().join("ready");
        let log = std::fs::File::create(dir.path().join("agent.log"))
            .unwrap_or_else(|e| panic!("create log: {e}"));
        let mut child = Command::new(bin)
            .args(["agent", "--listen", "127.0.0.1:0", "--ready-file"])
            .arg(&ready)
            .arg("--control-socket")
            .arg(dir.path().join("agent.sock"))
            .args(args)
            .env_remove("NODE_NAME")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(addr) = text.trim().parse::<SocketAddr>()
            {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "agent exited during start-up ({status}):\n{}",
                    std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "agent not ready after 120 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        Self { child, addr, dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// GET `path`: (status code, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path)
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("wait for the agent: {e}"))
    }
}

impl Drop for RawAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// GET `path` from `addr` (HTTP/1.0): (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")
        .unwrap_or_else(|e| panic!("send request: {e}"));
    let mut buf = String::new();
    s.read_to_string(&mut buf)
        .unwrap_or_else(|e| panic!("read response: {e}"));
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_owned())
}

/// One OTLP metric data point as received (OTLP/JSON).
#[derive(Debug, Clone)]
pub struct Point {
    pub metric: String,
    /// `sum` or `gauge`.
    pub kind: String,
    pub monotonic: bool,
    pub attributes: BTreeMap<String, String>,
    pub value: f64,
    /// The resource's string attributes.
    pub resource: BTreeMap<String, String>,
}

fn string_attributes(v: &serde_json::Value) -> BTreeMap<String, String> {
    v["attributes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            let val = &a["value"];
            let s = val
                .get("stringValue")
                .and_then(|s| s.as_str().map(str::to_owned))
                .or_else(|| val.get("intValue").map(|i| i.to_string()))?;
            Some((a["key"].as_str()?.to_owned(), s))
        })
        .collect()
}

/// The data points of every `/v1/metrics` body in `bodies` (an [`crate::OtlpReceiver`]'s), in
/// the order received.
pub fn metric_points(bodies: &[(String, serde_json::Value)]) -> Vec<Point> {
    let mut out = Vec::new();
    for (path, body) in bodies.iter().filter(|(p, _)| p == "/v1/metrics") {
        let _ = path;
        for rm in body["resourceMetrics"].as_array().into_iter().flatten() {
            let resource = string_attributes(&rm["resource"]);
            for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten() {
                    let name = m["name"].as_str().unwrap_or_default();
                    for kind in ["sum", "gauge"] {
                        let Some(data) = m.get(kind) else { continue };
                        for dp in data["dataPoints"].as_array().into_iter().flatten() {
                            let value = dp
                                .get("asDouble")
                                .and_then(serde_json::Value::as_f64)
                                .or_else(|| {
                                    dp.get("asInt").and_then(|i| {
                                        i.as_f64().or_else(|| i.as_str()?.parse().ok())
                                    })
                                })
                                .unwrap_or(f64::NAN);
                            out.push(Point {
                                metric: name.to_owned(),
                                kind: kind.to_owned(),
                                monotonic: data["isMonotonic"].as_bool().unwrap_or(false),
                                attributes: string_attributes(dp),
                                value,
                                resource: resource.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// The latest value of `metric` with exactly these attributes among `points`.
pub fn latest(points: &[Point], metric: &str, attrs: &[(&str, &str)]) -> Option<f64> {
    points
        .iter()
        .rev()
        .find(|p| {
            p.metric == metric
                && p.attributes.len() == attrs.len()
                && attrs
                    .iter()
                    .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|p| p.value)
}
