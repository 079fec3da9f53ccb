//! The OTLP export path: every log record is delivered to the collector or counted lost.
//!
//! The SDK's own batch processor drops what it cannot queue or send and only logs it; here a
//! small processor of our own takes its place. `emit` (called by the task that reads the hub)
//! never waits: it puts the record on a bounded queue (`otlp.queue`) or, when the queue is
//! full, counts it dropped. One thread sends the queue in batches; a batch the collector
//! accepts is counted delivered, one that fails (collector down, error status, timeout) is
//! counted dropped, and the thread waits before the next request — 100 ms, doubling up to
//! `otlp.max_backoff` — so a dead collector costs one request per backoff, and nothing else
//! in the agent waits for it.
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    logs::{LogBatch, LogExporter, LogProcessor, SdkLogRecord},
};
use tracing::{info, warn};

use crate::events::Hub;

/// Records per request (the SDK's default batch size).
const BATCH: usize = 512;
/// A partial batch goes out after this long.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// The first wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

type Item = Box<(SdkLogRecord, InstrumentationScope)>;

/// Backoff after consecutive failures: 100 ms, 200 ms, … up to `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    FIRST_BACKOFF
        .saturating_mul(1u32 << (failures - 1).min(20))
        .min(max)
}

/// The processor: a bounded queue in front of one exporter thread.
pub struct Counting<E: LogExporter + 'static> {
    tx: Mutex<Option<SyncSender<Item>>>,
    /// The receiving end and the exporter, until the thread starts (at `set_resource`, which
    /// the provider calls while it is built).
    parked: Mutex<Option<(Receiver<Item>, E)>>,
    worker: Mutex<Option<(JoinHandle<()>, Receiver<()>)>>,
    stop: Arc<AtomicBool>,
    hub: Arc<Hub>,
    max_backoff: Duration,
}

impl<E: LogExporter + 'static> std::fmt::Debug for Counting<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counting").finish_non_exhaustive()
    }
}

impl<E: LogExporter + 'static> Counting<E> {
    pub fn new(exporter: E, queue: usize, max_backoff: Duration, hub: Arc<Hub>) -> Self {
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        Self {
            tx: Mutex::new(Some(tx)),
            parked: Mutex::new(Some((rx, exporter))),
            worker: Mutex::new(None),
            stop: Arc::new(AtomicBool::new(false)),
            hub,
            max_backoff,
        }
    }

    fn start(&self, resource: Option<&Resource>) {
        let Some((rx, mut exporter)) = self.parked.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        if let Some(r) = resource {
            exporter.set_resource(r);
        }
        let (done_tx, done) = mpsc::channel();
        let hub = self.hub.clone();
        let stop = self.stop.clone();
        let max_backoff = self.max_backoff;
        let spawned = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                work(&rx, &exporter, &hub, &stop, max_backoff);
                let _ = exporter.shutdown();
                let _ = done_tx.send(());
            });
        match spawned {
            Ok(h) => {
                if let Ok(mut w) = self.worker.lock() {
                    *w = Some((h, done));
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot start the OTLP exporter thread; events are counted dropped")
            }
        }
    }
}

impl<E: LogExporter + 'static> LogProcessor for Counting<E> {
    fn emit(&self, record: &mut SdkLogRecord, scope: &InstrumentationScope) {
        let sent = match self.tx.lock() {
            Ok(tx) => match tx.as_ref() {
                Some(tx) => match tx.try_send(Box::new((record.clone(), scope.clone()))) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                },
                None => false,
            },
            Err(_) => false,
        };
        if !sent {
            self.hub.count_dropped("otlp", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    /// Sends what is queued (without waiting out a backoff), then stops, within `timeout`.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.start(None);
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let Some((handle, done)) = self.worker.lock().ok().and_then(|mut w| w.take()) else {
            return Ok(());
        };
        match done.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                let _ = handle.join();
                Ok(())
            }
            Err(RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.start(Some(resource));
    }
}

