//! OCI bundles: `config.json` (runtime-spec 1.x, as `runc spec` writes it) into a [`Plan`].
//!
//! Every property of the runtime spec is either honoured or refused with its JSON path
//! (`linux.sysctl: not supported: ...`), except `annotations` (metadata by definition) and
//! `ociVersion` (checked to be 1.x). Properties the spec does not define (a newer spec's, a
//! vendor's) are ignored, as the spec requires of runtimes ("MUST ignore unknown properties"),
//! and listed in one warning.
//!
//! [`parse_config`] is the parser on its own (text in, plan out), for fuzzing: it reads
//! nothing but the bundle directory it is given (the rootfs and bind sources must exist).
use std::path::{Path, PathBuf};

use super::{
    LaunchError,
    caps::{self, CapSets},
    cmdline,
    json::{self, Field, FieldError, Ignored, Obj},
    plan::{self, Mount, MountKind, Namespaces, Net, Plan, Process, Resources, Rlimit},
    seccomp::{self, Profile},
};

mod resources;

type Result<T> = std::result::Result<T, FieldError>;

/// A bundle that cannot be used, with the file (and, inside it, the field) at fault.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "bundle {}: {source} (give the directory holding config.json and the rootfs)",
        dir.display()
    )]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read {}: {source} (a bundle holds config.json, e.g. from `runc spec`)",
        file.display()
    )]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{}:{}: invalid JSON: {source}", file.display(), source.line(), source.column())]
    Syntax {
        file: PathBuf,
        source: serde_json::Error,
    },
    /// A field of config.json, named by its JSON path.
    #[error("{}: {source}", file.display())]
    Field { file: PathBuf, source: FieldError },
}

/// Reads `DIR/config.json`; `Ok((plan, seccomp profile))` with paths resolved against DIR.
pub fn load(dir: &Path) -> std::result::Result<(Plan, Option<Profile>), BundleError> {
    let dir = std::fs::canonicalize(dir).map_err(|source| BundleError::Dir {
        dir: dir.to_owned(),
        source,
    })?;
    let file = dir.join("config.json");
    let text = std::fs::read_to_string(&file).map_err(|source| BundleError::Read {
        file: file.clone(),
        source,
    })?;
    parse_config(&text, &dir)
}

/// Parses the text of `DIR/config.json` (runtime-spec 1.x) into a plan and the seccomp profile
/// it holds; relative paths (the rootfs, bind sources) are resolved against `dir`.
pub fn parse_config(
    text: &str,
    dir: &Path,
) -> std::result::Result<(Plan, Option<Profile>), BundleError> {
    let (plan, profile, ignored) = parse_config_ignoring_unknown(text, dir)?;
    if !ignored.is_empty() {
        eprintln!(
            "palisade: warning: {}: ignored properties the runtime spec does not define: {}",
            dir.join("config.json").display(),
            ignored.join(", ")
        );
    }
    Ok((plan, profile))
}

/// [`parse_config`], with the JSON paths of the unknown properties it ignored.
pub fn parse_config_ignoring_unknown(
    text: &str,
    dir: &Path,
) -> std::result::Result<(Plan, Option<Profile>, Vec<String>), BundleError> {
    let file = dir.join("config.json");
    let value = json::parse(text).map_err(|source| BundleError::Syntax {
        file: file.clone(),
        source,
    })?;
    let ignored = Ignored::default();
    let (plan, profile) = parse(Field::root_ignoring_unknown(value, &ignored), dir)
        .map_err(|source| BundleError::Field { file, source })?;
    Ok((plan, profile, ignored.paths()))
}

fn bad(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_owned(),
        message: message.into(),
        value: None,
    }
}

