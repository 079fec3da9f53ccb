//! Any text as a seccomp profile (OCI `linux.seccomp` or a Docker/moby profile): a profile or
//! a typed error, never a panic or a hang. Two hosts, so both sides of the architecture,
//! capability and kernel-version conditions are taken.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palisade_launcher::seccomp::{Host, parse_profile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for host in [
        Host {
            caps: 0,
            goarch: "amd64",
            kernel: (6, 18),
        },
        Host {
            caps: u64::MAX,
            goarch: "arm64",
            kernel: (4, 14),
        },
    ] {
        if let Err(e) = parse_profile(text, Path::new("fuzz.json"), &host) {
            assert!(!e.to_string().is_empty());
        }
    }
});
