//! The API's detection-task calls (`RunTask`, `WatchProcessTree`), kept out
//! of `api.rs` so that the service file stays a list of thin handlers.

use std::pin::Pin;
use std::time::Duration;

use daemoneye_lib::proto::{DetectionResult, RunTaskRequest, TaskType, WatchEvent, WatchProcessTreeRequest};
use tokio_stream::Stream;
use tonic::{Response, Status};

use crate::tasks::{TaskClient, TaskError};

/// The stream type of `WatchProcessTree`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

/// `RunTask`: one request/response task in procmond.
pub async fn run_task(tasks: Option<&TaskClient>, req: RunTaskRequest) -> Result<Response<DetectionResult>, Status> {
    let tasks = tasks.ok_or_else(|| Status::unavailable("the event bus is not running in this agent"))?;
    let task = req.task.ok_or_else(|| Status::invalid_argument("RunTask needs a task"))?;
    if task.task_type() == TaskType::MonitorProcessTree {
        return Err(Status::invalid_argument("MONITOR_PROCESS_TREE streams: use WatchProcessTree"));
    }
    let result = tasks.run(task, Duration::from_millis(u64::from(req.timeout_ms))).await.map_err(status)?;
    Ok(Response::new(result))
}

/// `WatchProcessTree`: the monitor's first answer, then the subtree's events.
pub async fn watch(tasks: Option<&TaskClient>, req: WatchProcessTreeRequest) -> Result<Response<WatchStream>, Status> {
    let tasks = tasks.ok_or_else(|| Status::unavailable("the event bus is not running in this agent"))?;
    if req.pid == 0 {
        return Err(Status::invalid_argument("WatchProcessTree needs a pid"));
    }
    let rx = tasks.watch(req.pid).await.map_err(status)?;
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(stream, Ok))))
}

fn status(e: TaskError) -> Status {
    match e {
        TaskError::CollectorNotConnected | TaskError::Shutdown => Status::unavailable(e.to_string()),
        TaskError::Timeout { .. } => Status::deadline_exceeded(e.to_string()),
        _ => Status::internal(e.to_string()),
    }
}
