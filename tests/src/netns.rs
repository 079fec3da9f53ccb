//! Network namespaces owned by one test, and the `net-workload` binary that runs in them.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::Ordering,
};

use crate::{SEQ, TestCgroup, workload_bin};

/// A network namespace owned by one test (`ip netns`), loopback up; removed on drop.
pub struct TestNetns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip ({e}); install iproute2 (`cargo xtask setup`)"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNetns {
    pub fn new(tag: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("pt-{}-{tag}-{n}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// Runs `iptables ARGS` in this namespace (its own tables: the host's are untouched).
    pub fn iptables(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "iptables"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec iptables ({e})"));
        assert!(
            out.status.success(),
            "iptables {} (install it: `cargo xtask setup`): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// Joins `a` and `b` with a veth pair: `a` gets `addr_a`/24, `b` gets `addr_b`/24.
    pub fn link(a: &TestNetns, addr_a: &str, b: &TestNetns, addr_b: &str) {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let (va, vb) = (format!("pva{n}"), format!("pvb{n}"));
        ip(&[
            "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
            &b.name,
        ]);
        ip(&[
            "-n",
            &a.name,
            "addr",
            "add",
            &format!("{addr_a}/24"),
            "dev",
            &va,
        ]);
        ip(&[
            "-n",
            &b.name,
            "addr",
            "add",
            &format!("{addr_b}/24"),
            "dev",
            &vb,
        ]);
        ip(&["-n", &a.name, "link", "set", &va, "up"]);
        ip(&["-n", &b.name, "link", "set", &vb, "up"]);
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The `net-workload` binary built with these tests.
pub fn net_workload_bin() -> PathBuf {
    workload_bin().with_file_name("net-workload")
}

/// Starts `net-workload ARGS` (a `serve-*` command) in `cg` and `netns`, and returns once it
/// says it listens.
pub fn start_server(cg: &TestCgroup, netns: &TestNetns, args: &[&str]) -> Child {
    let mut child = cg
        .command_in(netns, net_workload_bin())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn net-workload {args:?}: {e}"));
    let mut line = String::new();
    BufReader::new(
        child
            .stdout
            .as_mut()
            .unwrap_or_else(|| panic!("server stdout")),
    )
    .read_line(&mut line)
    .unwrap_or_else(|e| panic!("server {args:?}: {e}"));
    assert_eq!(line.trim(), "listening", "server {args:?}");
    child
}
