//! Starts procmond and restarts it with back-off when it exits — until the
//! agent has dropped its privileges (`agent.user`): after that a procmond
//! that exits cannot be started again with the capabilities it needs, so
//! [`supervise`] returns [`ProcmondLost`] and the agent exits non-zero for
//! its service manager (systemd `Restart=on-failure`) to restart both.
//!
//! procmond is stopped with a line `stop` on its stdin (a pipe the agent
//! holds), then SIGTERM: an agent running as its unprivileged user may not
//! signal the root procmond, but can always write to the pipe. The end of
//! the pipe alone (an agent crash) does not stop procmond; the ledger keeps
//! recording.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use daemoneye_lib::models::time::now_ms;
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// procmond exited after the agent dropped its privileges.
#[derive(Debug, thiserror::Error)]
#[error(
    "procmond exited ({exit}) after the agent dropped its privileges to user {user}; without root the agent cannot start procmond again, so it exits for the service manager to restart both (systemd: Restart=on-failure)"
)]
pub struct ProcmondLost {
    /// The user the agent runs as.
    pub user: String,
    /// How procmond ended.
    pub exit: String,
}

/// Whether procmond may be (re)started: yes until the privilege drop closes
/// the gate. The drop and a start never overlap, so no procmond is started
/// by a half-dropped agent.
#[derive(Debug)]
pub struct SpawnGate {
    dropped_to: Mutex<Option<String>>,
    spawned: tokio::sync::watch::Sender<bool>,
}

impl Default for SpawnGate {
    fn default() -> Self {
        Self { dropped_to: Mutex::new(None), spawned: tokio::sync::watch::Sender::new(false) }
    }
}

impl SpawnGate {
    /// Runs `spawn` unless the gate is closed (then `Err(user)`).
    fn spawn<T>(&self, spawn: impl FnOnce() -> T) -> Result<T, String> {
        let closed = self.dropped_to.lock().unwrap_or_else(PoisonError::into_inner);
        match closed.as_ref() {
            Some(user) => Err(user.clone()),
            None => Ok(spawn()),
        }
    }

    /// Waits until procmond has been started once.
    pub async fn wait_spawned(&self) {
        let mut rx = self.spawned.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Closes the gate for good and runs `drop` (the privilege drop) while
    /// no start is in progress.
    pub fn close<E>(&self, user: &str, drop: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let mut closed = self.dropped_to.lock().unwrap_or_else(PoisonError::into_inner);
        *closed = Some(user.to_owned());
        drop()
    }

    /// The user the agent dropped to, once it has.
    pub fn dropped_to(&self) -> Option<String> {
        self.dropped_to.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

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
    /// Group to run procmond with (`agent.user`'s group, so the ledger files
    /// it creates are readable by the agent after the drop).
    pub gid: Option<u32>,
}

/// Runs procmond until `cancel`; on cancel, stops it (`stop` on stdin and
/// SIGTERM, then SIGKILL after 5 s) and returns `Ok`. Once `gate` is closed,
/// procmond's exit is [`ProcmondLost`].
pub async fn supervise(
    cmd: ProcmondCommand,
    health: Arc<Health>,
    cancel: CancellationToken,
    gate: Arc<SpawnGate>,
) -> Result<(), ProcmondLost> {
    let mut backoff = cmd.backoff_min;
    loop {
        let started = Instant::now();
        let mut command = Command::new(&cmd.binary);
        command.args(&cmd.args).arg("--stdin-control").stdin(Stdio::piped()).kill_on_drop(true);
        if let Some(gid) = cmd.gid {
            crate::os::set_child_group(&mut command, gid);
        }
        let spawned =
            gate.spawn(|| command.spawn()).map_err(|user| ProcmondLost { user, exit: "not running".into() })?;
        let mut child = match spawned {
            Ok(c) => {
                gate.spawned.send_replace(true);
                c
            }
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
                    return Ok(());
                }
                backoff = (backoff * 2).min(cmd.backoff_max);
                continue;
            }
        };
        let pid = child.id();
        // Held here: `Child::wait` would close it, and its end is what asks
        // procmond to stop.
        let control = child.stdin.take();
        tracing::info!(pid, binary = %cmd.binary.display(), "procmond started");
        health.set_procmond(|s| {
            s.pid = pid;
            s.running_since_ms = Some(now_ms());
            s.error = None;
        });
        let status = tokio::select! {
            status = child.wait() => status,
            () = cancel.cancelled() => {
                stop(&mut child, control, pid).await;
                health.set_procmond(|s| { s.pid = None; s.running_since_ms = None; });
                return Ok(());
            }
        };
        let how = match status {
            Ok(st) => describe_exit(st),
            Err(e) => format!("wait failed: {e}"),
        };
        if let Some(user) = gate.dropped_to() {
            health.set_procmond(|s| {
                s.pid = None;
                s.running_since_ms = None;
                s.last_exit = Some(how.clone());
            });
            return Err(ProcmondLost { user, exit: how });
        }
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
            return Ok(());
        }
        backoff = (backoff * 2).min(cmd.backoff_max);
    }
}

fn describe_exit(st: std::process::ExitStatus) -> String {
    crate::os::describe_exit(st)
}

async fn stop(child: &mut tokio::process::Child, control: Option<tokio::process::ChildStdin>, pid: Option<u32>) {
    // The pipe works whoever the agent runs as; the signal only while it
    // may still signal procmond (EPERM after the drop, ignored).
    if let Some(mut stdin) = control {
        let _ = stdin.write_all(b"stop\n").await;
    }
    if let Some(pid) = pid {
        crate::os::request_stop(pid);
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_ok() {
        return;
    }
    tracing::warn!(pid, "procmond did not stop within 5 s of being asked; killing it");
    if let Err(e) = child.kill().await {
        tracing::error!(pid, error = %e, "cannot kill procmond (an agent that dropped its privileges may not)");
    }
}

/// Sleeps; true when cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => false,
        () = cancel.cancelled() => true,
    }
}
