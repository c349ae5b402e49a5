//! The agent's parts, as a library so that the binary stays thin and the
//! parts are testable on their own.
//!
//! - [`store`]: the redb file (processes, events, alerts, meta).
//! - [`table`]: the in-memory process view that rules and queries read.
//! - [`pipeline`]: bus/ledger -> store -> view -> streaming rules -> alerts.
//! - [`alerts`]: dedupe, store-before-deliver, sinks.
//! - [`supervisor`]: starts and restarts procmond.
//! - [`api`]: the gRPC service the CLI talks to.
//! - [`health`]: counters shared by all of them.

pub mod alerts;
pub mod api;
pub mod health;
pub mod pipeline;
pub mod store;
pub mod supervisor;
pub mod table;
