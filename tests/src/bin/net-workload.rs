//! Network workloads with exactly known traffic, for the privileged network tests.
//!
//! - `serve-tcp ADDR N`: accepts N connections one after the other, reads each to EOF; prints
//!   `listening` once bound and `received BYTES` at the end.
//! - `send-tcp ADDR BYTES`: one connection, BYTES of payload, then close.
//! - `connect ADDR`: one connect; exits 0 when refused, 1 when it succeeded.
//! - `connects ADDR N`: N connect-and-close in a row.
//! - `stream-tcp ADDR BYTES MS`: one connection sending BYTES over about MS milliseconds.
//! - `send-udp ADDR N SIZE`: N datagrams of SIZE bytes.
//! - `dns ADDR NAME`: one DNS query (type A) for NAME to ADDR.
//! - `try-connect ADDR [MS]`: one TCP connect (given up after MS ms); prints `connected`,
//!   `timeout`, or `error N` (the errno).
//! - `try-bind ADDR`: binds a TCP socket; prints `bound`, or `error N`.
//! - `connect-until ADDR STOPFILE`: connects again and again (one every 2 ms) until STOPFILE
//!   exists; prints `attempts N eperm E connected C other O` (O counts any other error).
//! - `serve-reset ADDR BYTES`: accepts one connection, reads exactly BYTES, then resets it
//!   (`SO_LINGER` 0 and close); prints `listening` once bound.
//! - `send-until-reset ADDR BYTES`: one connection, BYTES of payload, then reads until the peer
//!   ends it; prints `reset` (exit 0) or `eof` (exit 1).
//! - `try-send-udp ADDR`: one UDP datagram from an unconnected socket; prints `sent` or
//!   `error N`.
//! - `try-raw-icmp ADDR` / `try-ping ADDR`: one ICMP echo request (IPv4) through a raw socket /
//!   an ICMP datagram ("ping") socket; prints `sent` or `error N` (socket or sendto).
//! - `try-packet`: opens a packet socket (`AF_PACKET`); prints `created` or `error N`.
//! - `try-connect-opts ADDR MS`: an IPv6 TCP connect whose SYN carries a destination options
//!   extension header (`IPV6_DSTOPTS`); prints like `try-connect`.
//! - `syn6 ADDR PORT N`: one hand-made TCP SYN from `ADDR` to `ADDR`:PORT (IPv6, raw socket)
//!   after N destination options headers; prints `sent`.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::Duration,
};

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("bad address {s}: {e}"))
}

fn num(s: &str) -> Result<u64, String> {
    s.parse().map_err(|e| format!("bad number {s}: {e}"))
}

fn send_all(s: &mut TcpStream, mut bytes: u64) -> std::io::Result<()> {
    let buf = [0x5au8; 65536];
    while bytes > 0 {
        let n = bytes.min(buf.len() as u64) as usize;
        s.write_all(&buf[..n])?;
        bytes -= n as u64;
    }
    Ok(())
}

/// Binds a TCP listener and says so (`listening`) for the test waiting on it.
fn listen(a: &str) -> Result<TcpListener, String> {
    let l = TcpListener::bind(addr(a)?).map_err(|e| e.to_string())?;
    println!("listening");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    Ok(l)
}

