//! The store writers: two threads that write the agent's redb files for the
//! pipeline, each in the order the pipeline hands its commands over. One
//! writes the store (staged batches, pruning); the other raises alerts
//! (dedupe, the durable commit to the alert file, delivery).
//!
//! The pipeline runs on the runtime thread that also reads the bus, so that
//! an event costs the agent one wake-up. Nothing there may block on the
//! disk: a redb commit takes milliseconds, and a new alert's durable commit
//! an fsync. Both happen here. Each thread takes every command queued when
//! it wakes and writes them together — several staged batches as one
//! transaction, every alert raised meanwhile as one durable transaction
//! (one fsync for a burst of alerts) — so under load its cost per event
//! falls. Alerts have a thread of their own because they go to a file of
//! their own: an alert never waits behind a store commit of a quarter
//! second of events (at 1,600 exec/s several milliseconds, which was most
//! of the exec -> alert p99).
//!
//! *Architecture invariant:* commands to one file are applied in order, and
//! a staged batch whose write failed is retried, merged with the next one,
//! before anything later is written; `last_applied_seq` in the store
//! therefore never passes an event whose rows it does not hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use daemoneye_lib::detection::{RuleSet, Value};
use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::ProcessEvent;
use tokio::sync::mpsc;

use crate::alerts::Match;
use crate::health::Health;
use crate::pipeline::Shared;
use crate::store::PendingBatch;

/// Commands waiting for the writer, at most; beyond it the pipeline waits
/// (and the bus subscription's queue takes the backlog).
const QUEUE: usize = 64;
/// How often exited processes and old events are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// Rows a prune removes from the view per hold of its write lock.
const PRUNE_CHUNK: usize = 128;
/// Most events kept staged while the store refuses writes; beyond it they
/// are dropped from memory (the ledger keeps them, and the next start
/// catches up from the store's `last_applied_seq`).
const MAX_PENDING_ON_ERROR: usize = 1 << 20;

/// A rule match as the pipeline hands it over (owning what it refers to).
#[derive(Debug)]
pub struct OwnedMatch {
    /// The rule set the rule is in.
    pub rules: Arc<RuleSet>,
    /// The rule's index in it.
    pub rule: usize,
    /// Output column names.
    pub columns: Arc<[String]>,
    /// The row.
    pub row: Vec<Value>,
    /// The event a streaming rule evaluated.
    pub event: Option<Box<ProcessEvent>>,
    /// The correlation id of that event's bus message.
    pub correlation_id: String,
}

/// What the writer does.
#[derive(Debug)]
pub enum StoreCmd {
    /// Write a staged batch (rows, events, `last_applied_seq`).
    Flush(PendingBatch),
    /// Raise alerts for these matches: dedupe, store durably with the
    /// outbox, hand to the sinks.
    Alerts(Vec<OwnedMatch>),
}

/// The pipeline's handle on the writer threads.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    store: mpsc::Sender<PendingBatch>,
    alerts: mpsc::Sender<Vec<OwnedMatch>>,
    progress: Arc<AlertProgress>,
}

/// How many alert batches were handed to the alert writer and how many it
/// has raised: a durable store commit waits until the alerts of the events
/// it covers are in the alert file (see `store::alerts`).
#[derive(Debug, Default)]
struct AlertProgress {
    sent: std::sync::atomic::AtomicU64,
    done: std::sync::Mutex<u64>,
    raised: std::sync::Condvar,
}

/// Longest a durable store commit waits for the alert writer (which never
/// waits for the store writer; only a stuck disk makes it this slow).
const ALERTS_WAIT: Duration = Duration::from_secs(10);

impl AlertProgress {
    fn finished(&self, batches: u64) {
        let mut done = self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *done += batches;
        self.raised.notify_all();
    }

    /// Waits until `batches` alert batches are raised; false on timeout.
    fn wait_for(&self, batches: u64) -> bool {
        let done = self.done.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (done, _) = self
            .raised
            .wait_timeout_while(done, ALERTS_WAIT, |d| *d < batches)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *done >= batches
    }
}

