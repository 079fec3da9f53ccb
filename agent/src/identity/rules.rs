//! Naming a cgroup from its path alone (no runtime sockets).
//!
//! Paths are relative to the unified hierarchy's root, as the `cgroup:cgroup_mkdir` tracepoint
//! and a directory walk both give them (`/system.slice/docker-<id>.scope`). Rules, first match
//! wins, applied to the last path component and where it sits:
//!
//! | path | runtime | name |
//! |---|---|---|
//! | `<docker parent>/docker-<id>.scope`, `<docker parent>/<id>` | docker | short id (12 hex) |
//! | `<podman parent>/libpod-<id>.scope`, `<podman parent>/libpod-<id>` | podman | short id |
//! | `<kube root>/[<qos>/]pod<uid>/cri-containerd-<id>.scope` | containerd | short id |
//! | `<kube root>/[<qos>/]pod<uid>/crio-<id>.scope`, `…/crio-<id>` | cri-o | short id |
//! | `<kube root>/[<qos>/]pod<uid>/<id>` | cri | short id |
//! | `<kube root>/[<qos>/]kubepods…pod<uid>.slice`, `…/pod<uid>` | kubernetes | `pod-<uid>` |
//! | `/palisade/<name>` | palisade | `<name>` (the launcher's workload) |
//! | `<unit>.service`, `<unit>.scope` | systemd | unit name |
//! | `/` | host | `/` |
//! | anything else | cgroup | the path |
//!
//! The runtime rules apply only under the runtime's own parents ([`RuntimeParents`]:
//! `/system.slice` and `/docker` for Docker, `/machine.slice` and `/libpod_parent` for podman,
//! `/kubepods.slice` and `/kubepods` for Kubernetes, configurable): anywhere else, in a delegated
//! subtree or inside a container's own cgroup, a component that looks like a runtime's container
//! names nothing but its path, so nobody can pass for a container (its metrics, events and
//! policies) by naming a cgroup after it.
//!
//! Conmon helper cgroups (`libpod-conmon-…`, `crio-conmon-…`) are not containers and fall
//! through to the systemd rule. Kubernetes pod uids are reported with dashes even where the
//! systemd driver spells them with underscores.
use crate::config::RuntimeParents;

/// Who created a cgroup, as far as its path tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Runtime {
    Docker,
    Podman,
    Containerd,
    CriO,
    /// A container under a Kubernetes pod whose runtime the path does not name.
    Cri,
    /// A Kubernetes pod-level cgroup.
    Kubernetes,
    /// A workload started by `palisade run`.
    Palisade,
    Systemd,
    /// The root cgroup.
    Host,
    /// Any other cgroup, named by its path.
    Cgroup,
}

impl Runtime {
    /// Stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Cri => "cri",
            Runtime::Kubernetes => "kubernetes",
            Runtime::Palisade => "palisade",
            Runtime::Systemd => "systemd",
            Runtime::Host => "host",
            Runtime::Cgroup => "cgroup",
        }
    }
}

/// What the path says about a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathIdentity {
    pub runtime: Runtime,
    /// Full container id (64 hex) for container runtimes.
    pub container_id: Option<String>,
    /// Kubernetes pod uid (with dashes) when the cgroup is a pod or inside one.
    pub pod_uid: Option<String>,
    /// Display name; the `container` label.
    pub name: String,
}

const SHORT_ID: usize = 12;

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `prefix<id>suffix` with `suffix` optional → `<id>` when it is a 64-hex container id.
fn strip_id<'a>(component: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = component.strip_prefix(prefix)?;
    let id = rest.strip_suffix(".scope").unwrap_or(rest);
    is_container_id(id).then_some(id)
}

/// The pod uid of a Kubernetes pod cgroup component, with dashes.
///
/// systemd driver: `kubepods-pod<uid_>.slice`, `kubepods-besteffort-pod<uid_>.slice`;
/// cgroupfs driver: `pod<uid>`.
fn pod_uid(component: &str) -> Option<String> {
    let core = component.strip_suffix(".slice").unwrap_or(component);
    let at = core.rfind("pod")?;
    let (before, uid) = (&core[..at], &core[at + 3..]);
    if !(before.is_empty() || before.starts_with("kubepods")) {
        return None;
    }
    let uid = uid.replace('_', "-");
    let valid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    valid.then_some(uid)
}

fn container(runtime: Runtime, id: &str, pod: Option<String>) -> PathIdentity {
    PathIdentity {
        runtime,
        container_id: Some(id.to_owned()),
        pod_uid: pod,
        name: id[..SHORT_ID].to_owned(),
    }
}

/// The components of `path` below one of `roots` (paths relative to the unified root), if it
/// is below one.
fn below<'a>(path: &'a str, roots: &[String]) -> Option<Vec<&'a str>> {
    roots.iter().find_map(|r| {
        let r = r.trim_end_matches('/');
        let rest = path.strip_prefix(r)?.strip_prefix('/')?;
        Some(rest.split('/').filter(|c| !c.is_empty()).collect())
    })
}

