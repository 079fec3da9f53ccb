//! The agent's container image (`deploy/Containerfile`, built by `cargo xtask image`) holds the
//! binary and the shared libraries it needs, nothing else, and runs on this host as the
//! DaemonSet runs it: privileged, host PID and cgroup namespaces, the DaemonSet's hostPath
//! mounts (/sys/fs/cgroup, /sys/fs/bpf, /sys/kernel/tracing, /sys/kernel/btf, the runtime
//! directories) and its ConfigMaps at their mount paths, with its arguments. `palisade doctor`
//! in the image says what it says on the host, and the agent serves `/healthz` and
//! `palisade_build_info` on `/metrics`.
//!
//! Privileged: root and podman (installed by `cargo xtask setup`); skipped, saying so, when
//! podman is missing. The image is built from `$PALISADE_BIN` with `xtask image --binary`
//! (`$PALISADE_XTASK`, set by `cargo xtask test`, else `cargo run -p xtask` in a target
//! directory of its own), tagged `localhost/palisade-test:<pid>` and removed afterwards.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use palisade_tests::{PODMAN_FLAGS, palisade_bin, policy::PinDir, require_root, wait_for};
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("podman {args:?}: {e}"))
}

/// The image, removed on drop.
struct Image(String);

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman(&["rmi", "-f", &self.0]);
    }
}

/// A container, removed on drop.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", "-t", "0", &self.0]);
    }
}

/// `xtask image --binary $PALISADE_BIN --tag TAG`.
fn build_image(tag: &str) -> Image {
    let mut cmd = match std::env::var_os("PALISADE_XTASK") {
        Some(xtask) => Command::new(xtask),
        None => {
            let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            // a target directory of its own: the one this test runs from may be locked
            c.args(["run", "--quiet", "--package", "xtask", "--target-dir"])
                .arg(root().join("target/xtask-for-tests"))
                .arg("--");
            c
        }
    };
    let out = cmd
        .current_dir(root())
        .arg("image")
        .arg("--binary")
        .arg(palisade_bin())
        .args(["--tag", tag])
        .output()
        .unwrap_or_else(|e| panic!("xtask image: {e}"));
    assert!(out.status.success(), "xtask image failed:\n{}", text(&out));
    Image(tag.to_owned())
}

/// The shared libraries `ldd` lists for `bin`.
fn ldd(bin: &Path) -> Vec<String> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split("=>")
                .last()
                .and_then(|r| r.split_whitespace().next())
                .filter(|p| p.starts_with('/'))
                .map(str::to_owned)
        })
        .collect()
}

