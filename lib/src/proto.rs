//! Generated protobuf types (package `daemoneye.v1`, from `proto/`).
//!
//! The generated code is not ours to document item by item; the `.proto`
//! files carry the field documentation.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::unwrap_used, clippy::expect_used)]

include!(concat!(env!("OUT_DIR"), "/daemoneye.v1.rs"));

/// The bus topic of process lifecycle deltas.
pub const TOPIC_PROCESS_LIFECYCLE: &str = "events.process.lifecycle";
/// The bus topic of the events of processes under a tree monitor
/// (`MONITOR_PROCESS_TREE`), tagged with the monitor's correlation; they are
/// on [`TOPIC_PROCESS_LIFECYCLE`] too. A watcher subscribes here, so a burst
/// of unrelated events (a snapshot, a sampling round) cannot push the
/// subtree's events out of its queue.
pub const TOPIC_PROCESS_TREE: &str = "events.process.tree";
/// Content type of a `ProcessEvent` payload on the bus.
pub const CONTENT_TYPE_PROCESS_EVENT: &str = "daemoneye.v1.ProcessEvent";
/// The bus topic on which the agent sends detection tasks to procmond.
pub const TOPIC_COLLECTOR_TASK: &str = "control.collector.task";
/// The bus topic on which procmond answers detection tasks.
pub const TOPIC_COLLECTOR_RESULT: &str = "control.collector.result";
/// The bus topic of procmond's `CollectorStatus` heartbeat.
pub const TOPIC_COLLECTOR_STATUS: &str = "control.health.collector";
/// Content type of a `CollectorStatus` payload.
pub const CONTENT_TYPE_COLLECTOR_STATUS: &str = "daemoneye.v1.CollectorStatus";
/// Content type of a `DetectionTask` payload (on [`TOPIC_COLLECTOR_TASK`]).
pub const CONTENT_TYPE_DETECTION_TASK: &str = "daemoneye.v1.DetectionTask";
/// Content type of a `DetectionResult` payload (on [`TOPIC_COLLECTOR_RESULT`]).
pub const CONTENT_TYPE_DETECTION_RESULT: &str = "daemoneye.v1.DetectionResult";
/// The bus topic of the agent's `BusHealth` statistics.
pub const TOPIC_BUS_HEALTH: &str = "control.health.bus";
/// Content type of a `BusHealth` payload.
pub const CONTENT_TYPE_BUS_HEALTH: &str = "daemoneye.v1.BusHealth";
