//! One sink's worker: takes alerts from its queue (and its outbox, on start
//! and after an overflow), delivers each with retries behind the circuit
//! breaker, and clears the outbox entries of what it delivered, in batches.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use daemoneye_lib::config::{SinkConfig, SinkType};
use daemoneye_lib::models::alert_json;
use daemoneye_lib::proto::Alert;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::file::{RotatingFile, write_stdout};
use super::syslog::{self, SyslogSink};
use super::webhook::WebhookSink;
use super::{Breaker, BreakerState, SendError, SinkMetrics, backoff};
use crate::store::Store;

/// Longest a delivered alert's outbox entry waits to be removed (together
/// with the others delivered meanwhile).
const CLEAR_EVERY: Duration = Duration::from_millis(100);
/// Most delivered alerts whose outbox entries wait to be removed together.
const CLEAR_BATCH: usize = 256;

/// Delivered alerts whose outbox entries are still to remove.
struct Delivered {
    ids: Vec<String>,
    last_clear: Instant,
}

/// A sink's transport.
#[derive(Debug)]
pub(super) enum Sink {
    Stdout,
    File(RotatingFile),
    Syslog(SyslogSink),
    Webhook(WebhookSink),
}

impl Sink {
    /// Builds the transport; errors name the sink and the key.
    pub(super) fn build(name: &str, cfg: &SinkConfig) -> Result<Self, String> {
        Ok(match cfg.kind {
            SinkType::Stdout => Sink::Stdout,
            SinkType::File => {
                let path = cfg.path.clone().unwrap_or_default();
                let max = cfg.max_size.map_or(64 << 20, |s| s.as_u64());
                Sink::File(RotatingFile::new(path, max, cfg.max_files.unwrap_or(5)))
            }
            SinkType::Syslog => {
                let addr = syslog::Address::parse(cfg.address.as_deref().unwrap_or("unix:///dev/log"))
                    .map_err(|e| format!("sink {name:?}: {e}"))?;
                let facility = syslog::facility(cfg.facility.as_deref().unwrap_or("daemon"))
                    .map_err(|e| format!("sink {name:?}: {e}"))?;
                let header = syslog::Header::local(facility, cfg.app_name.as_deref().unwrap_or("daemoneye"));
                Sink::Syslog(SyslogSink::new(addr, header, cfg.timeout))
            }
            SinkType::Webhook => Sink::Webhook(WebhookSink::new(name, cfg, cfg.timeout)?),
        })
    }

    /// Delivers one alert. Stdout and file writes block: the worker has
    /// its own thread ([`super::Delivery::start`]), so they block only
    /// this sink, and the alert reaches them without another thread hop.
    async fn send(&mut self, alert: &Alert) -> Result<(), SendError> {
        match self {
            Sink::Stdout => write_stdout(&alert_json(alert).to_string()).map_err(SendError::Retry),
            Sink::File(f) => f.write_line(&alert_json(alert).to_string()).map_err(SendError::Retry),
            Sink::Syslog(s) => s.send(alert).await,
            Sink::Webhook(w) => w.send(alert).await,
        }
    }
}

/// The worker's state.
pub(super) struct Worker {
    pub(super) name: String,
    pub(super) sink: Sink,
    pub(super) store: Arc<Store>,
    pub(super) rx: mpsc::Receiver<Arc<Alert>>,
    pub(super) overflow: Arc<AtomicBool>,
    pub(super) metrics: Arc<SinkMetrics>,
    pub(super) breaker: Breaker,
    pub(super) retry_initial: Duration,
    pub(super) retry_max: Duration,
    pub(super) cancel: CancellationToken,
}

impl Worker {
    /// Runs until cancelled.
    ///
    /// A delivered alert's outbox entry is removed within [`CLEAR_EVERY`]
    /// (or once [`CLEAR_BATCH`] wait), so an alert storm costs a store
    /// transaction per batch rather than per alert; a crash before that
    /// removal delivers those alerts again (at least once, by id).
    pub(super) async fn run(mut self) {
        let mut backlog = VecDeque::new();
        let mut recovered = HashSet::new();
        let mut done = Delivered { ids: Vec::new(), last_clear: Instant::now() };
        self.recover(&mut backlog, &mut recovered, &mut done).await;
        if !backlog.is_empty() {
            tracing::info!(sink = %self.name, alerts = backlog.len(), "re-queued undelivered alerts from the outbox");
        }
        loop {
            let alert = if let Some(a) = backlog.pop_front() {
                a
            } else if self.overflow.swap(false, Relaxed) {
                self.recover(&mut backlog, &mut recovered, &mut done).await;
                continue;
            } else {
                if self.rx.is_empty() {
                    // Every copy of a recovered alert that was queued has
                    // been taken off the queue by now.
                    recovered.clear();
                }
                let clear_in = CLEAR_EVERY.saturating_sub(done.last_clear.elapsed());
                let next = tokio::select! {
                    biased;
                    () = self.cancel.cancelled() => None,
                    a = self.rx.recv() => a,
                    () = tokio::time::sleep(clear_in), if !done.ids.is_empty() => {
                        self.clear(&mut done).await;
                        continue;
                    }
                };
                let Some(a) = next else { break };
                // The outbox read already gave this one to the backlog.
                if recovered.remove(&a.id) {
                    self.metrics.queue_depth.fetch_sub(1, Relaxed);
                    continue;
                }
                a
            };
            let delivered = self.deliver(&alert).await;
            self.metrics.queue_depth.fetch_sub(1, Relaxed);
            if !delivered {
                break; // cancelled; the outbox keeps it
            }
            done.ids.push(alert.id.clone());
            if done.ids.len() >= CLEAR_BATCH {
                self.clear(&mut done).await;
            }
        }
        self.clear(&mut done).await;
    }

