//! Detection tasks, agent side: sends `DetectionTask`s to procmond on
//! `control.collector.task` and matches the `DetectionResult`s that come back
//! on `control.collector.result` by `task_id`, with a timeout.
//!
//! [`TaskClient::run`] is request/response (ENUMERATE_PROCESSES,
//! CHECK_PROCESS_HASH, VERIFY_EXECUTABLE); [`TaskClient::watch`] starts a
//! MONITOR_PROCESS_TREE and streams the subtree's events, recognised by the
//! monitor's id in their correlation's workflow id, until the caller stops
//! reading; then it asks procmond to stop the monitor.
//!
//! When procmond is not connected, nobody subscribes to the task topic, the
//! publish reaches no subscriber and the call fails at once with
//! [`TaskError::CollectorNotConnected`] instead of waiting for the timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_eventbus::{CorrelationMetadata, LocalClient, Subscription};
use daemoneye_lib::proto::{
    BackpressurePolicy, CONTENT_TYPE_DETECTION_TASK, DetectionResult, DetectionTask, ProcessEvent, ProcessFilter,
    TOPIC_COLLECTOR_RESULT, TOPIC_COLLECTOR_TASK, TOPIC_PROCESS_TREE, TaskType, WatchEvent,
};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// `metadata` of a MONITOR_PROCESS_TREE task that stops the monitor whose id
/// follows (`stop <monitor task id>`).
pub const STOP_MONITOR_PREFIX: &str = "stop ";

/// Why a task did not produce a result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// Nobody subscribes to `control.collector.task`.
    #[error(
        "procmond is not connected to the event bus (no subscriber on {TOPIC_COLLECTOR_TASK}); check `daemoneye-cli health` and the agent's log"
    )]
    CollectorNotConnected,
    /// procmond did not answer in time.
    #[error("procmond did not answer task {task_id} ({kind}) within {after:?}; it may be overloaded or restarting")]
    Timeout {
        /// The task.
        task_id: String,
        /// Its type.
        kind: String,
        /// The timeout.
        after: Duration,
    },
    /// The bus refused or failed.
    #[error("sending task {task_id} on the event bus failed: {source}")]
    Bus {
        /// The task.
        task_id: String,
        /// The bus error.
        #[source]
        source: daemoneye_eventbus::BusError,
    },
    /// The agent is shutting down.
    #[error("the agent is shutting down")]
    Shutdown,
}

