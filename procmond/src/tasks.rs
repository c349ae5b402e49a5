//! Detection tasks, procmond side: subscribes to `control.collector.task`,
//! runs each `DetectionTask` and publishes its `DetectionResult` (same
//! `task_id`) on `control.collector.result`.
//!
//! - ENUMERATE_PROCESSES: the live process list, filtered by names, pids and
//!   an executable pattern (`*`/`?` glob, or a substring when it has none).
//! - CHECK_PROCESS_HASH: the SHA-256 of the file at a path now vs an expected
//!   hash.
//! - VERIFY_EXECUTABLE: the running image of a pid (hashed through the OS
//!   handle, right even when the file is gone) vs the file at its path now:
//!   deleted (no file at the path), replaced (another file at the path) or
//!   intact with matching hashes.
//! - MONITOR_PROCESS_TREE: follows the subtree of a pid (see
//!   [`collector_core::monitor`]); `metadata = "stop <id>"` ends monitor `id`.
//!
//! Blocking work (reading `/proc`, hashing) runs on `spawn_blocking`. The
//! connection is separate from the publisher's and reconnects with back-off.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use collector_core::hash::{HashError, Hasher};
use collector_core::monitor::TreeMonitor;
use daemoneye_eventbus::{BusClient, CorrelationMetadata};
use daemoneye_lib::proto::{
    BackpressurePolicy, CONTENT_TYPE_DETECTION_RESULT, Correlation, DetectionResult, DetectionTask, HashResult,
    ProcessFilter, ProcessRecord, TOPIC_COLLECTOR_RESULT, TOPIC_COLLECTOR_TASK, TaskType,
};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::platform::ProcessInspector;

/// `metadata` prefix of a MONITOR_PROCESS_TREE task that stops a monitor.
const STOP_MONITOR_PREFIX: &str = "stop ";

/// What the task handler works with.
pub(crate) struct TaskContext {
    pub(crate) inspector: Box<dyn ProcessInspector>,
    pub(crate) hasher: Arc<Hasher>,
    pub(crate) monitor: Arc<TreeMonitor>,
}

