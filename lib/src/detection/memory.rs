//! A simple in-memory [`TableProvider`]: rows per table plus hash indexes
//! on the catalog's indexed columns. Used by tests, offline replay and the
//! CLI; the agent may use it directly or implement the trait over its own
//! structures.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{RowRef, Table, TableProvider, Value};

/// Index key: values that are `=` in SQL for an indexed column's affinity
/// (integers for INTEGER columns, text for TEXT columns).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Int(i64),
    Text(String),
}

fn key(v: &Value) -> Option<Key> {
    match v {
        Value::Integer(i) => Some(Key::Int(*i)),
        Value::Text(s) => Some(Key::Text(s.clone())),
        _ => None,
    }
}

/// Rows of each table, with indexes on every indexed column.
#[derive(Debug, Default, Clone)]
pub struct MemTables {
    rows: HashMap<Table, Vec<Vec<Value>>>,
    /// (table, column) -> key -> row positions.
    index: HashMap<(Table, usize), HashMap<Key, Vec<usize>>>,
}

impl MemTables {
    /// An empty set of tables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a row (columns in catalog order) and indexes it.
    pub fn insert(&mut self, table: Table, row: Vec<Value>) {
        let rows = self.rows.entry(table).or_default();
        let pos = rows.len();
        for (ci, col) in table.columns().iter().enumerate() {
            if !col.indexed {
                continue;
            }
            if let Some(k) = row.get(ci).and_then(key) {
                self.index.entry((table, ci)).or_default().entry(k).or_default().push(pos);
            }
        }
        rows.push(row);
    }

    /// Replaces all rows of a table.
    pub fn set_rows(&mut self, table: Table, rows: Vec<Vec<Value>>) {
        self.rows.remove(&table);
        self.index.retain(|(t, _), _| *t != table);
        for r in rows {
            self.insert(table, r);
        }
    }

    /// The rows of a table.
    pub fn rows(&self, table: Table) -> &[Vec<Value>] {
        self.rows.get(&table).map_or(&[], Vec::as_slice)
    }
}

impl TableProvider for MemTables {
    fn scan(&self, table: Table) -> Box<dyn Iterator<Item = RowRef<'_>> + '_> {
        Box::new(self.rows(table).iter().map(|r| Cow::Borrowed(r.as_slice())))
    }

    fn lookup(&self, table: Table, column: usize, k: &Value) -> Option<Vec<RowRef<'_>>> {
        let idx = self.index.get(&(table, column));
        let indexed = table.columns().get(column).is_some_and(|c| c.indexed);
        if !indexed {
            return None;
        }
        let rows = self.rows(table);
        let hits = match (idx, key(k)) {
            (Some(idx), Some(k)) => idx.get(&k).map(Vec::as_slice).unwrap_or(&[]),
            _ => &[],
        };
        Some(hits.iter().filter_map(|&i| rows.get(i)).map(|r| Cow::Borrowed(r.as_slice())).collect())
    }

    fn row_count_hint(&self, table: Table) -> usize {
        self.rows(table).len()
    }
}
