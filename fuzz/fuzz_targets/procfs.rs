//! Any text as `/proc/<pid>/net/tcp{,6}` and `/proc/<pid>/cgroup`, as the listener scan reads
//! them at start-up: sockets or nothing, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let found = palisade::fuzzing::proc_net_listeners(text);
    // at most one socket per line (the header line never counts)
    assert!(found.len() <= text.lines().count().saturating_sub(1));
    if let Some(p) = palisade::fuzzing::proc_cgroup_path(text) {
        assert!(text.contains(p));
    }
});
