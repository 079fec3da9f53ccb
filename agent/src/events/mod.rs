//! The JSON event stream: one schema (see the README's "Events"), one hub that fans out to the
//! event log and to `palisade events` subscribers. Every loss point is counted.
mod flow;
mod lines;
pub mod sink;
mod violation;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use flow::{FlowRecord, TcpInfo};
pub use violation::{ExecDetail, FileRef, NetworkRef, Unenforced, Violation};

/// Event kinds (`type` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Exec,
    Exit,
    Oom,
    ContainerStart,
    ContainerStop,
    Flow,
    PolicyViolation,
    CgroupMove,
    PolicyUnenforced,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        EventType::Exec,
        EventType::Exit,
        EventType::Oom,
        EventType::ContainerStart,
        EventType::ContainerStop,
        EventType::Flow,
        EventType::PolicyViolation,
        EventType::CgroupMove,
        EventType::PolicyUnenforced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Exec => "exec",
            EventType::Exit => "exit",
            EventType::Oom => "oom",
            EventType::ContainerStart => "container_start",
            EventType::ContainerStop => "container_stop",
            EventType::Flow => "flow",
            EventType::PolicyViolation => "policy_violation",
            EventType::CgroupMove => "cgroup_move",
            EventType::PolicyUnenforced => "policy_unenforced",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The container an event belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    /// Runtime container id (64 hex) where known, else the cgroup path.
    pub id: String,
    pub name: String,
    pub cgroup_id: u64,
    pub runtime: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// The Kubernetes pod's uid (from the cgroup path), when the container is a pod's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod_uid: String,
}

/// The process an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    pub uid: u32,
    pub comm: String,
    /// Executable path as passed to exec ("" when the exec was not seen).
    #[serde(default)]
    pub exe: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// The argument list was longer than the kernel event carries (1 KiB) and was cut.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub args_truncated: bool,
}

/// One event. Type-specific fields are present only for their types.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    /// RFC 3339, UTC, nanoseconds.
    pub time: String,
    pub container: ContainerRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessRef>,
    /// `exit`: the exit status when the process exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `exit`: the signal that killed the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `exit`: process lifetime; `container_stop`: time since the cgroup was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_seconds: Option<f64>,
    /// `flow`: the flow record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowRecord>,
    /// `policy_violation`: which policy and rule, what happened, and to what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violation: Option<Violation>,
    /// `cgroup_move`: the container the process left, when the agent knew where it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_container: Option<ContainerRef>,
    /// `policy_unenforced`: which policy cannot be (or, `resolved`, is again) put in place
    /// for the container, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unenforced: Option<Unenforced>,
    /// `policy_violation` from the kernel's count: the violations this event reports. Not
    /// part of the JSON; the event log hands it back once the line is written (see
    /// [`Hub::on_log_written`]).
    #[serde(skip)]
    pub reports: Option<Reported>,
}

/// Violations of one kernel key (cgroup, rule, outcome) up to its count `total`, of hook
/// `what`: what a `policy_violation` event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reported {
    pub key: palisade_common::policy::ViolationKey,
    pub total: u64,
    pub what: u32,
}

/// Called with what the event log has written (see [`Hub::on_log_written`]).
pub type OnLogWritten = Box<dyn Fn(&[Reported]) + Send + Sync>;

impl Event {
    /// An event with only the common fields set.
    pub fn new(kind: EventType, time: String, container: ContainerRef) -> Self {
        Self {
            kind,
            time,
            container,
            process: None,
            exit_code: None,
            signal: None,
            lifetime_seconds: None,
            flow: None,
            violation: None,
            from_container: None,
            unenforced: None,
            reports: None,
        }
    }
}

/// RFC 3339 UTC with nanoseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// Converts kernel CLOCK_MONOTONIC timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_at_mono_zero: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
            .unwrap_or_default();
        Self {
            wall_at_mono_zero: SystemTime::now()
                .checked_sub(mono)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        self.wall_at_mono_zero + Duration::from_nanos(ktime_ns)
    }
}

/// The consumers that count what they deliver and lose: the event log, `palisade events`
/// subscribers (summed), the OTLP exporter.
pub const SINKS: [&str; 3] = ["log", "subscriber", "otlp"];

/// Fans events out; counts what was published, and what each consumer delivered and missed.
pub struct Hub {
    tx: broadcast::Sender<Arc<Event>>,
    published: [AtomicU64; EventType::ALL.len()],
    dropped: Mutex<BTreeMap<&'static str, u64>>,
    delivered: Mutex<BTreeMap<&'static str, u64>>,
    capacity: usize,
    /// Whether the event log reads (`subscribe_log`), and the published total it has taken
    /// from the queue (received or skipped): the difference to `published_total` is its backlog.
    log: AtomicBool,
    log_taken: AtomicU64,
    /// Told what the event log has written (set once, by the policy task).
    log_written: std::sync::OnceLock<OnLogWritten>,
}

