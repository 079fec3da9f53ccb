//! Privileged end-to-end tests of network flows: real cgroups, network namespaces and a veth
//! pair created by the test, real traffic.
//!
//! Byte rule asserted here: flow records' `bytes_out`/`bytes_in` are transport payload bytes;
//! `wire_bytes_*` and `palisade_network_bytes_total` are IP bytes including headers.
use std::{process::Child, time::Duration};

use palisade_tests::{
    Agent, Metrics, OtlpReceiver, TestCgroup, TestNetns, net_workload_bin, otlp_attr, start_server,
    wait_for, wait_for_explained,
};
use serde_json::Value;

/// Fast UDP flow ends, and a background pass every second, so records come quickly.
const CFG: &str = "metrics:\n  collect_interval: 1s\nnetwork:\n  udp_idle_timeout: 1s\n";

/// Starts a TCP server for `n` connections in `cg`/`ns` and waits until it listens.
fn server(cg: &TestCgroup, ns: &TestNetns, addr: &str, n: u32) -> Child {
    start_server(cg, ns, &["serve-tcp", addr, &n.to_string()])
}

fn run(cg: &TestCgroup, ns: &TestNetns, args: &[&str]) -> i32 {
    cg.command_in(ns, net_workload_bin())
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("net-workload {args:?}: {e}"))
        .code()
        .unwrap_or(-1)
}

fn finish(child: Child) -> String {
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("server: {e}"));
    assert!(out.status.success(), "server failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn flows(agent: &Agent, cg: &TestCgroup) -> Vec<Value> {
    agent
        .events()
        .into_iter()
        .filter(|e| e["type"] == "flow" && e["container"]["cgroup_id"] == cg.id)
        .collect()
}

/// A client cgroup `TAG-client` sends `bytes` over one TCP connection to a server cgroup
/// `TAG-server` at `addr` in `ns`; returns (client, server) once the agent has both flows.
fn one_connection(
    agent: &Agent,
    ns: &TestNetns,
    tag: &str,
    addr: &str,
    bytes: u64,
) -> (TestCgroup, TestCgroup) {
    let client = TestCgroup::new(&format!("{tag}-client"));
    let srv = TestCgroup::new(&format!("{tag}-server"));
    let s = server(&srv, ns, addr, 1);
    assert_eq!(run(&client, ns, &["send-tcp", addr, &bytes.to_string()]), 0);
    assert!(finish(s).contains(&format!("received {bytes}")));
    agent.wait_events(2, "both flow records", |e| {
        e["type"] == "flow"
            && (e["container"]["cgroup_id"] == client.id || e["container"]["cgroup_id"] == srv.id)
    });
    (client, srv)
}

fn conns(m: &Metrics, cg: &TestCgroup, dir: &str, result: &str) -> Option<f64> {
    m.value(
        "palisade_tcp_connections_total",
        &[
            ("container", &cg.rel),
            ("direction", dir),
            ("result", result),
        ],
    )
}

