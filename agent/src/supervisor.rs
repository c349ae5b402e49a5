//! Starts procmond and restarts it with back-off when it exits.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use daemoneye_lib::models::time::now_ms;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// How to run procmond.
#[derive(Debug, Clone)]
pub struct ProcmondCommand {
    /// The binary.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Back-off bounds and reset.
    pub backoff_min: Duration,
    /// Upper bound.
    pub backoff_max: Duration,
    /// Uptime after which the back-off resets.
    pub reset_after: Duration,
}

/// Runs procmond until `cancel`; on cancel, stops it (SIGTERM, then SIGKILL
/// after 5 s) and returns.
pub async fn supervise(cmd: ProcmondCommand, health: Arc<Health>, cancel: CancellationToken) {
    let mut backoff = cmd.backoff_min;
    loop {
        let started = Instant::now();
        let mut child = match Command::new(&cmd.binary).args(&cmd.args).stdin(Stdio::null()).kill_on_drop(true).spawn()
        {
            Ok(c) => c,
            Err(e) => {
                let msg = format!(
                    "cannot start procmond {}: {e}; set procmond.binary or put procmond next to daemoneye-agent",
                    cmd.binary.display()
                );
                tracing::error!("{msg}");
                health.set_procmond(|s| {
                    s.pid = None;
                    s.error = Some(msg);
                });
                if sleep_or_cancel(backoff, &cancel).await {
                    return;
                }
                backoff = (backoff * 2).min(cmd.backoff_max);
                continue;
            }
        };
        let pid = child.id();
        tracing::info!(pid, binary = %cmd.binary.display(), "procmond started");
        health.set_procmond(|s| {
            s.pid = pid;
            s.running_since_ms = Some(now_ms());
            s.error = None;
        });
        let status = tokio::select! {
            status = child.wait() => status,
            () = cancel.cancelled() => {
                stop(&mut child, pid).await;
                health.set_procmond(|s| { s.pid = None; s.running_since_ms = None; });
                return;
            }
        };
        let how = match status {
            Ok(st) => describe_exit(st),
            Err(e) => format!("wait failed: {e}"),
        };
        tracing::warn!(pid, exit = %how, "procmond exited; restarting");
        health.set_procmond(|s| {
            s.pid = None;
            s.running_since_ms = None;
            s.last_exit = Some(how);
            s.restarts += 1;
        });
        if started.elapsed() >= cmd.reset_after {
            backoff = cmd.backoff_min;
        }
        if sleep_or_cancel(backoff, &cancel).await {
            return;
        }
        backoff = (backoff * 2).min(cmd.backoff_max);
    }
}

fn describe_exit(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

async fn stop(child: &mut tokio::process::Child, pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(pid, "procmond did not stop within 5 s of SIGTERM; killing it");
    }
    let _ = child.kill().await;
}

/// Sleeps; true when cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = cancel.cancelled() => true,
    }
}
