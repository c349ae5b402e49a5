//! SQL detection: the schema catalog, values, the validator and engine, and
//! rule files.
//!
//! *Architecture invariant:* every SQL text — a rule or an ad-hoc query —
//! goes through the same validator before anything evaluates it.

mod provider;
pub mod schema;
mod value;

pub use provider::{RowRef, TableProvider};
pub use schema::{Affinity, Column, Table};
pub use value::{Value, format_real};