/// A Kubernetes QoS-class cgroup (`burstable`, `kubepods-besteffort.slice`, ...).
fn qos_class(c: &str) -> bool {
    let c = c.strip_suffix(".slice").unwrap_or(c);
    let c = c.strip_prefix("kubepods-").unwrap_or(c);
    matches!(c, "burstable" | "besteffort" | "guaranteed")
}

/// A pod or a container in it, under a Kubernetes root: `[qos/]pod[/container]`.
fn kubernetes(rest: &[&str]) -> Option<PathIdentity> {
    let rest = match rest.first() {
        Some(c) if qos_class(c) => &rest[1..],
        _ => rest,
    };
    let uid = pod_uid(rest.first()?)?;
    match rest {
        [_] => Some(PathIdentity {
            runtime: Runtime::Kubernetes,
            container_id: None,
            name: format!("pod-{uid}"),
            pod_uid: Some(uid),
        }),
        [_, c] => {
            let pod = Some(uid);
            if let Some(id) = strip_id(c, "cri-containerd-") {
                Some(container(Runtime::Containerd, id, pod))
            } else if let Some(id) = strip_id(c, "crio-") {
                Some(container(Runtime::CriO, id, pod))
            } else if is_container_id(c) {
                Some(container(Runtime::Cri, c, pod))
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Whether a component looks like a runtime's container (then, outside the runtime's parents,
/// the cgroup is named by its path).
fn looks_like_container(c: &str) -> bool {
    ["docker-", "libpod-", "cri-containerd-", "crio-"]
        .iter()
        .any(|p| strip_id(c, p).is_some())
        || is_container_id(c)
}

/// Names a cgroup from its path relative to the unified root (`/` is the root itself); the
/// runtime rules apply only under `parents`.
pub fn classify(path: &str, parents: &RuntimeParents) -> PathIdentity {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return PathIdentity {
            runtime: Runtime::Host,
            container_id: None,
            pod_uid: None,
            name: "/".into(),
        };
    }
    let components: Vec<&str> = trimmed.split('/').filter(|c| !c.is_empty()).collect();
    let last = components.last().copied().unwrap_or_default();
    let kube = below(trimmed, &parents.kubernetes);
    // the pod a cgroup under a Kubernetes root belongs to
    let pod = kube
        .as_ref()
        .and_then(|rest| rest.iter().find_map(|c| pod_uid(c)));
    let by_path = || PathIdentity {
        runtime: Runtime::Cgroup,
        container_id: None,
        pod_uid: pod.clone(),
        name: format!("/{}", components.join("/")),
    };
    if let Some(rest) = below(trimmed, &parents.docker)
        && let [c] = rest[..]
    {
        if let Some(id) = strip_id(c, "docker-") {
            return container(Runtime::Docker, id, None);
        }
        if is_container_id(c) {
            return container(Runtime::Docker, c, None);
        }
    }
    if let Some(rest) = below(trimmed, &parents.podman)
        && let [c] = rest[..]
        && let Some(id) = strip_id(c, "libpod-")
    {
        return container(Runtime::Podman, id, None);
    }
    if let Some(k) = kube.as_deref().and_then(kubernetes) {
        return k;
    }
    if looks_like_container(last) {
        return by_path();
    }
    if components.len() == 2 && components.first() == Some(&"palisade") {
        return PathIdentity {
            runtime: Runtime::Palisade,
            container_id: None,
            pod_uid: None,
            name: last.to_owned(),
        };
    }
    if last.ends_with(".service") || last.ends_with(".scope") {
        return PathIdentity {
            runtime: Runtime::Systemd,
            container_id: None,
            pod_uid: pod,
            name: last.to_owned(),
        };
    }
    by_path()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b0e4d5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
    const UID: &str = "5c3f7e2a-1b4d-4e6f-8a9b-0c1d2e3f4a5b";

    fn check(path: &str, runtime: Runtime, name: &str) -> PathIdentity {
        let id = classify(path, &RuntimeParents::default());
        assert_eq!(id.runtime, runtime, "{path}");
        assert_eq!(id.name, name, "{path}");
        id
    }

    #[test]
    fn docker_systemd_and_cgroupfs_drivers() {
        let id = check(
            &format!("/system.slice/docker-{ID}.scope"),
            Runtime::Docker,
            "3f2a9c1b0e4d",
        );
        assert_eq!(id.container_id.as_deref(), Some(ID));
        check(&format!("/docker/{ID}"), Runtime::Docker, "3f2a9c1b0e4d");
    }

    #[test]
    fn podman_systemd_cgroupfs_and_conmon() {
        check(
            &format!("/machine.slice/libpod-{ID}.scope"),
            Runtime::Podman,
            "3f2a9c1b0e4d",
        );
        check(
            &format!("/libpod_parent/libpod-{ID}"),
            Runtime::Podman,
            "3f2a9c1b0e4d",
        );
        check(
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            Runtime::Systemd,
            &format!("libpod-conmon-{ID}.scope"),
        );
    }

    #[test]
    fn containerd_and_crio_under_kubernetes() {
        let uid_ = UID.replace('-', "_");
        let id = check(
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            Runtime::Containerd,
            "3f2a9c1b0e4d",
        );
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        let id = check(
            &format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
            Runtime::CriO,
            "3f2a9c1b0e4d",
        );
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        check(
            &format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope"),
            Runtime::Systemd,
            &format!("crio-conmon-{ID}.scope"),
        );
    }

    #[test]
    fn kubernetes_pods_and_cgroupfs_containers() {
        let uid_ = UID.replace('-', "_");
        let id = check(
            &format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice"
            ),
            Runtime::Kubernetes,
            &format!("pod-{UID}"),
        );
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        check(
            &format!("/kubepods/burstable/pod{UID}"),
            Runtime::Kubernetes,
            &format!("pod-{UID}"),
        );
        let id = check(
            &format!("/kubepods/burstable/pod{UID}/{ID}"),
            Runtime::Cri,
            "3f2a9c1b0e4d",
        );
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        // QoS slices are not pods
        check(
            "/kubepods.slice/kubepods-burstable.slice",
            Runtime::Cgroup,
            "/kubepods.slice/kubepods-burstable.slice",
        );
    }

    #[test]
    fn systemd_units() {
        check(
            "/system.slice/nginx.service",
            Runtime::Systemd,
            "nginx.service",
        );
        check(
            "/user.slice/user-0.slice/session-3.scope",
            Runtime::Systemd,
            "session-3.scope",
        );
    }

    #[test]
    fn launcher_workloads() {
        check("/palisade/web-0", Runtime::Palisade, "web-0");
        // deeper cgroups inside a workload are named by path
        check(
            "/palisade/web-0/sub",
            Runtime::Cgroup,
            "/palisade/web-0/sub",
        );
    }

    #[test]
    fn runtime_names_only_under_the_runtimes_parents() {
        // a delegated subtree, or a container's own cgroup namespace, naming cgroups after a
        // container: named by path, never as that container
        for spoof in [
            format!("/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope"),
            format!("/system.slice/docker-{ID}.scope/docker-{ID}.scope"),
            format!("/system.slice/foo.service/docker/{ID}"),
            format!("/elsewhere/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/libpod-{ID}.scope"),
            format!("/tenant/kubepods/burstable/pod{UID}/{ID}"),
            format!("/kubepods/burstable/pod{UID}/{ID}/cri-containerd-{ID}.scope"),
            format!("/kubepods/burstable/pod{UID}/{ID}/{ID}"),
            format!("/{ID}"),
        ] {
            let id = classify(&spoof, &RuntimeParents::default());
            assert_eq!(id.runtime, Runtime::Cgroup, "{spoof}");
            assert_eq!(id.name, spoof, "{spoof}");
            assert_eq!(id.container_id, None, "{spoof}");
        }
        // a pod cgroup outside the Kubernetes roots is not a pod
        let id = classify(
            &format!("/tenant/kubepods/burstable/pod{UID}"),
            &RuntimeParents::default(),
        );
        assert_eq!(id.runtime, Runtime::Cgroup);
        // other parents by configuration (`docker --cgroup-parent`, a kubelet cgroup root)
        let parents = RuntimeParents {
            docker: vec!["/tenant/docker".into()],
            podman: vec![],
            kubernetes: vec!["/tenant/kubepods/".into()],
        };
        let id = classify(&format!("/tenant/docker/{ID}"), &parents);
        assert_eq!(id.runtime, Runtime::Docker);
        let id = classify(
            &format!("/tenant/kubepods/burstable/pod{UID}/{ID}"),
            &parents,
        );
        assert_eq!(id.runtime, Runtime::Cri);
        let id = classify(&format!("/system.slice/docker-{ID}.scope"), &parents);
        assert_eq!(id.runtime, Runtime::Cgroup, "not a docker parent any more");
    }

    #[test]
    fn root_and_everything_else() {
        check("/", Runtime::Host, "/");
        check("", Runtime::Host, "/");
        check("/init.scope", Runtime::Systemd, "init.scope");
        check("/bench/a/b/", Runtime::Cgroup, "/bench/a/b");
        // a 64-hex name outside docker/kubepods is just a path
        check(
            &format!("/other/{ID}"),
            Runtime::Cgroup,
            &format!("/other/{ID}"),
        );
        // a cgroup inside a container is named by path, its pod kept
        let id = check(
            &format!("/kubepods/burstable/pod{UID}/{ID}/sub"),
            Runtime::Cgroup,
            &format!("/kubepods/burstable/pod{UID}/{ID}/sub"),
        );
        assert_eq!(id.pod_uid.as_deref(), Some(UID));
        // almost-ids are not ids
        check(
            "/system.slice/docker-abc.scope",
            Runtime::Systemd,
            "docker-abc.scope",
        );
    }
}
