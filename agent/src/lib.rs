//! The agent's parts, as a library so that the binary stays thin and the
//! parts are testable on their own.
//!
//! - [`store`]: the redb file (processes, events, alerts, meta);
//!   [`store_writer`]: the thread that writes it for the pipeline.
//! - [`table`]: the in-memory process view that rules and queries read.
//! - [`pipeline`]: bus/ledger -> store -> view -> streaming rules -> alerts.
//! - [`event_window`]: the recent events table rules read, kept in memory.
//! - [`alerts`]: dedupe, store-before-deliver.
//! - [`sinks`]: the outbox workers: stdout, file, syslog, webhook.
//! - [`sdnotify`]: systemd readiness and watchdog datagrams.
//! - [`supervisor`]: starts and restarts procmond.
//! - [`privileges`]: the drop to `agent.user` once procmond runs (Linux;
//!   elsewhere `agent.user` is refused).
//! - [`os`]: the OS-specific pieces (signals, names, child control).
//! - [`api`]: the gRPC service the CLI talks to ([`api_rules`]: its rule
//!   calls, [`api_alerts`]: its alert calls).
//! - [`metrics`]: the Prometheus exposition and its optional listener.
//! - [`procstat`]: memory and CPU of the agent and procmond (Linux `/proc`).
//! - [`rules_watch`]: rule hot reload (directory watch, whole-set swap).
//! - [`health`]: counters shared by all of them.
//! - [`bus`]: `[bus]` config -> broker config, bus statistics, `control.health.bus`.
//! - [`tasks`]: detection tasks to procmond over the bus ([`api_tasks`]: their API calls).

pub mod alerts;
pub mod api;
pub mod api_alerts;
pub mod api_rules;
pub mod api_tasks;
pub mod bus;
pub mod event_window;
pub mod health;
pub mod metrics;
pub mod os;
pub mod pipeline;
#[cfg_attr(not(target_os = "linux"), path = "privileges_unsupported.rs")]
pub mod privileges;
pub mod procstat;
pub mod rules_watch;
pub mod sdnotify;
pub mod sinks;
pub mod store;
pub mod store_writer;
pub mod supervisor;
pub mod table;
pub mod tasks;
