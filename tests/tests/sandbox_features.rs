//! Documented `palisade run` features that had no test: SIGQUIT, SIGUSR1 and SIGUSR2
//! forwarded to the workload; a bundle's bind, masked and read-only mounts; and mounts resolved
//! with `openat2(RESOLVE_IN_ROOT)`, so a symlink in the image cannot aim one outside it.
use palisade_tests::launch::{Bundle, assert_clean, assert_signals_forwarded, run, unique};

fn s(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

#[test]
fn sigquit_sigusr1_and_sigusr2_are_forwarded_to_the_workload() {
    assert_signals_forwarded(&[
        (libc::SIGQUIT, "QUIT"),
        (libc::SIGUSR1, "USR1"),
        (libc::SIGUSR2, "USR2"),
    ]);
}

#[test]
fn a_bundles_bind_masked_and_read_only_mounts_are_in_place() {
    let host = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (rw, ro) = (host.path().join("rw"), host.path().join("ro"));
    for d in [&rw, &ro] {
        std::fs::create_dir(d).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(ro.join("file"), "from-the-host\n").unwrap_or_else(|e| panic!("{e}"));
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        "echo written > /data-rw/new && echo rw-ok; \
         (echo x > /data-ro/new) 2>/dev/null || echo ro-refused; \
         cat /data-ro/file; \
         echo masked-file:$(cat /etc/secret | wc -c); \
         echo masked-dir:$(ls -A /etc/secrets | wc -l); \
         (echo x > /etc/secrets/new) 2>/dev/null || echo masked-dir-refused; \
         (echo x > /etc/frozen/new) 2>/dev/null || echo readonly-refused; \
         cat /etc/frozen/kept; \
         (echo 1 > /proc/sys/kernel/domainname) 2>/dev/null || echo proc-sys-refused",
    ]);
    let rootfs = b.rootfs();
    std::fs::write(rootfs.join("etc/secret"), "password\n").unwrap_or_else(|e| panic!("{e}"));
    for d in ["etc/secrets", "etc/frozen"] {
        std::fs::create_dir(rootfs.join(d)).unwrap_or_else(|e| panic!("{e}"));
    }
    std::fs::write(rootfs.join("etc/secrets/key"), "k\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(rootfs.join("etc/frozen/kept"), "kept\n").unwrap_or_else(|e| panic!("{e}"));
    let mounts = b.config["mounts"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("runc spec has mounts"));
    mounts.push(serde_json::json!({"destination": "/data-rw", "type": "bind", "source": s(&rw), "options": ["rbind", "rw"]}));
    mounts.push(serde_json::json!({"destination": "/data-ro", "type": "bind", "source": s(&ro), "options": ["rbind", "ro"]}));
    b.config["root"]["readonly"] = false.into();
    let masked = b.config["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("runc spec has maskedPaths"));
    masked.push("/etc/secret".into());
    masked.push("/etc/secrets".into());
    let ro_paths = b.config["linux"]["readonlyPaths"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("runc spec has readonlyPaths"));
    ro_paths.push("/etc/frozen".into());
    b.write();
    let name = unique("mounts");
    let out = run(&["--bundle", &s(&b.path), "--name", &name]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(
        out.lines(),
        [
            "rw-ok",
            "ro-refused",
            "from-the-host",
            "masked-file:0",
            "masked-dir:0",
            "masked-dir-refused",
            "readonly-refused",
            "kept",
            "proc-sys-refused"
        ],
        "{out}"
    );
    // the read-write bind reached the host, the read-only one did not
    assert_eq!(
        std::fs::read_to_string(rw.join("new")).unwrap_or_default(),
        "written\n"
    );
    assert!(!ro.join("new").exists());
    // masking hid the files from the workload, it did not change them
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/secret")).unwrap_or_default(),
        "password\n"
    );
    assert_clean(&name, Some(&rootfs));
}

#[test]
fn a_symlink_in_the_image_cannot_aim_a_mount_outside_it() {
    let host = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let src = host.path().join("src");
    std::fs::create_dir(&src).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(src.join("marker"), "bound\n").unwrap_or_else(|e| panic!("{e}"));
    // where a symlink followed on the host would put the mount: a host directory outside
    // the rootfs, which exists
    let outside = host.path().join("outside");
    std::fs::create_dir(&outside).unwrap_or_else(|e| panic!("{e}"));
    let mut b = Bundle::new(&[
        "/bin/sh",
        "-c",
        &format!("cat {}/marker; cat /etc/evil/marker", outside.display()),
    ]);
    let rootfs = b.rootfs();
    std::os::unix::fs::symlink(&outside, rootfs.join("etc/evil")).unwrap_or_else(|e| panic!("{e}"));
    b.config["mounts"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("runc spec has mounts"))
        .push(serde_json::json!({"destination": "/etc/evil", "type": "bind", "source": s(&src), "options": ["rbind", "ro"]}));
    b.write();
    // resolved inside the rootfs, the target does not exist there: refused, though it exists
    // on the host
    let name = unique("symlink");
    let out = run(&["--bundle", &s(&b.path), "--name", &name]);
    assert_eq!(out.code, 125, "{out}");
    assert!(out.stderr.contains("/etc/evil"), "{out}");
    assert_clean(&name, Some(&rootfs));
    // with the target made inside the rootfs, the mount lands there
    let inside = rootfs.join(outside.strip_prefix("/").unwrap_or(&outside));
    std::fs::create_dir_all(&inside).unwrap_or_else(|e| panic!("{e}"));
    let name = unique("symlink");
    let out = run(&["--bundle", &s(&b.path), "--name", &name]);
    assert_eq!(out.code, 0, "{out}");
    // (followed on the host, the mount would cover the host directory in the workload's
    // namespace and be left behind by pivot_root: both reads would fail)
    assert_eq!(out.lines(), ["bound", "bound"], "{out}");
    assert_eq!(
        std::fs::read_dir(&outside)
            .unwrap_or_else(|e| panic!("{e}"))
            .count(),
        0,
        "nothing was written to the host directory"
    );
    assert_clean(&name, Some(&rootfs));
}
