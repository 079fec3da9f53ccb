//! Container names and images without talking to runtime sockets: from the files runtimes keep
//! on disk. Roots are configurable (tests use fixture trees).
//!
//! - Docker: `<docker_root>/containers/<id>/config.v2.json` (`Name`, `Config.Image`, and the
//!   `io.kubernetes.*` labels dockershim set).
//! - podman and CRI-O: containers/storage's `containers.json`; containerd: its runtime v2
//!   bundles' OCI annotations (see [`super::stores`]).
//! - Kubernetes: namespace and pod name from `<log_root>/pods/<ns>_<pod>_<uid>/`, container
//!   name from `<log_root>/containers/<pod>_<ns>_<container>-<id>.log` (kubelet's log links).
use std::{collections::HashMap, path::PathBuf};

use serde::Deserialize;

use super::{
    Identity, Runtime,
    stores::{self, ContainersStorage, Stored},
};
use crate::config::NameRoots;

/// What the files say about one cgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    /// Display name (the `container` label).
    pub name: Option<String>,
    pub image: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// The runtime's own name for the container (the `name` label of cAdvisor families).
    pub runtime_name: Option<String>,
}

impl Resolved {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.image.is_none() && self.pod.is_none()
    }

    fn from_stored(s: Stored) -> Self {
        let some = |v: String| Some(v).filter(|v| !v.is_empty());
        Self {
            name: some(s.name),
            image: some(s.image),
            namespace: some(s.namespace),
            pod: some(s.pod),
            runtime_name: some(s.runtime_name),
        }
    }
}

#[derive(Debug)]
pub struct Resolver {
    roots: NameRoots,
    storage: ContainersStorage,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: DockerInner,
}

#[derive(Deserialize, Default)]
struct DockerInner {
    #[serde(rename = "Image", default)]
    image: String,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

impl Resolver {
    pub fn new(roots: NameRoots) -> Self {
        Self {
            roots,
            storage: ContainersStorage::default(),
        }
    }

    /// Looks `identity` up; `None` when its runtime keeps no files we read or nothing matched.
    pub fn resolve(&mut self, identity: &Identity) -> Option<Resolved> {
        let id = identity.container_id.as_deref();
        let mut r = match (identity.runtime, id) {
            (Runtime::Docker, Some(id)) => self.docker(id).unwrap_or_default(),
            (Runtime::Podman, Some(id)) => self.stored(&self.roots.podman.clone(), id),
            (Runtime::CriO, Some(id)) => self.stored(&self.roots.crio.clone(), id),
            (Runtime::Containerd, Some(id)) => stores::containerd(&self.roots.containerd, id)
                .map_or_else(Resolved::default, Resolved::from_stored),
            // a bare id under kubepods (cgroupfs driver): containerd or CRI-O
            (Runtime::Cri, Some(id)) => match stores::containerd(&self.roots.containerd, id) {
                Some(s) => Resolved::from_stored(s),
                None => self.stored(&self.roots.crio.clone(), id),
            },
            _ => Resolved::default(),
        };
        if let Some(uid) = identity.pod_uid.as_deref()
            && let Some((ns, pod)) = self.kube_pod(uid)
        {
            r.namespace.get_or_insert(ns);
            r.pod.get_or_insert(pod.clone());
            match (identity.runtime, id) {
                (Runtime::Kubernetes, _) => {
                    r.name.get_or_insert(pod);
                }
                (_, Some(id)) => {
                    if let Some(c) = self.kube_container(id) {
                        r.name = Some(c);
                    }
                }
                _ => {}
            }
        }
        (!r.is_empty()).then_some(r)
    }

    fn docker(&self, id: &str) -> Option<Resolved> {
        let path = self
            .roots
            .docker
            .join("containers")
            .join(id)
            .join("config.v2.json");
        let text = std::fs::read_to_string(path).ok()?;
        let cfg: DockerConfig = serde_json::from_str(&text).ok()?;
        let labels = cfg.config.labels.unwrap_or_default();
        let label = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        let name = label("io.kubernetes.container.name")
            .or_else(|| Some(cfg.name.trim_start_matches('/').to_owned()))
            .filter(|n| !n.is_empty());
        Some(Resolved {
            name,
            image: Some(cfg.config.image).filter(|i| !i.is_empty()),
            namespace: label("io.kubernetes.pod.namespace"),
            pod: label("io.kubernetes.pod.name"),
            runtime_name: Some(cfg.name.trim_start_matches('/').to_owned())
                .filter(|n| !n.is_empty()),
        })
    }

    /// A containers/storage container (podman, CRI-O) under `roots`.
    fn stored(&mut self, roots: &[PathBuf], id: &str) -> Resolved {
        self.storage
            .find(roots, id)
            .map_or_else(Resolved::default, Resolved::from_stored)
    }