/// The writer threads, to wait for at shutdown.
#[derive(Debug)]
pub struct WriterThreads {
    store: std::thread::JoinHandle<()>,
    alerts: std::thread::JoinHandle<()>,
}

impl WriterThreads {
    /// Waits until both threads have ended (after every [`StoreWriter`] is
    /// dropped); false when one of them panicked.
    pub fn join(self) -> bool {
        let store = self.store.join().is_ok();
        self.alerts.join().is_ok() && store
    }
}

impl StoreWriter {
    /// Starts the writer threads. They end, after a last durable commit,
    /// once every handle is dropped.
    pub fn start(shared: Arc<Shared>) -> std::io::Result<(StoreWriter, WriterThreads)> {
        let (store_tx, store_rx) = mpsc::channel(QUEUE);
        let (alerts_tx, alerts_rx) = mpsc::channel(QUEUE);
        let progress = Arc::new(AlertProgress::default());
        let (for_alerts, alert_progress) = (Arc::clone(&shared), Arc::clone(&progress));
        let alerts = std::thread::Builder::new()
            .name("alert-writer".into())
            .spawn(move || run_alerts(&for_alerts, &alert_progress, alerts_rx))?;
        let store_progress = Arc::clone(&progress);
        let store = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(&shared, &store_progress, store_rx))?;
        Ok((StoreWriter { store: store_tx, alerts: alerts_tx, progress }, WriterThreads { store, alerts }))
    }

    /// Hands `cmd` over, waiting while its writer is behind. False once
    /// that writer is gone.
    pub async fn send(&self, cmd: StoreCmd) -> bool {
        match self.stamp(cmd) {
            StoreCmd::Flush(b) => self.store.send(b).await.is_ok(),
            StoreCmd::Alerts(m) => self.alerts.send(m).await.is_ok(),
        }
    }

    /// [`StoreWriter::send`] from a blocking thread (ledger catch-up).
    pub fn send_blocking(&self, cmd: StoreCmd) -> bool {
        match self.stamp(cmd) {
            StoreCmd::Flush(b) => self.store.blocking_send(b).is_ok(),
            StoreCmd::Alerts(m) => self.alerts.blocking_send(m).is_ok(),
        }
    }

    /// Counts an alert batch, or tells a staged batch how many came before
    /// it (the pipeline sends an event's alerts before the batch with it).
    fn stamp(&self, cmd: StoreCmd) -> StoreCmd {
        match cmd {
            StoreCmd::Flush(mut b) => {
                b.alerts_before = self.progress.sent.load(std::sync::atomic::Ordering::Acquire);
                StoreCmd::Flush(b)
            }
            StoreCmd::Alerts(m) => {
                self.progress.sent.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                StoreCmd::Alerts(m)
            }
        }
    }
}

/// The alert writer: every match queued when it wakes is raised in one
/// commit. At the end the alert file is made durable.
fn run_alerts(shared: &Shared, progress: &AlertProgress, mut rx: mpsc::Receiver<Vec<OwnedMatch>>) {
    while let Some(mut matches) = rx.blocking_recv() {
        let mut batches = 1;
        while let Ok(more) = rx.try_recv() {
            matches.extend(more);
            batches += 1;
        }
        raise(shared, &matches);
        progress.finished(batches);
    }
    if let Err(e) = shared.store.flush_alerts() {
        tracing::warn!(error = %e, "could not make the alert file durable at shutdown; the next start raises the last alerts again from the ledger");
    }
}