/// The exporter thread: batches, sends, counts, backs off; ends when the queue's sender is
/// gone and the queue is empty.
fn work<E: LogExporter>(
    rx: &Receiver<Item>,
    exporter: &E,
    hub: &Hub,
    stop: &AtomicBool,
    max_backoff: Duration,
) {
    let mut failures = 0u32;
    loop {
        let Ok(first) = rx.recv() else {
            return;
        };
        let mut batch = vec![first];
        let deadline = Instant::now() + BATCH_DELAY;
        while batch.len() < BATCH {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(item) => batch.push(item),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|b| (&b.0, &b.1)).collect();
        let n = refs.len() as u64;
        match futures_executor::block_on(exporter.export(LogBatch::new(&refs))) {
            Ok(()) => {
                hub.count_delivered("otlp", n);
                if failures > 0 {
                    info!(
                        after_failures = failures,
                        "OTLP collector accepts records again"
                    );
                }
                failures = 0;
            }
            Err(e) => {
                hub.count_dropped("otlp", n);
                if stop.load(Ordering::Relaxed) {
                    // shutting down: no more attempts, what is queued is lost (counted)
                    let rest = rx.try_iter().count() as u64;
                    hub.count_dropped("otlp", rest);
                    warn!(error = %e, dropped = n + rest, "OTLP export failed at shutdown");
                    return;
                }
                failures = failures.saturating_add(1);
                let wait = backoff(failures, max_backoff);
                if failures == 1 {
                    warn!(error = %e, records = n, backoff_ms = wait.as_millis() as u64, "OTLP export failed; records counted dropped, retrying with backoff");
                }
                // an interruptible wait: shutdown does not sit out a long backoff
                let until = Instant::now() + wait;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(
                        until
                            .saturating_duration_since(Instant::now())
                            .min(Duration::from_millis(50)),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::logs::{Logger as _, LoggerProvider as _};
    use opentelemetry_sdk::logs::SdkLoggerProvider;
    use std::sync::atomic::AtomicU64;

    /// Accepts batches while `up`, else fails; counts what it accepted.
    #[derive(Debug, Clone, Default)]
    struct Collector {
        up: Arc<AtomicBool>,
        accepted: Arc<AtomicU64>,
        requests: Arc<AtomicU64>,
    }

    impl LogExporter for Collector {
        async fn export(&self, batch: LogBatch<'_>) -> OTelSdkResult {
            self.requests.fetch_add(1, Ordering::Relaxed);
            if self.up.load(Ordering::Relaxed) {
                self.accepted
                    .fetch_add(batch.iter().count() as u64, Ordering::Relaxed);
                Ok(())
            } else {
                Err(OTelSdkError::InternalFailure("collector down".into()))
            }
        }
    }

    fn emit(provider: &SdkLoggerProvider, n: usize) {
        let logger = provider.logger("test");
        for _ in 0..n {
            let r = logger.create_log_record();
            logger.emit(r);
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let max = Duration::from_secs(30);
        assert_eq!(backoff(0, max), Duration::ZERO);
        assert_eq!(backoff(1, max), Duration::from_millis(100));
        assert_eq!(backoff(4, max), Duration::from_millis(800));
        assert_eq!(backoff(40, max), max);
    }

    #[test]
    fn every_record_is_delivered_or_counted_dropped() {
        let hub = Arc::new(Hub::new(16));
        let c = Collector::default();
        // a queue of 100 in front of a collector that is down
        let provider = SdkLoggerProvider::builder()
            .with_log_processor(Counting::new(
                c.clone(),
                100,
                Duration::from_millis(200),
                hub.clone(),
            ))
            .build();
        emit(&provider, 1000);
        let counted = |s: &str| {
            let d = hub.dropped().iter().find(|x| x.0 == s).map_or(0, |x| x.1);
            let ok = hub.delivered().iter().find(|x| x.0 == s).map_or(0, |x| x.1);
            (ok, d)
        };
        // up again: what is still queued gets through
        c.up.store(true, Ordering::Relaxed);
        provider
            .shutdown_with_timeout(Duration::from_secs(10))
            .unwrap();
        let (ok, dropped) = counted("otlp");
        assert_eq!(ok + dropped, 1000, "delivered {ok} + dropped {dropped}");
        assert_eq!(ok, c.accepted.load(Ordering::Relaxed));
        assert!(c.requests.load(Ordering::Relaxed) >= 1);
    }
}