/// `palisade doctor` without its timing line.
fn doctor_report(s: &str) -> String {
    s.lines()
        .filter(|l| !l.starts_with("(probed in"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// podman flags for the DaemonSet's pod: privileged, host PID, host cgroup namespace, the
/// host's network (to reach the agent's loopback port), and each volume mount: hostPath volumes
/// bind the host path (`/run/palisade` excepted: `run_dir` stands in, so the test's control
/// socket is its own), ConfigMaps are written to `configmaps` and bound at their mount paths.
fn daemonset_flags(run_dir: &Path, configmaps: &Path, pins: &PinDir) -> (Vec<String>, Vec<String>) {
    let base = root().join("deploy/kubernetes/base");
    let mut docs: Vec<Value> = Vec::new();
    for f in ["daemonset.yaml", "config.yaml"] {
        docs.extend(
            serde_saphyr::from_multiple::<Value>(&std::fs::read_to_string(base.join(f)).unwrap())
                .unwrap(),
        );
    }
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let mut flags: Vec<String> = Vec::new();
    // podman flags known to work here, but the host's network instead of none
    let mut known = PODMAN_FLAGS.iter();
    while let Some(f) = known.next() {
        if *f == "--network" {
            known.next();
        } else {
            flags.push((*f).to_owned());
        }
    }
    assert_eq!(c["securityContext"]["privileged"], true);
    flags.push("--privileged".into());
    assert_eq!(spec["hostPID"], true);
    flags.extend(["--pid=host", "--cgroupns=host", "--network=host"].map(String::from));
    for m in c["volumeMounts"].as_array().unwrap() {
        let name = m["name"].as_str().unwrap();
        let at = m["mountPath"].as_str().unwrap();
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        let v = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        // (mountPropagation Bidirectional is not reproduced: this host's mounts are private.)
        let source = if let Some(host) = v["hostPath"]["path"].as_str() {
            if host == "/run/palisade" {
                run_dir.to_path_buf()
            } else if !Path::new(host).exists() {
                // DirectoryOrCreate on a host without it (no Docker here): an empty directory
                assert_eq!(v["hostPath"]["type"], "DirectoryOrCreate", "{host} missing");
                let d = configmaps.join(format!("empty-{name}"));
                std::fs::create_dir_all(&d).unwrap();
                d
            } else {
                PathBuf::from(host)
            }
        } else if let Some(cm) = v["configMap"]["name"].as_str() {
            let data = docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == cm)
                .unwrap_or_else(|| panic!("no ConfigMap {cm}"));
            let d = configmaps.join(cm);
            std::fs::create_dir_all(&d).unwrap();
            for (file, body) in data["data"].as_object().unwrap() {
                // the test's own pin directory, not the host's /sys/fs/bpf/palisade
                let mut body = body.as_str().unwrap().to_owned();
                if file == "palisade.yaml" {
                    let paths = "  paths: [/etc/palisade/policies]\n";
                    assert!(body.contains(paths), "{body}");
                    body =
                        body.replace(paths, &format!("{paths}  pin_dir: {}\n", pins.0.display()));
                }
                std::fs::write(d.join(file), body).unwrap();
            }
            d
        } else {
            panic!("volume {name}: neither hostPath nor configMap");
        };
        flags.push("--volume".into());
        flags.push(format!("{}:{at}{ro}", source.display()));
    }
    let args = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    (flags, args)
}

#[test]
fn the_image_holds_the_agent_and_runs_it_as_the_daemonset_does() {
    if Command::new("podman").arg("--version").output().is_err() {
        eprintln!(
            "SKIPPED: podman not found: the image test needs it (`cargo xtask setup` installs it)"
        );
        return;
    }
    require_root();
    let tag = format!("localhost/palisade-test:{}", std::process::id());
    let image = build_image(&tag);

    // Nothing but the binary and what ldd lists for it (no shell, no CA certificates).
    let created = podman(&["create", &image.0]);
    assert!(created.status.success(), "{}", text(&created));
    let container = Container(String::from_utf8_lossy(&created.stdout).trim().to_owned());
    let export = Command::new("sh")
        .arg("-c")
        .arg(format!("podman export {} | tar -t", container.0))
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", text(&export));
    let files: BTreeSet<String> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .map(|l| format!("/{}", l.trim_start_matches("./")))
        .collect();
    drop(container);
    let expected: BTreeSet<String> = std::iter::once("/usr/bin/palisade".to_owned())
        .chain(ldd(&palisade_bin()))
        .collect();
    assert!(
        expected.iter().any(|f| f.contains("libseccomp")),
        "ldd lists no libseccomp: {expected:?}"
    );
    assert_eq!(files, expected, "the image's files");
    let config = podman(&["image", "inspect", "--format", "{{json .Config}}", &image.0]);
    let config: Value = serde_json::from_slice(&config.stdout).unwrap();
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/bin/palisade"])
    );

    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    let pins = PinDir::new();
    let (flags, args) = daemonset_flags(&run_dir, dir.path(), &pins);

    // `palisade doctor` in the image sees what it sees on the host.
    let mut doctor: Vec<&str> = vec!["run", "--rm"];
    doctor.extend(flags.iter().map(String::as_str));
    doctor.extend([image.0.as_str(), "doctor"]);
    let inside = podman(&doctor);
    let host = Command::new(palisade_bin()).arg("doctor").output().unwrap();
    assert!(
        inside.status.success(),
        "doctor in the image:\n{}",
        text(&inside)
    );
    let inside = String::from_utf8_lossy(&inside.stdout).into_owned();
    assert!(inside.contains("agent: will run"), "{inside}");
    assert_eq!(
        doctor_report(&inside),
        doctor_report(&String::from_utf8_lossy(&host.stdout)),
        "palisade doctor in the image and on the host"
    );
    eprintln!("palisade doctor in the image:\n{inside}");

    // The agent with the DaemonSet's arguments (and its config file), on a loopback port of
    // its own: the DaemonSet's 0.0.0.0:9477 would be the host's port here.
    let name = format!("palisade-test-{}", std::process::id());
    let mut run: Vec<String> = ["run", "--detach", "--name", &name]
        .map(String::from)
        .to_vec();
    run.extend(flags.iter().cloned());
    run.push(image.0.clone());
    run.extend(args);
    run.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            "/run/palisade/ready",
            "--control-socket",
            "/run/palisade/agent.sock",
        ]
        .map(String::from),
    );
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let started = podman(&run);
    assert!(started.status.success(), "podman run:\n{}", text(&started));
    let agent = Container(name.clone());
    let logs = || text(&podman(&["logs", "--tail", "40", &name]));
    let addr: SocketAddr = wait_for(
        Duration::from_secs(60),
        "the agent in the image to serve",
        || {
            std::fs::read_to_string(run_dir.join("ready"))
                .ok()
                .and_then(|t| t.trim().parse().ok())
        },
    );
    let get = |path: &str| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(addr)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}\n{}", logs()));
        s.set_read_timeout(Some(Duration::from_secs(30))).ok();
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).unwrap();
        buf
    };
    let health = get("/healthz");
    assert!(
        health.lines().next().is_some_and(|l| l.contains(" 200 "))
            && health.ends_with("\r\n\r\nok\n"),
        "{health}"
    );
    let metrics = get("/metrics");
    let build_info = format!(
        "palisade_build_info{{version=\"{}\"",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with(&build_info) && l.ends_with(" 1")),
        "no {build_info}...}} 1 on /metrics:\n{}\n{}",
        &metrics[..metrics.len().min(2000)],
        logs()
    );
    // The policies ConfigMap was loaded from its own mount.
    assert!(
        metrics.contains("palisade_policy_reloads_total"),
        "{}",
        logs()
    );
    // SIGTERM (what kubelet sends) detaches cleanly: exit status 0.
    let stop = podman(&["stop", "--time", "30", &name]);
    assert!(stop.status.success(), "{}", text(&stop));
    let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(
        String::from_utf8_lossy(&code.stdout).trim(),
        "0",
        "the agent's exit status after SIGTERM\n{}",
        logs()
    );
    drop(agent);
}
