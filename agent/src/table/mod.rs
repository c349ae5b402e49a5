//! The in-memory view of the process table that rules and queries read.
//!
//! *Architecture invariant:* after every store commit the view holds exactly
//! the rows the store holds (the pipeline updates both from the same
//! `AppliedBatch`); on start it is rebuilt from the store.
//!
//! The pipeline reads and writes the view under its lock, an event at a
//! time. Anything that reads it for longer — a table-rule pass, `query`,
//! `rules test` — reads a [`ProcessSnapshot`] instead, taken under the
//! lock in one pass of reference-count increments, so the pipeline never
//! waits for a query.

mod query;
mod snapshot;

pub use query::{ProcessRows, QueryTables, StoreRows};
pub use snapshot::ProcessSnapshot;

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use daemoneye_lib::detection::schema::process_row;
use daemoneye_lib::detection::{RowRef, Table, Value};
use daemoneye_lib::models::retention::{self, exited_at};
use daemoneye_lib::proto::ProcessState;

/// A row: the state (shared with the batch staged for the store, so an
/// event copies a process's state once) and its SQL row, shared with the
/// snapshots that hold it. The row is built at upsert, on the event path,
/// on purpose: built lazily, every table-rule pass would build tens of
/// thousands of them again (and, when passes held the view's lock, the
/// pipeline waited: exec -> alert max 86 ms at 1,600/s).
struct Entry {
    state: Arc<ProcessState>,
    row: Vec<Value>,
}

/// A row taken out of the view. A process's state and SQL row are dozens of
/// small allocations: a prune frees thousands of rows, which is for the
/// caller to do after it has released the view's lock.
pub struct Removed {
    _entry: Arc<Entry>,
}

impl std::fmt::Debug for Removed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Removed").finish_non_exhaustive()
    }
}

/// Processes by key, with pid and parent_key indexes, and their SQL rows
/// pre-built so that evaluation does not rebuild them per rule.
#[derive(Default)]
pub struct ProcessTable {
    rows: HashMap<String, Arc<Entry>>,
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
        self.rows.insert(key, Arc::new(Entry { state, row }));
    }

    /// Removes a row; returns it, to be dropped once the view's lock is
    /// released.
    pub fn remove(&mut self, key: &str) -> Option<Removed> {
        let old = self.rows.remove(key)?;
        if let Some(r) = &old.state.record {
            self.unindex(key, r.pid, r.parent_key.as_deref());
            if let Some(t) = exited_at(&old.state) {
                self.exited.remove(&(t, key.to_owned()));
            }
        }
        Some(Removed { _entry: old })
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

    /// The view as it stands, to read without the lock.
    pub fn snapshot(&self) -> ProcessSnapshot {
        ProcessSnapshot::new(self.rows.values().cloned().collect())
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

    fn lookup(&self, column: usize, key: &Value) -> Option<Vec<RowRef<'_>>> {
        match (indexed_column(column)?, key) {
            ("process_key", Value::Text(k)) => {
                Some(self.rows.get(k).map(|e| Cow::Borrowed(e.row.as_slice())).into_iter().collect())
            }
            ("pid", Value::Integer(pid)) => {
                Some(u32::try_from(*pid).map_or_else(|_| Vec::new(), |p| self.rows_for_keys(self.by_pid.get(&p))))
            }
            ("parent_key", Value::Text(k)) => Some(self.rows_for_keys(self.by_parent.get(k))),
            _ => None,
        }
    }

    fn scan(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.rows.values().map(|e| Cow::Borrowed(e.row.as_slice()))
    }

    fn len(&self) -> usize {
        self.rows.len()
    }
}