/// The store writer: staged batches queued when it wakes are written as one
/// transaction.
fn run(shared: &Shared, progress: &AlertProgress, mut rx: mpsc::Receiver<PendingBatch>) {
    let mut retry: Option<PendingBatch> = None;
    let mut last_prune = Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = match retry.take() {
            Some(mut earlier) => {
                earlier.absorb(first);
                earlier
            }
            None => first,
        };
        while let Ok(b) = rx.try_recv() {
            batch.absorb(b);
        }
        retry = write(shared, progress, batch);
        if (last_prune.elapsed() >= PRUNE_EVERY || exited_over_cap(shared)) && retry.is_none() {
            prune(shared);
            last_prune = Instant::now();
        }
    }
    if let Some(b) = retry {
        let _ = write(shared, progress, b);
    }
    // The last durable commit covers every event: their alerts first.
    if !progress.wait_for(progress.sent.load(std::sync::atomic::Ordering::Acquire)) {
        tracing::warn!("the alert writer did not finish; the next start raises its last alerts again from the ledger");
    }
    if let Err(e) = shared.store.flush() {
        tracing::warn!(error = %e, "could not make the store durable at shutdown; the next start catches up from the ledger");
    }
}

/// Writes a staged batch; returns it when the write failed (to retry). A
/// durable commit first waits until the alerts of its events are raised.
fn write(shared: &Shared, progress: &AlertProgress, mut batch: PendingBatch) -> Option<PendingBatch> {
    let mut durable = shared.store.durable_due();
    if durable && !progress.wait_for(batch.alerts_before) {
        tracing::warn!("the alert writer is behind; this store commit stays relaxed");
        durable = false;
    }
    match shared.store.write_pending(&mut batch, durable) {
        Ok(()) => None,
        Err(e) if batch.len() > MAX_PENDING_ON_ERROR => {
            tracing::error!(error = %e, events = batch.len(), "the store keeps refusing writes; dropping staged state (the ledger has it: restart the agent to catch up)");
            None
        }
        Err(e) => {
            tracing::error!(error = %e, events = batch.len(), "could not write to the store; retrying with the next batch");
            Some(batch)
        }
    }
}

fn raise(shared: &Shared, matches: &[OwnedMatch]) {
    let borrowed: Vec<Match<'_>> = matches
        .iter()
        .filter_map(|m| {
            let lr = m.rules.rules.get(m.rule)?;
            Some(Match {
                rule: &lr.rule,
                rule_index: m.rule,
                columns: &m.columns,
                row: &m.row,
                event: m.event.as_deref(),
                correlation_id: &m.correlation_id,
            })
        })
        .collect();
    let mut alerts = shared.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match alerts.raise_all(&borrowed) {
        Ok(raised) => Health::add(&shared.health.alerts_raised, raised.iter().flatten().count() as u64),
        Err(e) => tracing::error!(error = %e, alerts = borrowed.len(), "could not store alerts"),
    }
}

/// Whether the view is far enough over `max_exited_processes` to prune now.
fn exited_over_cap(shared: &Shared) -> bool {
    let table = shared.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    daemoneye_lib::models::retention::over_cap(table.exited_len(), shared.max_exited_processes)
}

fn prune(shared: &Shared) {
    let now = now_ns();
    let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    // The view chooses (it keeps the exited rows in exit order); the store
    // removes those it still holds as exited, and the view follows it.
    let doomed = shared
        .table
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .prunable(now - ns(shared.process_retention), shared.max_exited_processes);
    match shared.store.prune(&doomed, now - ns(shared.event_retention), shared.max_events) {
        Ok(removed) => {
            // A few rows per write lock, freed after it: a prune past the
            // cap removes thousands (2,500 every ~3 s at 800 exec/s), and
            // removing and freeing them under one lock held up the
            // pipeline's next event by 5-16 ms.
            let mut freed = Vec::with_capacity(removed.len());
            for chunk in removed.chunks(PRUNE_CHUNK) {
                let mut table = shared.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
                freed.extend(chunk.iter().filter_map(|k| table.remove(k)));
            }
            if !removed.is_empty() {
                tracing::debug!(removed = removed.len(), "pruned exited processes");
            }
            drop(freed);
        }
        Err(e) => tracing::warn!(error = %e, "pruning the store failed"),
    }
}
