//! The ingest pipeline: deltas in, table updated, rules evaluated, alerts out.
//!
//! [`run_ingest`] is a task on the agent's runtime, reading the bus
//! subscription directly: the thread that wakes for procmond's write is the
//! one that applies the events and runs the rules, so an event costs the
//! agent one wake-up (on a VM, a wake-up from idle costs more than the
//! rules). For each batch of what has arrived it:
//! 1. fills any seq gap from procmond's ledger (a message the bus dropped, or
//!    events written while the agent was down), on a blocking thread,
//! 2. applies the batch to the in-memory view and stages the changed rows
//!    and the events for the store,
//! 3. evaluates every streaming rule on every event, and hands the matches
//!    to the store writer ([`crate::store_writer`]), which stores the alerts
//!    durably and delivers them,
//! 4. hands what is staged to the store writer once `agent.batch_size`
//!    events or [`STORE_FLUSH_EVERY`] have passed, so that redb's cost per
//!    transaction is shared by many events while rules still see each one
//!    at once. Nothing here waits for the disk.
//!
//! *Architecture invariant:* an event is applied at most once (seqs at or
//! below `last_applied_seq` are skipped) and at least once (gaps are filled
//! from the ledger, which has every event before the bus does; after a
//! crash, catch-up resumes at the store's `last_applied_seq`).

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use daemoneye_eventbus::Subscription;
use daemoneye_lib::detection::schema::event_row;
use daemoneye_lib::detection::{Limits, Params, RuleIndex, RuleSet, Value};
use daemoneye_lib::ledger::{LedgerReader, RecordKind};
use daemoneye_lib::models::event_type_name;
use daemoneye_lib::models::time::now_ms;
use daemoneye_lib::proto::{EventType, ProcessEvent};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::alerts::{AlertManager, Match};
use crate::event_window::{EventSource, EventWindows};
use crate::health::Health;
use crate::store::{PendingBatch, STORE_FLUSH_EVERY, Store};
use crate::store_writer::{OwnedMatch, StoreCmd, StoreWriter};
use crate::table::{ProcessSnapshot, ProcessTable, QueryTables, StoreRows};

/// An event as it reaches the pipeline.
#[derive(Debug)]
pub struct Incoming {
    /// The decoded event.
    pub event: ProcessEvent,
    /// Correlation id of the bus message that carried it.
    pub correlation_id: String,
}

/// Everything the pipeline, the table-rule timer and the API share.
pub struct Shared {
    /// The durable store.
    pub store: Arc<Store>,
    /// The in-memory process view.
    pub table: RwLock<ProcessTable>,
    /// The loaded rules and their streaming index (replaced whole on
    /// reload, with [`Shared::set_rules`]).
    pub rules: RwLock<(Arc<RuleSet>, Arc<RuleIndex>)>,
    /// The table rules' recent events (see [`crate::event_window`]); follows
    /// `rules`.
    pub windows: Mutex<EventWindows>,
    /// The rules directory and when it was last loaded (`rules_watch`).
    pub rules_source: crate::rules_watch::RulesSource,
    /// Alert dedupe and delivery.
    pub alerts: Mutex<AlertManager>,
    /// Health counters.
    pub health: Arc<Health>,
    /// Per-query limits.
    pub limits: Limits,
    /// procmond's ledger directory (for catch-up).
    pub ledger_dir: PathBuf,
    /// Retention of exited processes.
    pub process_retention: Duration,
    /// Retention of events.
    pub event_retention: Duration,
    /// Exited processes kept at most.
    pub max_exited_processes: usize,
    /// Events kept at most.
    pub max_events: u64,
    /// Largest store batch.
    pub batch_size: usize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("store", &self.store.path()).finish()
    }
}