/// The name of the indexed `processes` column at `column`: `process_key`,
/// `pid` or `parent_key`. A lookup by another column, or by a value of
/// another type than the column's (which never equals one of its values
/// under SQLite comparison: no affinity conversion applies to NULL or reals
/// here), returns `None` and the engine scans, which keeps exact semantics.
fn indexed_column(column: usize) -> Option<&'static str> {
    let name = Table::Processes.columns().get(column)?.name;
    matches!(name, "process_key" | "pid" | "parent_key").then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_lib::detection::TableProvider;
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

    /// The values of `column` in `rows`, as text.
    fn texts(rows: &[RowRef<'_>], column: &str) -> Vec<String> {
        let c = Table::Processes.column_index(column).unwrap();
        rows.iter()
            .map(|row| match &row[c] {
                Value::Text(k) => k.clone(),
                Value::Integer(i) => i.to_string(),
                other => panic!("{column} is {other:?}"),
            })
            .collect()
    }

    fn lookup(q: &QueryTables<'_>, column: &str, key: Value) -> Vec<String> {
        let c = Table::Processes.column_index(column).unwrap();
        texts(&q.lookup(Table::Processes, c, &key).unwrap(), "process_key")
    }

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn indexes_follow_updates_and_removals() {
        let mut t = ProcessTable::from_states(vec![st("a", 1, None), st("b", 2, Some("a"))]);
        assert_eq!(lookup(&QueryTables::processes_only(&t), "parent_key", text("a")), ["b"]);
        t.upsert(Arc::new(st("b", 2, Some("c"))));
        t.remove("a");
        let snapshot = t.snapshot();
        for q in [QueryTables::processes_only(&t), QueryTables::processes_only(&snapshot)] {
            assert!(lookup(&q, "parent_key", text("a")).is_empty());
            assert_eq!(lookup(&q, "parent_key", text("c")), ["b"]);
            assert_eq!(lookup(&q, "pid", Value::Integer(2)), ["b"]);
            assert_eq!(lookup(&q, "process_key", text("b")), ["b"]);
            assert!(lookup(&q, "pid", Value::Integer(-1)).is_empty(), "no pid is negative");
            let name = Table::Processes.column_index("name").unwrap();
            assert!(q.lookup(Table::Processes, name, &text("b")).is_none(), "not indexed: the engine scans");
            assert_eq!(q.scan(Table::Processes).count(), 1);
            assert_eq!(q.row_count_hint(Table::Processes), 1);
        }
        assert_eq!(t.counts(), (1, 1));
    }

    #[test]
    fn a_snapshot_reads_the_view_as_it_was_taken() {
        let mut t = ProcessTable::from_states(vec![st("a", 1, None), st("b", 2, Some("a"))]);
        let snapshot = t.snapshot();
        // The pipeline goes on changing the view meanwhile.
        t.upsert(Arc::new(st("c", 3, Some("a"))));
        t.upsert(Arc::new(st("b", 20, Some("a"))));
        t.remove("a");
        let q = QueryTables::processes_only(&snapshot);
        let mut keys = texts(&q.scan(Table::Processes).collect::<Vec<_>>(), "process_key");
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        assert_eq!(lookup(&q, "parent_key", text("a")), ["b"]);
        assert_eq!(lookup(&q, "pid", Value::Integer(2)), ["b"]);
        assert!(lookup(&q, "pid", Value::Integer(20)).is_empty());
        assert_eq!(lookup(&q, "process_key", text("a")), ["a"]);
        let live = QueryTables::processes_only(&t);
        assert_eq!(lookup(&live, "parent_key", text("a")), ["b", "c"]);
    }

    #[test]
    fn a_busy_parents_children_stay_indexed_as_they_are_pruned() {
        // The parent-key index of a spawner with thousands of retained
        // children: removing them one by one (as pruning does) leaves
        // exactly the others, in key order, in the view and in a snapshot.
        let keys: Vec<String> = (0..5_000).map(|i| format!("child-{i:05}")).collect();
        let mut states = vec![st("spawner", 1, None)];
        states.extend(keys.iter().map(|k| st(k, 2, Some("spawner"))));
        let mut t = ProcessTable::from_states(states);
        for k in keys.iter().step_by(2) {
            t.remove(k);
        }
        let kept: Vec<String> = keys.iter().skip(1).step_by(2).cloned().collect();
        let snapshot = t.snapshot();
        assert_eq!(lookup(&QueryTables::processes_only(&t), "parent_key", text("spawner")), kept);
        assert_eq!(lookup(&QueryTables::processes_only(&snapshot), "parent_key", text("spawner")), kept);
        for k in &kept {
            t.remove(k);
        }
        assert!(lookup(&QueryTables::processes_only(&t), "parent_key", text("spawner")).is_empty());
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
