//! How the engine reads tables it does not own.

use std::borrow::Cow;

use super::{Table, Value};

/// A row as the engine reads it: borrowed from the provider's memory when it
/// can be, owned when it had to be built (e.g. decoded from the store).
pub type RowRef<'a> = Cow<'a, [Value]>;

/// Read access to the tables of the schema catalog. The agent implements it
/// over its in-memory process table and its redb store; offline replay over a
/// table rebuilt from the ledger.
pub trait TableProvider {
    /// Every row of `table`, columns in catalog order.
    fn scan(&self, table: Table) -> Box<dyn Iterator<Item = RowRef<'_>> + '_>;

    /// The rows of `table` whose column `column` (catalog position) equals
    /// `key`, for indexed columns; `None` when there is no index for it and
    /// the engine must scan.
    fn lookup(&self, table: Table, column: usize, key: &Value) -> Option<Vec<RowRef<'_>>> {
        let _ = (table, column, key);
        None
    }

    /// An estimate of the row count, for planning.
    fn row_count_hint(&self, table: Table) -> usize {
        let _ = table;
        0
    }
}
