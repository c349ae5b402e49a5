//! The in-memory view of the process table that rules and queries read.
//!
//! *Architecture invariant:* after every store commit the view holds exactly
//! the rows the store holds (the pipeline updates both from the same
//! `AppliedBatch`); on start it is rebuilt from the store.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use daemoneye_lib::detection::schema::{alert_row, event_row, process_row};
use daemoneye_lib::detection::{RowRef, Table, TableProvider, Value};
use daemoneye_lib::models::retention::{self, exited_at};
use daemoneye_lib::proto::ProcessState;

use crate::store::{Store, StoreError};

/// A row: the state (shared with the batch staged for the store, so an
/// event copies a process's state once) and its SQL row. The row is built
/// at upsert, on the event path, on purpose: built lazily, a table rule's
/// scan builds thousands of them while it holds the view's read lock, and
/// the pipeline's next upsert waits (exec -> alert max 86 ms at 1,600/s).
struct Entry {
    state: Arc<ProcessState>,
    row: Vec<Value>,
}

/// Processes by key, with pid and parent_key indexes, and their SQL rows
/// pre-built so that evaluation does not rebuild them per rule.
#[derive(Default)]
pub struct ProcessTable {
    rows: HashMap<String, Entry>,
    by_pid: HashMap<u32, Vec<String>>,
    /// A set, not a list: a parent's exited children stay for the
    /// retention, tens of thousands under a busy spawner, and pruning
    /// removes them one by one (a list's scan per removal held the view's
    /// write lock for up to ~200 ms once the exited cap was reached).
    by_parent: HashMap<String, BTreeSet<String>>,
    /// Exited rows by (exit time, key), oldest first: what pruning takes.
    exited: BTreeSet<(i64, String)>,
}

impl std::fmt::Debug for ProcessTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessTable").field("rows", &self.rows.len()).finish()
    }
}

impl ProcessTable {
    /// Builds the view from stored rows.
    pub fn from_states(states: Vec<ProcessState>) -> Self {
        let mut t = Self::default();
        for s in states {
            t.upsert(Arc::new(s));
        }
        t
    }

    /// The row of a key.
    pub fn get(&self, key: &str) -> Option<&ProcessState> {
        self.rows.get(key).map(|e| &*e.state)
    }

    /// Inserts or replaces a row.
    pub fn upsert(&mut self, state: Arc<ProcessState>) {
        let Some(rec) = state.record.as_ref() else { return };
        let key = rec.process_key.clone();
        let old_index = self
            .rows
            .get(&key)
            .map(|old| old.state.record.as_ref().map(|r| (r.pid, r.parent_key.clone())).unwrap_or_default());
        // Most updates (exit, hash, samples) keep pid and parent: the index
        // entries stay (re-indexing scans a parent's children, which grow
        // with retention).
        let same_index = old_index.as_ref().is_some_and(|(pid, parent)| *pid == rec.pid && *parent == rec.parent_key);
        if !same_index {
            if let Some((old_pid, old_parent)) = &old_index {
                self.unindex(&key, *old_pid, old_parent.as_deref());
            }
            self.by_pid.entry(rec.pid).or_default().push(key.clone());
            if let Some(parent) = &rec.parent_key {
                self.by_parent.entry(parent.clone()).or_default().insert(key.clone());
            }
        }
        let old_exit = self.rows.get(&key).and_then(|e| exited_at(&e.state));
        let new_exit = exited_at(&state);
        if old_exit != new_exit {
            if let Some(t) = old_exit {
                self.exited.remove(&(t, key.clone()));
            }
            if let Some(t) = new_exit {
                self.exited.insert((t, key.clone()));
            }
        }
        let row = process_row(&state);
        self.rows.insert(key, Entry { state, row });
    }

    /// Removes a row.
    pub fn remove(&mut self, key: &str) {
        if let Some(old) = self.rows.remove(key)
            && let Some(r) = &old.state.record
        {
            self.unindex(key, r.pid, r.parent_key.as_deref());
            if let Some(t) = exited_at(&old.state) {
                self.exited.remove(&(t, key.to_owned()));
            }
        }
    }