impl Hub {
    /// `capacity`: events a slow consumer may fall behind before it loses some.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(16);
        let (tx, _) = broadcast::channel(capacity);
        Self {
            tx,
            published: Default::default(),
            dropped: Mutex::new(BTreeMap::new()),
            delivered: Mutex::new(BTreeMap::new()),
            capacity,
            log: AtomicBool::new(false),
            log_taken: AtomicU64::new(0),
            log_written: std::sync::OnceLock::new(),
        }
    }

    /// The event log's subscription: from now on it says what it takes (`log_took`), and
    /// producers that can wait ask how much it can still take (`log_room`).
    pub fn subscribe_log(&self) -> broadcast::Receiver<Arc<Event>> {
        let rx = self.tx.subscribe();
        self.log_taken
            .store(self.published_total(), Ordering::Relaxed);
        self.log.store(true, Ordering::Relaxed);
        rx
    }

    /// Whether an event log reads the events (a producer that must know when its events are
    /// written waits for [`Hub::on_log_written`]; without a log nothing will be).
    pub fn logs(&self) -> bool {
        self.log.load(Ordering::Relaxed)
    }

    /// The event log stopped reading (it could not open its target).
    pub fn log_gone(&self) {
        self.log.store(false, Ordering::Relaxed);
    }

    /// Sets what is told, right after each write, which [`Reported`] the event log has
    /// written: the agent records a violation as reported for the next agent only once its
    /// line is in the log, so a SIGKILL in between cannot lose it. The first call wins.
    pub fn on_log_written(&self, f: OnLogWritten) {
        let _ = self.log_written.set(f);
    }

    /// The event log wrote the lines of these events.
    pub fn log_wrote(&self, r: &[Reported]) {
        if !r.is_empty()
            && let Some(f) = self.log_written.get()
        {
            f(r);
        }
    }

    /// The event log took `n` events from the queue (received, or skipped as lagged).
    pub fn log_took(&self, n: u64) {
        self.log_taken.fetch_add(n, Ordering::Relaxed);
    }

    /// Events a producer that can account for what it leaves out may publish now: half the
    /// queue (the other half stays for the other producers) less the event log's backlog;
    /// unbounded without a log. The policy task reports the rest as the ring buffer's losses
    /// (in `suppressed`), so a flood does not overrun the log.
    pub fn log_room(&self) -> usize {
        if !self.log.load(Ordering::Relaxed) {
            return usize::MAX;
        }
        let backlog = self
            .published_total()
            .saturating_sub(self.log_taken.load(Ordering::Relaxed));
        (self.capacity / 2).saturating_sub(usize::try_from(backlog).unwrap_or(usize::MAX))
    }

    pub fn publish(&self, ev: Event) {
        if let Some(i) = EventType::ALL.iter().position(|t| *t == ev.kind)
            && let Some(c) = self.published.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // No receiver is not an error: nobody asked for events.
        let _ = self.tx.send(Arc::new(ev));
    }

    /// Whether anyone (event log, `palisade events`) would see a published event; producers
    /// may skip building events nobody reads.
    pub fn has_consumers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Records that consumer `sink` missed `n` events.
    pub fn count_dropped(&self, sink: &'static str, n: u64) {
        if let Ok(mut d) = self.dropped.lock() {
            *d.entry(sink).or_default() += n;
        }
    }

    /// Records that consumer `sink` delivered `n` events (written, sent, accepted).
    pub fn count_delivered(&self, sink: &'static str, n: u64) {
        if let Ok(mut d) = self.delivered.lock() {
            *d.entry(sink).or_default() += n;
        }
    }

    /// Events published, all types.
    pub fn published_total(&self) -> u64 {
        self.published
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// One line for the log at shutdown: everything published, and what each consumer
    /// delivered and dropped (once the producers have stopped and the consumers are drained,
    /// delivered + dropped = published for the log and for OTLP without a type filter).
    pub fn accounting(&self) -> String {
        let delivered = self.delivered();
        let dropped = self.dropped();
        let mut s = format!("published={}", self.published_total());
        for (sink, d) in &delivered {
            let x = dropped
                .iter()
                .find(|(k, _)| k == sink)
                .map_or(0, |(_, n)| *n);
            s.push_str(&format!(" {sink}_delivered={d} {sink}_dropped={x}"));
        }
        s
    }

    /// (type, published) for every type.
    pub fn published(&self) -> Vec<(EventType, u64)> {
        EventType::ALL
            .iter()
            .zip(self.published.iter())
            .map(|(t, c)| (*t, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// (sink, dropped), listing every sink.
    pub fn dropped(&self) -> Vec<(&'static str, u64)> {
        Self::listed(&self.dropped)
    }

    /// (sink, delivered), listing every sink.
    pub fn delivered(&self) -> Vec<(&'static str, u64)> {
        Self::listed(&self.delivered)
    }

    fn listed(m: &Mutex<BTreeMap<&'static str, u64>>) -> Vec<(&'static str, u64)> {
        let mut d = m.lock().map(|d| d.clone()).unwrap_or_default();
        for sink in SINKS {
            d.entry(sink).or_default();
        }
        d.into_iter().collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample(kind: EventType) -> Event {
        Event {
            kind,
            time: rfc3339(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789)),
            container: ContainerRef {
                id: "/palisade/web-0".into(),
                name: "web-0".into(),
                cgroup_id: 42,
                runtime: "palisade".into(),
                image: String::new(),
                namespace: String::new(),
                pod: String::new(),
                pod_uid: String::new(),
            },
            process: Some(ProcessRef {
                pid: 7,
                ppid: Some(1),
                uid: 0,
                comm: "true".into(),
                exe: "/bin/true".into(),
                args: vec!["/bin/true".into(), "a b".into()],
                args_truncated: false,
            }),
            exit_code: (kind == EventType::Exit).then_some(3),
            signal: None,
            lifetime_seconds: (kind == EventType::Exit).then_some(0.25),
            flow: None,
            violation: None,
            from_container: None,
            unenforced: None,
            reports: None,
        }
    }

    #[test]
    fn log_room_is_half_the_queue_less_the_logs_backlog() {
        let hub = Hub::new(64);
        assert_eq!(hub.log_room(), usize::MAX, "no log: no limit");
        hub.publish(sample(EventType::Exec));
        let _rx = hub.subscribe_log();
        assert_eq!(
            hub.log_room(),
            32,
            "what was published before the log is not its backlog"
        );
        for _ in 0..10 {
            hub.publish(sample(EventType::Exec));
        }
        assert_eq!(hub.log_room(), 22);
        hub.log_took(4);
        assert_eq!(hub.log_room(), 26);
        for _ in 0..40 {
            hub.publish(sample(EventType::Exec));
        }
        assert_eq!(hub.log_room(), 0);
    }

    #[test]
    fn json_round_trip_and_stable_shape() {
        let ev = sample(EventType::Exit);
        let line = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            line,
            r#"{"type":"exit","time":"2023-11-14T22:13:20.123456789Z","container":{"id":"/palisade/web-0","name":"web-0","cgroup_id":42,"runtime":"palisade"},"process":{"pid":7,"ppid":1,"uid":0,"comm":"true","exe":"/bin/true","args":["/bin/true","a b"]},"exit_code":3,"lifetime_seconds":0.25}"#
        );
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, ev);
        for t in EventType::ALL {
            let e = sample(t);
            let back: Event = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
            assert_eq!(back, e);
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }

    #[test]
    fn counts() {
        let hub = Hub::new(16);
        let mut rx = hub.subscribe();
        hub.publish(sample(EventType::Exec));
        hub.publish(sample(EventType::Exec));
        hub.publish(sample(EventType::Oom));
        assert_eq!(rx.try_recv().unwrap().kind, EventType::Exec);
        let counts = hub.published();
        assert!(counts.contains(&(EventType::Exec, 2)));
        assert!(counts.contains(&(EventType::Oom, 1)));
        hub.count_dropped("log", 3);
        hub.count_delivered("otlp", 2);
        assert!(hub.dropped().contains(&("log", 3)));
        assert!(hub.dropped().contains(&("subscriber", 0)));
        assert!(hub.dropped().contains(&("otlp", 0)));
        assert_eq!(hub.delivered().len(), SINKS.len());
        assert!(hub.delivered().contains(&("otlp", 2)));
    }

    #[test]
    fn monotonic_to_wall_clock() {
        let c = Clock::now();
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        let ns = mono.tv_sec() as u64 * 1_000_000_000 + mono.tv_nsec() as u64;
        let d = c
            .wall(ns)
            .duration_since(SystemTime::now())
            .unwrap_or_else(|e| e.duration());
        assert!(d < Duration::from_secs(1), "{d:?}");
    }
}
