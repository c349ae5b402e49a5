//! Alert delivery: the outbox and the sinks.
//!
//! The alert manager stores every new alert together with one outbox entry
//! per sink (`Store::put_alert_for_delivery`), then hands it to
//! [`Delivery::enqueue`]. Each sink has a worker with its own bounded
//! queue, on a thread of its own (a current-thread runtime): an alert goes
//! from the alert writer straight to it, never waiting for the event
//! pipeline's thread or a blocking-pool thread. The worker delivers with
//! retries (exponential back-off) behind a circuit breaker and removes the outbox entries of delivered alerts in one
//! transaction every 100 ms (`CLEAR_EVERY`) while it delivers.
//! On start each worker first re-queues what its outbox still holds, so an
//! alert stored before a crash is delivered after the restart
//! (at-least-once; a crash between delivery and removal delivers it twice).
//! A worker that re-reads its outbox skips the queued copies of what it read.
//!
//! *Architecture invariant:* enqueueing never blocks the caller (the rule
//! engine). A full queue drops the in-memory copy and counts it
//! (`overflowed`); the alert stays in the outbox and the worker picks it up
//! from the store once its queue is empty.

mod breaker;
mod file;
mod syslog;
mod webhook;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};

use daemoneye_lib::config::{AlertsConfig, SinkConfig, SinkType};
use daemoneye_lib::proto::Alert;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::Store;

pub use breaker::{Breaker, BreakerState, backoff};
pub use file::RotatingFile;
pub use syslog::{Address as SyslogAddress, Header as SyslogHeader, format as syslog_format, rfc3339_ms};

/// Why one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth retrying (network, timeout, 5xx).
    Retry(String),
    /// The receiver refuses this alert for good; it is dropped from this
    /// sink's outbox with an error log (counted as `rejected`).
    Reject(String),
}

/// Delivery counters of one sink.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    /// Alerts delivered.
    pub delivered: AtomicU64,
    /// Failed attempts.
    pub failed: AtomicU64,
    /// Attempts that were retries.
    pub retried: AtomicU64,
    /// Alerts the receiver refused for good.
    pub rejected: AtomicU64,
    /// Enqueues that found the queue full (the alert waited in the outbox).
    pub overflowed: AtomicU64,
    /// Alerts in the worker's hands (queue plus re-read backlog).
    pub queue_depth: AtomicU64,
    /// [`BreakerState`] as `u8`.
    pub breaker: AtomicU8,
}

/// A point-in-time copy of one sink's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSnapshot {
    /// Sink name.
    pub name: String,
    /// Sink type.
    pub kind: &'static str,
    /// Alerts delivered.
    pub delivered: u64,
    /// Failed attempts.
    pub failed: u64,
    /// Retries.
    pub retried: u64,
    /// Refused for good.
    pub rejected: u64,
    /// Queue-full enqueues.
    pub overflowed: u64,
    /// Current queue depth.
    pub queue_depth: u64,
    /// Breaker state.
    pub breaker: BreakerState,
}

struct SinkHandle {
    name: String,
    kind: SinkType,
    tx: mpsc::Sender<Arc<Alert>>,
    overflow: Arc<AtomicBool>,
    metrics: Arc<SinkMetrics>,
}

/// The configured sinks and their workers.
pub struct Delivery {
    sinks: Vec<SinkHandle>,
    names: Vec<String>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("sinks", &self.names).finish()
    }
}