    /// Exited rows to prune, oldest exit first: those that exited before
    /// `exited_before_ns`, and then as many more as keep at most
    /// `max_exited` exited rows.
    pub fn prunable(&self, exited_before_ns: i64, max_exited: usize) -> Vec<String> {
        let oldest_first = self.exited.iter().map(|(t, k)| (*t, k));
        retention::to_prune(oldest_first, self.exited.len(), exited_before_ns, max_exited)
    }

    /// Exited rows held.
    pub fn exited_len(&self) -> usize {
        self.exited.len()
    }

    fn unindex(&mut self, key: &str, pid: u32, parent: Option<&str>) {
        if let Some(v) = self.by_pid.get_mut(&pid) {
            v.retain(|k| k != key);
            if v.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
        if let Some(p) = parent
            && let Some(v) = self.by_parent.get_mut(p)
        {
            v.remove(key);
            if v.is_empty() {
                self.by_parent.remove(p);
            }
        }
    }

    /// (alive, total) row counts.
    pub fn counts(&self) -> (u64, u64) {
        let alive = self.rows.values().filter(|e| e.state.is_alive).count() as u64;
        (alive, self.rows.len() as u64)
    }

    fn rows_for_keys<'a>(&'a self, keys: Option<impl IntoIterator<Item = &'a String>>) -> Vec<RowRef<'a>> {
        keys.map(|ks| {
            ks.into_iter().filter_map(|k| self.rows.get(k)).map(|e| Cow::Borrowed(e.row.as_slice())).collect()
        })
        .unwrap_or_default()
    }

    fn lookup_processes(&self, column: usize, key: &Value) -> Option<Vec<RowRef<'_>>> {
        let name = Table::Processes.columns().get(column)?.name;
        match (name, key) {
            ("process_key", Value::Text(k)) => {
                Some(self.rows.get(k).map(|e| Cow::Borrowed(e.row.as_slice())).into_iter().collect())
            }
            ("pid", Value::Integer(pid)) => {
                Some(u32::try_from(*pid).map_or_else(|_| Vec::new(), |p| self.rows_for_keys(self.by_pid.get(&p))))
            }
            ("parent_key", Value::Text(k)) => Some(self.rows_for_keys(self.by_parent.get(k))),
            // Other types never equal an indexed column's values under SQLite
            // comparison (no affinity conversion applies to NULL or reals
            // here); let the engine scan to keep exact semantics.
            _ => None,
        }
    }
}

/// What a query sees: the live process view, and — loaded from the store on
/// first use, so streaming rules never pay for it — recent events and alerts.
pub struct QueryTables<'a> {
    processes: &'a ProcessTable,
    store: Option<Rows<'a>>,
    /// `process_events` as given (a table rule's event window); else loaded
    /// from the store on first use.
    given_events: Option<Vec<Arc<[Value]>>>,
}

/// The store's rows a query owns, or shares with the other queries of a
/// table-rule pass.
enum Rows<'a> {
    Owned(StoreRows<'a>),
    Shared(&'a StoreRows<'a>),
}

impl std::fmt::Debug for QueryTables<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryTables").field("processes", self.processes).finish()
    }
}

impl<'a> QueryTables<'a> {
    /// Only the process view: `process_events` and `alerts` read as empty
    /// (streaming rules bind `process_events` to the event itself).
    pub fn processes_only(processes: &'a ProcessTable) -> Self {
        Self { processes, store: None, given_events: None }
    }

    /// The view plus the store's recent events and alerts.
    pub fn with_store(processes: &'a ProcessTable, store: &'a Store) -> Self {
        Self { processes, store: Some(Rows::Owned(StoreRows::new(store))), given_events: None }
    }

    /// The view plus the store's rows as `rows` loads them once for several
    /// queries (the table-rule pass: each rule takes the view's lock for
    /// its own query only, so the pipeline never waits for the whole pass).
    pub fn with_store_rows(processes: &'a ProcessTable, rows: &'a StoreRows<'a>) -> Self {
        Self { processes, store: Some(Rows::Shared(rows)), given_events: None }
    }

