//! Kubernetes containers named from the files CRI-O and containerd keep, without their
//! sockets: CRI-O's containers/storage `containers.json` and containerd's runtime v2 bundles
//! (`config.json` with the CRI annotations), in fixture trees, for containers in kubelet's
//! cgroupfs layout (`kubepods/<qos>/pod<uid>/<id>`). The cAdvisor-compatible series then carry
//! the image and the runtime's name, so kube-prometheus's `container!="", image!=""` keeps them.
//!
//! Privileged: root, a real agent, real cgroups.
use std::{path::Path, time::Duration};

use palisade_tests::{Agent, TestCgroup, wait_for};

const CRIO_ID: &str = "2c3d4e5f60718293a4b5c6d7e8f9011b2c3d4e5f60718293a4b5c6d7e8f90112";
const CONTAINERD_ID: &str = "3d4e5f60718293a4b5c6d7e8f9011b2c3d4e5f60718293a4b5c6d7e8f9011223";
const UID: &str = "6d4f8e3b-2c5e-4f70-9bac-1d2e3f4a5b6c";

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap_or(Path::new("/")))
        .unwrap_or_else(|e| panic!("mkdir for {}: {e}", path.display()));
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

#[test]
fn crio_and_containerd_containers_get_their_images_and_names() {
    let roots = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let r = roots.path();
    // CRI-O's entry, as it writes it (names[0] is its k8s_ name, metadata a JSON string).
    write(
        &r.join("crio/overlay-containers/containers.json"),
        &format!(
            r#"[{{"id":"{CRIO_ID}","names":["k8s_sidecar_cart-7d9f_shop_{UID}_0"],"image":"a1b2c3d4e5f6a7b8","layer":"l","metadata":"{{\"pod-name\":\"k8s_cart-7d9f_shop_{UID}_0\",\"pod-id\":\"ff\",\"image-name\":\"quay.io/shop/sidecar:v2\",\"image-id\":\"a1b2\",\"name\":\"k8s_sidecar_cart-7d9f_shop_{UID}_0\",\"metadata-name\":\"sidecar\",\"created-at\":1700000000}}"}}]"#
        ),
    );
    // containerd's bundle of a running container, with the CRI plugin's annotations.
    write(
        &r.join(format!(
            "containerd/io.containerd.runtime.v2.task/k8s.io/{CONTAINERD_ID}/config.json"
        )),
        &format!(
            r#"{{"ociVersion":"1.1.0","annotations":{{"io.kubernetes.cri.container-name":"app","io.kubernetes.cri.container-type":"container","io.kubernetes.cri.image-name":"registry.example:5000/shop/app:v3","io.kubernetes.cri.sandbox-name":"cart-7d9f","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.sandbox-uid":"{UID}"}}}}"#
        ),
    );
    // kubelet's cgroupfs layout under a root told to the agent (`/kubepods` and
    // `/kubepods.slice` are the defaults: runtime names hold only under the runtime's parents)
    let top = TestCgroup::new("stores");
    let kubepods = top.child("kubepods");
    let cfg = format!(
        "identity:\n  roots:\n    docker: {0}/none\n    podman: []\n    crio: [{0}/crio]\n    containerd: {0}/containerd\n    kubernetes_logs: {0}/none\n  runtime_parents:\n    kubernetes: [\"{1}\"]\n",
        r.display(),
        kubepods.rel
    );
    let agent = Agent::start(&cfg, &[]);
    let qos = kubepods.child("burstable");
    let pod = qos.child(&format!("pod{UID}"));
    let crio = pod.child(CRIO_ID);
    let containerd = pod.child(CONTAINERD_ID);
    crio.run_workload(&["getppid", "3"]);
    containerd.run_workload(&["getppid", "3"]);

    let m = wait_for(Duration::from_secs(60), "both containers named", || {
        let m = agent.metrics();
        let named = |c: &str| {
            !m.find(
                "palisade_syscalls_total",
                &[("container", c), ("syscall", "getppid")],
            )
            .is_empty()
        };
        (named("sidecar") && named("app")).then_some(m)
    });
    let labels = |cg: &TestCgroup| {
        let s = m.find("container_cpu_usage_seconds_total", &[("id", &cg.rel)]);
        assert_eq!(s.len(), 1, "{}", m.text);
        s[0].labels.clone()
    };
    let l = labels(&crio);
    assert_eq!(l["container"], "sidecar");
    assert_eq!(l["image"], "quay.io/shop/sidecar:v2");
    assert_eq!(l["name"], format!("k8s_sidecar_cart-7d9f_shop_{UID}_0"));
    let l = labels(&containerd);
    assert_eq!(l["container"], "app");
    assert_eq!(l["image"], "registry.example:5000/shop/app:v3");
    assert_eq!(l["namespace"], "shop");
    assert_eq!(l["pod"], "cart-7d9f");
    // under containerd cAdvisor's `name` is the container id
    assert_eq!(l["name"], CONTAINERD_ID);
    // kube-prometheus's selector keeps both
    let kept: Vec<_> = m
        .samples
        .iter()
        .filter(|s| {
            s.name == "container_cpu_usage_seconds_total"
                && s.labels.get("container").is_some_and(|c| !c.is_empty())
                && s.labels.get("image").is_some_and(|i| !i.is_empty())
                && s.labels.get("pod").map(String::as_str) == Some("cart-7d9f")
        })
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
}
