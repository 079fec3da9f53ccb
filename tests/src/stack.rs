//! A monitoring stack on loopback for end-to-end alerting tests: a real Prometheus and a real
//! Alertmanager (Debian packages `prometheus` and `prometheus-alertmanager`, installed by
//! `cargo xtask setup`), each with its own configuration, data directory and ports, and a
//! webhook receiver that records what Alertmanager posts. Everything listens on 127.0.0.1 and
//! is stopped on drop.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::wait_for;

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"))
        .port()
}

/// `s` percent-encoded for a URL query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET `path` from `addr` (HTTP/1.0): (status code, body), or `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// A child process killed on drop, with its output in a log file.
struct Daemon {
    child: Child,
    name: &'static str,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(name: &'static str, cmd: &mut Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create log: {e}"));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("clone log: {e}"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {name} ({e}): `cargo xtask setup` installs it")
            });
        Self { child, name, log }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        format!(
            "{} log (last lines):\n{}",
            self.name,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Waits until GET `path` answers 200.
    fn wait_ready(&mut self, addr: SocketAddr, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_get(addr, path).is_some_and(|(c, _)| c == 200) {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited ({st}):\n{}", self.name, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready after 60 s:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP request Alertmanager posted: when it arrived and its JSON body.
#[derive(Clone, Debug)]
pub struct Notification {
    pub at: Instant,
    pub body: Value,
}

/// An HTTP server on loopback that answers 200 to every POST and keeps the JSON bodies.
pub struct Webhook {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Notification>>>,
}

impl Webhook {
    pub fn start() -> Self {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind webhook: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("webhook address: {e}"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = Arc::clone(&received);
        // The thread ends with the test process (the listener lives in it).
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Some(body) = read_post(stream) {
                    let at = Instant::now();
                    if let Ok(body) = serde_json::from_str(&body) {
                        store
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Notification { at, body });
                    }
                }
            }
        });
        Self { addr, received }
    }

    pub fn received(&self) -> Vec<Notification> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Reads one request (head, then Content-Length bytes of body), answers 200 and closes.
fn read_post(stream: TcpStream) -> Option<String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let mut stream = reader.into_inner();
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    String::from_utf8(body).ok()
}

/// A real Alertmanager posting every alert to `webhook` at once (no grouping delay).
pub struct Alertmanager {
    daemon: Daemon,
    pub addr: SocketAddr,
}

impl Alertmanager {
    pub fn start(dir: &Path, webhook: SocketAddr) -> Self {
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: webhook\n  group_by: ['...']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: webhook\n    webhook_configs:\n      - url: http://{webhook}/alerts\n        send_resolved: false\n"
            ),
        )
        .unwrap_or_else(|e| panic!("write alertmanager.yml: {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut daemon = Daemon::start(
            "prometheus-alertmanager",
            Command::new("prometheus-alertmanager")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.path={}",
                    dir.join("alertmanager-data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                // no high-availability peer port
                .arg("--cluster.listen-address="),
            dir,
        );
        daemon.wait_ready(addr, "/-/ready");
        Self { daemon, addr }
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }
}

/// A real Prometheus evaluating `rule_file` every second, scraping `targets` every second in one
/// job named `job`, and sending alerts to `alertmanager`.
pub struct Prometheus {
    daemon: Daemon,
    pub addr: SocketAddr,
}

impl Prometheus {
    pub fn start(
        dir: &Path,
        rule_file: &Path,
        job: &str,
        targets: &[SocketAddr],
        alertmanager: SocketAddr,
    ) -> Self {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        Self::with_config(
            dir,
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                rule_file.display(),
                targets.join(", ")
            ),
        )
    }

    /// A real Prometheus with this configuration (written to `dir/prometheus.yml`; paths in
    /// it are relative to `dir`).
    pub fn with_config(dir: &Path, config_text: &str) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_text)
            .unwrap_or_else(|e| panic!("write prometheus.yml: {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut daemon = Daemon::start(
            "prometheus",
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("prometheus-data").display()
                ))
                .arg(format!("--web.listen-address={addr}")),
            dir,
        );
        daemon.wait_ready(addr, "/-/ready");
        Self { daemon, addr }
    }

    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// An instant query at the current time: its result (a list of series), or the error.
    pub fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (code, body) =
            http_get(self.addr, &path).ok_or_else(|| "Prometheus did not answer".to_owned())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{code} {body}: {e}"))?;
        if v["status"] != "success" {
            return Err(format!("{code}: {body}"));
        }
        match &v["data"]["result"] {
            Value::Array(a) => Ok(a.clone()),
            // a scalar or string result is one value
            other => Ok(vec![other.clone()]),
        }
    }

    /// Waits until `promql` returns at least one series.
    pub fn wait_for_series(&self, promql: &str) -> Vec<Value> {
        wait_for(
            Duration::from_secs(60),
            &format!("`{promql}` in Prometheus"),
            || self.query(promql).ok().filter(|r| !r.is_empty()),
        )
    }
}
