//! The command-line form (`palisade run --name web [--memory …] -- CMD`), the flags that
//! override a bundle, and seccomp profile selection.
use std::path::Path;

use super::{
    LaunchError, NetMode, PlanError,
    caps::{self, CapSets},
    plan::{
        self, DEFAULT_PATH, MASKED_PATHS, Mount, MountKind, Namespaces, Net, Plan, Process,
        READONLY_PATHS, Resources,
    },
    seccomp::{self, Compiled, Profile, SeccompError},
};
use crate::RunArgs;

/// Calls the launcher's init makes after it has confined itself (and the memory calls a free
/// may make): its filter allows these and nothing else.
pub const INIT_SYSCALLS: &[&str] = &[
    "rt_sigtimedwait",
    "rt_sigprocmask",
    "rt_sigreturn",
    "restart_syscall",
    "wait4",
    "kill",
    "write",
    "close",
    "exit",
    "exit_group",
    "brk",
    "munmap",
    "madvise",
];

const MS_STD: libc::c_ulong = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;

fn mount(dest: &str, kind: MountKind, source: &str, flags: libc::c_ulong, data: &str) -> Mount {
    Mount {
        destination: dest.into(),
        kind,
        source: source.into(),
        flags,
        data: data.into(),
        propagation: 0,
    }
}

/// The mounts `runc spec` writes: /proc, /dev (tmpfs, populated with the default devices),
/// /dev/pts, /dev/shm, /dev/mqueue, /sys read-only, /sys/fs/cgroup read-only.
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", MountKind::Proc, "proc", MS_STD, ""),
        mount(
            "/dev",
            MountKind::Tmpfs,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            "mode=755,size=65536k",
        ),
        mount(
            "/dev/pts",
            MountKind::Devpts,
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        mount(
            "/dev/shm",
            MountKind::Tmpfs,
            "shm",
            MS_STD,
            "mode=1777,size=65536k",
        ),
        mount("/dev/mqueue", MountKind::Mqueue, "mqueue", MS_STD, ""),
        mount(
            "/sys",
            MountKind::Sysfs,
            "sysfs",
            MS_STD | libc::MS_RDONLY,
            "",
        ),
        mount(
            "/sys/fs/cgroup",
            MountKind::Cgroup,
            "cgroup",
            MS_STD | libc::MS_RELATIME | libc::MS_RDONLY,
            "",
        ),
    ]
}

/// Without `--rootfs`: a /proc for the new pid namespace, private tmpfs mounts on /tmp and
/// /dev/shm (the host's would be read-only, and /dev/shm would be the host's shared memory),
/// and /sys/fs/cgroup showing the workload's own cgroups (the host's shows every cgroup on the
/// host, and the host's root where a workload reads its own limits). The host's tree itself is
/// bound read-only by [`crate::mounts::setup`].
pub fn host_mounts(dev_shm: bool) -> Vec<Mount> {
    let mut m = vec![
        mount("/proc", MountKind::Proc, "proc", MS_STD, ""),
        mount(
            "/tmp",
            MountKind::Tmpfs,
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
    ];
    if dev_shm {
        m.push(mount(
            "/dev/shm",
            MountKind::Tmpfs,
            "shm",
            MS_STD,
            "mode=1777,size=65536k",
        ));
    }
    m.push(mount(
        "/sys/fs/cgroup",
        MountKind::Cgroup,
        "cgroup",
        MS_STD | libc::MS_RELATIME | libc::MS_RDONLY,
        "",
    ));
    m
}

/// What a workload on the host's tree must not see (besides runc's masked paths): the agent's
/// directory (control socket, filter cache), the pinned eBPF objects of every agent
/// (`/sys/fs/bpf/palisade*` and the rest of bpffs) and the agent socket the launcher talks to.
pub fn host_masked_paths(agent_socket: Option<&Path>) -> Vec<String> {
    let mut m: Vec<String> = [plan::AGENT_DIR, "/sys/fs/bpf", seccomp::CACHE_DIR]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let sock = agent_socket.unwrap_or(Path::new(palisade_proto::DEFAULT_SOCKET));
    if let Some(s) = sock.to_str()
        && s.starts_with('/')
        && !m.iter().any(|d| Path::new(s).starts_with(d))
    {
        m.push(s.to_owned());
    }
    m
}

/// `default`, `unconfined` or a file.
pub fn load_profile(choice: &str, caps: u64) -> Result<Option<Profile>, SeccompError> {
    match choice {
        "default" => Ok(Some(seccomp::palisade_default(caps))),
        "unconfined" => Ok(None),
        file => seccomp::read_profile(Path::new(file), &seccomp::Host::detect(caps)).map(Some),
    }
}

/// The init's filter (compiled once per host, then cached).
pub fn init_seccomp() -> Result<Compiled, SeccompError> {
    let dir = Path::new(seccomp::CACHE_DIR);
    seccomp::compile_cached(&seccomp::init_profile(INIT_SYSCALLS), dir)
        .map_err(SeccompError::InitFilter)
}

/// Compiles the workload's filter (through the cache); unknown syscall names give one warning.
pub fn compile_seccomp(profile: Option<Profile>) -> Result<Option<Compiled>, SeccompError> {
    let Some(p) = profile else {
        return Ok(None);
    };
    let workload = seccomp::compile_cached(&p, Path::new(seccomp::CACHE_DIR))
        .map_err(SeccompError::Compile)?;
    if !workload.unknown.is_empty() {
        eprintln!(
            "palisade: warning: seccomp profile {}: {} syscall name(s) unknown to libseccomp {} skipped on the ABIs it has no number for (x86_64 takes Palisade's own table; calls through the others get the default action): {}",
            p.source,
            workload.unknown.len(),
            libseccomp_version(),
            workload.unknown.join(", ")
        );
    }
    Ok(Some(workload))
}

fn libseccomp_version() -> String {
    libseccomp::ScmpVersion::current()
        .map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro))
        .unwrap_or_else(|_| "?".into())
}