    /// The view, these `process_events` rows (a table rule's event window,
    /// see [`crate::event_window`]), and the store's alerts.
    pub fn with_events(processes: &'a ProcessTable, store: &'a Store, events: Vec<Arc<[Value]>>) -> Self {
        Self { given_events: Some(events), ..Self::with_store(processes, store) }
    }

    /// A store error met while loading events or alerts during the query;
    /// the caller reports it instead of a silently partial result.
    pub fn take_error(&self) -> Option<StoreError> {
        self.store_rows().and_then(StoreRows::take_error)
    }

    fn store_rows(&self) -> Option<&StoreRows<'a>> {
        match &self.store {
            Some(Rows::Owned(r)) => Some(r),
            Some(Rows::Shared(r)) => Some(r),
            None => None,
        }
    }

    fn events(&self) -> &[Vec<Value>] {
        self.store_rows().map_or(&[], StoreRows::events)
    }

    fn alerts(&self) -> &[Vec<Value>] {
        self.store_rows().map_or(&[], StoreRows::alerts)
    }
}

/// The store's recent events and alerts as SQL rows, each loaded on first
/// use.
pub struct StoreRows<'a> {
    store: &'a Store,
    events: OnceLock<Vec<Vec<Value>>>,
    alerts: OnceLock<Vec<Vec<Value>>>,
    load_error: Mutex<Option<StoreError>>,
}

impl std::fmt::Debug for StoreRows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreRows").field("store", &self.store.path()).finish_non_exhaustive()
    }
}

impl<'a> StoreRows<'a> {
    /// Nothing loaded yet.
    pub fn new(store: &'a Store) -> Self {
        Self { store, events: OnceLock::new(), alerts: OnceLock::new(), load_error: Mutex::new(None) }
    }

    /// A store error met while loading (taken: reported once).
    pub fn take_error(&self) -> Option<StoreError> {
        self.load_error.lock().ok().and_then(|mut g| g.take())
    }

    fn record(&self, e: StoreError) {
        if let Ok(mut g) = self.load_error.lock() {
            g.get_or_insert(e);
        }
    }

    fn events(&self) -> &[Vec<Value>] {
        self.events.get_or_init(|| match self.store.events(0) {
            // The store keeps each event with the process as it stood
            // after it (as a streaming rule saw it), not as it is now.
            Ok(evs) => evs.iter().map(|ev| event_row(ev, None)).collect(),
            Err(e) => {
                self.record(e);
                Vec::new()
            }
        })
    }

    fn alerts(&self) -> &[Vec<Value>] {
        self.alerts.get_or_init(|| match self.store.alerts() {
            Ok(a) => a.iter().map(alert_row).collect(),
            Err(e) => {
                self.record(e);
                Vec::new()
            }
        })
    }
}