fn parse(root: Field, dir: &Path) -> Result<(Plan, Option<Profile>)> {
    let mut top = root.obj()?;
    if let Some(v) = top.take("ociVersion") {
        let s = v.str()?;
        if !s.starts_with("1.") {
            return Err(v.err(format!("runtime-spec version {s} is not 1.x")));
        }
    }
    top.ignore("annotations");
    top.unsupported("hooks", "OCI hooks are not run by palisade")?;
    for os in ["solaris", "windows", "vm", "zos"] {
        top.unsupported(os, "only Linux containers")?;
    }
    let process = parse_process(top.require("process")?.obj()?)?;
    let mut root_obj = top.require("root")?.obj()?;
    let root_field = root_obj.require("path")?;
    let root_rel = root_field.str()?;
    let root_readonly = root_obj.take_bool("readonly")?.unwrap_or(false);
    root_obj.finish()?;
    let root = std::fs::canonicalize(dir.join(&root_rel))
        .map_err(|e| root_field.err(format!("rootfs {root_rel}: {e}")))?;
    if !root.is_dir() {
        return Err(root_field.err(format!("rootfs {} is not a directory", root.display())));
    }
    let hostname = top.take_str("hostname")?;
    let domainname = top.take_str("domainname")?;
    let mounts = top
        .take_array("mounts")?
        .into_iter()
        .map(|m| parse_mount(m, dir))
        .collect::<Result<Vec<_>>>()?;
    let mut linux = top
        .take_obj("linux")?
        .unwrap_or_else(|| Obj::empty("linux"));
    let ns = parse_namespaces(&mut linux)?;
    if (hostname.is_some() || domainname.is_some()) && !ns.uts {
        return Err(bad(
            "hostname",
            "setting a hostname needs a UTS namespace in linux.namespaces",
        ));
    }
    let (resources, mut devices) = match linux.take_obj("resources")? {
        Some(r) => resources::parse(r)?,
        None => (Resources::default(), Vec::new()),
    };
    devices.extend(plan::default_devices());
    let profile = linux
        .take("seccomp")
        .map(|f| {
            seccomp::parse(
                f,
                &format!("{}/config.json linux.seccomp", dir.display()),
                &seccomp::Host::detect(process.caps.bounding),
            )
        })
        .transpose()?;
    let masked_paths = linux.take_strings("maskedPaths")?;
    let readonly_paths = linux.take_strings("readonlyPaths")?;
    let rootfs_propagation = match linux.take("rootfsPropagation") {
        None => libc::MS_PRIVATE | libc::MS_REC,
        Some(f) => propagation(&f.str()?).ok_or_else(|| {
            f.err("expected private, rprivate, slave, rslave, shared, rshared, unbindable or runbindable")
        })?,
    };
    linux.unsupported(
        "cgroupsPath",
        "palisade places every workload in /palisade/NAME (remove it; use --name)",
    )?;
    for (key, why) in [
        ("sysctl", "kernel parameters are not set by palisade"),
        (
            "devices",
            "device nodes are not created (only the default ones)",
        ),
        ("uidMappings", "user namespaces are not supported"),
        ("gidMappings", "user namespaces are not supported"),
        ("mountLabel", "SELinux is not supported"),
        ("intelRdt", "Intel RDT is not supported"),
        ("personality", "execution domains are not supported"),
        ("timeOffsets", "time namespaces are not supported"),
        ("memoryPolicy", "NUMA memory policies are not supported"),
        ("netDevices", "moving network devices is not supported"),
    ] {
        linux.unsupported(key, why)?;
    }
    linux.finish()?;
    top.finish()?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    Ok((
        Plan {
            name,
            replicas: 1,
            process,
            root: Some(root),
            root_readonly,
            hostname,
            domainname,
            mounts,
            ns,
            resources,
            devices,
            seccomp: Vec::new(),
            init_seccomp: None,
            masked_paths,
            readonly_paths,
            rootfs_propagation,
        },
        profile,
    ))
}

fn parse_process(mut p: Obj) -> Result<Process> {
    if let Some(t) = p.take("terminal")
        && t.bool()?
    {
        return Err(t.err(
            "a terminal (console socket) is not supported; set it to false (stdin, stdout and stderr are passed through)",
        ));
    }
    p.ignore("consoleSize");
    let args_field = p.require("args")?;
    let args_path = args_field.path.clone();
    let args = args_field.strings()?;
    if args.is_empty() {
        return Err(bad(&args_path, "needs at least the program to run"));
    }
    let env = p.take_strings("env")?;
    let cwd_field = p.require("cwd")?;
    let cwd = cwd_field.str()?;
    if !cwd.starts_with('/') {
        return Err(cwd_field.err("must be an absolute path"));
    }
    let (mut uid, mut gid, mut additional_gids, mut umask) = (0, 0, Vec::new(), None);
    if let Some(mut u) = p.take_obj("user")? {
        uid = u.require("uid")?.u32()?;
        gid = u.require("gid")?.u32()?;
        umask = u.take("umask").map(|f| f.u32()).transpose()?;
        for g in u.take_array("additionalGids")? {
            additional_gids.push(g.u32()?);
        }
        u.unsupported("username", "Windows only")?;
        u.finish()?;
    }
    let caps = match p.take_obj("capabilities")? {
        Some(c) => parse_caps(c)?,
        None => CapSets::default(),
    };
    let rlimits = p
        .take_array("rlimits")?
        .into_iter()
        .map(parse_rlimit)
        .collect::<Result<Vec<_>>>()?;
    let no_new_privs = p.take_bool("noNewPrivileges")?.unwrap_or(false);
    let oom_score_adj = match p.take("oomScoreAdj") {
        None => None,
        Some(f) => {
            let v = f.i64()?;
            if !(-1000..=1000).contains(&v) {
                return Err(f.err("must be -1000 to 1000"));
            }
            Some(v as i32)
        }
    };
    for (key, why) in [
        ("apparmorProfile", "AppArmor is not supported"),
        ("selinuxLabel", "SELinux is not supported"),
        ("ioPriority", "I/O priorities are not supported"),
        ("scheduler", "scheduling policies are not supported"),
        ("execCPUAffinity", "CPU affinity is not supported"),
        ("commandLine", "Windows only"),
    ] {
        p.unsupported(key, why)?;
    }
    p.finish()?;
    Ok(Process {
        args,
        env,
        cwd,
        uid,
        gid,
        additional_gids,
        umask,
        caps,
        rlimits,
        no_new_privs,
        oom_score_adj,
    })
}