impl Shared {
    /// The current rules.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.indexed_rules().0
    }

    /// The current rules with the index of their streaming rules' needs.
    pub fn indexed_rules(&self) -> (Arc<RuleSet>, Arc<RuleIndex>) {
        let g = self.rules.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        (Arc::clone(&g.0), Arc::clone(&g.1))
    }

    /// Replaces the running rule set, and the table rules' event windows
    /// with it (a rule that did not change keeps its window).
    pub fn set_rules(&self, set: Arc<RuleSet>) {
        // Windows first: the pipeline feeds them under this lock, and a
        // rule that is not in them yet reads the store.
        self.windows().rebuild(&set, now_ms());
        let index = Arc::new(set.streaming_index());
        *self.rules.write().unwrap_or_else(std::sync::PoisonError::into_inner) = (set, index);
    }

    /// The process view as it stands, for a query that may run long: the
    /// view's lock is held only while the snapshot is taken (one
    /// reference-count increment per row), never for the query.
    pub fn table_snapshot(&self) -> ProcessSnapshot {
        self.table.read().unwrap_or_else(std::sync::PoisonError::into_inner).snapshot()
    }

    /// The event windows, locked.
    pub fn windows(&self) -> std::sync::MutexGuard<'_, EventWindows> {
        self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs the ingest loop until `events` ends or `cancel` fires, then hands
/// the last staged state to `writer`.
pub async fn run_ingest(shared: Arc<Shared>, mut events: Subscription, writer: StoreWriter, cancel: CancellationToken) {
    // Catch up with what the ledger has that the store does not, before the
    // live stream (the live copies of these are then skipped as duplicates).
    let mut pending = catch_up_blocking(&shared, &writer, None, PendingBatch::default()).await;
    loop {
        let flush_in = (!pending.is_empty()).then(|| STORE_FLUSH_EVERY.saturating_sub(pending.age()));
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            d = events.recv() => match d {
                Some(d) => d,
                None => break,
            },
            () = sleep_for(flush_in) => {
                flush(&writer, &mut pending).await;
                continue;
            }
        };
        let mut batch = Vec::with_capacity((events.queued() + 1).min(shared.batch_size));
        let mut next = Some(first);
        while let Some(d) = next {
            match ProcessEvent::decode(d.payload.as_ref()) {
                Ok(event) => batch.push(Incoming { event, correlation_id: d.correlation.correlation_id }),
                Err(e) => {
                    Health::add(&shared.health.events_malformed, 1);
                    tracing::warn!(topic = %d.topic, error = %e, "process event does not decode; it will be read from the ledger");
                }
            }
            next = if batch.len() < shared.batch_size { events.try_recv() } else { None };
        }
        pending = process_batch(&shared, &writer, batch, pending).await;
        if pending.len() >= shared.batch_size || pending.age() >= STORE_FLUSH_EVERY {
            flush(&writer, &mut pending).await;
        }
    }
    flush(&writer, &mut pending).await;
}

