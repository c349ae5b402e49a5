//! The process table rebuilt from ledger events, readable by the SQL engine.
//!
//! Rows are kept by process key with pid and parent_key indexes and their
//! SQL rows pre-built, like the agent's in-memory view, so a streaming rule's
//! join to `processes` is a lookup, not a scan. Recent events and replayed
//! alerts are kept too, for `process_events` and `alerts` in queries and
//! table rules.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use crate::detection::schema::{alert_row, event_row, process_row};
use crate::detection::{RowRef, Table, TableProvider, Value};
use crate::models::apply_event;
use crate::models::retention::{exited_at, to_prune};
use crate::proto::{Alert, ProcessEvent, ProcessState};

#[derive(Debug, Clone)]
struct Entry {
    state: ProcessState,
    row: Vec<Value>,
}

/// The materialized process table as of some point in the ledger.
#[derive(Debug, Default, Clone)]
pub struct ReplayTable {
    rows: HashMap<String, Entry>,
    by_pid: HashMap<u32, Vec<String>>,
    by_parent: HashMap<String, Vec<String>>,
    /// Retained events, oldest first (only when retention is on).
    events: VecDeque<ProcessEvent>,
    /// Alerts raised so far (by replay), for table rules reading `alerts`.
    alerts: Vec<Alert>,
    /// Rows of exited processes.
    exited: usize,
}

impl ReplayTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event with [`apply_event`] (the agent's rule) and returns
    /// the row after it, `None` when the event is not about a process.
    pub fn apply(&mut self, event: &ProcessEvent) -> Option<ProcessState> {
        let key = event.process.as_ref().map(|r| r.process_key.as_str()).unwrap_or_default();
        let before = self.rows.get(key).map(|e| e.state.clone());
        let after = apply_event(before, event)?;
        self.upsert(after.clone());
        Some(after)
    }

    /// The row of a process key.
    pub fn get(&self, key: &str) -> Option<&ProcessState> {
        self.rows.get(key).map(|e| &e.state)
    }

    /// Every row, in no particular order.
    pub fn states(&self) -> impl Iterator<Item = &ProcessState> {
        self.rows.values().map(|e| &e.state)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Keeps `event` for `process_events` queries.
    pub(crate) fn retain_event(&mut self, event: ProcessEvent) {
        self.events.push_back(event);
    }

    /// Keeps `alert` for `alerts` queries.
    pub(crate) fn retain_alert(&mut self, alert: Alert) {
        self.alerts.push(alert);
    }

    /// Removes exited processes whose exit is before `exited_before_ns`,
    /// then the longest exited beyond `max_exited`, and events before
    /// `events_before_ns`, then the oldest beyond `max_events`: like the
    /// agent's prune.
    pub fn prune(&mut self, exited_before_ns: i64, events_before_ns: i64, max_exited: usize, max_events: usize) {
        let mut exited: Vec<(i64, &String)> =
            self.rows.iter().filter_map(|(k, e)| exited_at(&e.state).map(|t| (t, k))).collect();
        exited.sort_unstable();
        let doomed = to_prune(exited.iter().copied(), exited.len(), exited_before_ns, max_exited);
        for k in doomed {
            self.remove(&k);
        }
        while self.events.front().is_some_and(|e| e.event_time_ns < events_before_ns || self.events.len() > max_events)
        {
            self.events.pop_front();
        }
    }

    /// Rows of exited processes.
    pub fn exited_len(&self) -> usize {
        self.exited
    }

    fn upsert(&mut self, state: ProcessState) {
        let Some(rec) = state.record.as_ref() else { return };
        let key = rec.process_key.clone();
        self.unindex(&key);
        self.by_pid.entry(rec.pid).or_default().push(key.clone());
        if let Some(parent) = &rec.parent_key {
            self.by_parent.entry(parent.clone()).or_default().push(key.clone());
        }
        let row = process_row(&state);
        let was_exited = self.rows.get(&key).is_some_and(|e| !e.state.is_alive);
        self.exited = self.exited + usize::from(!state.is_alive) - usize::from(was_exited);
        self.rows.insert(key, Entry { state, row });
    }

    fn remove(&mut self, key: &str) {
        self.unindex(key);
        if self.rows.remove(key).is_some_and(|e| !e.state.is_alive) {
            self.exited -= 1;
        }
    }

    fn unindex(&mut self, key: &str) {
        let Some(rec) = self.rows.get(key).and_then(|e| e.state.record.as_ref()) else { return };
        let (pid, parent) = (rec.pid, rec.parent_key.clone());
        if let Some(v) = self.by_pid.get_mut(&pid) {
            v.retain(|k| k != key);
            if v.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
        if let Some(p) = parent
            && let Some(v) = self.by_parent.get_mut(&p)
        {
            v.retain(|k| k != key);
            if v.is_empty() {
                self.by_parent.remove(&p);
            }
        }
    }

    fn rows_for(&self, keys: Option<&Vec<String>>) -> Vec<RowRef<'_>> {
        keys.map(|ks| ks.iter().filter_map(|k| self.rows.get(k)).map(|e| Cow::Borrowed(e.row.as_slice())).collect())
            .unwrap_or_default()
    }

    /// A provider for streaming rules: `processes` only, like the agent's
    /// (`process_events` is bound to the event, `alerts` reads empty).
    pub fn processes_only(&self) -> ProcessesOnly<'_> {
        ProcessesOnly(self)
    }
}

