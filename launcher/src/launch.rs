//! The launch itself: plan, checks, cgroups, registration, the inits, then waiting. The order
//! is in the crate documentation.
use std::{
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
};

use crate::{
    LaunchError, RunArgs, caps, cgroup, cmdline, mounts, oci, plan, policy, process,
    register::{self, AgentError, AgentSays, AgentStep},
    validate,
};

/// The plan for these arguments: a bundle with flags on top, or the command-line form.
fn build_plan(args: &RunArgs) -> Result<plan::Plan, LaunchError> {
    match &args.bundle {
        Some(dir) => oci::plan(args, dir),
        None => cmdline::from_args(args),
    }
}

/// One started replica.
struct Running {
    name: String,
    cgroup: cgroup::Cgroup,
    pid: i32,
    go: Option<OwnedFd>,
    report: OwnedFd,
    status: Option<u8>,
}

/// Everything started so far; on an early return the children are killed and the cgroups
/// removed.
struct Started(Vec<Running>);

impl Drop for Started {
    fn drop(&mut self) {
        for r in &mut self.0 {
            if r.status.is_none() && r.pid > 0 {
                // SAFETY: killing our own child (still blocked on its pipe) and reaping it.
                unsafe {
                    libc::kill(r.pid, libc::SIGKILL);
                    libc::waitpid(r.pid, std::ptr::null_mut(), 0);
                }
            }
            let _ = r.cgroup.remove();
        }
    }
}

/// Reads what a failed child reported (`CODE\tmessage`), without blocking.
fn take_report(fd: &OwnedFd) -> Option<(u8, String)> {
    let mut buf = [0u8; 4096];
    // SAFETY: non-blocking read into a local buffer.
    let n = unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
        libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
    };
    if n <= 0 {
        return None;
    }
    let text = String::from_utf8_lossy(buf.get(..n as usize)?).into_owned();
    let (code, msg) = text.split_once('\t')?;
    Some((code.parse().ok()?, msg.to_owned()))
}

