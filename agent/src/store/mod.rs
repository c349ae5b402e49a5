//! The agent's durable state: the store (derived state, one redb file) and
//! beside it the alert file ([`alerts`]).
//!
//! Store tables (values are protobuf, the project's one codec):
//! - `processes`: process_key -> `ProcessState`; indexes `processes_by_pid`
//!   (pid -> key) and `processes_by_parent` (parent_key -> key).
//! - `process_events`: seq -> `ProcessEvent` (the recent-events window).
//! - `meta`: `last_applied_seq`, `schema_version` (2: alerts in their own
//!   file; a schema-1 store's alerts move there on open).
//!
//! *Architecture invariant:* `last_applied_seq` is written in the same
//! transaction as the rows it covers, so after a crash the table and the
//! seq agree and catch-up from the ledger resumes exactly there.

use std::path::{Path, PathBuf};

use daemoneye_lib::models::apply_event;
use daemoneye_lib::proto::{ProcessEvent, ProcessRecord, ProcessState};
use prost::Message;
use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

const PROCESSES: TableDefinition<&str, &[u8]> = TableDefinition::new("processes");
const BY_PID: MultimapTableDefinition<u32, &str> = MultimapTableDefinition::new("processes_by_pid");
const BY_PARENT: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("processes_by_parent");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("process_events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const SCHEMA_VERSION: u64 = 2;

/// redb's page cache for the store. The agent reads the store at start and
/// for `process_events` queries; rules read the memory view. redb's default
/// (up to 1 GiB) kept every page written in memory: 20 MB of the agent's
/// resident set with 10,000 processes.
const CACHE_BYTES: usize = 8 << 20;

mod alerts;

/// Errors from the store; each names the store file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// redb failed.
    #[error("process store {path}: {what}: {source}")]
    Db {
        /// The store file.
        path: PathBuf,
        /// What the store was doing.
        what: &'static str,
        /// The redb error.
        #[source]
        source: Box<redb::Error>,
    },
    /// A stored value does not decode: the file is damaged or from another version.
    #[error(
        "process store {path}: corrupt {table} entry {key}: {reason}; move the file aside to rebuild it from the ledger"
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// The table.
        table: &'static str,
        /// The entry key.
        key: String,
        /// Decode error.
        reason: String,
    },
    /// The file was written by a newer schema.
    #[error(
        "process store {path} has schema version {found}, this agent knows {SCHEMA_VERSION}: upgrade the agent or move the file aside"
    )]
    Schema {
        /// The store file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
}

/// Derived state staged in memory for the store's next write transaction:
/// each process row as it stands after the staged events (a row touched by
/// several events is written once), and the events themselves.
///
/// The pipeline applies events to its in-memory view and evaluates rules at
/// once, and writes to redb only every [`STORE_FLUSH_EVERY`] or
/// `agent.batch_size` events: redb's per-transaction cost then amortises
/// over many events. The ledger has every staged event, and `last_applied_seq`
/// is written with them, so a crash loses nothing (catch-up re-reads them).
#[derive(Debug, Default)]
pub struct PendingBatch {
    /// Shared with the in-memory view's rows.
    rows: std::collections::HashMap<String, std::sync::Arc<ProcessState>>,
    /// (seq, encoded `ProcessEvent` as kept in `process_events`).
    events: Vec<(u64, Vec<u8>)>,
    last_seq: u64,
    since: Option<std::time::Instant>,
    /// Alert batches handed to the alert writer before this one was staged
    /// (set by the store writer's handle): a durable commit of this batch
    /// waits until they are in the alert file.
    pub(crate) alerts_before: u64,
}

/// `ev` encoded with `record` as its process, without copying either: the
/// event's other fields, then the record as field 5 (protobuf fields may
/// come in any order).
fn encode_kept(ev: &ProcessEvent, record: Option<&ProcessRecord>) -> Vec<u8> {
    const PROCESS_FIELD: u32 = 5;
    let shell = ProcessEvent {
        seq: ev.seq,
        event_type: ev.event_type,
        event_time_ns: ev.event_time_ns,
        source: ev.source,
        process: None,
        gap: ev.gap.clone(),
        prev_seq: ev.prev_seq,
    };
    let record_len = record.map_or(0, |r| prost::encoding::message::encoded_len(PROCESS_FIELD, r));
    let mut buf = Vec::with_capacity(shell.encoded_len() + record_len);
    shell.encode_raw(&mut buf);
    if let Some(r) = record {
        prost::encoding::message::encode(PROCESS_FIELD, r, &mut buf);
    }
    buf
}