/// Serves tasks until `cancel`; reconnects when the bus goes away.
pub(crate) async fn serve(socket: PathBuf, ctx: Arc<TaskContext>, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let connected = tokio::select! {
            c = BusClient::connect(&socket, "procmond-tasks") => c,
            () = cancel.cancelled() => return,
        };
        match connected {
            Ok(client) => {
                backoff = Duration::from_millis(100);
                match client.subscribe(TOPIC_COLLECTOR_TASK, BackpressurePolicy::Drop, 256).await {
                    Ok(mut sub) => {
                        tracing::info!(topic = TOPIC_COLLECTOR_TASK, "serving detection tasks");
                        loop {
                            let d = tokio::select! {
                                d = sub.recv() => d,
                                () = cancel.cancelled() => return,
                            };
                            let Some(d) = d else { break };
                            let result = match DetectionTask::decode(d.payload.as_ref()) {
                                Ok(task) => run_blocking(Arc::clone(&ctx), task).await,
                                Err(e) => {
                                    tracing::warn!(error = %e, "detection task does not decode; ignored");
                                    continue;
                                }
                            };
                            let corr = d.correlation.child(format!("result:{}", result.task_id));
                            if let Err(e) = publish(&client, result, corr).await {
                                tracing::warn!(error = %e, "detection result not published");
                                if e.is_disconnected() {
                                    break;
                                }
                            }
                        }
                        tracing::info!("task subscription ended; reconnecting");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot subscribe to detection tasks"),
                }
            }
            Err(e) => tracing::debug!(error = %e, "event bus unavailable for tasks"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = cancel.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn publish(
    client: &BusClient,
    mut result: DetectionResult,
    corr: CorrelationMetadata,
) -> Result<(), daemoneye_eventbus::BusError> {
    let sent = client
        .publish(
            TOPIC_COLLECTOR_RESULT,
            Bytes::from(result.encode_to_vec()),
            CONTENT_TYPE_DETECTION_RESULT,
            corr.clone(),
        )
        .await;
    match sent {
        Err(daemoneye_eventbus::BusError::FrameTooLarge { len, max }) => {
            // Too many processes for one frame: say so instead of going silent.
            let n = result.processes.len();
            result.processes.clear();
            result.success = false;
            result.error_message = Some(format!(
                "the result ({n} processes, {len} bytes) exceeds the bus frame limit of {max} bytes; narrow the filter"
            ));
            client
                .publish(
                    TOPIC_COLLECTOR_RESULT,
                    Bytes::from(result.encode_to_vec()),
                    CONTENT_TYPE_DETECTION_RESULT,
                    corr,
                )
                .await
        }
        other => other,
    }
}

async fn run_blocking(ctx: Arc<TaskContext>, task: DetectionTask) -> DetectionResult {
    let task_id = task.task_id.clone();
    match tokio::task::spawn_blocking(move || run(&ctx, &task)).await {
        Ok(r) => r,
        Err(e) => failure(&task_id, format!("the task failed inside procmond: {e}")),
    }
}

/// Runs one task (blocking).
pub(crate) fn run(ctx: &TaskContext, task: &DetectionTask) -> DetectionResult {
    let outcome = match task.task_type() {
        TaskType::EnumerateProcesses => enumerate(ctx, task.process_filter.as_ref()),
        TaskType::CheckProcessHash => check_hash(ctx, task),
        TaskType::VerifyExecutable => verify(ctx, task),
        TaskType::MonitorProcessTree => monitor(ctx, task),
    };
    tracing::debug!(task_id = %task.task_id, kind = task.task_type().as_str_name(), ok = outcome.is_ok(), "task done");
    match outcome {
        Ok(mut r) => {
            r.task_id.clone_from(&task.task_id);
            r.success = true;
            r
        }
        Err(msg) => failure(&task.task_id, msg),
    }
}

fn failure(task_id: &str, msg: String) -> DetectionResult {
    DetectionResult { task_id: task_id.to_owned(), success: false, error_message: Some(msg), ..Default::default() }
}

fn enumerate(ctx: &TaskContext, filter: Option<&ProcessFilter>) -> Result<DetectionResult, String> {
    let mut processes = ctx.inspector.list().map_err(|e| format!("cannot list processes: {e}"))?;
    if let Some(f) = filter {
        processes.retain(|p| matches_filter(p, f));
    }
    Ok(DetectionResult { processes, ..Default::default() })
}

fn matches_filter(p: &ProcessRecord, f: &ProcessFilter) -> bool {
    if !f.process_names.is_empty() && !p.name.as_ref().is_some_and(|n| f.process_names.iter().any(|x| x == n)) {
        return false;
    }
    if !f.pids.is_empty() && !f.pids.contains(&p.pid) {
        return false;
    }
    match (&f.executable_pattern, &p.executable_path) {
        (Some(pat), Some(path)) => glob_or_substring(pat, path),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// `*` any run, `?` any one character; a pattern without either matches as a substring.
fn glob_or_substring(pattern: &str, text: &str) -> bool {
    if !pattern.contains(['*', '?']) {
        return text.contains(pattern);
    }
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matcher with backtracking to the last star: O(len(p) * len(t)).
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some(pi);
                mark = ti;
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some(s) => {
                    pi = s + 1;
                    mark += 1;
                    ti = mark;
                }
                None => return false,
            },
        }
    }
    p.get(pi..).is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

fn check_hash(ctx: &TaskContext, task: &DetectionTask) -> Result<DetectionResult, String> {
    let check = task.hash_check.as_ref().ok_or("CHECK_PROCESS_HASH needs hash_check (path and expected hash)")?;
    let algorithm = if check.hash_algorithm.is_empty() { "sha256" } else { check.hash_algorithm.as_str() };
    if !algorithm.eq_ignore_ascii_case("sha256") {
        return Err(format!("hash algorithm {algorithm:?} is not supported; use sha256"));
    }
    if check.executable_path.is_empty() {
        return Err("CHECK_PROCESS_HASH needs hash_check.executable_path".into());
    }
    let path = Path::new(&check.executable_path);
    let mut result = HashResult {
        executable_path: check.executable_path.clone(),
        hash_algorithm: "sha256".into(),
        ..Default::default()
    };
    match ctx.hasher.hash_path(path) {
        Ok(h) => {
            result.matches = h.hex.eq_ignore_ascii_case(check.expected_hash.trim());
            result.actual_hash = Some(h.hex);
        }
        Err(e) if is_not_found(&e) => result.file_deleted = true,
        Err(e) => return Err(format!("cannot hash {}: {e}", path.display())),
    }
    Ok(DetectionResult { hash_result: Some(result), ..Default::default() })
}

fn verify(ctx: &TaskContext, task: &DetectionTask) -> Result<DetectionResult, String> {
    let pid = single_pid(task, "VERIFY_EXECUTABLE")?;
    let mut rec = ctx.inspector.read(pid).map_err(|e| format!("pid {pid}: {e}"))?;
    let image = ctx.inspector.running_image(pid).ok_or("this OS offers no handle on a running image")?;
    let path = rec.executable_path.clone().ok_or_else(|| {
        format!("pid {pid}: its executable path is not readable (kernel thread, or procmond lacks privileges)")
    })?;
    let running = ctx.hasher.hash_path(&image).map_err(|e| format!("pid {pid}: cannot hash the running image: {e}"))?;
    let mut result =
        HashResult { executable_path: path.clone(), hash_algorithm: running.algorithm.into(), ..Default::default() };
    // The kernel marks the image deleted when its directory entry is gone:
    // unlinked, or renamed over by another file (then a file is at the path).
    let kernel_says_deleted = rec.file_exists == Some(false);
    let same_file = same_inode(&image, Path::new(&path));
    match ctx.hasher.hash_path(Path::new(&path)) {
        Ok(disk) => {
            result.matches = disk.hex == running.hex;
            result.file_replaced = kernel_says_deleted || same_file == Some(false) || !result.matches;
            result.actual_hash = Some(disk.hex);
        }
        Err(e) if is_not_found(&e) => result.file_deleted = true,
        Err(e) => return Err(format!("pid {pid}: cannot hash {path}: {e}")),
    }
    rec.executable_hash = Some(running.hex);
    rec.hash_algorithm = Some(running.algorithm.into());
    Ok(DetectionResult { processes: vec![rec], hash_result: Some(result), ..Default::default() })
}

fn monitor(ctx: &TaskContext, task: &DetectionTask) -> Result<DetectionResult, String> {
    if let Some(id) = task.metadata.as_deref().and_then(|m| m.strip_prefix(STOP_MONITOR_PREFIX)) {
        if !ctx.monitor.stop(id.trim()) {
            return Err(format!("no process tree monitor {:?} is running", id.trim()));
        }
        return Ok(DetectionResult::default());
    }
    let pid = single_pid(task, "MONITOR_PROCESS_TREE")?;
    let root = ctx.inspector.read(pid).map_err(|e| format!("pid {pid}: {e}"))?;
    let all = ctx.inspector.list().map_err(|e| format!("cannot list processes: {e}"))?;
    let subtree = subtree(root, all);
    let keys: Vec<String> = subtree.iter().map(|p| p.process_key.clone()).collect();
    let corr = Correlation {
        correlation_id: task.task_id.clone(),
        workflow_id: Some(task.task_id.clone()),
        stage: Some("monitor".into()),
        tags: [("monitor".to_owned(), task.task_id.clone()), ("root_pid".to_owned(), pid.to_string())].into(),
        ..Default::default()
    };
    ctx.monitor.start(&task.task_id, corr, &keys).map_err(|e| e.to_string())?;
    tracing::info!(monitor = %task.task_id, pid, members = keys.len(), "process tree monitor started");
    Ok(DetectionResult { processes: subtree, ..Default::default() })
}

/// `root` and its live descendants (by parent key), root first.
fn subtree(root: ProcessRecord, all: Vec<ProcessRecord>) -> Vec<ProcessRecord> {
    let mut children: HashMap<String, Vec<ProcessRecord>> = HashMap::new();
    for p in all {
        if let Some(parent) = p.parent_key.clone() {
            children.entry(parent).or_default().push(p);
        }
    }
    let mut seen: HashSet<String> = HashSet::from([root.process_key.clone()]);
    let mut queue = VecDeque::from([root.process_key.clone()]);
    let mut out = vec![root];
    while let Some(k) = queue.pop_front() {
        for c in children.remove(&k).unwrap_or_default() {
            if seen.insert(c.process_key.clone()) {
                queue.push_back(c.process_key.clone());
                out.push(c);
            }
        }
    }
    out
}

fn single_pid(task: &DetectionTask, what: &str) -> Result<u32, String> {
    match task.process_filter.as_ref().map(|f| f.pids.as_slice()) {
        Some([pid]) => Ok(*pid),
        _ => Err(format!("{what} needs exactly one pid in process_filter.pids")),
    }
}

fn is_not_found(e: &HashError) -> bool {
    matches!(e, HashError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(unix)]
fn same_inode(a: &Path, b: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let (ma, mb) = (std::fs::metadata(a).ok()?, std::fs::metadata(b).ok()?);
    Some(ma.dev() == mb.dev() && ma.ino() == mb.ino())
}

#[cfg(not(unix))]
fn same_inode(_a: &Path, _b: &Path) -> Option<bool> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_substrings() {
        assert!(glob_or_substring("sleep", "/usr/bin/sleep"));
        assert!(glob_or_substring("/usr/*/sl??p", "/usr/bin/sleep"));
        assert!(glob_or_substring("*", ""));
        assert!(!glob_or_substring("/usr/*/x", "/usr/bin/sleep"));
        assert!(glob_or_substring("*a*b*", "xxaxxbxx"));
        assert!(!glob_or_substring("*a*b", "xxaxxbxx"));
    }

    #[test]
    fn filter_combines_names_pids_and_pattern() {
        let p = ProcessRecord {
            pid: 7,
            name: Some("sleep".into()),
            executable_path: Some("/usr/bin/sleep".into()),
            ..Default::default()
        };
        let f = |names: &[&str], pids: &[u32], pat: Option<&str>| ProcessFilter {
            process_names: names.iter().map(|s| (*s).to_owned()).collect(),
            pids: pids.to_vec(),
            executable_pattern: pat.map(Into::into),
        };
        assert!(matches_filter(&p, &f(&[], &[], None)));
        assert!(matches_filter(&p, &f(&["sleep"], &[7], Some("*/sleep"))));
        assert!(!matches_filter(&p, &f(&["bash"], &[], None)));
        assert!(!matches_filter(&p, &f(&[], &[8], None)));
        assert!(!matches_filter(&p, &f(&[], &[], Some("/opt/*"))));
    }

    #[test]
    fn subtree_follows_parent_keys() {
        let rec = |k: &str, parent: Option<&str>| ProcessRecord {
            process_key: k.into(),
            parent_key: parent.map(Into::into),
            ..Default::default()
        };
        let all = vec![rec("a", None), rec("b", Some("a")), rec("c", Some("b")), rec("d", Some("x"))];
        let keys: Vec<String> = subtree(rec("a", None), all).into_iter().map(|p| p.process_key).collect();
        assert_eq!(keys, vec!["a", "b", "c"]);
    }
}