/// The environment: `K=V` as given; `K` alone copies the launcher's value (skipped if unset).
fn apply_env(env: &mut Vec<String>, flags: &[String]) {
    for e in flags {
        let entry = if e.contains('=') {
            e.clone()
        } else {
            match std::env::var(e) {
                Ok(v) => format!("{e}={v}"),
                Err(_) => continue,
            }
        };
        let key = entry.split('=').next().unwrap_or_default().to_owned();
        env.retain(|x| x.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }
}

/// The name given, or one derived from `fallback` (letters, digits, `-`, `_`, `.` kept).
pub fn workload_name(given: Option<&str>, fallback: &str) -> Result<String, PlanError> {
    let name = match given {
        Some(n) => n.to_owned(),
        None => {
            let clean: String = fallback
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            clean.trim_start_matches('.').to_owned()
        }
    };
    if !palisade_proto::valid_name(&name) || name.len() > 100 {
        return Err(PlanError::Name(name));
    }
    Ok(name)
}

/// The command-line form.
pub fn from_args(a: &RunArgs) -> Result<Plan, LaunchError> {
    let Some(program) = a.command.first() else {
        return Err(PlanError::NoCommand.into());
    };
    let base = Path::new(program)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "workload".into());
    let name = workload_name(a.name.as_deref(), &base)?;
    let root = a
        .rootfs
        .as_ref()
        .map(|r| {
            std::fs::canonicalize(r).map_err(|source| PlanError::Rootfs {
                path: r.clone(),
                source,
            })
        })
        .transpose()?;
    if let Some(r) = &root
        && !r.is_dir()
    {
        return Err(PlanError::RootfsNotADirectory { path: r.clone() }.into());
    }
    let cwd = match (&a.cwd, &root) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => "/".into(),
        (None, None) => std::env::current_dir()
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into()),
    };
    let mut masked_paths: Vec<String> = MASKED_PATHS.iter().map(|s| (*s).to_owned()).collect();
    let mounts = if root.is_some() {
        default_mounts()
    } else {
        masked_paths.extend(host_masked_paths(a.agent_socket.as_deref()));
        host_mounts(Path::new("/dev/shm").is_dir())
    };
    let caps = CapSets::uniform(caps::oci_default());
    let mut plan = Plan {
        name,
        replicas: a.replicas,
        process: Process {
            args: a.command.clone(),
            env: vec![format!("PATH={DEFAULT_PATH}")],
            cwd,
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            umask: None,
            caps,
            rlimits: Vec::new(),
            no_new_privs: true,
            oom_score_adj: None,
        },
        root_readonly: false,
        root,
        hostname: None,
        domainname: None,
        mounts,
        ns: Namespaces::default(),
        resources: Resources::default(),
        devices: std::iter::once(plan::deny_all_devices())
            .chain(plan::default_devices())
            .collect(),
        seccomp: Vec::new(),
        init_seccomp: None,
        masked_paths,
        readonly_paths: READONLY_PATHS.iter().map(|s| (*s).to_owned()).collect(),
        rootfs_propagation: libc::MS_PRIVATE | libc::MS_REC,
    };
    let profile = load_profile(a.seccomp.as_deref().unwrap_or("default"), caps.bounding)?;
    apply_overrides(&mut plan, a, profile)?;
    if !plan.process.env.iter().any(|e| e.starts_with("HOME=")) {
        let home = if plan.process.uid == 0 { "/root" } else { "/" };
        plan.process.env.insert(1, format!("HOME={home}"));
    }
    Ok(plan)
}

