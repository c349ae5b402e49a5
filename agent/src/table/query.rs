//! What a query reads: process rows (the live view or a snapshot) and the
//! store's recent events and alerts.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock};

use daemoneye_lib::detection::schema::{alert_row, event_row};
use daemoneye_lib::detection::{RowRef, Table, TableProvider, Value};

use super::{ProcessSnapshot, ProcessTable};
use crate::store::{Store, StoreError};

/// The process rows a query reads.
#[derive(Debug, Clone, Copy)]
pub enum ProcessRows<'a> {
    /// The live view, under the caller's lock: the pipeline's streaming
    /// rules, an event at a time.
    Live(&'a ProcessTable),
    /// A snapshot: anything that may run long.
    Snapshot(&'a ProcessSnapshot),
}

impl<'a> From<&'a ProcessTable> for ProcessRows<'a> {
    fn from(t: &'a ProcessTable) -> Self {
        Self::Live(t)
    }
}

impl<'a> From<&'a ProcessSnapshot> for ProcessRows<'a> {
    fn from(s: &'a ProcessSnapshot) -> Self {
        Self::Snapshot(s)
    }
}

/// What a query sees: the live process view, and — loaded from the store on
/// first use, so streaming rules never pay for it — recent events and alerts.
pub struct QueryTables<'a> {
    processes: ProcessRows<'a>,
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
        f.debug_struct("QueryTables").field("processes", &self.processes).finish()
    }
}

impl<'a> QueryTables<'a> {
    /// Only the process view: `process_events` and `alerts` read as empty
    /// (streaming rules bind `process_events` to the event itself).
    pub fn processes_only(processes: impl Into<ProcessRows<'a>>) -> Self {
        Self { processes: processes.into(), store: None, given_events: None }
    }

    /// The view plus the store's recent events and alerts.
    pub fn with_store(processes: impl Into<ProcessRows<'a>>, store: &'a Store) -> Self {
        Self { processes: processes.into(), store: Some(Rows::Owned(StoreRows::new(store))), given_events: None }
    }

    /// The view plus the store's rows as `rows` loads them once for several
    /// queries (the rules of a table-rule pass).
    pub fn with_store_rows(processes: impl Into<ProcessRows<'a>>, rows: &'a StoreRows<'a>) -> Self {
        Self { processes: processes.into(), store: Some(Rows::Shared(rows)), given_events: None }
    }

    /// The view, these `process_events` rows (a table rule's event window,
    /// see [`crate::event_window`]), and the store's alerts.
    pub fn with_events(processes: impl Into<ProcessRows<'a>>, store: &'a Store, events: Vec<Arc<[Value]>>) -> Self {
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
            Table::Processes => match self.processes {
                ProcessRows::Live(t) => Box::new(t.scan()),
                ProcessRows::Snapshot(s) => Box::new(s.scan()),
            },
            Table::ProcessEvents => match &self.given_events {
                Some(rows) => Box::new(rows.iter().map(|r| Cow::Borrowed(&r[..]))),
                None => Box::new(self.events().iter().map(|r| Cow::Borrowed(r.as_slice()))),
            },
            Table::Alerts => Box::new(self.alerts().iter().map(|r| Cow::Borrowed(r.as_slice()))),
        }
    }

    fn lookup(&self, table: Table, column: usize, key: &Value) -> Option<Vec<RowRef<'_>>> {
        match table {
            Table::Processes => match self.processes {
                ProcessRows::Live(t) => t.lookup(column, key),
                ProcessRows::Snapshot(s) => s.lookup(column, key),
            },
            _ => None,
        }
    }

    fn row_count_hint(&self, table: Table) -> usize {
        match table {
            Table::Processes => match self.processes {
                ProcessRows::Live(t) => t.len(),
                ProcessRows::Snapshot(s) => s.len(),
            },
            Table::ProcessEvents => self
                .given_events
                .as_ref()
                .map_or_else(|| self.store_rows().and_then(|r| r.events.get()).map_or(0, Vec::len), Vec::len),
            Table::Alerts => self.store_rows().and_then(|r| r.alerts.get()).map_or(0, Vec::len),
        }
    }
}
