//! Any text as a bundle's `config.json`: a plan (and seccomp profile) or a typed error naming
//! the JSON path or position, never a panic or a hang. The bundle directory is a fixed empty
//! one with a `rootfs/` (the parser checks paths against it, it never writes).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn bundle() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::create_dir(d.path().join("rootfs")).unwrap_or_else(|e| panic!("rootfs: {e}"));
        d
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match palisade_launcher::oci::parse_config(text, bundle()) {
        Ok(_) => {}
        // every error renders as one line a person can act on
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
