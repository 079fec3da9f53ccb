//! `palisade policy ...`: `check` works on files alone; `status`, `mode`, `reload` and `learn`
//! talk to a running agent over its control socket.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use palisade_proto::{ClientError, PolicyStatus, Reply, Request};

use crate::policy::{
    exec_match::{self, ExecMatch},
    lsm::{self, LsmSupport},
};

/// Where `palisade policy check` reads the kernel's BTF (the agent's `policy.kernel_btf`
/// default).
const DEFAULT_BTF: &str = "/sys/kernel/btf/vmlinux";

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
            let mut warnings = palisade_policy::check::warnings(&set);
            let lsm = LsmSupport::probe(Path::new(DEFAULT_BTF));
            let files_tier = crate::policy::files::tier(&lsm);
            warnings.extend(palisade_policy::check::file_notes(&set, &files_tier));
            let has_exec = set.policies.iter().any(|p| p.exec.is_some());
            let exec = has_exec.then(|| ExecMatch::probe(Path::new(DEFAULT_BTF)));
            if has_exec {
                warnings.extend(exec_match::host_notes(&set, Path::new("/")));
            }
            warnings.extend(lsm::host_notes(&set, &lsm));
            for d in &warnings {
                eprintln!("{}: warning: {}", d.loc, d.message);
            }
            let mut warned = warnings.len();
            if let Some(m) = exec.as_ref().filter(|m| m.best_effort()) {
                eprintln!("warning: on this host {}", m.describe());
                warned += 1;
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
                if let Some(f) = &p.files {
                    what.push(format!("files ({} deny entries)", f.deny.len()));
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
                for t in lsm::tiers(p, p.mode, &lsm) {
                    let fallback = t.fallback.map(|f| format!(" ({f})")).unwrap_or_default();
                    let calls = if t.calls.is_empty() {
                        String::new()
                    } else {
                        format!(" {}", t.calls.join(", "))
                    };
                    println!(
                        "  {}{calls} (action {}): {}{fallback}",
                        t.section,
                        t.action,
                        t.tier.label()
                    );
                }
            }
            println!("on this host {}", lsm.describe());
            if let Some(m) = &exec {
                println!("on this host {}", m.describe());
            }
            for line in crate::policy::files::describe(&set, &files_tier) {
                println!("{line}");
            }
            println!(
                "ok: {} policies in {} file(s), {} warning(s)",
                set.policies.len(),
                set.files.len(),
                warned
            );
            0
        }
    }
}

/// Why a policy command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}; start `palisade agent` or give --socket")]
    Unreachable(ClientError),
    #[error(transparent)]
    Agent(ClientError),
    #[error("unexpected answer from the agent: {0}")]
    Answer(serde_json::Error),
    #[error("write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        if e.is_unreachable() {
            CliError::Unreachable(e)
        } else {
            CliError::Agent(e)
        }
    }
}

/// One request, one reply (`timeout` for each step).
fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Reply, CliError> {
    Ok(palisade_proto::call(socket, req, timeout)?)
}

const SHORT: Duration = Duration::from_secs(30);

pub fn status(socket: &Path, output: super::Output) -> Result<(), CliError> {
    let r = call(socket, &Request::PolicyStatus {}, SHORT)?;
    let status: PolicyStatus = match r.data {
        None => PolicyStatus::default(),
        Some(_) => r.data_as().map_err(CliError::Answer)?,
    };
    match output {
        super::Output::Json => println!(
            "{}",
            serde_json::to_string(&status).map_err(CliError::Answer)?
        ),
        super::Output::Text => print!("{}", status_text(&status)),
    }
    Ok(())
}

