//! The store writer: the one thread that writes the redb store for the
//! pipeline — staged batches, new alerts, pruning — in the order the
//! pipeline hands them over.
//!
//! The pipeline runs on the runtime thread that also reads the bus, so that
//! an event costs the agent one wake-up. Nothing there may block on the
//! disk: a redb commit takes milliseconds, and a new alert's durable commit
//! an fsync. Both happen here. The thread takes every command queued when
//! it wakes and writes them together — several staged batches as one
//! transaction, every alert raised meanwhile as one durable transaction
//! (one fsync for a burst of alerts) — so under load its cost per event
//! falls.
//!
//! *Architecture invariant:* commands are applied in order, and a staged
//! batch whose write failed is retried, merged with the next one, before
//! anything later is written; `last_applied_seq` in the store therefore
//! never passes an event whose rows it does not hold.

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

/// The pipeline's handle on the writer thread.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<StoreCmd>,
}

impl StoreWriter {
    /// Starts the writer thread. It ends, after a last durable commit, once
    /// every handle is dropped.
    pub fn start(shared: Arc<Shared>) -> std::io::Result<(StoreWriter, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new().name("store-writer".into()).spawn(move || run(&shared, rx))?;
        Ok((StoreWriter { tx }, thread))
    }

    /// Hands `cmd` over, waiting while the writer is behind. False once the
    /// writer is gone.
    pub async fn send(&self, cmd: StoreCmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    /// [`StoreWriter::send`] from a blocking thread (ledger catch-up).
    pub fn send_blocking(&self, cmd: StoreCmd) -> bool {
        self.tx.blocking_send(cmd).is_ok()
    }
}

fn run(shared: &Shared, mut rx: mpsc::Receiver<StoreCmd>) {
    let mut retry: Option<PendingBatch> = None;
    let mut last_prune = Instant::now();
    while let Some(first) = rx.blocking_recv() {
        let mut batch = retry.take();
        let mut matches = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next {
            match cmd {
                StoreCmd::Flush(b) => match &mut batch {
                    Some(earlier) => earlier.absorb(b),
                    None => batch = Some(b),
                },
                StoreCmd::Alerts(m) => matches.extend(m),
            }
            next = rx.try_recv().ok();
        }
        if let Some(b) = batch {
            retry = write(shared, b);
        }
        if !matches.is_empty() {
            raise(shared, &matches);
        }
        if last_prune.elapsed() >= PRUNE_EVERY && retry.is_none() {
            prune(shared);
            last_prune = Instant::now();
        }
    }
    if let Some(b) = retry {
        let _ = write(shared, b);
    }
    if let Err(e) = shared.store.flush() {
        tracing::warn!(error = %e, "could not make the store durable at shutdown; the next start catches up from the ledger");
    }
}

/// Writes a staged batch; returns it when the write failed (to retry).
fn write(shared: &Shared, mut batch: PendingBatch) -> Option<PendingBatch> {
    match shared.store.write_pending(&mut batch) {
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

fn prune(shared: &Shared) {
    let now = now_ns();
    let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    match shared.store.prune(now - ns(shared.process_retention), now - ns(shared.event_retention)) {
        Ok(removed) => {
            let mut table = shared.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            for k in &removed {
                table.remove(k);
            }
            if !removed.is_empty() {
                tracing::debug!(removed = removed.len(), "pruned exited processes");
            }
        }
        Err(e) => tracing::warn!(error = %e, "pruning the store failed"),
    }
}