impl TableProvider for ReplayTable {
    fn scan(&self, table: Table) -> Box<dyn Iterator<Item = RowRef<'_>> + '_> {
        match table {
            Table::Processes => Box::new(self.rows.values().map(|e| Cow::Borrowed(e.row.as_slice()))),
            // A kept event carries the process as it stood right after it
            // (as the agent stores it), so its own record is the row.
            Table::ProcessEvents => Box::new(self.events.iter().map(|ev| Cow::Owned(event_row(ev, None)))),
            Table::Alerts => Box::new(self.alerts.iter().map(|a| Cow::Owned(alert_row(a)))),
        }
    }

    fn lookup(&self, table: Table, column: usize, key: &Value) -> Option<Vec<RowRef<'_>>> {
        if table != Table::Processes {
            return None;
        }
        let name = Table::Processes.columns().get(column)?.name;
        match (name, key) {
            ("process_key", Value::Text(k)) => {
                Some(self.rows.get(k).map(|e| Cow::Borrowed(e.row.as_slice())).into_iter().collect())
            }
            ("pid", Value::Integer(pid)) => {
                Some(u32::try_from(*pid).map_or_else(|_| Vec::new(), |p| self.rows_for(self.by_pid.get(&p))))
            }
            ("parent_key", Value::Text(k)) => Some(self.rows_for(self.by_parent.get(k))),
            // Other key types: let the engine scan, for exact SQLite semantics.
            _ => None,
        }
    }

    fn row_count_hint(&self, table: Table) -> usize {
        match table {
            Table::Processes => self.rows.len(),
            Table::ProcessEvents => self.events.len(),
            Table::Alerts => self.alerts.len(),
        }
    }
}

/// [`ReplayTable`] seen by a streaming rule: `processes` only.
#[derive(Debug, Clone, Copy)]
pub struct ProcessesOnly<'a>(&'a ReplayTable);

impl TableProvider for ProcessesOnly<'_> {
    fn scan(&self, table: Table) -> Box<dyn Iterator<Item = RowRef<'_>> + '_> {
        match table {
            Table::Processes => self.0.scan(table),
            _ => Box::new(std::iter::empty()),
        }
    }

    fn lookup(&self, table: Table, column: usize, key: &Value) -> Option<Vec<RowRef<'_>>> {
        match table {
            Table::Processes => self.0.lookup(table, column, key),
            _ => None,
        }
    }

    fn row_count_hint(&self, table: Table) -> usize {
        match table {
            Table::Processes => self.0.rows.len(),
            _ => 0,
        }
    }
}