/// `palisade policy status` for people.
fn status_text(s: &PolicyStatus) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let hooks = if s.hooks.is_empty() {
        "none".to_owned()
    } else {
        s.hooks.join(", ")
    };
    let _ = writeln!(
        out,
        "pin dir: {} ({})   hooks attached: {hooks}",
        s.pin_dir,
        if s.loaded { "loaded" } else { "nothing loaded" }
    );
    if !s.exec_match.describe.is_empty() {
        let _ = writeln!(out, "{}", s.exec_match.describe);
    }
    if !s.lsm.describe.is_empty() {
        let _ = writeln!(out, "{}", s.lsm.describe);
    }
    if !s.files.rules.is_empty() {
        let _ = writeln!(
            out,
            "file rules: tier {}{}",
            s.files.tier,
            if s.files.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.files.reason)
            }
        );
        for r in &s.files.rules {
            let _ = writeln!(out, "  {r}");
        }
    }
    if s.policies.is_empty() {
        let _ = writeln!(out, "no policies");
    }
    for p in &s.policies {
        let _ = writeln!(
            out,
            "policy {} ({}) from {}: {} cgroup(s)",
            p.name,
            p.mode,
            p.source,
            p.cgroups.len()
        );
        for e in &p.enforcement {
            let calls = if e.calls.is_empty() {
                String::new()
            } else {
                format!(" {}", e.calls.join(", "))
            };
            let _ = write!(
                out,
                "  {}{calls} (action {}): {}",
                e.section, e.action, e.tier
            );
            if !e.fallback.is_empty() {
                let _ = write!(out, " ({})", e.fallback);
            }
            let _ = writeln!(out);
        }
        for c in &p.cgroups {
            let name = if c.container.is_empty() {
                "?"
            } else {
                &c.container
            };
            match &c.inherited_from {
                Some(from) => {
                    let _ = writeln!(
                        out,
                        "  {name} (cgroup {}, inherited from {from})",
                        c.cgroup_id
                    );
                }
                None => {
                    let _ = writeln!(out, "  {name} (cgroup {})", c.cgroup_id);
                }
            }
        }
    }
    for u in &s.unenforced {
        let _ = writeln!(
            out,
            "NOT ENFORCED: policy {} in {} (cgroup {}): {}: {}",
            u.policy, u.container, u.cgroup_id, u.reason, u.detail
        );
    }
    for n in &s.notes {
        let _ = writeln!(out, "note: {n}");
    }
    if !s.adopted_workloads.is_empty() {
        let _ = writeln!(
            out,
            "adopted launched workloads (pinned by an earlier agent): {}",
            s.adopted_workloads
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

pub fn mode(socket: &Path, name: &str, mode: &str) -> Result<(), CliError> {
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

pub fn reload(socket: &Path) -> Result<(), CliError> {
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

/// Ctrl-C (SIGINT) or SIGTERM ends the learning window now: a thread waits for either (both
/// blocked in the process) and asks the agent to end the window (`policy_learn_end`). The
/// answer then comes as when the duration has passed, and the policy is written. A second
/// signal exits at once (128 + its number). True in the flag once a signal ended it.
fn end_on_signal(socket: &Path, container: &str) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use nix::sys::signal::{SigSet, Signal};
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        return ended;
    }
    let (socket, container, flag) = (socket.to_owned(), container.to_owned(), ended.clone());
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("palisade: {sig}: ending the learning window now (again to quit)");
        let req = Request::PolicyLearnEnd {
            container: container.clone(),
        };
        match call(&socket, &req, SHORT) {
            Ok(r) if r.ok && r.data.as_ref().and_then(serde_json::Value::as_u64) == Some(0) => {
                eprintln!(
                    "palisade: the agent has no window open for `{container}` (yet): it ends at its duration"
                );
            }
            Ok(r) if r.ok => {}
            Ok(r) => eprintln!(
                "palisade: the agent did not end the window: {}",
                r.error.unwrap_or_default()
            ),
            Err(e) => eprintln!("palisade: cannot end the window: {e}"),
        }
        if let Ok(again) = set.wait() {
            std::process::exit(128 + again as i32);
        }
    });
    ended
}