impl TableProvider for QueryTables<'_> {
    fn scan(&self, table: Table) -> Box<dyn Iterator<Item = RowRef<'_>> + '_> {
        match table {
            Table::Processes => Box::new(self.processes.rows.values().map(|e| Cow::Borrowed(e.row.as_slice()))),
            Table::ProcessEvents => match &self.given_events {
                Some(rows) => Box::new(rows.iter().map(|r| Cow::Borrowed(&r[..]))),
                None => Box::new(self.events().iter().map(|r| Cow::Borrowed(r.as_slice()))),
            },
            Table::Alerts => Box::new(self.alerts().iter().map(|r| Cow::Borrowed(r.as_slice()))),
        }
    }

    fn lookup(&self, table: Table, column: usize, key: &Value) -> Option<Vec<RowRef<'_>>> {
        match table {
            Table::Processes => self.processes.lookup_processes(column, key),
            _ => None,
        }
    }

    fn row_count_hint(&self, table: Table) -> usize {
        match table {
            Table::Processes => self.processes.rows.len(),
            Table::ProcessEvents => self
                .given_events
                .as_ref()
                .map_or_else(|| self.store_rows().and_then(|r| r.events.get()).map_or(0, Vec::len), Vec::len),
            Table::Alerts => self.store_rows().and_then(|r| r.alerts.get()).map_or(0, Vec::len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_lib::proto::ProcessRecord;

    fn st(key: &str, pid: u32, parent: Option<&str>) -> ProcessState {
        ProcessState {
            record: Some(ProcessRecord {
                pid,
                process_key: key.into(),
                parent_key: parent.map(Into::into),
                ..Default::default()
            }),
            is_alive: true,
            source: 3,
            last_seq: 1,
        }
    }

    #[test]
    fn indexes_follow_updates_and_removals() {
        let mut t = ProcessTable::from_states(vec![st("a", 1, None), st("b", 2, Some("a"))]);
        let q = QueryTables::processes_only(&t);
        let pk = Table::Processes.column_index("parent_key").unwrap();
        assert_eq!(q.lookup(Table::Processes, pk, &Value::Text("a".into())).unwrap().len(), 1);
        drop(q);
        t.upsert(Arc::new(st("b", 2, Some("c"))));
        t.remove("a");
        let q = QueryTables::processes_only(&t);
        assert!(q.lookup(Table::Processes, pk, &Value::Text("a".into())).unwrap().is_empty());
        let pid = Table::Processes.column_index("pid").unwrap();
        assert_eq!(q.lookup(Table::Processes, pid, &Value::Integer(2)).unwrap().len(), 1);
        assert_eq!(q.scan(Table::Processes).count(), 1);
        assert_eq!(t.counts(), (1, 1));
    }

    #[test]
    fn a_busy_parents_children_stay_indexed_as_they_are_pruned() {
        // The parent-key index of a spawner with thousands of retained
        // children: removing them one by one (as pruning does) leaves
        // exactly the others, in key order.
        let keys: Vec<String> = (0..5_000).map(|i| format!("child-{i:05}")).collect();
        let mut states = vec![st("spawner", 1, None)];
        states.extend(keys.iter().map(|k| st(k, 2, Some("spawner"))));
        let mut t = ProcessTable::from_states(states);
        for k in keys.iter().step_by(2) {
            t.remove(k);
        }
        let pk = Table::Processes.column_index("parent_key").unwrap();
        let key_col = Table::Processes.column_index("process_key").unwrap();
        let q = QueryTables::processes_only(&t);
        let children = q.lookup(Table::Processes, pk, &Value::Text("spawner".into())).unwrap();
        let found: Vec<String> = children
            .iter()
            .map(|row| match &row[key_col] {
                Value::Text(k) => k.to_string(),
                other => panic!("process_key is {other:?}"),
            })
            .collect();
        let kept: Vec<String> = keys.iter().skip(1).step_by(2).cloned().collect();
        assert_eq!(found, kept);
        drop(q);
        for k in &kept {
            t.remove(k);
        }
        let q = QueryTables::processes_only(&t);
        assert!(q.lookup(Table::Processes, pk, &Value::Text("spawner".into())).unwrap().is_empty());
        assert_eq!(t.counts(), (1, 1));
    }

    fn exited(key: &str, at: i64) -> Arc<ProcessState> {
        let mut s = st(key, 9, None);
        s.is_alive = false;
        if let Some(r) = s.record.as_mut() {
            r.exit_time_ns = Some(at);
        }
        Arc::new(s)
    }

    #[test]
    fn pruning_takes_the_oldest_exits_by_age_then_by_count() {
        let mut t = ProcessTable::from_states(vec![st("live", 1, None)]);
        for (k, at) in [("e30", 30), ("e10", 10), ("e20", 20), ("e40", 40)] {
            t.upsert(exited(k, at));
        }
        assert_eq!(t.exited_len(), 4);
        assert_eq!(t.prunable(25, 10), ["e10", "e20"], "older than the cut-off");
        assert_eq!(t.prunable(0, 1), ["e10", "e20", "e30"], "over the cap, oldest first");
        assert!(t.prunable(0, 4).is_empty());
        // A row that comes back to life (pid reuse under one key cannot
        // happen, but a late exec merge can) or goes away leaves the order.
        t.upsert(Arc::new(st("e10", 9, None)));
        t.remove("e20");
        assert_eq!(t.prunable(35, 10), ["e30"]);
        assert_eq!(t.exited_len(), 2);
        assert_eq!(t.counts(), (2, 4), "rows alive again are not exited");
    }
}