fn run(args: &[String]) -> Result<i32, String> {
    let io = |e: std::io::Error| e.to_string();
    match args {
        [cmd, a, n] if cmd == "serve-tcp" => {
            let l = listen(a)?;
            let mut total = 0u64;
            for _ in 0..num(n)? {
                let (mut s, _) = l.accept().map_err(io)?;
                let mut buf = [0u8; 65536];
                loop {
                    let r = s.read(&mut buf).map_err(io)?;
                    if r == 0 {
                        break;
                    }
                    total += r as u64;
                }
            }
            println!("received {total}");
            Ok(0)
        }
        [cmd, a, bytes] if cmd == "send-tcp" => {
            let mut s = TcpStream::connect(addr(a)?).map_err(io)?;
            send_all(&mut s, num(bytes)?).map_err(io)?;
            s.shutdown(Shutdown::Write).map_err(io)?;
            // wait for the peer's close so both ends finish cleanly
            let mut sink = [0u8; 16];
            let _ = s.read(&mut sink);
            Ok(0)
        }
        [cmd, a, bytes, ms] if cmd == "stream-tcp" => {
            let mut s = TcpStream::connect(addr(a)?).map_err(io)?;
            let total = num(bytes)?;
            let chunks = 20u64;
            for i in 0..chunks {
                let part = total / chunks + u64::from(i < total % chunks);
                send_all(&mut s, part).map_err(io)?;
                std::thread::sleep(Duration::from_millis(num(ms)? / chunks));
            }
            s.shutdown(Shutdown::Write).map_err(io)?;
            let mut sink = [0u8; 16];
            let _ = s.read(&mut sink);
            Ok(0)
        }
        [cmd, a, bytes] if cmd == "serve-reset" => {
            let l = listen(a)?;
            let (mut s, _) = l.accept().map_err(io)?;
            let mut buf = vec![0u8; usize::try_from(num(bytes)?).map_err(|e| e.to_string())?];
            s.read_exact(&mut buf).map_err(io)?;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket and a correctly sized option value.
            let r = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
            drop(s); // close with linger 0: a reset instead of a FIN
            Ok(0)
        }
        [cmd, a, bytes] if cmd == "send-until-reset" => {
            let mut s = TcpStream::connect(addr(a)?).map_err(io)?;
            send_all(&mut s, num(bytes)?).map_err(io)?;
            let mut sink = [0u8; 16];
            match s.read(&mut sink) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    println!("reset");
                    Ok(0)
                }
                Ok(0) => {
                    println!("eof");
                    Ok(1)
                }
                Ok(_) => Err("unexpected data from the peer".into()),
                Err(e) => Err(e.to_string()),
            }
        }
        [cmd, a] if cmd == "connect" => match TcpStream::connect(addr(a)?) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(0),
            Err(e) => Err(e.to_string()),
            Ok(_) => Ok(1),
        },
        [cmd, a, n] if cmd == "connects" => {
            let a = addr(a)?;
            for _ in 0..num(n)? {
                let s = TcpStream::connect(a).map_err(io)?;
                s.shutdown(Shutdown::Write).map_err(io)?;
                let mut sink = [0u8; 1];
                let _ = (&s).read(&mut sink);
            }
            Ok(0)
        }
        [cmd, a, n, size] if cmd == "send-udp" => {
            let u = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
            let buf = vec![0x33u8; num(size)? as usize];
            for _ in 0..num(n)? {
                u.send_to(&buf, addr(a)?).map_err(io)?;
            }
            Ok(0)
        }
        [cmd, a, rest @ ..] if cmd == "try-connect" && rest.len() <= 1 => {
            let r = match rest.first() {
                Some(ms) => TcpStream::connect_timeout(&addr(a)?, Duration::from_millis(num(ms)?)),
                None => TcpStream::connect(addr(a)?),
            };
            match r {
                Ok(_) => println!("connected"),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => println!("timeout"),
                Err(e) => println!("error {}", e.raw_os_error().unwrap_or(0)),
            }
            Ok(0)
        }
        [cmd, a, stop] if cmd == "connect-until" => {
            let a = addr(a)?;
            let (mut attempts, mut eperm, mut connected, mut other) = (0u64, 0u64, 0u64, 0u64);
            while !std::path::Path::new(stop).exists() {
                attempts += 1;
                match TcpStream::connect_timeout(&a, Duration::from_secs(5)) {
                    Ok(_) => connected += 1,
                    Err(e) if e.raw_os_error() == Some(1) => eperm += 1,
                    Err(_) => other += 1,
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            println!("attempts {attempts} eperm {eperm} connected {connected} other {other}");
            Ok(0)
        }
        [cmd, a] if cmd == "try-bind" => {
            match TcpListener::bind(addr(a)?) {
                Ok(_) => println!("bound"),
                Err(e) => println!("error {}", e.raw_os_error().unwrap_or(0)),
            }
            Ok(0)
        }
        [cmd, a, name] if cmd == "dns" => {
            let u = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
            let mut q = vec![0x4a, 0x11, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for label in name.split('.') {
                q.push(label.len() as u8);
                q.extend_from_slice(label.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            u.send_to(&q, addr(a)?).map_err(io)?;
            Ok(0)
        }
        [cmd, a] if cmd == "try-send-udp" => {
            let u = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
            report(u.send_to(b"x", addr(a)?).map(|_| "sent"));
            Ok(0)
        }
        [cmd, a] if cmd == "try-raw-icmp" => {
            report(raw::icmp_echo(a, libc::SOCK_RAW).map(|()| "sent"));
            Ok(0)
        }
        [cmd, a] if cmd == "try-ping" => {
            report(raw::icmp_echo(a, libc::SOCK_DGRAM).map(|()| "sent"));
            Ok(0)
        }
        [cmd] if cmd == "try-packet" => {
            report(raw::packet_socket().map(|()| "created"));
            Ok(0)
        }
        [cmd, a, ms] if cmd == "try-connect-opts" => {
            match raw::connect_with_dstopts(addr(a)?, Duration::from_millis(num(ms)?)) {
                Ok(()) => println!("connected"),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => println!("timeout"),
                Err(e) => println!("error {}", e.raw_os_error().unwrap_or(0)),
            }
            Ok(0)
        }
        [cmd, a, port, n] if cmd == "syn6" => {
            let port = u16::try_from(num(port)?).map_err(|e| e.to_string())?;
            let n = usize::try_from(num(n)?).map_err(|e| e.to_string())?;
            raw::syn6(a, port, n).map_err(io)?;
            println!("sent");
            Ok(0)
        }
        _ => Err(
            "usage: net-workload serve-tcp|send-tcp|stream-tcp|connect|connects|send-udp|dns|try-* ..."
                .into(),
        ),
    }
}

/// Prints `ok` or `error N`.
fn report(r: std::io::Result<&str>) {
    match r {
        Ok(ok) => println!("{ok}"),
        Err(e) => println!("error {}", e.raw_os_error().unwrap_or(0)),
    }
}

#[path = "net-workload/raw.rs"]
mod raw;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("net-workload: {e}");
            ExitCode::from(2)
        }
    }
}