pub fn learn(a: &LearnArgs<'_>) -> Result<(), CliError> {
    let ms = u64::try_from(a.duration.as_millis()).unwrap_or(u64::MAX);
    eprintln!(
        "palisade: learning what `{}` does for {} (Ctrl-C ends it sooner)...",
        a.container,
        humantime::format_duration(a.duration)
    );
    let started = std::time::Instant::now();
    let ended = end_on_signal(a.socket, a.container);
    let r = call(
        a.socket,
        &Request::PolicyLearn {
            container: a.container.to_owned(),
            duration_ms: ms,
        },
        a.duration + Duration::from_secs(60),
    )?;
    let l = from_wire(
        r.data_as::<palisade_proto::Learned>()
            .map_err(CliError::Answer)?,
    );
    // the window as it was: shorter when a signal ended it
    let window = if ended.load(std::sync::atomic::Ordering::SeqCst) {
        Duration::from_secs(started.elapsed().as_secs_f64().round() as u64)
    } else {
        a.duration
    };
    let text = match a.format {
        LearnFormat::Policy => {
            use palisade_policy::files::FileTier;
            // file rules as this host's agent applies them
            let tier = crate::policy::files::tier(&LsmSupport::probe(Path::new(DEFAULT_BTF)));
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
                &humantime::format_duration(window).to_string(),
                palisade_policy::learn::FilesOut {
                    trees: &system_trees(),
                    reported_only: match &tier {
                        FileTier::Lsm => None,
                        FileTier::Audit { why } | FileTier::None { why } => Some(why),
                    },
                },
            )
        }
        LearnFormat::OciSeccomp => palisade_policy::learn::oci_seccomp(&l),
    };
    match a.output {
        Some(p) => std::fs::write(p, &text).map_err(|source| CliError::Write {
            path: p.to_owned(),
            source,
        })?,
        None => print!("{text}"),
    }
    eprintln!(
        "palisade: {} syscalls, {} programs, {} peers, {} listening ports, {} files written learned",
        l.syscalls.len(),
        l.execs.len(),
        l.egress.len(),
        l.ingress.len(),
        l.files.len()
    );
    if let Some(e) = &l.files_error {
        eprintln!("palisade: file writes not learned: {e}");
    }
    Ok(())
}

/// The system trees a learned policy may deny writes to: those that are directories on this
/// host (a symlink such as a merged-/usr `/bin` is left out: rules see resolved paths).
fn system_trees() -> Vec<&'static str> {
    palisade_policy::learn::SYSTEM_TREES
        .iter()
        .copied()
        .filter(|t| std::fs::symlink_metadata(t).is_ok_and(|m| m.is_dir()))
        .collect()
}

/// The agent's answer as the policy writer takes it.
fn from_wire(w: palisade_proto::Learned) -> palisade_policy::learn::Learned {
    let files_error = if w.files_learned {
        w.files_error
    } else {
        Some("the agent does not learn them".to_owned())
    };
    palisade_policy::learn::Learned {
        files: w
            .files
            .into_iter()
            .map(|f| (f.path, f.access.into_iter().collect()))
            .collect(),
        files_unresolved: w.files_unresolved.into_iter().collect(),
        files_lost: w.files_lost,
        files_error,
        syscalls: w.syscalls.into_iter().collect(),
        refused: w.refused.into_iter().collect(),
        execs: w.execs.into_iter().collect(),
        egress: w
            .egress
            .into_iter()
            .map(|p| (p.addr, p.port, p.protocol))
            .collect(),
        ingress: w
            .ingress
            .into_iter()
            .map(|p| (p.port, p.protocol))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_says_what_holds_and_what_does_not() {
        let s: PolicyStatus = serde_json::from_value(serde_json::json!({
            "pin_dir": "/sys/fs/bpf/palisade", "loaded": true, "hooks": ["exec"],
            "policies": [{"name": "fence", "mode": "enforce", "source": "/etc/p.yaml:1:1",
                          "cgroups": [{"cgroup_id": 42, "container": "web-0"},
                                      {"cgroup_id": 43, "container": "/web-0/sub",
                                       "inherited_from": "/web-0"}]}],
            "exec_match": {"mode": "file", "describe": "exec rules match the file executed"},
            "unenforced": [{"policy": "fence", "cgroup_id": 44, "container": "db",
                            "reason": "hook_exec", "detail": "tracefs is not available"}],
            "notes": ["this host: no `syscalls:sys_enter_socket` tracepoint"],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let text = status_text(&s);
        for want in [
            "exec rules match the file executed\n",
            "  web-0 (cgroup 42)\n",
            "  /web-0/sub (cgroup 43, inherited from /web-0)\n",
            "NOT ENFORCED: policy fence in db (cgroup 44): hook_exec: tracefs is not available\n",
            "note: this host: no `syscalls:sys_enter_socket` tracepoint\n",
        ] {
            assert!(text.contains(want), "{want:?} in {text}");
        }
    }
}
