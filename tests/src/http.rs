//! Plain HTTP/1.0 GETs to an agent's server (tests read /metrics and /healthz with them).
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// GET `path` from `addr` (HTTP/1.0) and return (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    request(s, addr, path)
}

pub(crate) fn request(mut s: TcpStream, addr: SocketAddr, path: &str) -> (u16, String) {
    s.set_read_timeout(Some(crate::scaled(Duration::from_secs(30))))
        .ok();
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