    /// Moves what the outbox holds to `backlog` (after removing what was
    /// delivered, so nothing comes back twice) and remembers its ids: a
    /// copy still in the queue is then skipped.
    async fn recover(&self, backlog: &mut VecDeque<Arc<Alert>>, recovered: &mut HashSet<String>, done: &mut Delivered) {
        self.clear(done).await;
        let more = self.read_outbox().await;
        self.metrics.queue_depth.fetch_add(more.len() as u64, Relaxed);
        recovered.extend(more.iter().map(|a| a.id.clone()));
        backlog.extend(more);
    }

    /// The outbox entries, oldest first (an unreadable store is logged and
    /// retried on the next overflow or restart).
    async fn read_outbox(&self) -> Vec<Arc<Alert>> {
        let (store, name) = (Arc::clone(&self.store), self.name.clone());
        match tokio::task::spawn_blocking(move || store.outbox(&name)).await {
            Ok(Ok(v)) => v.into_iter().map(Arc::new).collect(),
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "cannot read the alert outbox");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "outbox read task failed");
                Vec::new()
            }
        }
    }

    async fn store_op<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store, &str) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Option<T> {
        let (store, name) = (Arc::clone(&self.store), self.name.clone());
        match tokio::task::spawn_blocking(move || f(&store, &name)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::error!(sink = %self.name, error = %e, "alert outbox");
                None
            }
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "alert outbox task failed");
                None
            }
        }
    }

    /// Delivers one alert, retrying until it is delivered, refused for
    /// good, or the worker is cancelled (returns false then).
    async fn deliver(&mut self, alert: &Arc<Alert>) -> bool {
        let mut attempt: u32 = 0;
        loop {
            match self.breaker.before_attempt(Instant::now()) {
                Ok(Some(state)) => self.transition(state, ""),
                Ok(None) => {}
                Err(wait) => {
                    if !self.sleep(wait).await {
                        return false;
                    }
                    continue;
                }
            }
            if attempt > 0 {
                self.metrics.retried.fetch_add(1, Relaxed);
            }
            attempt += 1;
            let result = tokio::select! {
                r = self.sink.send(alert) => r,
                () = self.cancel.cancelled() => return false,
            };
            match result {
                Ok(()) => {
                    self.metrics.delivered.fetch_add(1, Relaxed);
                    if let Some(state) = self.breaker.on_success() {
                        self.transition(state, "");
                    }
                    tracing::debug!(sink = %self.name, alert_id = %alert.id, attempts = attempt, "alert delivered");
                    return true;
                }
                Err(SendError::Reject(e)) => {
                    self.metrics.rejected.fetch_add(1, Relaxed);
                    tracing::error!(sink = %self.name, alert_id = %alert.id, error = %e, "the sink refused the alert; it will not be retried");
                    return true;
                }
                Err(SendError::Retry(e)) => {
                    self.metrics.failed.fetch_add(1, Relaxed);
                    tracing::warn!(sink = %self.name, alert_id = %alert.id, attempt, error = %e, "alert delivery failed; will retry");
                    if let Some(state) = self.breaker.on_failure(Instant::now()) {
                        self.transition(state, &e);
                        continue; // the breaker's cool-down is the wait
                    }
                    let wait = backoff(self.retry_initial, self.retry_max, self.breaker.failures());
                    if !self.sleep(wait).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Removes the outbox entries of `done` (delivered, or refused for
    /// good) in one transaction.
    async fn clear(&self, done: &mut Delivered) {
        done.last_clear = Instant::now();
        if done.ids.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut done.ids);
        // On failure they stay in the outbox and are delivered again after
        // a restart or an overflow re-read: at least once.
        let _ = self.store_op(move |s, n| s.outbox_remove(n, &ids)).await;
    }

    fn transition(&self, state: BreakerState, error: &str) {
        self.metrics.breaker.store(state as u8, Relaxed);
        match state {
            BreakerState::Open => tracing::warn!(
                sink = %self.name,
                failures = self.breaker.failures(),
                error,
                "circuit breaker opened: pausing deliveries to this sink"
            ),
            BreakerState::HalfOpen => {
                tracing::info!(sink = %self.name, "circuit breaker half-open: probing with one delivery")
            }
            BreakerState::Closed => tracing::info!(sink = %self.name, "circuit breaker closed: deliveries resumed"),
        }
    }

    /// Sleeps unless cancelled first (then false).
    async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.cancel.cancelled() => false,
        }
    }
}