impl PendingBatch {
    /// Merges `ev` into `before` (the row as the caller knows it, including
    /// events staged earlier) and stages the result with the event. Returns
    /// the row after the event (`None` for gaps and unknown processes),
    /// shared with the staged copy.
    pub fn stage(&mut self, ev: &ProcessEvent, before: Option<ProcessState>) -> Option<std::sync::Arc<ProcessState>> {
        let after = apply_event(before, ev).map(std::sync::Arc::new);
        // Kept with the process as it stood after this event, so a query
        // shows each event's own state (an earlier exec's argv, not the
        // latest one).
        let record = after.as_ref().and_then(|s| s.record.as_ref()).or(ev.process.as_ref());
        self.events.push((ev.seq, encode_kept(ev, record)));
        if let Some(state) = &after
            && let Some(r) = &state.record
        {
            self.rows.insert(r.process_key.clone(), std::sync::Arc::clone(state));
        }
        self.last_seq = self.last_seq.max(ev.seq);
        self.since.get_or_insert_with(std::time::Instant::now);
        after
    }

    /// Takes what `newer` staged after this batch (a failed write is
    /// retried with the next one): its rows replace these, its events follow.
    pub fn absorb(&mut self, newer: PendingBatch) {
        self.rows.extend(newer.rows);
        self.events.extend(newer.events);
        self.last_seq = self.last_seq.max(newer.last_seq);
        self.alerts_before = self.alerts_before.max(newer.alerts_before);
        self.since = match (self.since, newer.since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Staged events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Nothing staged.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.rows.is_empty()
    }

    /// How long the oldest staged event has waited (zero when empty).
    pub fn age(&self) -> std::time::Duration {
        self.since.map(|t| t.elapsed()).unwrap_or_default()
    }
}

/// Longest time staged derived state waits for its store transaction. The
/// in-memory view and the rules see events at once; only `process_events`
/// queries and table rules that read them lag by up to this much.
pub const STORE_FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Most time a commit of derived state (table rows, events, deliveries,
/// repeat counts) stays non-durable. Such commits skip the fsync, whose
/// cost (writing back every page the commits since the last one dirtied)
/// was the agent's largest under load: the ledger has every event they came
/// from, and after a crash the agent re-reads it from the last durable
/// `last_applied_seq` (at 1,600 exec/s ten seconds are ~50,000 records, a
/// fraction of a second to re-apply, raising again the alerts a crash
/// lost from the alert file; see `alerts`).
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The redb store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
    /// When the last durable commit happened.
    last_durable: std::sync::Mutex<std::time::Instant>,
    /// Alerts, outbox and rule choices, in their own file.
    alerts: alerts::AlertDb,
}

/// Decodes a stored value, naming the file, table and key when it does not.
fn decode_at<M: Message + Default>(path: &Path, table: &'static str, key: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        table,
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

trait Ctx<T> {
    fn ctx(self, path: &Path, what: &'static str) -> Result<T, StoreError>;
}
impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, path: &Path, what: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Db { path: path.to_owned(), what, source: Box::new(e.into()) })
    }
}

