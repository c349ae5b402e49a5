//! Offline forensics over a ledger directory: the process table as of any
//! time, and a re-run of detection rules over a time range as if live.
//!
//! Both walk the ledger from its first record and rebuild the table with
//! [`apply_event`](crate::models::apply_event), the agent's own delta-merge
//! rule; streaming rules are evaluated per event with
//! [`Query::evaluate_event`](crate::detection::Query::evaluate_event)
//! against that table, table rules every `table_interval`, and matches are
//! deduplicated with [`crate::alerting`], the agent's own dedupe key. Live
//! and replay therefore cannot disagree on rows or alert identity.
//!
//! Time is the ledger's: a record belongs to "as of T" when its `time_ns`
//! (when procmond committed it, just before the agent could apply it) is at
//! or before T, and records are taken in seq order up to the first one
//! after T. Replay uses record time as "now" for dedupe windows, retention
//! and the table-rule schedule.
//!
//! What differs from live, and why: the agent evaluates a whole bus batch
//! after applying it, replay evaluates each event right after applying it
//! (the state the event itself produced); the agent prunes exited processes
//! every 30 s of wall time, replay every 30 s of ledger time.
//!
//! Nothing here writes: the ledger is read with
//! [`LedgerReader`](crate::ledger::LedgerReader), which takes no lock.

mod dedupe;
mod engine;
mod table;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::detection::Limits;
use crate::ledger::LedgerError;
use crate::proto::Alert;

pub use dedupe::Deduper;
pub use engine::{replay, state_at};
pub use table::{ProcessesOnly, ReplayTable};

/// How the rebuilt table and the rules behave; the defaults of the agent.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Alerts with the same dedupe key within this window are one alert
    /// (a rule's own `dedupe.window` wins).
    pub dedupe_window: Duration,
    /// How often table rules run (ledger time); zero: never.
    pub table_interval: Duration,
    /// How long exited processes stay in the table.
    pub process_retention: Duration,
    /// How long events stay in `process_events`.
    pub event_retention: Duration,
    /// Exited processes kept at most.
    pub max_exited_processes: usize,
    /// Events kept at most.
    pub max_events: usize,
    /// Per-query bounds.
    pub limits: Limits,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            dedupe_window: Duration::from_secs(300),
            table_interval: Duration::from_secs(5),
            process_retention: Duration::from_secs(600),
            event_retention: Duration::from_secs(3600),
            max_exited_processes: 20_000,
            max_events: 1_000_000,
            limits: Limits::default(),
        }
    }
}

impl ReplayOptions {
    /// The options the agent runs with under `config`.
    pub fn from_config(config: &Config) -> Self {
        ReplayOptions {
            dedupe_window: config.alerts.dedupe_window,
            table_interval: config.rules.table_interval,
            process_retention: config.agent.process_retention,
            event_retention: config.agent.event_retention,
            max_exited_processes: config.agent.max_exited_processes,
            max_events: usize::try_from(config.agent.max_events).unwrap_or(usize::MAX),
            limits: Limits {
                timeout: config.rules.query_timeout,
                max_rows: config.rules.max_rows,
                ..Limits::default()
            },
        }
    }
}

/// The table as of a time, from [`state_at`].
#[derive(Debug, Clone)]
pub struct StateAt {
    /// The rebuilt table, with the events inside the retention window.
    pub table: ReplayTable,
    /// The last record applied (0: none).
    pub last_seq: u64,
    /// Its time.
    pub last_time_ns: Option<i64>,
    /// Event and gap records applied.
    pub events: u64,
    /// Event records whose payload did not decode (skipped, like the agent).
    pub malformed: u64,
}

/// What [`replay`] found.
#[derive(Debug, Clone, Default)]
pub struct ReplayOutcome {
    /// Alerts the rules would have raised in the range, in the order the
    /// agent would have raised them; `occurrences` counts deduped repeats.
    pub alerts: Vec<Alert>,
    /// Events evaluated inside the range.
    pub events_evaluated: u64,
    /// First and last seq inside the range.
    pub first_seq: Option<u64>,
    /// Last seq inside the range.
    pub last_seq: Option<u64>,
    /// Table-rule passes run.
    pub table_passes: u64,
    /// Event records whose payload did not decode (skipped).
    pub malformed: u64,
    /// Rule evaluations that failed (the rule is skipped for that event).
    pub rule_errors: Vec<RuleFailure>,
}

/// A rule that failed on one event or table pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailure {
    /// The rule.
    pub rule_id: String,
    /// The event's seq (none for a table-rule pass).
    pub seq: Option<u64>,
    /// The engine's message.
    pub error: String,
}

/// Why a replay or state rebuild could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The ledger could not be opened or read, or a record does not link:
    /// the message names the file, offset and seq.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The time range is empty.
    #[error("replay range is empty: --since {since_ns} ns is after --until {until_ns} ns")]
    EmptyRange {
        /// Start (Unix ns).
        since_ns: i64,
        /// End (Unix ns).
        until_ns: i64,
    },
    /// The ledger directory holds no ledger.
    #[error("{}: not a ledger directory (no NNNNNNNNNNNNNNNNNNNN.log segments); pass --dir", dir.display())]
    NotALedger {
        /// The directory.
        dir: PathBuf,
    },
}
