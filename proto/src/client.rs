//! The one client of the control socket: connect, send requests, read replies (several may be
//! in flight: the launcher sends every registration before it reads the first answer), or
//! follow an event stream after a subscription.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{Reply, Request};

/// What can go wrong talking to the agent. Messages name the socket; the CLI adds the hint.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent answers on {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("agent on {} closed the connection", path.display())]
    Closed { path: PathBuf },
    /// A read or write gave up after the connection's timeout.
    #[error("agent on {} did not answer within {}", path.display(), humantime::format_duration(*.after))]
    Timeout { path: PathBuf, after: Duration },
    #[error("agent on {} answered something else than palisade's protocol: {source}", path.display())]
    Protocol {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// The agent understood and said no; `message` is its reason.
    #[error("{message}")]
    Refused { path: PathBuf, message: String },
}

impl ClientError {
    /// True when no agent was reached at all (the launcher may run without one).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Connect { .. })
    }
}

/// A connection to the agent.
pub struct Conn {
    path: PathBuf,
    timeout: Option<Duration>,
    write: UnixStream,
    read: BufReader<UnixStream>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("path", &self.path).finish()
    }
}

impl Conn {
    /// Connects; every later read or write gives up after `timeout` (`None`: waits forever).
    pub fn connect(path: &Path, timeout: Option<Duration>) -> Result<Self, ClientError> {
        let connect = |source| ClientError::Connect {
            path: path.to_owned(),
            source,
        };
        let write = UnixStream::connect(path).map_err(connect)?;
        write.set_read_timeout(timeout).map_err(connect)?;
        write.set_write_timeout(timeout).map_err(connect)?;
        let read = write.try_clone().map_err(connect)?;
        Ok(Self {
            path: path.to_owned(),
            timeout,
            write,
            read: BufReader::new(read),
        })
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        use std::io::ErrorKind::{TimedOut, WouldBlock};
        match self.timeout {
            Some(after) if matches!(source.kind(), WouldBlock | TimedOut) => ClientError::Timeout {
                path: self.path.clone(),
                after,
            },
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    /// Sends one request; its reply is read by [`Conn::recv`].
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_string(req).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })?;
        line.push('\n');
        self.write
            .write_all(line.as_bytes())
            .map_err(|e| self.io(e))
    }

    /// Reads the next line the agent sent.
    fn line(&mut self) -> Result<String, ClientError> {
        let mut line = String::new();
        let n = self.read.read_line(&mut line).map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        Ok(line)
    }

    /// Reads the next reply: `Ok` when the agent said yes, [`ClientError::Refused`] when no.
    pub fn recv(&mut self) -> Result<Reply, ClientError> {
        let line = self.line()?;
        let reply: Reply = serde_json::from_str(&line).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })?;
        if reply.ok {
            Ok(reply)
        } else {
            Err(ClientError::Refused {
                path: self.path.clone(),
                message: reply.error.unwrap_or_else(|| "refused".into()),
            })
        }
    }

    /// One request, one reply. An agent that refuses a connection says why and hangs up,
    /// perhaps before the request is written: its reason is then read instead.
    pub fn request(&mut self, req: &Request) -> Result<Reply, ClientError> {
        if let Err(e) = self.send(req) {
            let hung_up = matches!(&e, ClientError::Io { source, .. }
                if matches!(source.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset));
            return match self.recv() {
                Err(refused @ ClientError::Refused { .. }) if hung_up => Err(refused),
                _ => Err(e),
            };
        }
        self.recv()
    }

    /// What the agent sends after an accepted subscription, line by line, until it hangs up.
    pub fn lines(self) -> impl Iterator<Item = Result<String, ClientError>> {
        let path = self.path;
        self.read.lines().map(move |l| {
            l.map_err(|source| ClientError::Io {
                path: path.clone(),
                source,
            })
        })
    }
}

/// Connects, sends `req` and reads its reply (each step within `timeout`).
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, ClientError> {
    Conn::connect(socket, Some(timeout))?.request(req)
}

#[cfg(test)]
mod tests {
    use std::{io::BufRead as _, os::unix::net::UnixListener};

    use super::*;

    /// A one-connection fake agent answering each request line with the next canned line.
    fn fake_agent(answers: Vec<&'static str>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut lines = BufReader::new(s).lines();
            for a in answers {
                if lines.next().is_none() {
                    return;
                }
                w.write_all(a.as_bytes()).unwrap();
            }
            // take the next request, then hang up without answering it
            let _ = lines.next();
        });
        (dir, path)
    }

    #[test]
    fn replies_refusals_and_garbage() {
        let (_d, path) = fake_agent(vec![
            "{\"ok\":true,\"version\":\"9\"}\n",
            "{\"ok\":false,\"error\":\"no policy named `x`\"}\n",
            "hello\n",
        ]);
        let mut c = Conn::connect(&path, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            c.request(&Request::Ping {}).unwrap().version.as_deref(),
            Some("9")
        );
        let e = c.request(&Request::PolicyReload {}).unwrap_err();
        assert!(matches!(e, ClientError::Refused { .. }));
        assert_eq!(e.to_string(), "no policy named `x`");
        let e = c.request(&Request::PolicyStatus {}).unwrap_err();
        assert!(
            e.to_string()
                .contains("something else than palisade's protocol"),
            "{e}"
        );
        let e = c.request(&Request::PolicyStatus {}).unwrap_err();
        assert!(matches!(e, ClientError::Closed { .. }), "{e}");
    }

    #[test]
    fn a_refusal_sent_before_hanging_up_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"{\"ok\":false,\"error\":\"refused: not you\"}\n")
                .unwrap();
            s.shutdown(std::net::Shutdown::Both).unwrap();
        });
        let mut c = Conn::connect(&path, Some(Duration::from_secs(5))).unwrap();
        t.join().unwrap();
        // the request may or may not be written before the hang-up is seen: either way the
        // reason is what the caller gets
        let e = c.request(&Request::PolicyStatus {}).unwrap_err();
        assert_eq!(e.to_string(), "refused: not you");
    }

    #[test]
    fn nobody_listening() {
        let dir = tempfile::tempdir().unwrap();
        let e = call(
            &dir.path().join("none.sock"),
            &Request::Ping {},
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.is_unreachable());
        assert!(e.to_string().starts_with("no agent answers on "), "{e}");
    }

    #[test]
    fn an_agent_that_does_not_answer_in_time_is_a_timeout_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let (_s, _) = listener.accept().unwrap();
            // keep the connection open, never answer
            let _ = rx.recv();
        });
        let e = call(&path, &Request::Ping {}, Duration::from_millis(100)).unwrap_err();
        drop(tx);
        assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
        assert!(
            e.to_string().ends_with("did not answer within 100ms"),
            "{e}"
        );
    }
}