async fn sleep_for(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Hands what is staged to the store writer.
async fn flush(writer: &StoreWriter, pending: &mut PendingBatch) {
    if !pending.is_empty() && !writer.send(StoreCmd::Flush(std::mem::take(pending))).await {
        tracing::error!("the store writer is gone; staged state is dropped (the ledger has it)");
    }
}

async fn process_batch(
    shared: &Arc<Shared>,
    writer: &StoreWriter,
    mut batch: Vec<Incoming>,
    mut pending: PendingBatch,
) -> PendingBatch {
    Health::add(&shared.health.events_received, batch.len() as u64);
    batch.retain(|i| i.event.seq > shared.health.last_applied_seq.load(Relaxed));
    batch.sort_by_key(|i| i.event.seq);
    let mut rest = batch.as_slice();
    while !rest.is_empty() {
        // Apply up to the first event whose predecessor did not arrive;
        // read what is missing from the ledger; go on from there.
        let last = shared.health.last_applied_seq.load(Relaxed);
        let missing_before = first_missed(rest, last);
        let (now, later) = rest.split_at(missing_before.unwrap_or(rest.len()));
        apply_and_alert(shared, writer, now, &mut pending).await;
        if let Some(next) = later.first() {
            let (from, to) = (shared.health.last_applied_seq.load(Relaxed) + 1, next.event.seq - 1);
            Health::add(&shared.health.seq_gaps, 1);
            tracing::info!(from, to, "events missing on the bus; reading the ledger");
            pending = catch_up_blocking(shared, writer, Some(next.event.seq), pending).await;
            // Catch-up applied up to `next`; the copies it read are skipped.
            let applied = shared.health.last_applied_seq.load(Relaxed);
            let skip = later.iter().take_while(|i| i.event.seq <= applied).count();
            rest = later.get(skip..).unwrap_or_default();
            if rest.len() == later.len() && first_missed(rest, applied) == Some(0) {
                // The ledger did not have it either (yet): apply the rest
                // rather than loop; the next gap check retries.
                apply_and_alert(shared, writer, rest, &mut pending).await;
                break;
            }
        } else {
            rest = later;
        }
    }
    pending
}

/// Applies `events` and hands their rule matches to the store writer.
async fn apply_and_alert(shared: &Arc<Shared>, writer: &StoreWriter, events: &[Incoming], pending: &mut PendingBatch) {
    let matches = apply(shared, events, pending);
    if !matches.is_empty() && !writer.send(StoreCmd::Alerts(matches)).await {
        tracing::error!("the store writer is gone; alerts are not stored");
    }
}

/// The index in `events` (new seqs, in order, after `last` was applied) of
/// the first event some event before which did not arrive. Each event
/// names its predecessor (`prev_seq`): seqs between an applied
/// predecessor and an event are ledger records that are not events
/// (checkpoints, audit), not a loss. An event that does not name one (the
/// first after procmond started) must follow `last` directly.
fn first_missed(events: &[Incoming], mut last: u64) -> Option<usize> {
    for (i, inc) in events.iter().enumerate() {
        let e = &inc.event;
        let follows = if e.prev_seq == 0 { e.seq == last + 1 } else { e.prev_seq <= last };
        if !follows {
            return Some(i);
        }
        last = e.seq;
    }
    None
}

/// [`catch_up`] on a blocking thread (it reads ledger files).
async fn catch_up_blocking(
    shared: &Arc<Shared>,
    writer: &StoreWriter,
    until: Option<u64>,
    mut pending: PendingBatch,
) -> PendingBatch {
    let (s, w) = (Arc::clone(shared), writer.clone());
    match tokio::task::spawn_blocking(move || {
        catch_up(&s, &w, until, &mut pending);
        pending
    })
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "ledger catch-up failed; the next gap check retries it");
            PendingBatch::default()
        }
    }
}

/// Applies ledger records from `last_applied_seq + 1` up to (excluding)
/// `until`, or to the ledger's end. Blocking.
fn catch_up(shared: &Shared, writer: &StoreWriter, until: Option<u64>, pending: &mut PendingBatch) {
    let from = shared.health.last_applied_seq.load(Relaxed) + 1;
    let reader = match LedgerReader::open(&shared.ledger_dir) {
        Ok(r) => r,
        Err(e) => {
            // No ledger yet (first start) is normal; anything else is worth a word.
            tracing::debug!(dir = %shared.ledger_dir.display(), error = %e, "no ledger to catch up from");
            return;
        }
    };
    let iter = match reader.iter_from(from) {
        Ok(it) => it,
        Err(e) => {
            tracing::warn!(from, error = %e, "cannot read the ledger for catch-up");
            return;
        }
    };
    let mut batch = Vec::new();
    let mut caught = 0u64;
    let apply_batch = |batch: Vec<Incoming>, pending: &mut PendingBatch| {
        let matches = apply(shared, &batch, pending);
        if !matches.is_empty() {
            writer.send_blocking(StoreCmd::Alerts(matches));
        }
    };
    for rec in iter {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(from, error = %e, "ledger catch-up stopped at a bad record");
                break;
            }
        };
        if until.is_some_and(|u| rec.seq >= u) {
            break;
        }
        if !matches!(rec.kind, RecordKind::Event | RecordKind::Gap) {
            continue;
        }
        match ProcessEvent::decode(rec.payload.as_slice()) {
            Ok(event) => {
                batch.push(Incoming { correlation_id: format!("procmond:{}", event.seq), event });
                caught += 1;
            }
            Err(e) => {
                Health::add(&shared.health.events_malformed, 1);
                tracing::warn!(seq = rec.seq, error = %e, "ledger record does not decode as a ProcessEvent");
            }
        }
        if batch.len() >= shared.batch_size {
            apply_batch(std::mem::take(&mut batch), pending);
            writer.send_blocking(StoreCmd::Flush(std::mem::take(pending)));
        }
    }
    if !batch.is_empty() {
        apply_batch(batch, pending);
    }
    if caught > 0 {
        tracing::info!(from, events = caught, "caught up from the ledger");
    }
}

