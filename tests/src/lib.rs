//! Helpers shared by the privileged tests: a real agent process, test cgroups in the unified
//! hierarchy, workloads placed in them before their first instruction, and a parser for the
//! Prometheus text format.
//!
//! Every test owns its cgroups (named `palisade-test-<pid>-<tag>-<n>`) and its agent (listening
//! on an ephemeral port), so tests run in parallel on one kernel without seeing each other.
//! Helpers panic with a message instead of returning errors: they only run inside tests.
mod agent;
pub mod bpf;
pub mod catalog;
mod cgroup;
pub mod fleet;
pub mod grafana;
mod http;
pub mod launch;
pub mod load;
mod metrics;
mod netns;
mod otlp;
mod podman;
pub mod policy;
pub mod stack;

pub use agent::Agent;
pub(crate) use cgroup::SEQ;
pub use cgroup::{TestCgroup, unified_root, v1_mount};
pub use http::http_get;
pub use metrics::{Metrics, Sample, promtool_check_metrics};
pub use netns::{TestNetns, net_workload_bin, start_server};
pub use otlp::{OtlpReceiver, otlp_attr};
pub use podman::{PODMAN_FLAGS, PodmanContainer, busybox_image};

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The `palisade` binary under test: `$PALISADE_BIN` (set by `cargo xtask test`), else the
/// workspace's debug build.
pub fn palisade_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PALISADE_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/palisade");
    if !p.exists() {
        panic!(
            "palisade binary not found at {}; run the tests with `cargo xtask test` (or set PALISADE_BIN)",
            p.display()
        );
    }
    p
}

/// The workload binary built with these tests.
/// The `syscall-workload` binary built with these tests (next to the test's `deps/` folder).
pub fn workload_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test binary location {}", exe.display()));
    let bin = dir.join("syscall-workload");
    assert!(
        bin.exists(),
        "{} missing; build it with `cargo build -p palisade-tests --bins`",
        bin.display()
    );
    bin
}

/// `d` times `PALISADE_TEST_TIME_SCALE` (a whole number, default 1). `cargo xtask vm-test`
/// sets it in guests under qemu's TCG, which runs code ~10× slower: only how long a wait may
/// last changes, never what it waits for.
pub fn scaled(d: Duration) -> Duration {
    let factor = std::env::var("PALISADE_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|f| *f > 0)
        .unwrap_or(1);
    d * factor
}

/// Privileged tests need root; they fail (not skip) without it.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test loads eBPF programs and creates cgroups: run it as root (cargo xtask test)"
        );
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_explained(timeout, what, f, String::new)
}

/// Like [`wait_for`]; on timeout the panic message also says what `explain` finds instead.
pub fn wait_for_explained<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            let seen = explain();
            let sep = if seen.is_empty() { "" } else { ": " };
            panic!("timed out after {timeout:?} waiting for {what}{sep}{seen}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