fn parse_caps(mut c: Obj) -> Result<CapSets> {
    let last = caps::last_cap();
    let mut set = |key: &str| -> Result<u64> {
        let mut mask = 0u64;
        for f in c.take_array(key)? {
            let name = f.str()?;
            let n = caps::number(&name).ok_or_else(|| {
                f.err(format!("unknown capability `{name}` (see capabilities(7))"))
            })?;
            if n > last {
                eprintln!(
                    "palisade: warning: {}: {name} is unknown to this kernel; skipped",
                    f.path
                );
                continue;
            }
            mask |= 1 << n;
        }
        Ok(mask)
    };
    let sets = CapSets {
        bounding: set("bounding")?,
        effective: set("effective")?,
        permitted: set("permitted")?,
        inheritable: set("inheritable")?,
        ambient: set("ambient")?,
    };
    c.finish()?;
    Ok(sets)
}

const RLIMITS: &[(&str, libc::__rlimit_resource_t)] = &[
    ("RLIMIT_CPU", libc::RLIMIT_CPU),
    ("RLIMIT_FSIZE", libc::RLIMIT_FSIZE),
    ("RLIMIT_DATA", libc::RLIMIT_DATA),
    ("RLIMIT_STACK", libc::RLIMIT_STACK),
    ("RLIMIT_CORE", libc::RLIMIT_CORE),
    ("RLIMIT_RSS", libc::RLIMIT_RSS),
    ("RLIMIT_NPROC", libc::RLIMIT_NPROC),
    ("RLIMIT_NOFILE", libc::RLIMIT_NOFILE),
    ("RLIMIT_MEMLOCK", libc::RLIMIT_MEMLOCK),
    ("RLIMIT_AS", libc::RLIMIT_AS),
    ("RLIMIT_LOCKS", libc::RLIMIT_LOCKS),
    ("RLIMIT_SIGPENDING", libc::RLIMIT_SIGPENDING),
    ("RLIMIT_MSGQUEUE", libc::RLIMIT_MSGQUEUE),
    ("RLIMIT_NICE", libc::RLIMIT_NICE),
    ("RLIMIT_RTPRIO", libc::RLIMIT_RTPRIO),
    ("RLIMIT_RTTIME", libc::RLIMIT_RTTIME),
];

fn parse_rlimit(f: Field) -> Result<Rlimit> {
    let mut o = f.obj()?;
    let t = o.require("type")?;
    let name = t.str()?;
    let (name, resource) = RLIMITS
        .iter()
        .find(|(n, _)| *n == name)
        .copied()
        .ok_or_else(|| {
            t.err(format!(
                "unknown rlimit `{name}` (RLIMIT_NOFILE, RLIMIT_NPROC, ...)"
            ))
        })?;
    let hard_field = o.require("hard")?;
    let hard = hard_field.u64()?;
    let soft = o.require("soft")?.u64()?;
    o.finish()?;
    if soft > hard {
        return Err(hard_field.err(format!(
            "{name}: soft limit {soft} is above the hard limit {hard}"
        )));
    }
    Ok(Rlimit {
        resource,
        name,
        soft,
        hard,
    })
}