/// Applies `batch` (new seqs, in order) to the in-memory view, stages it for
/// the store, and evaluates the streaming rules on it; returns their
/// matches.
fn apply(shared: &Shared, batch: &[Incoming], pending: &mut PendingBatch) -> Vec<OwnedMatch> {
    let Some(last_seq) = batch.iter().map(|i| i.event.seq).max() else { return Vec::new() };
    let mut states = Vec::with_capacity(batch.len());
    {
        let mut table = shared.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for inc in batch {
            let before = inc.event.process.as_ref().and_then(|r| table.get(&r.process_key)).cloned();
            let after = pending.stage(&inc.event, before);
            if let Some(st) = &after {
                table.upsert(Arc::clone(st));
            }
            states.push(after);
        }
    }
    shared.health.last_applied_seq.fetch_max(last_seq, Relaxed);
    evaluate_streaming(shared, batch, &states)
}

fn evaluate_streaming(
    shared: &Shared,
    batch: &[Incoming],
    states: &[Option<Arc<daemoneye_lib::proto::ProcessState>>],
) -> Vec<OwnedMatch> {
    let (rules, index) = shared.indexed_rules();
    let mut matches = Vec::new();
    // Table rules with an event window get each event's row too.
    let feed_windows = !shared.windows().is_empty();
    if rules.rules.is_empty() && !feed_windows {
        return matches;
    }
    let now = if feed_windows { now_ms() } else { 0 };
    let params = Params::default();
    let table = shared.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
    let tables = QueryTables::processes_only(&*table);
    let mut candidates = Vec::new();
    for (i, inc) in batch.iter().enumerate() {
        let state = states.get(i).and_then(Option::as_deref);
        if state.is_none() && inc.event.event_type() != EventType::Gap {
            continue;
        }
        let kind = event_type_name(inc.event.event_type());
        let mut row = None;
        for (r, lr) in rules.rules.iter().enumerate() {
            // Most rules name the event type they want: the others are
            // skipped without building a row or running the query.
            if !lr.rule.enabled || !lr.query.is_streaming() || !lr.query.may_match_event_type(kind) {
                continue;
            }
            let row = match &mut row {
                Some(row) => row,
                None => {
                    // One pass over the row picks the rules it can match.
                    let built = row.insert(event_row(&inc.event, state));
                    index.candidates(built, &mut candidates);
                    built
                }
            };
            if !candidates.get(r).copied().unwrap_or(true) {
                continue;
            }
            match lr.query.evaluate_event(row, &tables, &params, &shared.limits) {
                Ok(rs) => {
                    for out in rs.rows {
                        matches.push(OwnedMatch {
                            rules: Arc::clone(&rules),
                            rule: r,
                            columns: rs.columns.clone(),
                            row: out,
                            event: Some(Box::new(inc.event.clone())),
                            correlation_id: inc.correlation_id.clone(),
                        });
                    }
                }
                Err(e) => {
                    Health::add(&shared.health.rule_errors, 1);
                    tracing::warn!(rule_id = %lr.rule.id, seq = inc.event.seq, error = %e, "rule evaluation failed");
                }
            }
        }
        if feed_windows {
            let mut row = || -> Arc<[Value]> { row.take().unwrap_or_else(|| event_row(&inc.event, state)).into() };
            shared.windows().offer(&mut row, now);
        }
    }
    matches
}