    /// (namespace, pod name) of a pod uid, from `pods/<ns>_<pod>_<uid>`.
    fn kube_pod(&self, uid: &str) -> Option<(String, String)> {
        let dir = self.roots.kubernetes_logs.join("pods");
        let suffix = format!("_{uid}");
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_suffix(&suffix)?;
            let (ns, pod) = rest.split_once('_')?;
            Some((ns.to_owned(), pod.to_owned()))
        })
    }

    /// Kubernetes container name of a container id, from `containers/<pod>_<ns>_<c>-<id>.log`.
    fn kube_container(&self, id: &str) -> Option<String> {
        let dir = self.roots.kubernetes_logs.join("containers");
        let suffix = format!("-{id}.log");
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_suffix(&suffix)?;
            // <pod>_<ns>_<container>: pod and namespace names cannot contain `_`
            let mut parts = rest.splitn(3, '_');
            let (_pod, _ns, container) = (parts.next()?, parts.next()?, parts.next()?);
            Some(container.to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const ID: &str = "3f2a9c1b0e4d5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";
    const UID: &str = "5c3f7e2a-1b4d-4e6f-8a9b-0c1d2e3f4a5b";

    fn roots(dir: &Path) -> NameRoots {
        NameRoots {
            docker: dir.join("docker"),
            podman: vec![dir.join("podman")],
            crio: vec![dir.join("crio")],
            containerd: dir.join("containerd"),
            kubernetes_logs: dir.join("log"),
        }
    }

    fn write(path: PathBuf, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn docker_config_v2() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path()
                .join(format!("docker/containers/{ID}/config.v2.json")),
            r#"{"ID":"x","Name":"/web","Config":{"Image":"nginx:1.25","Labels":{"a":"b"}},"State":{}}"#,
        );
        let mut r = Resolver::new(roots(dir.path()));
        let id = Identity::new(
            5,
            &format!("/system.slice/docker-{ID}.scope"),
            &Default::default(),
        );
        let got = r.resolve(&id).unwrap();
        assert_eq!(got.name.as_deref(), Some("web"));
        assert_eq!(got.image.as_deref(), Some("nginx:1.25"));
        assert_eq!(got.pod, None);
        // unknown container: nothing
        let other = Identity::new(
            6,
            &format!("/docker/{}", ID.replace('3', "4")),
            &Default::default(),
        );
        assert_eq!(r.resolve(&other), None);
    }

    #[test]
    fn podman_containers_json_and_cache_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("podman/overlay-containers/containers.json");
        write(
            file.clone(),
            &format!(
                r#"[{{"id":"{ID}","names":["db"],"image":"0123456789abcdef","layer":"l","metadata":"{{\"image-name\":\"localhost/busybox:latest\",\"name\":\"db\"}}","created":"2026-01-01T00:00:00Z"}}]"#
            ),
        );
        let mut r = Resolver::new(roots(dir.path()));
        let id = Identity::new(
            5,
            &format!("/libpod_parent/libpod-{ID}"),
            &Default::default(),
        );
        let got = r.resolve(&id).unwrap();
        assert_eq!(got.name.as_deref(), Some("db"));
        assert_eq!(got.runtime_name.as_deref(), Some("db"));
        assert_eq!(got.image.as_deref(), Some("localhost/busybox:latest"));
        // a new container appears later: the changed file is re-read
        let id2 = ID.replace('f', "e");
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(
            file,
            &format!(
                r#"[{{"id":"{id2}","names":["late"],"image":"abcdef0123456789","metadata":""}}]"#
            ),
        );
        let later = Identity::new(
            7,
            &format!("/machine.slice/libpod-{id2}.scope"),
            &Default::default(),
        );
        let got = r.resolve(&later).unwrap();
        assert_eq!(got.name.as_deref(), Some("late"));
        assert_eq!(got.image.as_deref(), Some("abcdef012345"));
    }

    #[test]
    fn kubernetes_from_kubelet_logs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(
            dir.path()
                .join(format!("log/pods/shop_cart-7d9f_{UID}/app")),
        )
        .unwrap();
        write(
            dir.path()
                .join(format!("log/containers/cart-7d9f_shop_app-{ID}.log")),
            "",
        );
        let mut r = Resolver::new(roots(dir.path()));
        let uid_ = UID.replace('-', "_");
        let c = Identity::new(
            9,
            &format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            &Default::default(),
        );
        let got = r.resolve(&c).unwrap();
        assert_eq!(got.name.as_deref(), Some("app"));
        assert_eq!(got.namespace.as_deref(), Some("shop"));
        assert_eq!(got.pod.as_deref(), Some("cart-7d9f"));
        let pod = Identity::new(
            8,
            &format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"),
            &Default::default(),
        );
        let got = r.resolve(&pod).unwrap();
        assert_eq!(got.name.as_deref(), Some("cart-7d9f"));
        assert_eq!(got.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn other_runtimes_have_nothing_to_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Resolver::new(roots(dir.path()));
        assert_eq!(
            r.resolve(&Identity::new(
                1,
                "/system.slice/x.service",
                &Default::default()
            )),
            None
        );
    }
}
