//! DaemonEye's shared core.
//!
//! Everything that more than one binary needs lives here, split by concern:
//!
//! - [`proto`]: the generated protobuf types (events, bus envelope, tasks,
//!   agent API). Protobuf is the one wire codec of the project.
//! - [`models`]: process identity, time conversion and the delta-merge rule
//!   that turns a stream of `ProcessEvent`s into a process table.
//! - [`config`]: the one layered configuration loader (figment).
//! - [`ledger`]: the hash-chained, signed audit ledger (procmond writes,
//!   agent and CLI read).
//! - [`detection`] (feature `detection`): the SQL validator and engine and the
//!   rule files. procmond is built without it.
//! - [`alerting`] (feature `detection`): a rule match's alert identity and
//!   dedupe key, shared by the agent and replay.
//! - [`replay`] (feature `detection`): offline forensics over a ledger copy:
//!   the table as of a time, and rules re-run over a range as if live.
//! - [`telemetry`]: tracing set-up shared by the binaries.
//! - `daemon` (feature `daemon`): the stop signal both daemons wait for, the
//!   task that returns freed memory to the OS, and the scheduler slice they
//!   ask for.

#[cfg(feature = "detection")]
pub mod alerting;
pub mod config;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "detection")]
pub mod detection;
pub mod ledger;
pub mod models;
pub mod proto;
#[cfg(feature = "detection")]
pub mod replay;
pub mod telemetry;