/// Flags that replace what the plan (or the bundle) says. `profile` is the profile to use
/// when --seccomp was given or in the command-line form.
pub fn apply_overrides(
    plan: &mut Plan,
    a: &RunArgs,
    profile: Option<Profile>,
) -> Result<(), LaunchError> {
    plan.replicas = a.replicas;
    if let Some(m) = &a.memory {
        let bytes = plan::parse_size(m)
            .and_then(plan::check_memory)
            .map_err(PlanError::flag("--memory"))?;
        plan.resources.memory = Some(bytes);
        plan.resources.memory_swap = None;
    }
    if let Some(c) = &a.cpus {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let quota = plan::parse_cpus(c, cpus).map_err(PlanError::flag("--cpus"))?;
        plan.resources.cpu_quota = Some(quota);
        plan.resources.cpu_period = Some(plan::CPU_PERIOD_US);
    }
    if let Some(p) = a.pids {
        plan.resources.pids = Some(plan::check_pids(p).map_err(PlanError::flag("--pids"))?);
    }
    match a.net {
        Some(NetMode::None) => plan.ns.net = Net::New,
        Some(NetMode::Host) => plan.ns.net = Net::Host,
        None => {}
    }
    if let Some(h) = &a.hostname {
        if !plan.ns.uts {
            return Err(PlanError::HostnameWithoutUts.into());
        }
        if h.is_empty() || h.len() > 64 {
            return Err(PlanError::Hostname(h.clone()).into());
        }
        plan.hostname = Some(h.clone());
    }
    if let Some(u) = &a.user {
        let (uid, gid) = plan::parse_user(u).map_err(PlanError::flag("--user"))?;
        plan.process.uid = uid;
        plan.process.gid = gid;
        plan.process.additional_gids.clear();
    }
    if let Some(c) = &a.cwd {
        if !c.starts_with('/') {
            return Err(PlanError::RelativeCwd(c.clone()).into());
        }
        plan.process.cwd = c.clone();
    }
    apply_env(&mut plan.process.env, &a.env);
    for v in &a.volumes {
        let m = crate::volume::parse(v, plan.root.is_some()).map_err(PlanError::from)?;
        plan.mounts.push(m);
    }
    if a.bundle.is_some() && !a.command.is_empty() {
        plan.process.args = a.command.clone();
    }
    if a.bundle.is_none() || a.seccomp.is_some() {
        plan.seccomp = compile_seccomp(profile)?.into_iter().collect();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(workload_name(Some("web"), "x").unwrap(), "web");
        assert_eq!(workload_name(None, "true").unwrap(), "true");
        assert_eq!(workload_name(None, "my app!").unwrap(), "my-app-");
        assert!(workload_name(Some("a/b"), "x").is_err());
        assert!(workload_name(Some(""), "x").is_err());
    }

    #[test]
    fn env_overrides() {
        let mut env = vec!["PATH=/bin".to_owned(), "A=1".to_owned()];
        apply_env(&mut env, &["A=2".into(), "B=x=y".into()]);
        assert_eq!(env, ["PATH=/bin", "A=2", "B=x=y"]);
    }

    #[test]
    fn default_mounts_are_runc_specs() {
        let m = default_mounts();
        assert_eq!(m.len(), 7);
        assert_eq!(m[5].destination, "/sys");
        assert!(m[5].flags & libc::MS_RDONLY != 0);
    }
}
