//! Real named containers through podman (runc, cgroupfs manager), for container naming tests.

use std::{
    path::Path,
    process::{Command, Stdio},
};

/// podman flags that work on this project's hosts (runc, cgroupfs manager, no network).
pub const PODMAN_FLAGS: &[&str] = &[
    "--runtime",
    "runc",
    "--cgroup-manager=cgroupfs",
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

/// A podman container removed on drop.
pub struct PodmanContainer(pub String);

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A local podman image holding busybox-static (Debian package), imported once per host.
pub fn busybox_image() -> String {
    const IMAGE: &str = "localhost/palisade-test-busybox:latest";
    let have = Command::new("podman")
        .args(["image", "exists", IMAGE])
        .status()
        .unwrap_or_else(|e| panic!("cannot run podman ({e}); install it with `cargo xtask setup`"));
    if have.success() {
        return IMAGE.to_owned();
    }
    let bb = Path::new("/bin/busybox");
    assert!(
        bb.exists(),
        "/bin/busybox missing: install busybox-static (`cargo xtask setup`)"
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let root = dir.path().join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap_or_else(|e| panic!("mkdir: {e}"));
    }
    std::fs::copy(bb, root.join("bin/busybox")).unwrap_or_else(|e| panic!("copy busybox: {e}"));
    for applet in ["sh", "sleep", "cat", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .unwrap_or_else(|e| panic!("symlink: {e}"));
    }
    let tar = dir.path().join("rootfs.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "tar of the busybox rootfs failed");
    let out = Command::new("podman")
        .arg("import")
        .arg(&tar)
        .arg(IMAGE)
        .output()
        .unwrap_or_else(|e| panic!("podman import: {e}"));
    assert!(
        out.status.success(),
        "podman import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    IMAGE.to_owned()
}