#[test]
fn a_megabyte_over_a_veth_pair_is_one_flow_seen_from_both_ends() {
    let agent = Agent::with_events(CFG, &[]);
    let (nsa, nsb) = (TestNetns::new("veth-a"), TestNetns::new("veth-b"));
    TestNetns::link(&nsa, "10.231.7.1", &nsb, "10.231.7.2");
    let (client, srv) = (
        TestCgroup::new("veth-client"),
        TestCgroup::new("veth-server"),
    );
    let s = server(&srv, &nsb, "10.231.7.2:7000", 1);
    assert_eq!(
        run(&client, &nsa, &["send-tcp", "10.231.7.2:7000", "1000000"]),
        0
    );
    assert!(finish(s).contains("received 1000000"));

    let c = agent.wait_events(1, "the client's flow record", |e| {
        e["type"] == "flow" && e["container"]["cgroup_id"] == client.id
    });
    let sv = agent.wait_events(1, "the server's flow record", |e| {
        e["type"] == "flow" && e["container"]["cgroup_id"] == srv.id
    });
    let (c, sv) = (&c[0]["flow"], &sv[0]["flow"]);
    assert_eq!(c["direction"], "outbound");
    assert_eq!(c["protocol"], "tcp");
    assert_eq!(c["remote"], "10.231.7.2:7000");
    assert_eq!(c["bytes_out"], 1_000_000, "{c}");
    assert_eq!(c["bytes_in"], 0);
    assert_eq!(c["tcp"]["result"], "closed");
    assert!(c["tcp"]["rtt_seconds"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(c["ended"].as_bool().unwrap_or(false));
    assert_eq!(sv["direction"], "inbound");
    assert_eq!(sv["local"], "10.231.7.2:7000");
    assert_eq!(sv["bytes_in"], 1_000_000, "{sv}");
    assert_eq!(sv["bytes_out"], 0);
    // headers are on top of the payload, and both sides saw the same wire bytes unless a
    // segment was lost on the way (under load the veth's backlog drops), which the client
    // then sent again
    let wire = c["wire_bytes_out"].as_u64().unwrap();
    assert!(wire > 1_000_000, "{wire}");
    if c["tcp"]["retransmits"] == 0 {
        assert_eq!(sv["wire_bytes_in"], wire, "{c} {sv}");
        assert_eq!(c["packets_out"], sv["packets_in"], "{c} {sv}");
    } else {
        assert!(sv["wire_bytes_in"].as_u64() <= Some(wire), "{c} {sv}");
    }

    let m = agent.metrics();
    assert_eq!(conns(&m, &client, "outbound", "established"), Some(1.0));
    assert_eq!(conns(&m, &client, "inbound", "established"), Some(0.0));
    assert_eq!(conns(&m, &srv, "inbound", "established"), Some(1.0));
    assert_eq!(conns(&m, &srv, "outbound", "established"), Some(0.0));
    let tx = m
        .value(
            "palisade_network_bytes_total",
            &[("container", &client.rel), ("direction", "tx")],
        )
        .unwrap_or(0.0);
    // the one connection is all the client's sockets sent: the total is its wire bytes
    assert_eq!(tx, wire as f64, "container total vs the flow's wire bytes");
    assert_eq!(
        m.find(
            "palisade_tcp_rtt_seconds_count",
            &[("container", &client.rel)]
        )[0]
        .value,
        1.0
    );
    palisade_tests::promtool_check_metrics(&m.text);
}

#[test]
fn retransmitted_segments_count_once_in_payload_bytes_and_again_on_the_wire() {
    let agent = Agent::with_events(CFG, &[]);
    let ns = TestNetns::new("rtx");
    // Every 4th segment to the server is dropped on arrival: the client's egress already saw
    // it, so the client retransmits what it has counted once, and the server gets the
    // segments after it first.
    let drop_every = |port: &str, every: &str, packet: &str| {
        let nth = [
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            every,
            "--packet",
            packet,
        ];
        let head = ["-A", "INPUT", "-p", "tcp", port, "7008"];
        ns.iptables(&[&head[..], &nth[..], &["-j", "DROP"]].concat());
    };
    drop_every("--dport", "4", "3");
    // and every 3rd acknowledgement back, so some retransmissions repeat what arrived
    drop_every("--sport", "3", "2");
    let (client, srv) = one_connection(&agent, &ns, "rtx", "127.0.0.1:7008", 300_000);
    let c = &flows(&agent, &client)[0]["flow"];
    let sv = &flows(&agent, &srv)[0]["flow"];
    assert!(
        c["tcp"]["retransmits"].as_u64() > Some(0),
        "the drops made no retransmission: {c}"
    );
    assert_eq!(c["bytes_out"], 300_000, "{c}");
    assert_eq!(sv["bytes_in"], 300_000, "{sv}");
    // the dropped segments were on the client's wire, not the server's
    assert!(
        c["wire_bytes_out"].as_u64() > sv["wire_bytes_in"].as_u64(),
        "{c} {sv}"
    );
}

#[test]
fn loopback_traffic_between_two_containers_is_counted_once_per_side() {
    let agent = Agent::with_events(CFG, &[]);
    let ns = TestNetns::new("lo");
    let (client, srv) = one_connection(&agent, &ns, "lo", "127.0.0.1:7001", 300_000);
    let m = agent.metrics();
    let total = |cg: &TestCgroup, dir: &str| {
        m.value(
            "palisade_network_bytes_total",
            &[("container", &cg.rel), ("direction", dir)],
        )
        .unwrap_or(0.0)
    };
    let c = &flows(&agent, &client)[0]["flow"];
    assert_eq!(
        (c["direction"].as_str(), c["bytes_out"].as_u64()),
        (Some("outbound"), Some(300_000)),
        "{c}"
    );
    let sv = &flows(&agent, &srv)[0]["flow"];
    assert_eq!(
        (sv["direction"].as_str(), sv["bytes_in"].as_u64()),
        (Some("inbound"), Some(300_000))
    );
    // The connection is the only traffic of either cgroup: each container's totals are its
    // side of the one flow, every byte once (counted twice, or in both containers, the totals
    // would exceed the flow's wire bytes).
    let wire = |f: &Value, k: &str| {
        f[k].as_u64()
            .unwrap_or_else(|| panic!("flow record without {k}: {f}")) as f64
    };
    assert_eq!(total(&client, "tx"), wire(c, "wire_bytes_out"), "{c}");
    assert_eq!(total(&client, "rx"), wire(c, "wire_bytes_in"), "{c}");
    assert_eq!(total(&srv, "rx"), wire(sv, "wire_bytes_in"), "{sv}");
    assert_eq!(total(&srv, "tx"), wire(sv, "wire_bytes_out"), "{sv}");
    // what the server received the client sent, and the other way round (not equal: under
    // load loopback drops segments after the sender counted them)
    assert!(total(&client, "tx") >= total(&srv, "rx"), "{c} {sv}");
    assert!(total(&srv, "tx") >= total(&client, "rx"), "{c} {sv}");
    assert!(total(&client, "tx") > 300_000.0);
}

#[test]
fn a_reset_connection_is_reported_as_reset_on_both_sides_and_a_closed_one_as_closed() {
    let agent = Agent::with_events(CFG, &[]);
    let ns = TestNetns::new("reset");
    let (client, srv) = (TestCgroup::new("rst-client"), TestCgroup::new("rst-server"));
    // the server reads 5,000 bytes and resets the connection (SO_LINGER 0)
    let mut s = start_server(&srv, &ns, &["serve-reset", "127.0.0.1:7003", "5000"]);
    let out = client
        .command_in(&ns, net_workload_bin())
        .args(["send-until-reset", "127.0.0.1:7003", "5000"])
        .output()
        .unwrap_or_else(|e| panic!("client: {e}"));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "reset");
    assert!(s.wait().is_ok_and(|st| st.success()), "server failed");
    // an orderly connection in the same cgroups afterwards
    let srv2 = server(&srv, &ns, "127.0.0.1:7004", 1);
    assert_eq!(run(&client, &ns, &["send-tcp", "127.0.0.1:7004", "100"]), 0);
    finish(srv2);

    agent.wait_events(4, "four flow records", |e| {
        e["type"] == "flow"
            && (e["container"]["cgroup_id"] == client.id || e["container"]["cgroup_id"] == srv.id)
    });
    for cg in [&client, &srv] {
        let mut results: Vec<(String, u64, u64)> = flows(&agent, cg)
            .iter()
            .map(|e| {
                let f = &e["flow"];
                (
                    f["tcp"]["result"].as_str().unwrap_or("").to_owned(),
                    f["bytes_out"].as_u64().unwrap_or(0),
                    f["bytes_in"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        results.sort();
        let (out, inn) = if cg.id == client.id {
            (5000, 0)
        } else {
            (0, 5000)
        };
        let (out2, in2) = if cg.id == client.id {
            (100, 0)
        } else {
            (0, 100)
        };
        assert_eq!(
            results,
            [
                ("closed".to_owned(), out2, in2),
                ("reset".to_owned(), out, inn)
            ],
            "flow records of {}",
            cg.rel
        );
    }
}

#[test]
fn a_listener_from_before_the_agent_has_its_accepted_connections_attributed() {
    let ns = TestNetns::new("early");
    let (client, srv) = (
        TestCgroup::new("early-client"),
        TestCgroup::new("early-server"),
    );
    // listening before any agent runs: sock_ops never sees this listen()
    let s = server(&srv, &ns, "127.0.0.1:7005", 1);
    let agent = Agent::with_events(CFG, &[]);
    assert_eq!(
        run(&client, &ns, &["send-tcp", "127.0.0.1:7005", "2000"]),
        0
    );
    assert!(finish(s).contains("received 2000"));
    agent.wait_events(1, "the server's flow record", |e| {
        e["type"] == "flow" && e["container"]["cgroup_id"] == srv.id
    });
    let sv = &flows(&agent, &srv)[0]["flow"];
    assert_eq!(
        (sv["direction"].as_str(), sv["bytes_in"].as_u64()),
        (Some("inbound"), Some(2000)),
        "{sv}"
    );
    let m = agent.metrics();
    assert_eq!(conns(&m, &srv, "inbound", "established"), Some(1.0));
    assert_eq!(conns(&m, &client, "outbound", "established"), Some(1.0));
}

/// An agent whose event consumer falls behind (collections every 100 ms hold the state while
/// they read the kernel) under a flood of connection events keeps serving: the flood is
/// counted exactly, and a flow after it still gets its record and the metrics still answer.
#[test]
fn an_event_flood_with_frequent_collections_never_stalls_the_agent() {
    let agent = Agent::with_events(
        "metrics:\n  collect_interval: 100ms\nnetwork:\n  udp_idle_timeout: 1s\n",
        &[],
    );
    let ns = TestNetns::new("flood");
    let (client, srv) = (
        TestCgroup::new("flood-client"),
        TestCgroup::new("flood-server"),
    );
    let n = 20_000;
    let s = server(&srv, &ns, "127.0.0.1:7007", n);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = agent.scrape();
            }
        });
        let code = run(
            &client,
            &ns,
            &["connects", "127.0.0.1:7007", &n.to_string()],
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(code, 0);
    });
    finish(s);
    assert_eq!(
        run(&client, &ns, &["send-udp", "127.0.0.1:9998", "3", "100"]),
        0
    );
    agent.wait_events(1, "the UDP flow record after the flood", |e| {
        e["type"] == "flow"
            && e["container"]["cgroup_id"] == client.id
            && e["flow"]["protocol"] == "udp"
    });
    let m = wait_for(Duration::from_secs(20), "the flood counted", || {
        let m = agent.metrics();
        (conns(&m, &client, "outbound", "established") == Some(f64::from(n))).then_some(m)
    });
    assert_eq!(
        conns(&m, &srv, "inbound", "established"),
        Some(f64::from(n))
    );
}

#[test]
fn a_connect_to_a_closed_port_is_one_refused_connection() {
    let agent = Agent::with_events(CFG, &[]);
    let ns = TestNetns::new("refused");
    let cg = TestCgroup::new("refused");
    assert_eq!(
        run(&cg, &ns, &["connect", "127.0.0.1:1"]),
        0,
        "connect refused"
    );
    let r = agent.wait_events(1, "the failed flow record", |e| {
        e["type"] == "flow" && e["container"]["cgroup_id"] == cg.id
    });
    assert_eq!(r[0]["flow"]["tcp"]["result"], "refused");
    assert_eq!(r[0]["flow"]["direction"], "outbound");
    let m = agent.metrics();
    assert_eq!(conns(&m, &cg, "outbound", "refused"), Some(1.0));
    assert_eq!(conns(&m, &cg, "outbound", "established"), Some(0.0));
    assert_eq!(conns(&m, &cg, "outbound", "timeout"), Some(0.0));
}

#[test]
fn ten_thousand_short_connections_are_counted_exactly_beside_a_live_flow() {
    // A small flow table: closed flows churn through it while a long flow stays live.
    let agent = Agent::with_events(
        &format!("{CFG}  flow_entries: 1024\n  report_interval: 1h\n"),
        &[],
    );
    let ns = TestNetns::new("conns");
    let (client, srv) = (
        TestCgroup::new("conns-client"),
        TestCgroup::new("conns-server"),
    );
    let (lc, ls) = (
        TestCgroup::new("long-client"),
        TestCgroup::new("long-server"),
    );
    let long_srv = server(&ls, &ns, "127.0.0.1:7003", 1);
    let mut long = lc
        .command_in(&ns, net_workload_bin())
        .args(["stream-tcp", "127.0.0.1:7003", "2000000", "4000"])
        .spawn()
        .unwrap();
    let s = server(&srv, &ns, "127.0.0.1:7002", 10_000);
    assert_eq!(
        run(&client, &ns, &["connects", "127.0.0.1:7002", "10000"]),
        0
    );
    finish(s);
    assert!(long.wait().unwrap().success());
    assert!(finish(long_srv).contains("received 2000000"));

    let m = wait_for(
        Duration::from_secs(20),
        "all 10,000 connections counted",
        || {
            let m = agent.metrics();
            (conns(&m, &srv, "inbound", "established") == Some(10_000.0)).then_some(m)
        },
    );
    assert_eq!(
        conns(&m, &client, "outbound", "established"),
        Some(10_000.0)
    );
    assert_eq!(conns(&m, &client, "outbound", "refused"), Some(0.0));
    assert_eq!(conns(&m, &srv, "inbound", "established"), Some(10_000.0));
    // the live flow's counts survived the churn of the LRU table
    let r = agent.wait_events(1, "the long flow's record", |e| {
        e["type"] == "flow" && e["container"]["cgroup_id"] == lc.id
    });
    assert_eq!(r[0]["flow"]["bytes_out"], 2_000_000, "{}", r[0]);
    assert!(r[0]["flow"].get("partial").is_none(), "{}", r[0]);
    assert!(r[0]["flow"]["duration_seconds"].as_f64().unwrap() > 3.0);
}

#[test]
fn a_full_flow_table_evicts_and_counts_it_while_totals_stay_exact() {
    let agent = Agent::with_events(
        "metrics:\n  collect_interval: 1s\nnetwork:\n  flow_entries: 64\n  udp_idle_timeout: 1h\n",
        &[],
    );
    let ns = TestNetns::new("evict");
    let cg = TestCgroup::new("evict");
    // 300 UDP flows (one datagram each to a distinct port) into a 64-entry table
    for port in 10_000..10_300 {
        assert_eq!(
            run(
                &cg,
                &ns,
                &["send-udp", &format!("127.0.0.1:{port}"), "1", "100"]
            ),
            0
        );
    }
    let m = agent.metrics();
    // the per-container totals do not depend on the table: exact
    assert_eq!(
        m.value(
            "palisade_network_packets_total",
            &[("container", &cg.rel), ("direction", "tx")]
        ),
        Some(300.0)
    );
    assert_eq!(
        m.value(
            "palisade_network_bytes_total",
            &[("container", &cg.rel), ("direction", "tx")]
        ),
        Some(300.0 * 128.0)
    );
    // at least ours were pushed out of the 64-entry table (the next flow pass counts them)
    let m = wait_for(
        Duration::from_secs(10),
        "the evictions to be counted",
        || {
            let m = agent.metrics();
            (m.value("palisade_network_flows_evicted_total", &[])
                .unwrap_or(0.0)
                >= 300.0 - 64.0)
                .then_some(m)
        },
    );
    assert!(m.value("palisade_network_flows", &[]).unwrap_or(99.0) <= 64.0);
}

#[test]
fn udp_datagrams_and_dns_queries() {
    let agent = Agent::with_events(&format!("{CFG}  per_peer_metrics: true\n"), &[]);
    let ns = TestNetns::new("udp");
    let cg = TestCgroup::new("udp");
    assert_eq!(
        run(&cg, &ns, &["send-udp", "127.0.0.1:9999", "100", "512"]),
        0
    );
    assert_eq!(
        run(&cg, &ns, &["dns", "127.0.0.1:53", "palisade-test.example"]),
        0
    );
    let recs = agent.wait_events(2, "the UDP flow records", |e| {
        e["type"] == "flow" && e["container"]["cgroup_id"] == cg.id
    });
    let data = recs
        .iter()
        .find(|e| e["flow"]["remote"] == "127.0.0.1:9999")
        .unwrap_or_else(|| panic!("{recs:?}"));
    let f = &data["flow"];
    assert_eq!(f["protocol"], "udp");
    assert_eq!(f["direction"], "outbound");
    assert_eq!(f["packets_out"], 100);
    assert_eq!(f["bytes_out"], 51_200, "512-byte payloads");
    assert_eq!(
        f["wire_bytes_out"],
        100 * (512 + 8 + 20),
        "plus UDP and IPv4 headers"
    );
    let dns = recs
        .iter()
        .find(|e| e["flow"]["remote"] == "127.0.0.1:53")
        .unwrap_or_else(|| panic!("{recs:?}"));
    assert_eq!(dns["flow"]["dns_query"], "palisade-test.example");
    // per-peer bytes (opt-in): both flows went to 127.0.0.0/24; the DNS query is 39 bytes
    let m = agent.metrics();
    assert_eq!(
        m.value(
            "palisade_network_peer_bytes_total",
            &[
                ("container", &cg.rel),
                ("direction", "tx"),
                ("remote", "127.0.0.0/24")
            ]
        ),
        Some((100 * (512 + 28) + 39 + 28) as f64),
        "{}",
        m.text
            .lines()
            .filter(|l| l.contains("peer"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        m.value("palisade_network_peer_series_dropped", &[]),
        Some(0.0)
    );
}

#[test]
fn flow_records_are_exported_as_otlp_logs() {
    let otlp = OtlpReceiver::start();
    let agent = Agent::start(
        // the flood tests beside this one make tens of thousands of flows, all exported too:
        // a queue that holds them all keeps this test's record from being dropped (and counted)
        &format!("{CFG}otlp:\n  protocol: http/json\n  events: [flow]\n  queue: 200000\n"),
        &["--otlp-endpoint", &otlp.endpoint()],
    );
    let ns = TestNetns::new("otlp");
    let (client, srv) = (
        TestCgroup::new("otlp-client"),
        TestCgroup::new("otlp-server"),
    );
    let s = server(&srv, &ns, "127.0.0.1:7004", 1);
    assert_eq!(
        run(&client, &ns, &["send-tcp", "127.0.0.1:7004", "100000"]),
        0
    );
    finish(s);
    let (path, rec, resource) = wait_for_explained(
        Duration::from_secs(20),
        "the flow's OTLP log record",
        || {
            otlp.records().into_iter().find(|(_, r, _)| {
                otlp_attr(r, "palisade.cgroup_id") == Some(Value::from(client.id.to_string()))
            })
        },
        || {
            let m = agent.metrics();
            let own: Vec<_> = m
                .text
                .lines()
                .filter(|l| l.starts_with("palisade_events_") && l.contains("otlp"))
                .collect();
            let recs: Vec<_> = otlp
                .records()
                .iter()
                .map(|(_, r, _)| {
                    format!(
                        "{:?} {:?}",
                        otlp_attr(r, "palisade.cgroup_id"),
                        otlp_attr(r, "container.name")
                    )
                })
                .collect();
            format!("sink counters {own:?}; records {recs:?}")
        },
    );
    assert_eq!(
        otlp_attr(&rec, "container.name"),
        Some(Value::from(client.rel.clone())),
        "{rec}"
    );
    assert_eq!(path, "/v1/logs");
    assert_eq!(rec["eventName"], "flow", "{rec}");
    assert_eq!(otlp_attr(&rec, "event.name"), None, "{rec}");
    assert_eq!(
        otlp_attr(&rec, "network.transport"),
        Some(Value::from("tcp"))
    );
    assert_eq!(
        otlp_attr(&rec, "palisade.flow.direction"),
        Some(Value::from("outbound"))
    );
    assert_eq!(
        otlp_attr(&rec, "network.peer.address"),
        Some(Value::from("127.0.0.1"))
    );
    assert_eq!(
        otlp_attr(&rec, "network.peer.port"),
        Some(Value::from("7004")),
        "intValue is a string in OTLP/JSON"
    );
    assert_eq!(
        otlp_attr(&rec, "container.runtime.name"),
        Some(Value::from("cgroup"))
    );
    assert_eq!(
        otlp_attr(&resource, "service.name"),
        Some(Value::from("palisade"))
    );
    // the body is the event, as the event log writes it
    let body: Value = serde_json::from_str(rec["body"]["stringValue"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "flow");
    assert_eq!(body["flow"]["bytes_out"], 100_000, "{body}");
    // only the configured types are exported
    assert!(
        otlp.records()
            .iter()
            .all(|(_, r, _)| r["eventName"] == "flow")
    );
    drop(agent);
}

#[test]
fn ipv6_flows_are_keyed_and_joined_like_ipv4() {
    let agent = Agent::with_events(CFG, &[]);
    let ns = TestNetns::new("v6");
    let (client, srv) = (TestCgroup::new("v6-client"), TestCgroup::new("v6-server"));
    let s = server(&srv, &ns, "[::1]:7005", 1);
    assert_eq!(run(&client, &ns, &["send-tcp", "[::1]:7005", "123456"]), 0);
    assert!(finish(s).contains("received 123456"));
    let c = agent.wait_events(1, "the client's IPv6 flow", |e| {
        e["type"] == "flow" && e["container"]["cgroup_id"] == client.id
    });
    let f = &c[0]["flow"];
    assert_eq!(f["remote"], "[::1]:7005");
    assert_eq!(f["direction"], "outbound");
    assert_eq!(
        f["bytes_out"], 123_456,
        "sock_ops' IPv6 key found the packets' flow: {f}"
    );
    assert!(f["packets_out"].as_u64().unwrap_or(0) > 0);
    assert_eq!(f["tcp"]["result"], "closed");
    let m = agent.metrics();
    assert_eq!(conns(&m, &srv, "inbound", "established"), Some(1.0));
}

#[test]
fn a_long_flow_gets_interim_records_before_its_final_one() {
    let agent = Agent::with_events(&format!("{CFG}  report_interval: 1s\n"), &[]);
    let ns = TestNetns::new("interim");
    let (client, srv) = (
        TestCgroup::new("interim-client"),
        TestCgroup::new("interim-server"),
    );
    let s = server(&srv, &ns, "127.0.0.1:7006", 1);
    assert_eq!(
        run(
            &client,
            &ns,
            &["stream-tcp", "127.0.0.1:7006", "400000", "3000"]
        ),
        0
    );
    finish(s);
    // the final record ends the flow's records: wait for it, then look at all of them
    agent.wait_events(1, "the final record", |e| {
        e["type"] == "flow"
            && e["container"]["cgroup_id"] == client.id
            && e["flow"]["ended"] == true
    });
    let recs = flows(&agent, &client);
    let interim: Vec<&Value> = recs
        .iter()
        .filter(|e| e["flow"]["ended"] == false)
        .collect();
    let finals: Vec<&Value> = recs.iter().filter(|e| e["flow"]["ended"] == true).collect();
    assert!(!interim.is_empty(), "{recs:?}");
    assert_eq!(interim[0]["flow"]["tcp"]["result"], "open");
    let partial = interim[0]["flow"]["bytes_out"].as_u64().unwrap();
    assert!(partial > 0 && partial < 400_000, "interim bytes {partial}");
    assert_eq!(finals.len(), 1);
    assert_eq!(finals[0]["flow"]["bytes_out"], 400_000);
}