/// Runs `palisade run`; returns the exit status.
pub fn run(args: &RunArgs) -> Result<u8, LaunchError> {
    validate::root()?;
    let mut plan = build_plan(args)?;
    let policy = match &args.policy {
        Some(file) => Some(policy::prepare(file, &plan.names(), &mut plan)?),
        None => None,
    };
    plan.init_seccomp = Some(cmdline::init_seccomp()?);
    validate::check(&plan)?;
    let mounts = palisade_cgroupfs::Mounts::detect().map_err(cgroup::CgroupError::from)?;
    let layout = cgroup::Layout::of(&mounts)?;
    let v1_mounts = if layout.v2 {
        Vec::new()
    } else {
        mounts::host_v1_mounts(&mounts, &layout.v1)
    };
    if plan
        .mounts
        .iter()
        .any(|m| m.kind == plan::MountKind::Cgroup)
    {
        // a cgroup mount shows the workload's own cgroups only inside a cgroup namespace
        plan.ns.cgroup = true;
    }
    if plan.process.uid != 0 && plan.process.caps.ambient & !plan.process.caps.inheritable != 0 {
        eprintln!(
            "palisade: warning: process.capabilities.ambient: {} not in the inheritable set, so not raised (the kernel requires both)",
            caps::names(plan.process.caps.ambient & !plan.process.caps.inheritable).join(", ")
        );
    }
    let names = plan.names();
    let mut stale = Vec::new();
    for n in &names {
        stale.push(cgroup::preflight(&layout, n)?);
    }
    let socket = args
        .agent_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(palisade_proto::DEFAULT_SOCKET));
    // exec and network rules only exist in the agent: without it they would silently not apply
    let policy_needs_agent = policy.as_ref().filter(|p| !p.needs_agent.is_empty());
    let require_agent = args.require_agent || policy_needs_agent.is_some();
    let mut agent = match register::AgentConn::connect(&socket, args.agent_timeout) {
        Ok(c) => Some(c),
        Err(source) if require_agent => {
            return Err(AgentError {
                step: AgentStep::Connect,
                source,
                policies: policy_needs_agent
                    .map(|p| p.needs_agent.clone())
                    .unwrap_or_default(),
            }
            .into());
        }
        Err(e) => {
            let e = AgentSays(&e);
            let confined = if plan.seccomp.is_empty() {
                "its limits"
            } else {
                "seccomp and its limits"
            };
            eprintln!(
                "palisade: warning: {e}; {} runs with {confined} but without telemetry (start `palisade agent`, or pass --require-agent to refuse)",
                plan.name
            );
            None
        }
    };

    // From here on things exist; `Started` undoes them on an early return.
    process::block_signals();
    let mut started = Started(Vec::new());
    let mut pipes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let cg = cgroup::Cgroup::create(&layout, name, &stale[i], &plan.resources, &plan.devices)?;
        if let Some(a) = agent.as_mut()
            && let Err(e) = a.register(name, cg.id, &cg.rel, policy.as_ref().map(|p| &p.wire))
        {
            if require_agent {
                started.0.push(placeholder(name, cg)?);
                return Err(AgentError {
                    step: AgentStep::Register {
                        workload: name.clone(),
                    },
                    source: e,
                    policies: Vec::new(),
                }
                .into());
            }
            eprintln!(
                "palisade: warning: {}; continuing without telemetry",
                AgentSays(&e)
            );
            agent = None;
        }
        let spawn_err = |source| LaunchError::Spawn {
            name: name.clone(),
            source,
        };
        let (go_r, go_w) = process::pipe().map_err(spawn_err)?;
        let (rep_r, rep_w) = process::pipe().map_err(spawn_err)?;
        let init_args = process::InitArgs {
            plan: &plan,
            hostname: name,
            v1_mounts: &v1_mounts,
            v1_tasks: cg.v1_tasks()?,
            go: go_r,
            report: rep_w,
            close: pipes.clone(),
        };
        let spawned = process::spawn_init(init_args, &cg.dir);
        let mut running = Running {
            name: name.clone(),
            cgroup: cg,
            pid: 0,
            go: Some(go_w),
            report: rep_r,
            status: None,
        };
        pipes.push(running.report.as_raw_fd());
        if let Some(go) = &running.go {
            pipes.push(go.as_raw_fd());
        }
        let (pid, placement) = match spawned {
            Ok(p) => p,
            Err(e) => {
                started.0.push(running);
                return Err(spawn_err(e));
            }
        };
        running.pid = pid;
        // the v1 hierarchies are joined by the init itself (see Cgroup::v1_tasks)
        let placed = match placement {
            process::Placement::Clone3 => Ok(()),
            process::Placement::ByPid => running.cgroup.place_unified(pid),
        };
        started.0.push(running);
        placed?;
    }
    if let Some(a) = agent.as_mut() {
        for r in &started.0 {
            if let Err(e) = a.reply() {
                if require_agent {
                    return Err(AgentError {
                        step: AgentStep::Reply {
                            workload: r.name.clone(),
                        },
                        source: e,
                        policies: Vec::new(),
                    }
                    .into());
                }
                let e = AgentSays(&e);
                eprintln!("palisade: warning: {e}; {} runs without telemetry", r.name);
                break;
            }
        }
    }
    for r in &mut started.0 {
        if let Some(go) = r.go.take() {
            // SAFETY: writing one byte from a static buffer to our pipe.
            unsafe { libc::write(go.as_raw_fd(), b"1".as_ptr().cast(), 1) };
        }
    }
    drop(agent);
    Ok(wait_all(&mut started))
}

/// A cgroup created for a replica whose child was never started (for cleanup).
fn placeholder(name: &str, cgroup: cgroup::Cgroup) -> Result<Running, LaunchError> {
    let (r, _w) = process::pipe().map_err(|source| LaunchError::Spawn {
        name: name.to_owned(),
        source,
    })?;
    Ok(Running {
        name: name.to_owned(),
        cgroup,
        pid: 0,
        go: None,
        report: r,
        status: Some(process::EXIT_SETUP),
    })
}

/// Forwards signals and reaps the inits; removes each one's cgroups when it is gone. Returns
/// the first non-zero status, in the order they happened, or 0.
fn wait_all(started: &mut Started) -> u8 {
    let mut first_failure = None;
    while started.0.iter().any(|r| r.status.is_none()) {
        let sig = process::wait_signal();
        if sig != libc::SIGCHLD {
            for r in started.0.iter().filter(|r| r.status.is_none()) {
                // SAFETY: forwarding a signal to our own child.
                unsafe { libc::kill(r.pid, sig) };
            }
            continue;
        }
        loop {
            let mut status = 0;
            // SAFETY: waitpid with a valid status pointer.
            let pid = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let Some(r) = started.0.iter_mut().find(|r| r.pid == pid) else {
                continue;
            };
            let mut code = process::status_code(status);
            if let Some((c, msg)) = take_report(&r.report) {
                eprintln!("palisade: error: {}: {msg}", r.name);
                code = c;
            }
            r.status = Some(code);
            if let Err(e) = r.cgroup.remove() {
                eprintln!("palisade: warning: {}: {e}", r.name);
            }
            if code != 0 && first_failure.is_none() {
                first_failure = Some(code);
            }
        }
    }
    first_failure.unwrap_or(0)
}
