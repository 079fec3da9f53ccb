//! `palisade policy ...`: `check` works on files alone; `status`, `mode`, `reload` and `learn`
//! talk to a running agent over its control socket.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::control::{Reply, Request};

/// Exit codes: 0 valid, 2 invalid (as `--check-config`).
pub fn check(files: &[PathBuf]) -> u8 {
    match palisade_policy::load_paths(files) {
        Err(e) => {
            for d in &e.0 {
                eprintln!("{}: error: {}", d.loc, d.message);
            }
            eprintln!(
                "{} error(s); nothing was applied (fix them and run `palisade policy check` again)",
                e.0.len()
            );
            2
        }
        Ok(set) => {
            let warnings = palisade_policy::check::warnings(&set);
            for d in &warnings {
                eprintln!("{}: warning: {}", d.loc, d.message);
            }
            for p in &set.policies {
                let mut what = Vec::new();
                if let Some(s) = &p.syscalls {
                    what.push(format!(
                        "syscalls ({} {}-list entries)",
                        s.entries.len(),
                        match s.list {
                            palisade_policy::model::ListKind::Allow => "allow",
                            palisade_policy::model::ListKind::Deny => "deny",
                        }
                    ));
                }
                if p.exec.is_some() {
                    what.push("exec".into());
                }
                if p.network.egress.is_some() {
                    what.push("egress".into());
                }
                if p.network.ingress.is_some() {
                    what.push("ingress".into());
                }
                if !p.resources.is_empty() {
                    what.push("resources".into());
                }
                println!(
                    "{}: policy {} ({}): selects {}; {}",
                    p.loc,
                    p.name,
                    p.mode.as_str(),
                    p.selector.describe(),
                    what.join(", ")
                );
            }
            println!(
                "ok: {} policies in {} file(s), {} warning(s)",
                set.policies.len(),
                set.files.len(),
                warnings.len()
            );
            0
        }
    }
}

/// One request, one reply (`timeout` for the reply).
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "no agent answers on {} ({e}); start `palisade agent` or give --socket",
            socket.display()
        )
    })?;
    let _ = s.set_read_timeout(Some(timeout));
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    s.write_all(line.as_bytes())
        .map_err(|e| format!("agent on {}: {e}", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .map_err(|e| format!("agent on {} did not answer: {e}", socket.display()))?;
    let reply: Reply = serde_json::from_str(&answer)
        .map_err(|e| format!("unexpected answer from {}: {e}", socket.display()))?;
    if reply.ok {
        Ok(reply)
    } else {
        Err(reply.error.unwrap_or_else(|| "refused".into()))
    }
}

const SHORT: Duration = Duration::from_secs(30);

pub fn status(socket: &Path) -> Result<(), String> {
    let r = call(socket, &Request::PolicyStatus {}, SHORT)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&r.data.unwrap_or_default()).unwrap_or_default()
    );
    Ok(())
}

pub fn mode(socket: &Path, name: &str, mode: &str) -> Result<(), String> {
    call(
        socket,
        &Request::PolicyMode {
            name: name.to_owned(),
            mode: mode.to_owned(),
        },
        SHORT,
    )?;
    println!("policy {name}: {mode}");
    Ok(())
}

pub fn reload(socket: &Path) -> Result<(), String> {
    let r = call(socket, &Request::PolicyReload {}, SHORT)?;
    println!(
        "{}",
        r.data
            .as_ref()
            .and_then(|d| d.as_str())
            .unwrap_or("reloaded")
    );
    Ok(())
}

/// What `learn` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LearnFormat {
    /// A Palisade policy (YAML).
    Policy,
    /// An OCI `linux.seccomp` profile (JSON).
    OciSeccomp,
}

pub struct LearnArgs<'a> {
    pub socket: &'a Path,
    pub container: &'a str,
    pub duration: Duration,
    pub format: LearnFormat,
    pub output: Option<&'a Path>,
    pub name: Option<&'a str>,
}

pub fn learn(a: &LearnArgs<'_>) -> Result<(), String> {
    let ms = u64::try_from(a.duration.as_millis()).unwrap_or(u64::MAX);
    eprintln!(
        "palisade: learning what `{}` does for {}...",
        a.container,
        humantime::format_duration(a.duration)
    );
    let r = call(
        a.socket,
        &Request::PolicyLearn {
            container: a.container.to_owned(),
            duration_ms: ms,
        },
        a.duration + Duration::from_secs(60),
    )?;
    let l = super::learn::from_json(&r.data.unwrap_or_default())?;
    let text = match a.format {
        LearnFormat::Policy => {
            let base: String = a
                .container
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let name = a
                .name
                .map_or_else(|| format!("{base}-learned"), str::to_owned);
            palisade_policy::learn::policy_yaml(
                &name,
                a.container,
                &l,
                &humantime::format_duration(a.duration).to_string(),
            )
        }
        LearnFormat::OciSeccomp => palisade_policy::learn::oci_seccomp(&l),
    };
    match a.output {
        Some(p) => std::fs::write(p, &text).map_err(|e| format!("write {}: {e}", p.display()))?,
        None => print!("{text}"),
    }
    eprintln!(
        "palisade: {} syscalls, {} programs, {} peers, {} listening ports learned",
        l.syscalls.len(),
        l.execs.len(),
        l.egress.len(),
        l.ingress.len()
    );
    Ok(())
}