impl Store {
    /// Opens (or creates) the store and its tables, and the alert file
    /// beside it (moving the alerts of a schema-1 store there).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(path).ctx(path, "opening")?;
        {
            let r = db.begin_read().ctx(path, "starting a read")?;
            let found = match r.open_table(META) {
                Ok(meta) => meta.get("schema_version").ctx(path, "reading meta")?.map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(e).ctx(path, "opening meta"),
            };
            if let Some(v) = found.filter(|v| *v > SCHEMA_VERSION) {
                return Err(StoreError::Schema { path: path.to_owned(), found: v });
            }
        }
        let alerts = alerts::AlertDb::open(&alerts::AlertDb::path_for(path))?;
        if alerts.migrate_from(&db, path)? {
            tracing::info!(from = %path.display(), to = %alerts.path().display(), "alerts moved to their own file");
        }
        let txn = db.begin_write().ctx(path, "starting a transaction")?;
        {
            txn.open_table(PROCESSES).ctx(path, "creating tables")?;
            txn.open_multimap_table(BY_PID).ctx(path, "creating tables")?;
            txn.open_multimap_table(BY_PARENT).ctx(path, "creating tables")?;
            txn.open_table(EVENTS).ctx(path, "creating tables")?;
            let mut meta = txn.open_table(META).ctx(path, "creating tables")?;
            meta.insert("schema_version", SCHEMA_VERSION).ctx(path, "writing meta")?;
        }
        txn.commit().ctx(path, "committing")?;
        Ok(Self { db, path: path.to_owned(), last_durable: std::sync::Mutex::new(std::time::Instant::now()), alerts })
    }

    /// The alert file beside the store.
    pub fn alerts_path(&self) -> &Path {
        self.alerts.path()
    }

    /// Whether the next commit of derived state is to be durable: the last
    /// durable one is [`DURABLE_EVERY`] old (see there). True resets the
    /// clock.
    pub fn durable_due(&self) -> bool {
        let mut last = self.last_durable.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = last.elapsed() >= DURABLE_EVERY;
        if due {
            *last = std::time::Instant::now();
        }
        due
    }

    /// Makes every earlier commit durable (on shutdown: a restart then
    /// needs no catch-up).
    pub fn flush(&self) -> Result<(), StoreError> {
        // The alert file first: a durable seq must not pass relaxed alerts
        // (see `alerts`).
        self.alerts.flush()?;
        let txn = self.db.begin_write().ctx(&self.path, "starting a transaction")?;
        txn.commit().ctx(&self.path, "committing")?;
        self.durable();
        Ok(())
    }

    /// Makes every earlier commit to the alert file durable.
    pub fn flush_alerts(&self) -> Result<(), StoreError> {
        self.alerts.flush()
    }

    /// Notes a durable commit (the default durability).
    fn durable(&self) {
        *self.last_durable.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = std::time::Instant::now();
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The seq of the last event whose effect is in the store (0: none).
    pub fn last_applied_seq(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().ctx(&self.path, "starting a read")?;
        let meta = txn.open_table(META).ctx(&self.path, "opening meta")?;
        Ok(meta.get("last_applied_seq").ctx(&self.path, "reading meta")?.map_or(0, |v| v.value()))
    }

    /// Every stored process.
    pub fn load_processes(&self) -> Result<Vec<ProcessState>, StoreError> {
        let txn = self.db.begin_read().ctx(&self.path, "starting a read")?;
        let table = txn.open_table(PROCESSES).ctx(&self.path, "opening processes")?;
        let mut out = Vec::new();
        for item in table.iter().ctx(&self.path, "reading processes")? {
            let (k, v) = item.ctx(&self.path, "reading processes")?;
            out.push(self.decode::<ProcessState>("processes", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Writes what `batch` staged in one write transaction with
    /// `last_applied_seq`, and empties it. Events at or below the stored
    /// `last_applied_seq` (a catch-up overlap) are skipped. On error the batch
    /// is kept for the next attempt.
    ///
    /// Durable when `durable` (see [`Store::durable_due`]); a durable
    /// commit makes the alert file durable first: alerts of the
    /// events it covers are relaxed there, and after a crash only the events
    /// after the durable `last_applied_seq` are re-applied (and their
    /// alerts raised again). The caller makes sure those alerts are in the
    /// alert file by then (the store writer waits for the alert writer).
    pub fn write_pending(&self, batch: &mut PendingBatch, durable: bool) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let p = &self.path;
        let mut txn = self.db.begin_write().ctx(p, "starting a transaction")?;
        if durable {
            self.alerts.flush()?;
        } else {
            txn.set_durability(redb::Durability::None).ctx(p, "relaxing durability")?;
        }
        {
            let mut meta = txn.open_table(META).ctx(p, "opening meta")?;
            let stored = meta.get("last_applied_seq").ctx(p, "reading meta")?.map_or(0, |v| v.value());
            let mut procs = txn.open_table(PROCESSES).ctx(p, "opening processes")?;
            let mut by_pid = txn.open_multimap_table(BY_PID).ctx(p, "opening index")?;
            let mut by_parent = txn.open_multimap_table(BY_PARENT).ctx(p, "opening index")?;
            let mut evs = txn.open_table(EVENTS).ctx(p, "opening process_events")?;
            for (key, state) in &batch.rows {
                let Some(r) = &state.record else { continue };
                procs.insert(key.as_str(), state.encode_to_vec().as_slice()).ctx(p, "writing processes")?;
                // Index inserts are idempotent (multimap sets).
                by_pid.insert(r.pid, key.as_str()).ctx(p, "writing index")?;
                if let Some(parent) = &r.parent_key {
                    by_parent.insert(parent.as_str(), key.as_str()).ctx(p, "writing index")?;
                }
            }
            for (seq, bytes) in &batch.events {
                if *seq != 0 && *seq <= stored {
                    continue;
                }
                evs.insert(*seq, bytes.as_slice()).ctx(p, "writing process_events")?;
            }
            meta.insert("last_applied_seq", stored.max(batch.last_seq)).ctx(p, "writing meta")?;
        }
        txn.commit().ctx(p, "committing a batch")?;
        *batch = PendingBatch::default();
        Ok(())
    }

    /// Removes the processes named (those the view found prunable, see
    /// `ProcessTable::prunable`) that are still exited here, then events
    /// older than `events_before_ns` and, oldest first, beyond `max_events`.
    /// Returns the keys of the processes removed.
    pub fn prune(&self, exited: &[String], events_before_ns: i64, max_events: u64) -> Result<Vec<String>, StoreError> {
        let p = &self.path;
        let txn = self.db.begin_write().ctx(p, "starting a transaction")?;
        let mut removed = Vec::with_capacity(exited.len());
        {
            let mut procs = txn.open_table(PROCESSES).ctx(p, "opening processes")?;
            let mut by_pid = txn.open_multimap_table(BY_PID).ctx(p, "opening index")?;
            let mut by_parent = txn.open_multimap_table(BY_PARENT).ctx(p, "opening index")?;
            for key in exited {
                let Some(bytes) = procs.get(key.as_str()).ctx(p, "reading processes")?.map(|v| v.value().to_vec())
                else {
                    continue;
                };
                let st = self.decode::<ProcessState>("processes", key, &bytes)?;
                // Alive again since the view looked: not ours to remove.
                let Some(r) = st.record.filter(|_| !st.is_alive) else { continue };
                procs.remove(key.as_str()).ctx(p, "removing a process")?;
                by_pid.remove(r.pid, key.as_str()).ctx(p, "updating index")?;
                if let Some(parent) = &r.parent_key {
                    by_parent.remove(parent.as_str(), key.as_str()).ctx(p, "updating index")?;
                }
                removed.push(key.clone());
            }
            let mut evs = txn.open_table(EVENTS).ctx(p, "opening process_events")?;
            let mut over_cap = evs.len().ctx(p, "counting process_events")?.saturating_sub(max_events);
            // Events are in seq order, which is time order for one ledger:
            // stop at the first event inside the window and under the cap.
            loop {
                let Some((seq, time)) = (match evs.first().ctx(p, "reading process_events")? {
                    Some((k, v)) => {
                        let ev = self.decode::<ProcessEvent>("process_events", &k.value().to_string(), v.value())?;
                        Some((k.value(), ev.event_time_ns))
                    }
                    None => None,
                }) else {
                    break;
                };
                if over_cap == 0 && time >= events_before_ns {
                    break;
                }
                evs.remove(seq).ctx(p, "removing an event")?;
                over_cap = over_cap.saturating_sub(1);
            }
        }
        txn.commit().ctx(p, "committing the prune")?;
        Ok(removed)
    }

    /// Recent events, oldest first, optionally from a seq on.
    pub fn events(&self, from_seq: u64) -> Result<Vec<ProcessEvent>, StoreError> {
        let txn = self.db.begin_read().ctx(&self.path, "starting a read")?;
        let table = txn.open_table(EVENTS).ctx(&self.path, "opening process_events")?;
        let mut out = Vec::new();
        for item in table.range(from_seq..).ctx(&self.path, "reading process_events")? {
            let (k, v) = item.ctx(&self.path, "reading process_events")?;
            out.push(self.decode("process_events", &k.value().to_string(), v.value())?);
        }
        Ok(out)
    }

    fn decode<M: Message + Default>(&self, table: &'static str, key: &str, bytes: &[u8]) -> Result<M, StoreError> {
        decode_at(&self.path, table, key, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_lib::proto::{EventType, ProcessRecord};

    fn ev(seq: u64, t: EventType, key: &str, pid: u32) -> ProcessEvent {
        ProcessEvent {
            seq,
            event_type: t as i32,
            event_time_ns: seq as i64 * 1_000_000_000,
            source: 3,
            process: Some(ProcessRecord {
                pid,
                process_key: key.into(),
                name: Some(format!("p{pid}")),
                parent_key: Some("root".into()),
                ..Default::default()
            }),
            gap: None,
            prev_seq: 0,
        }
    }

    /// Stages `events` as the pipeline does (each on the row the previous
    /// one left) and writes them; returns the rows after each event.
    fn stage_and_write(store: &Store, events: &[ProcessEvent]) -> Vec<Option<std::sync::Arc<ProcessState>>> {
        let mut batch = PendingBatch::default();
        let mut rows: std::collections::HashMap<String, ProcessState> = std::collections::HashMap::new();
        let mut out = Vec::new();
        for e in events {
            let key = e.process.as_ref().map(|r| r.process_key.clone()).unwrap_or_default();
            let after = batch.stage(e, rows.get(&key).cloned());
            if let Some(st) = &after {
                rows.insert(key, ProcessState::clone(st));
            }
            out.push(after);
        }
        store.write_pending(&mut batch, false).unwrap();
        assert!(batch.is_empty());
        out
    }

    #[test]
    fn batches_apply_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = Store::open(&path).unwrap();
            let batch =
                [ev(1, EventType::Exec, "a", 10), ev(2, EventType::Exec, "b", 11), ev(3, EventType::Exit, "a", 10)];
            let states = stage_and_write(&store, &batch);
            assert!(!states[2].as_ref().unwrap().is_alive);
            assert_eq!(store.last_applied_seq().unwrap(), 3);
            // Replaying the same seqs (catch-up overlap) adds no event.
            stage_and_write(&store, &batch);
            assert_eq!(store.events(0).unwrap().len(), 3);
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(store.last_applied_seq().unwrap(), 3);
        let procs = store.load_processes().unwrap();
        assert_eq!(procs.len(), 2);
        assert_eq!(store.events(0).unwrap().len(), 3);
        assert_eq!(store.events(3).unwrap().len(), 1);
    }

    /// A kept event is the event with the process as it stood after it:
    /// every other field as sent, the exit keeping the exec's argv.
    #[test]
    fn kept_events_carry_their_own_state_and_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let mut exec = ev(1, EventType::Exec, "a", 10);
        if let Some(r) = exec.process.as_mut() {
            r.argv = Some(daemoneye_lib::proto::Argv { args: vec!["p10".into(), "--x".into()], truncated: false });
        }
        let mut exit = ev(2, EventType::Exit, "a", 10);
        exit.prev_seq = 1;
        if let Some(r) = exit.process.as_mut() {
            r.name = None;
            r.exit_code = Some(3);
        }
        let gap = ProcessEvent {
            seq: 3,
            event_type: EventType::Gap as i32,
            event_time_ns: 5,
            source: 3,
            process: None,
            gap: Some(daemoneye_lib::proto::GapInfo { lost_events: 4, reason: "test".into() }),
            prev_seq: 2,
        };
        stage_and_write(&store, &[exec.clone(), exit.clone(), gap.clone()]);
        let kept = store.events(0).unwrap();
        assert_eq!(kept.len(), 3);
        assert_eq!(kept[0], exec);
        let r = kept[1].process.as_ref().unwrap();
        assert_eq!((r.name.as_deref(), r.exit_code), (Some("p10"), Some(3)), "merged with the exec");
        assert_eq!(r.argv.as_ref().map(|a| a.args.len()), Some(2));
        assert_eq!((kept[1].seq, kept[1].prev_seq, kept[1].event_type()), (2, 1, EventType::Exit));
        assert_eq!(kept[2], gap);
    }

    #[test]
    fn prune_drops_old_exits_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        stage_and_write(
            &store,
            &[ev(1, EventType::Exec, "a", 10), ev(2, EventType::Exit, "a", 10), ev(3, EventType::Exec, "b", 11)],
        );
        let keys = ["a".to_string(), "b".to_string(), "gone".to_string()];
        let removed = store.prune(&keys, 1_500_000_000, 10).unwrap();
        assert_eq!(removed, vec!["a".to_string()], "b is alive, gone was never there");
        assert_eq!(store.load_processes().unwrap().len(), 1);
        assert_eq!(store.events(0).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);
        store.prune(&[], 0, 1).unwrap();
        assert_eq!(store.events(0).unwrap().iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3], "over the cap");
    }
}
