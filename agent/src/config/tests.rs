//! Config parsing: defaults, every key, and errors with file:line:column.
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.yaml"))
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.listen, "127.0.0.1:9477".parse().unwrap());
    assert_eq!(c.syscalls.thread_slots, PowerOfTwo(65_536));
    assert_eq!(c.metrics.series_grace_period, Duration::from_secs(60));
}

#[test]
fn shipped_default_file_parses_to_the_defaults() {
    let c = Config::parse(Config::DEFAULT_YAML, Path::new("palisade.yaml")).unwrap();
    let d = Config::default();
    assert_eq!(c.listen, d.listen);
    assert_eq!(c.control_socket, d.control_socket);
    assert_eq!(c.syscalls.stats_max_entries, d.syscalls.stats_max_entries);
    assert_eq!(c.syscalls.errno_max_entries, d.syscalls.errno_max_entries);
    assert_eq!(c.syscalls.thread_slots, d.syscalls.thread_slots);
    assert_eq!(c.syscalls.latency_sample, d.syscalls.latency_sample);
    assert_eq!(c.metrics.max_series, d.metrics.max_series);
    assert_eq!(c.metrics.latency_bucket_step, d.metrics.latency_bucket_step);
    assert_eq!(
        c.metrics.syscall_latency_detail,
        d.metrics.syscall_latency_detail
    );
    assert_eq!(c.metrics.series_grace_period, d.metrics.series_grace_period);
    assert_eq!(c.metrics.collect_interval, d.metrics.collect_interval);
    assert_eq!(c.resources.read_on_scrape, d.resources.read_on_scrape);
    assert_eq!(c.identity.max_cgroups, d.identity.max_cgroups);
    assert_eq!(c.identity.rescan_interval, d.identity.rescan_interval);
    assert_eq!(
        c.identity.name_resolution_window,
        d.identity.name_resolution_window
    );
    assert_eq!(c.identity.roots, d.identity.roots);
    assert_eq!(c.identity.runtime_parents, d.identity.runtime_parents);
    assert_eq!(c.resources.enabled, d.resources.enabled);
    assert_eq!(c.events.output, d.events.output);
    assert_eq!(c.events.max_file_mib, d.events.max_file_mib);
    assert_eq!(c.events.keep_files, d.events.keep_files);
    assert_eq!(c.events.kernel_buffer_kib, d.events.kernel_buffer_kib);
    assert_eq!(c.events.queue, d.events.queue);
    assert_eq!(c.events.kernel_queue, d.events.kernel_queue);
    assert_eq!(c.processes.max_per_container, d.processes.max_per_container);
    assert_eq!(c.processes.max_total, d.processes.max_total);
    assert_eq!(c.network.enabled, d.network.enabled);
    assert_eq!(c.network.flow_entries, d.network.flow_entries);
    assert_eq!(c.network.udp_idle_timeout, d.network.udp_idle_timeout);
    assert_eq!(c.network.tcp_idle_timeout, d.network.tcp_idle_timeout);
    assert_eq!(c.network.report_interval, d.network.report_interval);
    assert_eq!(c.network.per_peer_metrics, d.network.per_peer_metrics);
    assert_eq!(c.network.peer_prefix_v4, d.network.peer_prefix_v4);
    assert_eq!(c.network.peer_prefix_v6, d.network.peer_prefix_v6);
    assert_eq!(c.network.max_peer_series, d.network.max_peer_series);
    assert_eq!(c.policy.paths, d.policy.paths);
    assert_eq!(c.policy.pin_dir, d.policy.pin_dir);
    assert_eq!(c.policy.watch_interval, d.policy.watch_interval);
    assert_eq!(c.policy.rate_limit, d.policy.rate_limit);
    assert_eq!(c.policy.rate_limit_burst, d.policy.rate_limit_burst);
    assert_eq!(c.policy.rate_limit_interval, d.policy.rate_limit_interval);
    assert_eq!(c.policy.events_buffer_kib, d.policy.events_buffer_kib);
    assert_eq!(c.policy.kernel_btf, d.policy.kernel_btf);
    assert_eq!(c.otlp.endpoint, d.otlp.endpoint);
    assert_eq!(c.otlp.protocol, d.otlp.protocol);
    assert_eq!(c.otlp.timeout, d.otlp.timeout);
    assert_eq!(c.otlp.events, d.otlp.events);
    assert_eq!(c.otlp.headers, d.otlp.headers);
    assert_eq!(c.otlp.queue, d.otlp.queue);
    assert_eq!(c.otlp.max_backoff, d.otlp.max_backoff);
    assert_eq!(c.otlp.metrics, d.otlp.metrics);
    assert_eq!(c.otlp.metrics_interval, d.otlp.metrics_interval);
}

