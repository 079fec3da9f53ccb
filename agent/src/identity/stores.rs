//! The files container runtimes keep about their containers, read without their sockets:
//!
//! - containers/storage's `overlay-containers/containers.json` (podman and CRI-O share the
//!   format): `names`, and in `metadata` (a JSON string) `image-name` (what the user asked for,
//!   both runtimes) and, for CRI-O, `metadata-name` (the Kubernetes container name) and the pod
//!   and namespace in its kubelet-style name (`k8s_<container>_<pod>_<ns>_<uid>_<attempt>`).
//!   Re-read only when its mtime changes.
//! - containerd's runtime v2 bundles, `<state>/io.containerd.runtime.v2.task/<ns>/<id>/config.json`
//!   (the OCI spec the shim runs): the CRI plugin's annotations `io.kubernetes.cri.image-name`,
//!   `.container-name`, `.sandbox-name`, `.sandbox-namespace` (nerdctl's `nerdctl/name`). The
//!   bundle exists while the container does. containerd's own metadata store (a bbolt database
//!   under `/var/lib/containerd`, locked by containerd while it runs) is not read.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Deserialize;

/// What a runtime's files say about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The name to label it with (podman's name, the Kubernetes container name).
    pub name: String,
    /// The runtime's own name for it (`names[0]` of containers/storage).
    pub runtime_name: String,
    pub image: String,
    pub namespace: String,
    pub pod: String,
}

#[derive(Deserialize)]
struct StorageContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    metadata: String,
}

#[derive(Deserialize, Default)]
struct StorageMetadata {
    #[serde(rename = "image-name", default)]
    image_name: String,
    /// CRI-O: the name in the CRI container metadata (Kubernetes' container name).
    #[serde(rename = "metadata-name", default)]
    metadata_name: String,
}

#[derive(Debug, Default)]
struct Cached {
    mtime: Option<SystemTime>,
    by_id: HashMap<String, Stored>,
}

/// containers/storage `containers.json` files, cached per file until their mtime changes.
#[derive(Debug, Default)]
pub struct ContainersStorage {
    files: HashMap<PathBuf, Cached>,
}

impl ContainersStorage {
    /// Looks `id` up under each storage root in turn.
    pub fn find(&mut self, roots: &[PathBuf], id: &str) -> Option<Stored> {
        for root in roots {
            let file = root.join("overlay-containers").join("containers.json");
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            let mtime = meta.modified().ok();
            let cache = self.files.entry(file.clone()).or_default();
            if cache.mtime != mtime || cache.mtime.is_none() {
                cache.by_id = load_containers_json(&file).unwrap_or_default();
                cache.mtime = mtime;
            }
            if let Some(s) = cache.by_id.get(id) {
                return Some(s.clone());
            }
        }
        None
    }
}

fn load_containers_json(file: &Path) -> Option<HashMap<String, Stored>> {
    let text = std::fs::read_to_string(file).ok()?;
    let list: Vec<StorageContainer> = serde_json::from_str(&text).ok()?;
    Some(
        list.into_iter()
            .map(|c| {
                let meta: StorageMetadata = serde_json::from_str(&c.metadata).unwrap_or_default();
                let image = if meta.image_name.is_empty() {
                    c.image.chars().take(12).collect()
                } else {
                    meta.image_name
                };
                let runtime_name = c.names.into_iter().next().unwrap_or_default();
                let name = if meta.metadata_name.is_empty() {
                    runtime_name.clone()
                } else {
                    meta.metadata_name
                };
                let (namespace, pod) = kubelet_name(&runtime_name).unwrap_or_default();
                let stored = Stored {
                    name,
                    runtime_name,
                    image,
                    namespace,
                    pod,
                };
                (c.id, stored)
            })
            .collect(),
    )
}

