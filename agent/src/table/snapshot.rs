//! The process view frozen at one moment (see the parent module for why).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use daemoneye_lib::detection::{RowRef, Value};

use super::{Entry, indexed_column};

/// The view's rows at one moment. Taking one costs a reference-count
/// increment per row under the view's lock; the indexes a join's lookups
/// need are built on the first lookup, without it.
pub struct ProcessSnapshot {
    entries: Vec<Arc<Entry>>,
    index: OnceLock<Index>,
}

/// Positions in `entries` by the indexed columns.
#[derive(Default)]
struct Index {
    by_key: HashMap<String, usize>,
    by_pid: HashMap<u32, Vec<usize>>,
    by_parent: HashMap<String, Vec<usize>>,
}

impl std::fmt::Debug for ProcessSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessSnapshot").field("rows", &self.entries.len()).finish()
    }
}

impl ProcessSnapshot {
    pub(super) fn new(entries: Vec<Arc<Entry>>) -> Self {
        Self { entries, index: OnceLock::new() }
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the view was empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(super) fn scan(&self) -> impl Iterator<Item = RowRef<'_>> {
        self.entries.iter().map(|e| Cow::Borrowed(e.row.as_slice()))
    }

    /// As [`super::ProcessTable`]'s lookup, with the same results in the
    /// same order (a parent's children by key).
    pub(super) fn lookup(&self, column: usize, key: &Value) -> Option<Vec<RowRef<'_>>> {
        let index = match (indexed_column(column)?, key) {
            ("process_key", Value::Text(k)) => return Some(self.rows(self.index().by_key.get(k).copied())),
            ("pid", Value::Integer(pid)) => {
                let Ok(pid) = u32::try_from(*pid) else { return Some(Vec::new()) };
                self.index().by_pid.get(&pid)
            }
            ("parent_key", Value::Text(k)) => self.index().by_parent.get(k),
            _ => return None,
        };
        Some(self.rows(index.into_iter().flatten().copied()))
    }

    fn rows(&self, positions: impl IntoIterator<Item = usize>) -> Vec<RowRef<'_>> {
        positions.into_iter().filter_map(|i| self.entries.get(i)).map(|e| Cow::Borrowed(e.row.as_slice())).collect()
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut ix = Index::default();
            for (i, e) in self.entries.iter().enumerate() {
                let Some(r) = &e.state.record else { continue };
                ix.by_key.insert(r.process_key.clone(), i);
                ix.by_pid.entry(r.pid).or_default().push(i);
                if let Some(parent) = &r.parent_key {
                    ix.by_parent.entry(parent.clone()).or_default().push(i);
                }
            }
            let key = |i: &usize| self.entries.get(*i).and_then(|e| e.state.record.as_ref()).map(|r| &r.process_key);
            for children in ix.by_parent.values_mut() {
                children.sort_by(|a, b| key(a).cmp(&key(b)));
            }
            ix
        })
    }
}
