//! `agent.user` where the agent has no privilege drop (macOS, Windows): the
//! same interface as the Linux module (`privileges.rs`: `setresuid`,
//! capabilities), refusing a configured user. There the agent's account is
//! its service's: launchd's `UserName`, the Windows service's account.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use daemoneye_lib::config::AgentConfig;
use tokio_util::sync::CancellationToken;

use crate::supervisor::SpawnGate;

/// Why the agent could not drop (or prepare to drop) its privileges.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivilegeError {
    /// `agent.user` or `agent.group` is set on an OS without the drop.
    #[error(
        "agent.{key} = {name:?}: switching users after start is Linux-only; on this OS run the agent under \
         the account you want (launchd UserName, the Windows service's account) and leave agent.user and \
         agent.group empty"
    )]
    Unsupported {
        /// `user` or `group`.
        key: &'static str,
        /// The configured name.
        name: String,
    },
}

/// Who the agent becomes. Never exists here: [`DropPlan::resolve`] refuses.
#[derive(Debug, Clone)]
pub enum DropPlan {}

impl DropPlan {
    /// `None` when no user or group is set; an error otherwise.
    pub fn resolve(agent: &AgentConfig) -> Result<Option<DropPlan>, PrivilegeError> {
        for (key, name) in [("user", &agent.user), ("group", &agent.group)] {
            if !name.trim().is_empty() {
                return Err(PrivilegeError::Unsupported { key, name: name.clone() });
            }
        }
        Ok(None)
    }

    /// The configured user.
    pub fn user(&self) -> &str {
        match *self {}
    }

    /// The group the agent runs with after the drop.
    pub fn gid(&self) -> u32 {
        match *self {}
    }

    /// Step 1 of the drop (see the Linux module).
    pub fn prepare_process(&self) -> Result<(), PrivilegeError> {
        match *self {}
    }

    /// Step 2 of the drop (see the Linux module).
    pub fn prepare_dirs(&self, _dirs: &[&Path], _ledger_dir: &Path) -> Result<(), PrivilegeError> {
        match *self {}
    }
}

/// Paths the agent still uses after the drop (see the Linux module).
#[derive(Debug, Clone, Default)]
pub struct AfterDrop {
    /// Read for catch-up (bus gaps, restarts).
    pub ledger_dir: PathBuf,
    /// Read on every rule reload.
    pub rules_dir: PathBuf,
    /// Directories the file sinks create and rotate files in.
    pub sink_dirs: Vec<PathBuf>,
    /// Sockets that get the group.
    pub sockets: Vec<PathBuf>,
}

/// Returns at once: there is never a plan here.
pub async fn drop_when_ready(
    plan: Option<Arc<DropPlan>>,
    _gate: Arc<SpawnGate>,
    _api_socket: PathBuf,
    _after: AfterDrop,
    _cancel: CancellationToken,
) -> Result<(), PrivilegeError> {
    match plan.as_deref() {
        None => Ok(()),
        Some(plan) => match *plan {},
    }
}