fn propagation(s: &str) -> Option<libc::c_ulong> {
    Some(match s {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

fn parse_mount(f: Field, dir: &Path) -> Result<Mount> {
    let mut m = f.obj()?;
    let dest_field = m.require("destination")?;
    let destination = dest_field.str()?;
    if !destination.starts_with('/') {
        return Err(dest_field.err("must be an absolute path inside the container"));
    }
    let kind_field = m.take("type");
    let kind_name = kind_field
        .as_ref()
        .map(Field::str)
        .transpose()?
        .unwrap_or_default();
    let source = m.take_str("source")?.unwrap_or_default();
    let mut flags: libc::c_ulong = 0;
    let mut prop: libc::c_ulong = 0;
    let mut data = Vec::new();
    let mut bind = false;
    for o in m.take_array("options")? {
        let opt = o.str()?;
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match opt.as_str() {
            "defaults" => (0, 0),
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "mand" => (libc::MS_MANDLOCK, 0),
            "nomand" => (0, libc::MS_MANDLOCK),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => {
                bind = true;
                (libc::MS_BIND, 0)
            }
            "rbind" => {
                bind = true;
                (libc::MS_BIND | libc::MS_REC, 0)
            }
            p if propagation(p).is_some() => {
                prop = propagation(p).unwrap_or(0);
                (0, 0)
            }
            "remount" | "tmpcopyup" | "rro" | "rrw" | "idmap" | "ridmap" | "copy-symlink"
            | "move" | "rnosuid" | "rnodev" | "rnoexec" | "rnoatime" => {
                return Err(o.err(format!("mount option `{opt}` is not supported")));
            }
            other => {
                data.push(other.to_owned());
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    m.unsupported("uidMappings", "idmapped mounts are not supported")?;
    m.unsupported("gidMappings", "idmapped mounts are not supported")?;
    let path = m.path().to_owned();
    m.finish()?;
    let kind = match kind_name.as_str() {
        _ if bind => MountKind::Bind,
        "proc" => MountKind::Proc,
        "sysfs" => MountKind::Sysfs,
        "tmpfs" => MountKind::Tmpfs,
        "devpts" => MountKind::Devpts,
        "mqueue" => MountKind::Mqueue,
        "cgroup" | "cgroup2" => MountKind::Cgroup,
        "bind" => MountKind::Bind,
        other => {
            return Err(bad(
                &format!("{path}.type"),
                format!(
                    "mount type `{other}` is not supported (proc, sysfs, tmpfs, devpts, mqueue, cgroup, bind)"
                ),
            ));
        }
    };
    let source = if kind == MountKind::Bind {
        flags |= libc::MS_BIND;
        let s = dir.join(&source);
        if source.is_empty() || !s.exists() {
            return Err(bad(
                &format!("{path}.source"),
                format!("bind source `{source}` does not exist"),
            ));
        }
        s
    } else {
        PathBuf::from(source)
    };
    Ok(Mount {
        destination,
        kind,
        source,
        flags,
        data: data.join(","),
        propagation: prop,
    })
}

fn parse_namespaces(linux: &mut Obj) -> Result<Namespaces> {
    let mut ns = Namespaces {
        pid: false,
        mount: false,
        uts: false,
        ipc: false,
        cgroup: false,
        net: Net::Host,
    };
    let list = linux.take_array("namespaces")?;
    for entry in list {
        let entry_path = entry.path.clone();
        let mut o = entry.obj()?;
        let t = o.require("type")?;
        let kind = t.str()?;
        let path = o.take_str("path")?;
        o.finish()?;
        if path.is_some() && kind != "network" {
            return Err(bad(
                &format!("{entry_path}.path"),
                format!("joining an existing {kind} namespace is not supported (only network)"),
            ));
        }
        match kind.as_str() {
            "pid" => ns.pid = true,
            "mount" => ns.mount = true,
            "uts" => ns.uts = true,
            "ipc" => ns.ipc = true,
            "cgroup" => ns.cgroup = true,
            "network" => ns.net = path.map_or(Net::New, |p| Net::Join(PathBuf::from(p))),
            "user" | "time" => {
                return Err(t.err(format!("{kind} namespaces are not supported")));
            }
            other => return Err(t.err(format!("unknown namespace type `{other}`"))),
        }
    }
    if !ns.mount {
        return Err(bad(
            "linux.namespaces",
            "palisade needs a mount namespace (add {\"type\": \"mount\"}); it never changes the host's mounts",
        ));
    }
    Ok(ns)
}

/// A bundle plus the command-line flags: the plan to run.
pub(crate) fn plan(args: &crate::RunArgs, dir: &Path) -> std::result::Result<Plan, LaunchError> {
    let (mut plan, bundle_profile) = load(dir)?;
    if let Some(n) = &args.name {
        plan.name = cmdline::workload_name(Some(n), "")?;
    } else {
        plan.name = cmdline::workload_name(None, &plan.name)?;
    }
    let profile = match &args.seccomp {
        Some(choice) => cmdline::load_profile(choice, plan.process.caps.bounding)?,
        None => None,
    };
    cmdline::apply_overrides(&mut plan, args, profile)?;
    if args.seccomp.is_none() {
        plan.seccomp = cmdline::compile_seccomp(bundle_profile)?
            .into_iter()
            .collect();
    }
    Ok(plan)
}

#[cfg(test)]
mod tests;
