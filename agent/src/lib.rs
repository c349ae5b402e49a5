//! The agent's parts, as a library so that the binary stays thin and the
//! parts are testable on their own.
//!
//! - [`store`]: the redb file (processes, events, alerts, meta).
//! - [`table`]: the in-memory process view that rules and queries read.
//! - [`pipeline`]: bus/ledger -> store -> view -> streaming rules -> alerts.
//! - [`alerts`]: dedupe, store-before-deliver.
//! - [`sinks`]: the outbox workers: stdout, file, syslog, webhook.
//! - [`sdnotify`]: systemd readiness and watchdog datagrams.
//! - [`supervisor`]: starts and restarts procmond.
//! - [`api`]: the gRPC service the CLI talks to ([`api_rules`]: its rule calls).
//! - [`rules_watch`]: rule hot reload (directory watch, whole-set swap).
//! - [`health`]: counters shared by all of them.
//! - [`bus`]: `[bus]` config -> broker config, bus statistics, `control.health.bus`.
//! - [`tasks`]: detection tasks to procmond over the bus ([`api_tasks`]: their API calls).

pub mod alerts;
pub mod api;
pub mod api_rules;
pub mod api_tasks;
pub mod bus;
pub mod health;
pub mod pipeline;
pub mod rules_watch;
pub mod sdnotify;
pub mod sinks;
pub mod store;
pub mod supervisor;
pub mod table;
pub mod tasks;