/// (namespace, pod) from a kubelet-style container name, `k8s_<container>_<pod>_<namespace>_
/// <uid>_<attempt>` (CRI-O names its containers so; none of the parts can hold `_`).
fn kubelet_name(name: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = name.strip_prefix("k8s_")?.split('_').collect();
    match parts.as_slice() {
        [_container, pod, namespace, _uid, attempt]
            if attempt.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(((*namespace).to_owned(), (*pod).to_owned()))
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct OciSpec {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// containerd's bundle of container `id` under `state` (`/run/containerd`), in any namespace
/// (`k8s.io` for Kubernetes, `moby`, `default`, ...).
pub fn containerd(state: &Path, id: &str) -> Option<Stored> {
    let tasks = state.join("io.containerd.runtime.v2.task");
    std::fs::read_dir(tasks).ok()?.flatten().find_map(|ns| {
        let text = std::fs::read_to_string(ns.path().join(id).join("config.json")).ok()?;
        let spec: OciSpec = serde_json::from_str(&text).ok()?;
        let a = |k: &str| spec.annotations.get(k).cloned().unwrap_or_default();
        let name = match a("io.kubernetes.cri.container-type").as_str() {
            "sandbox" => a("io.kubernetes.cri.sandbox-name"),
            _ => Some(a("io.kubernetes.cri.container-name"))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| a("nerdctl/name")),
        };
        Some(Stored {
            name,
            runtime_name: String::new(),
            image: a("io.kubernetes.cri.image-name"),
            namespace: a("io.kubernetes.cri.sandbox-namespace"),
            pod: a("io.kubernetes.cri.sandbox-name"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b0e4d5f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c";

    fn write(path: PathBuf, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn crio_containers_json() {
        // As CRI-O writes it: names[0] is its k8s_ name, metadata-name the container's
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path().join("overlay-containers/containers.json"),
            &format!(
                r#"[{{"id":"{ID}","names":["k8s_app_cart-7d9f_shop_5c3f7e2a_0"],"image":"0123456789abcdef0123","layer":"l","metadata":"{{\"pod-name\":\"k8s_cart-7d9f_shop_5c3f7e2a_0\",\"pod-id\":\"ff\",\"image-name\":\"quay.io/shop/app:v3\",\"image-id\":\"0123\",\"name\":\"k8s_app_cart-7d9f_shop_5c3f7e2a_0\",\"metadata-name\":\"app\",\"created-at\":1700000000}}"}}]"#
            ),
        );
        let mut s = ContainersStorage::default();
        let got = s.find(&[dir.path().to_owned()], ID).unwrap();
        assert_eq!(got.name, "app");
        assert_eq!(got.runtime_name, "k8s_app_cart-7d9f_shop_5c3f7e2a_0");
        assert_eq!(got.image, "quay.io/shop/app:v3");
        assert_eq!(
            (got.namespace.as_str(), got.pod.as_str()),
            ("shop", "cart-7d9f")
        );
        assert_eq!(s.find(&[dir.path().to_owned()], "nope"), None);
        assert_eq!(kubelet_name("k8s_a_b_c"), None);
        assert_eq!(kubelet_name("web"), None);
    }

    #[test]
    fn containerd_bundle_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join(format!(
            "io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"
        ));
        write(
            bundle,
            r#"{"ociVersion":"1.1.0","process":{},"annotations":{
                "io.kubernetes.cri.container-name":"app",
                "io.kubernetes.cri.container-type":"container",
                "io.kubernetes.cri.image-name":"registry.example:5000/shop/app:v3",
                "io.kubernetes.cri.sandbox-id":"ff",
                "io.kubernetes.cri.sandbox-name":"cart-7d9f",
                "io.kubernetes.cri.sandbox-namespace":"shop",
                "io.kubernetes.cri.sandbox-uid":"5c3f7e2a-1b4d-4e6f-8a9b-0c1d2e3f4a5b"}}"#,
        );
        std::fs::create_dir_all(dir.path().join("io.containerd.runtime.v2.task/moby")).unwrap();
        let got = containerd(dir.path(), ID).unwrap();
        assert_eq!(
            got,
            Stored {
                name: "app".into(),
                runtime_name: String::new(),
                image: "registry.example:5000/shop/app:v3".into(),
                namespace: "shop".into(),
                pod: "cart-7d9f".into(),
            }
        );
        assert_eq!(containerd(dir.path(), "other"), None);
        assert_eq!(containerd(&dir.path().join("missing"), ID), None);
    }
}
