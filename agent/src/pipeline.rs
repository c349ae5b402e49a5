//! The ingest pipeline: deltas in, table updated, rules evaluated, alerts out.
//!
//! One dedicated thread owns the write path (redb commits block), fed by a
//! bounded channel from the bus subscription. For each batch it:
//! 1. fills any seq gap from procmond's ledger (a message the bus dropped, or
//!    events written while the agent was down),
//! 2. applies the batch to the in-memory view and stages the changed rows
//!    and the events for the store,
//! 3. evaluates every streaming rule on every event, and raises alerts,
//! 4. writes what is staged to the store in one transaction (with
//!    `last_applied_seq`) once `agent.batch_size` events or
//!    [`STORE_FLUSH_EVERY`] have passed, so that redb's cost per transaction
//!    is shared by many events while rules still see each one at once.
//!
//! *Architecture invariant:* an event is applied at most once (seqs at or
//! below `last_applied_seq` are skipped) and at least once (gaps are filled
//! from the ledger, which has every event before the bus does; after a
//! crash, catch-up resumes at the store's `last_applied_seq`).

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use daemoneye_lib::detection::schema::event_row;
use daemoneye_lib::detection::{Limits, Params, RuleSet, Value};
use daemoneye_lib::ledger::{LedgerReader, RecordKind};
use daemoneye_lib::models::event_type_name;
use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::{EventType, ProcessEvent};
use prost::Message;
use tokio::sync::mpsc;

use crate::alerts::{AlertManager, Match};
use crate::health::Health;
use crate::store::{PendingBatch, STORE_FLUSH_EVERY, Store};
use crate::table::{ProcessTable, QueryTables};

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
    /// The loaded rules (replaced whole on reload).
    pub rules: RwLock<Arc<RuleSet>>,
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
        self.rules.read().map(|g| Arc::clone(&g)).unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }
}

/// Runs the ingest loop until the channel closes. Call on a dedicated
/// thread; `rt` is the runtime the bus runs on (for the flush timer).
pub fn run_ingest(shared: &Shared, mut rx: mpsc::Receiver<Incoming>, rt: &tokio::runtime::Handle) {
    let mut last_prune = Instant::now();
    let mut pending = PendingBatch::default();
    // Catch up with what the ledger has that the store does not, before the
    // live stream (the live copies of these are then skipped as duplicates).
    catch_up(shared, None, &mut pending);
    loop {
        let first = if pending.is_empty() {
            rx.blocking_recv()
        } else {
            let wait = STORE_FLUSH_EVERY.saturating_sub(pending.age());
            // The timer must be made inside the runtime's context.
            match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                Ok(first) => first,
                Err(_) => {
                    flush(shared, &mut pending);
                    continue;
                }
            }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        while batch.len() < shared.batch_size {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        process_batch(shared, batch, &mut pending);
        if pending.len() >= shared.batch_size || pending.age() >= STORE_FLUSH_EVERY {
            flush(shared, &mut pending);
        }
        if last_prune.elapsed() >= Duration::from_secs(30) {
            flush(shared, &mut pending);
            prune(shared);
            last_prune = Instant::now();
        }
    }
    flush(shared, &mut pending);
    if let Err(e) = shared.store.flush() {
        tracing::warn!(error = %e, "could not make the store durable at shutdown; the next start catches up from the ledger");
    }
}

/// Most events kept staged while the store refuses writes; beyond it they
/// are dropped from memory (the ledger keeps them, and the next start
/// catches up from the store's `last_applied_seq`).
const MAX_PENDING_ON_ERROR: usize = 1 << 20;

/// Writes what is staged to the store.
fn flush(shared: &Shared, pending: &mut PendingBatch) {
    if let Err(e) = shared.store.write_pending(pending) {
        if pending.len() > MAX_PENDING_ON_ERROR {
            tracing::error!(error = %e, events = pending.len(), "the store keeps refusing writes; dropping staged state (the ledger has it: restart the agent to catch up)");
            *pending = PendingBatch::default();
        } else {
            tracing::error!(error = %e, events = pending.len(), "could not write to the store; retrying with the next batch");
        }
    }
}

fn process_batch(shared: &Shared, mut batch: Vec<Incoming>, pending: &mut PendingBatch) {
    Health::add(&shared.health.events_received, batch.len() as u64);
    let last = shared.health.last_applied_seq.load(Relaxed);
    if let Some(first_seq) = batch.iter().map(|i| i.event.seq).filter(|s| *s > last).min()
        && first_seq > last + 1
    {
        Health::add(&shared.health.seq_gaps, 1);
        tracing::info!(from = last + 1, to = first_seq - 1, "sequence gap on the bus; reading the ledger");
        catch_up(shared, Some(first_seq), pending);
    }
    batch.retain(|i| i.event.seq > shared.health.last_applied_seq.load(Relaxed));
    batch.sort_by_key(|i| i.event.seq);
    apply(shared, batch, pending);
}

/// Applies ledger records from `last_applied_seq + 1` up to (excluding)
/// `until`, or to the ledger's end.
fn catch_up(shared: &Shared, until: Option<u64>, pending: &mut PendingBatch) {
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
            apply(shared, std::mem::take(&mut batch), pending);
            flush(shared, pending);
        }
    }
    if !batch.is_empty() {
        apply(shared, batch, pending);
    }
    if caught > 0 {
        tracing::info!(from, events = caught, "caught up from the ledger");
    }
}