impl Delivery {
    /// Builds every sink of `[alerts]` (the implicit `stdout` sink when
    /// `alerts.stdout` is on, then `[[alerts.sinks]]`) and starts one worker
    /// per sink on its own thread; each first re-queues its outbox. `tasks`
    /// tracks each worker until it has stopped (after `cancel`). Must run
    /// inside the tokio runtime.
    pub fn start(
        config: &AlertsConfig,
        store: Arc<Store>,
        cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, String> {
        daemoneye_lib::config::validate_sinks(&config.sinks, config.stdout)?;
        let mut all: Vec<SinkConfig> = Vec::new();
        if config.stdout {
            all.push(stdout_config());
        }
        all.extend(config.sinks.iter().cloned());
        let mut sinks = Vec::new();
        for cfg in &all {
            let name = cfg.display_name().to_owned();
            let sink = worker::Sink::build(&name, cfg)?;
            let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
            let handle = SinkHandle {
                name: name.clone(),
                kind: cfg.kind,
                tx,
                overflow: Arc::new(AtomicBool::new(false)),
                metrics: Arc::new(SinkMetrics::default()),
            };
            let w = worker::Worker {
                name,
                sink,
                store: Arc::clone(&store),
                rx,
                overflow: Arc::clone(&handle.overflow),
                metrics: Arc::clone(&handle.metrics),
                breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
                retry_initial: cfg.retry_initial,
                retry_max: cfg.retry_max,
                cancel: cancel.clone(),
            };
            let stopped = spawn_worker(sinks.len(), w)?;
            tasks.spawn(async move {
                // An error only says the thread ended without a word.
                let _ = stopped.await;
            });
            sinks.push(handle);
        }
        let names = sinks.iter().map(|s| s.name.clone()).collect();
        Ok(Self { sinks, names })
    }

    /// The sink names (the outbox entries written per alert).
    pub fn sink_names(&self) -> &[String] {
        &self.names
    }

    /// Hands a stored alert (with its outbox entries) to every sink.
    /// Never blocks; see the module doc for a full queue.
    pub fn enqueue(&self, alert: &Alert) {
        let alert = Arc::new(alert.clone());
        for s in &self.sinks {
            match s.tx.try_send(Arc::clone(&alert)) {
                Ok(()) => {
                    s.metrics.queue_depth.fetch_add(1, Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.metrics.overflowed.fetch_add(1, Relaxed);
                    s.overflow.store(true, Relaxed);
                    tracing::warn!(sink = %s.name, alert_id = %alert.id, "sink queue full; the alert waits in the outbox");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::debug!(sink = %s.name, alert_id = %alert.id, "sink stopped; the alert waits in the outbox");
                }
            }
        }
    }

    /// Every sink's metrics now.
    pub fn snapshot(&self) -> Vec<SinkSnapshot> {
        self.sinks
            .iter()
            .map(|s| SinkSnapshot {
                name: s.name.clone(),
                kind: s.kind.as_str(),
                delivered: s.metrics.delivered.load(Relaxed),
                failed: s.metrics.failed.load(Relaxed),
                retried: s.metrics.retried.load(Relaxed),
                rejected: s.metrics.rejected.load(Relaxed),
                overflowed: s.metrics.overflowed.load(Relaxed),
                queue_depth: s.metrics.queue_depth.load(Relaxed),
                breaker: BreakerState::from_u8(s.metrics.breaker.load(Relaxed)),
            })
            .collect()
    }
}

/// Runs `w` on a thread of its own; the receiver resolves once it stopped.
fn spawn_worker(index: usize, w: worker::Worker) -> Result<tokio::sync::oneshot::Receiver<()>, String> {
    let (stopped, on_stop) = tokio::sync::oneshot::channel();
    let what = format!("the worker thread of sink {:?}", w.name);
    std::thread::Builder::new()
        .name(format!("alert-sink-{index}"))
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(w.run()),
                Err(e) => tracing::error!(sink = %w.name, error = %e, "cannot start the sink's runtime; its alerts wait in the outbox"),
            }
            let _ = stopped.send(());
        })
        .map_err(|e| format!("starting {what}: {e}"))?;
    Ok(on_stop)
}

/// The sink `alerts.stdout = true` stands for.
fn stdout_config() -> SinkConfig {
    SinkConfig {
        kind: SinkType::Stdout,
        name: "stdout".into(),
        path: None,
        max_size: None,
        max_files: None,
        address: None,
        facility: None,
        app_name: None,
        url: None,
        headers: None,
        ca_file: None,
        timeout: std::time::Duration::from_secs(5),
        queue_capacity: 1024,
        retry_initial: std::time::Duration::from_millis(500),
        retry_max: std::time::Duration::from_secs(60),
        breaker_failures: 5,
        breaker_cooldown: std::time::Duration::from_secs(30),
    }
}
