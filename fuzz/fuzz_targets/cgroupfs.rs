//! Any text as `/proc/self/mountinfo` (the cgroup layout) and as every cgroupfs file the
//! resource reader parses: values or nothing, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let m = palisade_cgroupfs::Mounts::parse(text);
    let _ = m.unified_root(None);
    let _ = palisade::fuzzing::resource_files(text);
});
