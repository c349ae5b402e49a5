//! A simple in-memory [`TableProvider`]: rows per table plus hash indexes
//! on the catalog's indexed columns. Used by tests, offline replay and the
//! CLI; the agent may use it directly or implement the trait over its own
//! structures.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{RowRef, Table, TableProvider, Value};

/// One column's index: row positions by value. Only values that can equal
/// an indexed column's values under its affinity are keys (integers for
/// INTEGER columns, text for TEXT columns); text is looked up borrowed.
#[derive(Debug, Default, Clone)]
struct Index {
    ints: HashMap<i64, Vec<usize>>,
    texts: HashMap<String, Vec<usize>>,
}

impl Index {
    fn add(&mut self, v: &Value, pos: usize) {
        match v {
            Value::Integer(i) => self.ints.entry(*i).or_default().push(pos),
            Value::Text(s) => self.texts.entry(s.clone()).or_default().push(pos),
            _ => {}
        }
    }

    fn get(&self, v: &Value) -> &[usize] {
        let hits = match v {
            Value::Integer(i) => self.ints.get(i),
            Value::Text(s) => self.texts.get(s.as_str()),
            _ => None,
        };
        hits.map_or(&[], Vec::as_slice)
    }
}

/// Rows of each table, with indexes on every indexed column.
#[derive(Debug, Default, Clone)]
pub struct MemTables {
    rows: HashMap<Table, Vec<Vec<Value>>>,
    /// (table, column) -> value -> row positions.
    index: HashMap<(Table, usize), Index>,
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
            if let Some(v) = row.get(ci) {
                self.index.entry((table, ci)).or_default().add(v, pos);
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
        let hits = idx.map_or(&[][..], |idx| idx.get(k));
        Some(hits.iter().filter_map(|&i| rows.get(i)).map(|r| Cow::Borrowed(r.as_slice())).collect())
    }

    fn row_count_hint(&self, table: Table) -> usize {
        self.rows(table).len()
    }
}