/// Sends tasks and matches results. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TaskClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    local: LocalClient,
    pending: Mutex<HashMap<String, oneshot::Sender<DetectionResult>>>,
    timeout: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl TaskClient {
    /// Subscribes to the result topic and starts the task that routes results
    /// to their callers (tracked by `tracker`, ends on `cancel`).
    pub async fn start(
        local: LocalClient,
        timeout: Duration,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, daemoneye_eventbus::BusError> {
        let mut results = local.subscribe(TOPIC_COLLECTOR_RESULT, BackpressurePolicy::Drop, 1024).await?;
        let inner = Arc::new(Inner {
            local,
            pending: Mutex::new(HashMap::new()),
            timeout,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
        });
        let router = Arc::clone(&inner);
        tracker.spawn(async move {
            loop {
                let d = tokio::select! {
                    d = results.recv() => d,
                    () = cancel.cancelled() => None,
                };
                let Some(d) = d else { break };
                match DetectionResult::decode(d.payload.as_ref()) {
                    Ok(r) => {
                        let waiter = router.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&r.task_id);
                        match waiter {
                            Some(tx) => {
                                let _ = tx.send(r);
                            }
                            None => tracing::debug!(task_id = %r.task_id, "result for no waiting task (timed out?)"),
                        }
                    }
                    Err(e) => tracing::warn!(topic = %d.topic, error = %e, "detection result does not decode"),
                }
            }
        });
        Ok(Self { inner })
    }

    /// Runs `task` in procmond and waits for its result (`timeout` 0: the
    /// default). The task id is assigned here.
    pub async fn run(&self, mut task: DetectionTask, timeout: Duration) -> Result<DetectionResult, TaskError> {
        task.task_id = uuid::Uuid::now_v7().to_string();
        let timeout = if timeout.is_zero() { self.inner.timeout } else { timeout };
        self.send_and_wait(task, timeout).await
    }

    /// Starts a MONITOR_PROCESS_TREE on `pid`; returns the first answer
    /// (procmond's view of the subtree) and a receiver of the subtree's
    /// events. Dropping the receiver ends the watch and stops the monitor.
    pub async fn watch(&self, pid: u32) -> Result<mpsc::Receiver<WatchEvent>, TaskError> {
        let monitor_id = uuid::Uuid::now_v7().to_string();
        // Subscribe first so that no event after the monitor's start is missed.
        let events = self
            .inner
            .local
            .subscribe(TOPIC_PROCESS_TREE, BackpressurePolicy::Drop, 4096)
            .await
            .map_err(|source| TaskError::Bus { task_id: monitor_id.clone(), source })?;
        let task = DetectionTask {
            task_id: monitor_id.clone(),
            task_type: TaskType::MonitorProcessTree as i32,
            process_filter: Some(ProcessFilter { pids: vec![pid], ..Default::default() }),
            ..Default::default()
        };
        let started = self.send_and_wait(task, self.inner.timeout).await?;
        let (tx, rx) = mpsc::channel(256);
        let ok = started.success;
        let first = WatchEvent { started: Some(started), event: None, correlation: None };
        if tx.send(first).await.is_err() || !ok {
            return Ok(rx);
        }
        let me = self.clone();
        self.inner.tracker.spawn(me.forward_monitor(monitor_id, events, tx));
        Ok(rx)
    }

    async fn forward_monitor(self, monitor_id: String, mut events: Subscription, tx: mpsc::Sender<WatchEvent>) {
        loop {
            let d = tokio::select! {
                d = events.recv() => d,
                () = tx.closed() => None,
                () = self.inner.cancel.cancelled() => None,
            };
            let Some(d) = d else { break };
            if d.correlation.workflow_id.as_deref() != Some(monitor_id.as_str()) {
                continue;
            }
            let Ok(event) = ProcessEvent::decode(d.payload.as_ref()) else { continue };
            let w = WatchEvent { started: None, event: Some(event), correlation: Some(d.correlation.into()) };
            if tx.send(w).await.is_err() {
                break;
            }
        }
        drop(events);
        if self.inner.cancel.is_cancelled() {
            return;
        }
        let stop = DetectionTask {
            task_type: TaskType::MonitorProcessTree as i32,
            metadata: Some(format!("{STOP_MONITOR_PREFIX}{monitor_id}")),
            ..Default::default()
        };
        if let Err(e) = self.run(stop, Duration::ZERO).await {
            tracing::warn!(monitor = %monitor_id, error = %e, "could not stop a process tree monitor");
        }
    }

    async fn send_and_wait(&self, task: DetectionTask, timeout: Duration) -> Result<DetectionResult, TaskError> {
        let inner = &self.inner;
        let task_id = task.task_id.clone();
        let kind = task.task_type().as_str_name().to_owned();
        let (tx, rx) = oneshot::channel();
        inner.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(task_id.clone(), tx);
        let forget = || inner.pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&task_id);
        let corr = CorrelationMetadata::new(format!("task:{task_id}")).with_stage("task").with_tag("task_type", &kind);
        let sent = inner
            .local
            .publish_acked(TOPIC_COLLECTOR_TASK, Bytes::from(task.encode_to_vec()), CONTENT_TYPE_DETECTION_TASK, corr)
            .await;
        match sent {
            Ok(0) => {
                forget();
                return Err(TaskError::CollectorNotConnected);
            }
            Ok(_) => {}
            Err(source) => {
                forget();
                return Err(TaskError::Bus { task_id, source });
            }
        }
        tokio::select! {
            r = tokio::time::timeout(timeout, rx) => match r {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(_)) => Err(TaskError::Shutdown),
                Err(_) => {
                    forget();
                    Err(TaskError::Timeout { task_id, kind, after: timeout })
                }
            },
            () = inner.cancel.cancelled() => Err(TaskError::Shutdown),
        }
    }
}