#[test]
fn unknown_key_reports_file_line_column() {
    let e = parse("listen: 127.0.0.1:9000\nsyscalls:\n  thread_slot: 1024\n").unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with("test.yaml:3:3: unknown field `thread_slot`"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");
}

#[test]
fn latency_sample_is_a_power_of_two_up_to_1024_and_sets_the_kernel_mask() {
    let d = parse("").unwrap();
    assert_eq!(d.syscalls.latency_sample, SampleEvery(8));
    // one call in 8: a random number ANDed with 7 is 0
    assert_eq!(d.syscalls.latency_sample_mask(true), 7);
    // histograms not exported: no call is timed
    assert_eq!(
        d.syscalls.latency_sample_mask(false),
        palisade_common::LATENCY_NEVER
    );
    let every = parse("syscalls:\n  latency_sample: 1\n").unwrap();
    assert_eq!(every.syscalls.latency_sample_mask(true), 0);
    let most = parse("syscalls:\n  latency_sample: 1024\n").unwrap();
    assert_eq!(most.syscalls.latency_sample_mask(true), 1023);
    for bad in ["0", "3", "2048"] {
        let e = parse(&format!("syscalls:\n  latency_sample: {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.yaml:2:"), "{e}");
        assert!(e.contains("power of two between 1 and 1024"), "{bad}: {e}");
    }
}

#[test]
fn bad_values_report_their_position() {
    let e = parse("syscalls:\n  thread_slots: 1000\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("test.yaml:2:"), "{e}");
    assert!(e.contains("power of two"), "{e}");

    let e = parse("metrics:\n  series_grace_period: soon\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("test.yaml:2:"), "{e}");
    assert!(e.contains("invalid duration `soon`"), "{e}");

    let e = parse("syscalls:\n  cgroups: ['web-[']\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("test.yaml:2:"), "{e}");
    assert!(e.contains("invalid glob"), "{e}");

    let e = parse("listen: not-an-address\n").unwrap_err().to_string();
    assert!(e.starts_with("test.yaml:1:"), "{e}");

    let e = parse("log_format: xml\n").unwrap_err().to_string();
    assert!(e.starts_with("test.yaml:1:"), "{e}");
}

#[test]
fn cross_field_validation() {
    let e = parse("metrics:\n  collect_interval: 1ms\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("collect_interval must be at least 100ms"), "{e}");
    let e = parse("policy:\n  events_buffer_kib: 3000\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("events_buffer_kib must be a power of two"),
        "{e}"
    );
    let e = parse("resources:\n  read_on_scrape: yes please\n").unwrap_err();
    assert!(e.to_string().starts_with("test.yaml:2:"), "{e}");
}

#[test]
fn unreadable_file_names_path() {
    let e = Config::load(Path::new("/nonexistent/palisade.yaml")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/nonexistent/palisade.yaml"), "{msg}");
    assert!(msg.contains("--config"), "{msg}");
}

#[test]
fn patterns_match_names_and_paths() {
    let p = Pattern::new("web-*").unwrap();
    assert!(p.is_match("web-0"));
    assert!(!p.is_match("db-0"));
    let p = Pattern::new("/system.slice/*.service").unwrap();
    assert!(p.is_match("/system.slice/nginx.service"));
    assert!(Pattern::new("").is_err());
}

#[test]
fn node_name() {
    assert_eq!(parse("").unwrap().node_name, None);
    let c = parse("node_name: worker-1.example\n").unwrap();
    assert_eq!(c.node_name, Some(NodeName("worker-1.example".into())));
    let e = parse("listen: 127.0.0.1:1\nnode_name: \"a b\"\n").unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("test.yaml:2:"), "{text}");
    assert!(
        text.contains("printable characters without spaces"),
        "{text}"
    );
    assert!(NodeName::new("").is_err());
    assert!(!NodeName::from_hostname().0.is_empty());
}

#[test]
fn syscall_hook_choices_parse_and_an_unknown_one_names_its_line() {
    assert_eq!(parse("").unwrap().syscalls.hook, SyscallHookChoice::Auto);
    for (text, want) in [
        ("auto", SyscallHookChoice::Auto),
        ("raw_tracepoint", SyscallHookChoice::RawTracepoint),
        ("fentry", SyscallHookChoice::Fentry),
    ] {
        let c = parse(&format!("syscalls:\n  hook: {text}\n"))
            .unwrap_or_else(|e| panic!("syscalls.hook: {text}: {e}"));
        assert_eq!(c.syscalls.hook, want, "syscalls.hook: {text}");
    }
    let e = parse("syscalls:\n  hook: kprobe\n")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("test.yaml:2:"), "{e}");
    assert!(e.contains("raw_tracepoint"), "{e}");
}
