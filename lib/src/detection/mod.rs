//! SQL detection: the schema catalog, values, the validator and engine, and
//! rule files.
//!
//! *Architecture invariant:* every SQL text — a rule or an ad-hoc query —
//! goes through the same validator before anything evaluates it.
//!
//! Pipeline: [`Query::compile`] parses with sqlparser (SQLite dialect),
//! `bind` walks the whole AST against the allowlist and the catalog and
//! produces a plan (names resolved to positions, functions to enums,
//! affinity conversions decided); `exec`/`eval` run the plan with SQLite's
//! semantics, reading tables through a [`TableProvider`]. [`rules`] loads
//! YAML rule files and compiles their SQL.

mod bind;
mod bind_expr;
mod bind_from;
mod bind_func;
mod bind_select;
mod error;
mod eval;
mod exec;
mod functions;
mod interest;
mod like;
mod memory;
mod ops;
mod plan;
mod predicate;
mod prefilter;
mod provider;
mod query;
pub mod rules;
pub mod schema;
mod value;

#[cfg(test)]
mod tests;

pub use error::{Pos, SqlError};
pub use functions::{basename, dirname};
pub use interest::EventInterest;
pub use memory::MemTables;
pub use prefilter::RuleIndex;
pub use provider::{RowRef, TableProvider};
pub use query::{Limits, Params, Query, ResultSet, validate};
pub use rules::{Dedupe, LoadedRule, Rule, RuleError, RuleSet, load_rule_file, load_rules_dir};
pub use schema::{Affinity, Column, Table};
pub use value::{Value, format_real};