/// Applies `batch` (new seqs, in order) to the in-memory view, stages it for
/// the store, and evaluates the streaming rules on it.
fn apply(shared: &Shared, batch: Vec<Incoming>, pending: &mut PendingBatch) {
    let Some(last_seq) = batch.iter().map(|i| i.event.seq).max() else { return };
    let mut states = Vec::with_capacity(batch.len());
    {
        let mut table = shared.table.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for inc in &batch {
            let before = inc.event.process.as_ref().and_then(|r| table.get(&r.process_key)).cloned();
            let after = pending.stage(&inc.event, before);
            if let Some(st) = &after {
                table.upsert(st.clone());
            }
            states.push(after);
        }
    }
    shared.health.last_applied_seq.fetch_max(last_seq, Relaxed);
    evaluate_streaming(shared, &batch, &states);
}

/// A streaming rule's match: (event index, rule index, columns, row).
type StreamingMatch = (usize, usize, std::sync::Arc<[String]>, Vec<Value>);

fn evaluate_streaming(shared: &Shared, batch: &[Incoming], states: &[Option<daemoneye_lib::proto::ProcessState>]) {
    let rules = shared.rules();
    if rules.rules.is_empty() {
        return;
    }
    let params = Params::default();
    let mut matches: Vec<StreamingMatch> = Vec::new();
    {
        let table = shared.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tables = QueryTables::processes_only(&table);
        for (i, inc) in batch.iter().enumerate() {
            let state = states.get(i).and_then(Option::as_ref);
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
                let row = row.get_or_insert_with(|| event_row(&inc.event, state));
                match lr.query.evaluate_event(row, &tables, &params, &shared.limits) {
                    Ok(rs) => {
                        for out in rs.rows {
                            matches.push((i, r, rs.columns.clone(), out));
                        }
                    }
                    Err(e) => {
                        Health::add(&shared.health.rule_errors, 1);
                        tracing::warn!(rule_id = %lr.rule.id, seq = inc.event.seq, error = %e, "rule evaluation failed");
                    }
                }
            }
        }
    }
    if matches.is_empty() {
        return;
    }
    let mut alerts = shared.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (i, r, columns, row) in &matches {
        let (Some(inc), Some(lr)) = (batch.get(*i), rules.rules.get(*r)) else { continue };
        let m = Match { rule: &lr.rule, columns, row, event: Some(&inc.event), correlation_id: &inc.correlation_id };
        match alerts.raise(&m) {
            Ok(Some(_)) => Health::add(&shared.health.alerts_raised, 1),
            Ok(None) => {}
            Err(e) => tracing::error!(rule_id = %lr.rule.id, error = %e, "could not store an alert"),
        }
    }
}

/// Runs every enabled table rule once over the current table.
pub fn evaluate_table_rules(shared: &Shared) {
    let rules = shared.rules();
    let params = Params::default();
    let mut matches = Vec::new();
    {
        let table = shared.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let tables = QueryTables::with_store(&table, &shared.store);
        for (r, lr) in rules.rules.iter().enumerate() {
            if !lr.rule.enabled || lr.query.is_streaming() {
                continue;
            }
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
    }
    let mut alerts = shared.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    alerts.expire();
    for (r, columns, row) in &matches {
        let Some(lr) = rules.rules.get(*r) else { continue };
        let m = Match { rule: &lr.rule, columns, row, event: None, correlation_id: "" };
        match alerts.raise(&m) {
            Ok(Some(_)) => Health::add(&shared.health.alerts_raised, 1),
            Ok(None) => {}
            Err(e) => tracing::error!(rule_id = %lr.rule.id, error = %e, "could not store an alert"),
        }
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