/// Runs every enabled table rule once over the current table.
pub fn evaluate_table_rules(shared: &Shared) {
    let started = std::time::Instant::now();
    let rules = shared.rules();
    let params = Params::default();
    let mut matches = Vec::new();
    // Every rule of the pass reads one snapshot of the view, so the pipeline
    // never waits for a rule's query (with ~20,000 rows a pass takes 6-8 ms,
    // the snapshot 0.6-1.1 ms; a load of the store's events takes longer). Rules
    // without a complete event window share one load of the store's events
    // (made on first use).
    let table = shared.table_snapshot();
    let snapshot_us = started.elapsed().as_micros();
    let store_rows = StoreRows::new(&shared.store);
    for (r, lr) in rules.rules.iter().enumerate() {
        if !lr.rule.enabled || lr.query.is_streaming() {
            continue;
        }
        let source = shared.windows().source(&rules, r, now_ms());
        let tables = match source {
            EventSource::Window(rows) => QueryTables::with_events(&table, &shared.store, rows),
            EventSource::Store => QueryTables::with_store_rows(&table, &store_rows),
        };
        match lr.query.execute(&tables, &params, &shared.limits) {
            Ok(rs) => {
                for row in rs.rows {
                    matches.push((r, rs.columns.clone(), row));
                }
            }
            Err(e) => {
                Health::add(&shared.health.rule_errors, 1);
                tracing::warn!(rule_id = %lr.rule.id, error = %e, "table rule failed");
            }
        }
        if let Some(e) = tables.take_error() {
            tracing::warn!(rule_id = %lr.rule.id, error = %e, "table rule read the store partially");
        }
    }
    tracing::debug!(
        snapshot_us,
        rows = table.len(),
        elapsed_us = started.elapsed().as_micros(),
        "table rules evaluated"
    );
    let found: Vec<Match<'_>> = matches
        .iter()
        .filter_map(|(r, columns, row)| {
            let lr = rules.rules.get(*r)?;
            Some(Match { rule: &lr.rule, rule_index: *r, columns, row, event: None, correlation_id: "" })
        })
        .collect();
    let mut alerts = shared.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    alerts.expire();
    match alerts.raise_all(&found) {
        Ok(raised) => Health::add(&shared.health.alerts_raised, raised.iter().flatten().count() as u64),
        Err(e) => tracing::error!(error = %e, alerts = found.len(), "could not store the table rules' alerts"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, prev_seq: u64) -> Incoming {
        Incoming { event: ProcessEvent { seq, prev_seq, ..Default::default() }, correlation_id: String::new() }
    }

    #[test]
    fn only_a_missing_event_is_a_gap() {
        // Seqs 11 and 12 are a checkpoint and an audit record: no gap.
        assert_eq!(first_missed(&[ev(11, 10), ev(13, 11)], 10), None);
        assert_eq!(first_missed(&[ev(14, 13), ev(15, 14)], 10), Some(0), "13 was an event and did not arrive");
        assert_eq!(first_missed(&[ev(11, 10), ev(15, 13)], 10), Some(1), "a hole inside a batch");
        // Without a predecessor (first event after procmond started) only
        // the very next seq follows.
        assert_eq!(first_missed(&[ev(11, 0)], 10), None);
        assert_eq!(first_missed(&[ev(14, 0), ev(15, 14)], 10), Some(0));
        assert_eq!(first_missed(&[], 10), None);
    }
}
