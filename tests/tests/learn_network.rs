//! The learn → enforce round trip with network rules: `palisade policy learn` watches a
//! workload connect to a server and writes an egress rule for that peer (default deny); under
//! the learned policy the same connection works and any other port is refused and reported.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use palisade_tests::{
    Agent,
    launch::{run, unique},
    net_workload_bin, palisade_bin,
    policy::PinDir,
    scaled, wait_for,
};

fn s(p: &std::path::Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A TCP server on the host's loopback (outside every test cgroup), `n` connections; killed
/// when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(port: u16, n: u32) -> Server {
    use std::io::BufRead as _;
    let mut c = Command::new(net_workload_bin())
        .args(["serve-tcp", &format!("127.0.0.1:{port}"), &n.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("server: {e}"));
    let mut line = String::new();
    std::io::BufReader::new(c.stdout.as_mut().unwrap_or_else(|| panic!("stdout")))
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("server: {e}"));
    assert_eq!(line.trim(), "listening");
    Server(c)
}

#[test]
fn learned_network_rules_let_the_learned_peer_through_and_refuse_the_rest() {
    let pins = PinDir::new();
    let agent = Agent::with_events(
        &format!(
            "metrics:\n  collect_interval: 1s\npolicy:\n  pin_dir: {}\n",
            pins.0.display()
        ),
        &[],
    );
    let sock = s(&agent.control_socket());
    let name = unique("learnnet");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let learned = dir.path().join("learned.yaml");
    // ports no other test uses, on the host's loopback
    let (port, other) = (7901u16 + (std::process::id() % 50) as u16, 7960u16);
    let _srv = server(port, 3);
    let window = format!("{}s", scaled(Duration::from_secs(6)).as_secs());
    let learn = Command::new(palisade_bin())
        .args([
            "policy",
            "learn",
            "--container",
            &name,
            "--duration",
            &window,
            "-o",
        ])
        .arg(&learned)
        .args(["--socket", &sock])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("learn: {e}"));
    wait_for(
        std::time::Duration::from_secs(20),
        "the learning window",
        || agent.log().contains("learning started").then_some(()),
    );
    let nw = s(&net_workload_bin());
    let workload = |extra: &[&str], args: &[&str]| {
        let mut a = vec![
            "--name",
            name.as_str(),
            "--net",
            "host",
            "--agent-socket",
            &sock,
        ];
        a.extend_from_slice(&["--require-agent"]);
        a.extend_from_slice(extra);
        a.push("--");
        a.push(&nw);
        a.extend_from_slice(args);
        run(&a)
    };
    let peer = format!("127.0.0.1:{port}");
    let out = workload(&[], &["send-tcp", &peer, "100"]);
    assert_eq!(out.code, 0, "{out}");
    let o = learn.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&learned).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.contains(&format!(
            "{{action: allow, cidr: \"127.0.0.1/32\", ports: [{port}], protocol: tcp}}"
        )),
        "no egress rule for the peer:\n{text}"
    );
    assert!(text.contains("default: deny"), "{text}");

    // under the learned policy: the learned peer works ...
    let pol = s(&learned);
    let out = workload(&["--policy", &pol], &["send-tcp", &peer, "100"]);
    assert_eq!(out.code, 0, "{out}");
    // ... another port is refused and reported
    let out = workload(
        &["--policy", &pol],
        &["try-connect", &format!("127.0.0.1:{other}")],
    );
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.lines(), ["error 1"], "EPERM\n{out}");
    let v = agent.wait_events(1, "the refused connect", |e| {
        e["type"] == "policy_violation"
            && e["container"]["name"] == name.as_str()
            && e["violation"]["hook"] == "connect"
    });
    assert_eq!(
        v[0]["violation"]["network"]["remote"],
        format!("127.0.0.1:{other}")
    );
    assert_eq!(v[0]["violation"]["rule"], "network.egress.default");
}
