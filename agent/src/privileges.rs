//! Dropping the agent's privileges to `agent.user` (PRODUCT.md §14).
//!
//! The agent starts as root because it launches procmond. With `agent.user`
//! set it gives root up in three steps:
//!
//! 1. [`DropPlan::prepare_process`], at start while the agent has one
//!    thread: the user and group are resolved and checked, `no_new_privs` is
//!    set and the inheritable capabilities are cleared. Both are per thread,
//!    so every thread started later inherits them.
//! 2. [`DropPlan::prepare_dirs`], before anything is opened: the data, run
//!    and ledger directories and the ledger's files become readable by the
//!    group (procmond, root, writes the ledger; it runs with the group, so
//!    its new files get it too).
//! 3. [`drop_when_ready`], once procmond runs and the API socket listens:
//!    the sockets get the group, then `setgroups`, `setresgid`,
//!    `setresuid`. glibc applies these to every thread, and the kernel
//!    clears a thread's effective, permitted and ambient capabilities when
//!    its uids all become non-zero; the result is checked on every thread.
//!
//! Afterwards the agent works through what it opened as root (the store,
//! the listening sockets) and reads what its group may read. It cannot start
//! procmond again: see [`crate::supervisor::SpawnGate`].

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use daemoneye_lib::config::AgentConfig;
use nix::unistd::{Gid, Group, Uid, User};
use tokio_util::sync::CancellationToken;

use crate::supervisor::SpawnGate;

/// Why the agent could not drop (or prepare to drop) its privileges.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivilegeError {
    /// `agent.user` or `agent.group` names nobody.
    #[error("agent.{key} = {name:?}: no such {key} on this system; create it or change agent.{key}")]
    Unknown {
        /// `user` or `group`.
        key: &'static str,
        /// The configured name.
        name: String,
    },
    /// `agent.group` without `agent.user`.
    #[error("agent.group = {0:?} is set but agent.user is empty; set agent.user too")]
    GroupWithoutUser(String),
    /// The agent cannot switch users.
    #[error(
        "agent.user = {user:?}, but the agent runs as uid {uid} without CAP_SETUID and CAP_SETGID: start it as root (it must launch procmond) or leave agent.user empty"
    )]
    CannotSwitch {
        /// The configured user.
        user: String,
        /// The agent's effective uid.
        uid: u32,
    },
    /// A system call on the way failed.
    #[error("{what}: {source}")]
    Os {
        /// What was being done, with its path or ids.
        what: String,
        /// The kernel's answer.
        #[source]
        source: nix::errno::Errno,
    },
    /// A file system step on the way failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with its path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The capability sets could not be changed.
    #[error("{what}: {reason}")]
    Caps {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        reason: String,
    },
    /// The drop did not take effect everywhere.
    #[error("after dropping to {user}: {what}; the agent stops rather than run with privileges")]
    Incomplete {
        /// The configured user.
        user: String,
        /// What is still privileged.
        what: String,
    },
}

fn os(what: impl Into<String>) -> impl FnOnce(nix::errno::Errno) -> PrivilegeError {
    let what = what.into();
    move |source| PrivilegeError::Os { what, source }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> PrivilegeError {
    move |source| PrivilegeError::Io { what, source }
}

/// Who the agent becomes, resolved at start (the user database is read
/// before any thread exists).
#[derive(Debug, Clone)]
pub struct DropPlan {
    user: String,
    uid: Uid,
    group: String,
    gid: Gid,
    groups: Vec<Gid>,
    /// False when the agent already runs as the user: nothing to do.
    needed: bool,
}

impl DropPlan {
    /// The plan for `agent.user`/`agent.group`; `None` when no user is set.
    pub fn resolve(agent: &AgentConfig) -> Result<Option<DropPlan>, PrivilegeError> {
        if agent.user.is_empty() {
            if !agent.group.is_empty() {
                return Err(PrivilegeError::GroupWithoutUser(agent.group.clone()));
            }
            return Ok(None);
        }
        let user = User::from_name(&agent.user)
            .map_err(os(format!("looking up user {:?}", agent.user)))?
            .ok_or_else(|| PrivilegeError::Unknown { key: "user", name: agent.user.clone() })?;
        let gid = if agent.group.is_empty() {
            user.gid
        } else {
            Group::from_name(&agent.group)
                .map_err(os(format!("looking up group {:?}", agent.group)))?
                .ok_or_else(|| PrivilegeError::Unknown { key: "group", name: agent.group.clone() })?
                .gid
        };
        let group = Group::from_gid(gid).ok().flatten().map_or_else(|| gid.to_string(), |g| g.name);
        // The user's supplementary groups, as a login (or systemd's User=)
        // would have them; just the group when they cannot be listed.
        let groups = CString::new(user.name.as_str())
            .ok()
            .and_then(|name| nix::unistd::getgrouplist(&name, gid).ok())
            .unwrap_or_else(|| vec![gid]);
        let needed = nix::unistd::geteuid() != user.uid;
        Ok(Some(DropPlan { user: user.name, uid: user.uid, group, gid, groups, needed }))
    }

    /// The user's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The group the agent (and procmond) run with.
    pub fn gid(&self) -> u32 {
        self.gid.as_raw()
    }

    /// Step 1, on the agent's only thread: checks that the agent can switch,
    /// sets `no_new_privs` and clears the inheritable capabilities.
    pub fn prepare_process(&self) -> Result<(), PrivilegeError> {
        if !self.needed {
            tracing::info!(user = %self.user, "the agent already runs as agent.user; nothing to drop");
            return Ok(());
        }
        let euid = nix::unistd::geteuid();
        if !os_impl::can_switch(euid) {
            return Err(PrivilegeError::CannotSwitch { user: self.user.clone(), uid: euid.as_raw() });
        }
        os_impl::restrict_exec()
    }

    /// Step 2, before the store and the ledger are opened: makes `dirs`
    /// searchable and readable by the group, and the files directly in
    /// `ledger_dir` (created if missing, as procmond would) readable by it.
    /// Leaves alone what others may read anyway.
    pub fn prepare_dirs(&self, dirs: &[&Path], ledger_dir: &Path) -> Result<(), PrivilegeError> {
        if !self.needed {
            return Ok(());
        }
        if !ledger_dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(ledger_dir)
                .map_err(io(format!("creating {}", ledger_dir.display())))?;
        }
        for dir in dirs.iter().copied().chain([ledger_dir]) {
            self.grant(dir, 0o050)?;
        }
        let entries = std::fs::read_dir(ledger_dir).map_err(io(format!("listing {}", ledger_dir.display())))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                self.grant(&entry.path(), 0o040)?;
            }
        }
        Ok(())
    }

    /// Gives the group `bits` (0o050: read and search; 0o040: read) on
    /// `path` unless others have them already.
    fn grant(&self, path: &Path, bits: u32) -> Result<(), PrivilegeError> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = std::fs::metadata(path).map_err(io(format!("reading the mode of {}", path.display())))?;
        let mode = meta.mode() & 0o7777;
        if mode & (bits >> 3) == bits >> 3 {
            return Ok(());
        }
        if meta.gid() != self.gid.as_raw() {
            nix::unistd::chown(path, None, Some(self.gid)).map_err(os(format!(
                "giving {} to group {}",
                path.display(),
                self.group
            )))?;
        }
        if mode & bits != bits {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | bits)).map_err(io(format!(
                "letting group {} read {}",
                self.group,
                path.display()
            )))?;
        }
        tracing::debug!(path = %path.display(), group = %self.group, "made readable by the agent's group");
        Ok(())
    }

    /// Step 3: gives `sockets` the group (mode 0660 stays), then switches
    /// groups and user and checks that no thread kept a privilege.
    pub fn drop_now(&self, sockets: &[PathBuf]) -> Result<(), PrivilegeError> {
        if !self.needed {
            return Ok(());
        }
        for s in sockets.iter().filter(|s| s.exists()) {
            nix::unistd::chown(s, None, Some(self.gid)).map_err(os(format!(
                "giving socket {} to group {}",
                s.display(),
                self.group
            )))?;
        }
        nix::unistd::setgroups(&self.groups).map_err(os(format!("setgroups for user {}", self.user)))?;
        nix::unistd::setresgid(self.gid, self.gid, self.gid).map_err(os(format!("setresgid to {}", self.group)))?;
        nix::unistd::setresuid(self.uid, self.uid, self.uid).map_err(os(format!("setresuid to {}", self.user)))?;
        let incomplete = |what: String| PrivilegeError::Incomplete { user: self.user.clone(), what };
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(incomplete("it could become root again".into()));
        }
        os_impl::verify_threads(self.uid.as_raw()).map_err(incomplete)?;
        tracing::info!(
            user = %self.user,
            uid = self.uid.as_raw(),
            group = %self.group,
            gid = self.gid.as_raw(),
            groups = ?self.groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>(),
            "privileges dropped: running as agent.user with no capabilities"
        );
        Ok(())
    }
}

/// Paths the agent still uses after the drop, checked (and warned about)
/// once it runs as the user.
#[derive(Debug, Clone, Default)]
pub struct AfterDrop {
    /// Read for catch-up (bus gaps, restarts).
    pub ledger_dir: PathBuf,
    /// Read on every rule reload.
    pub rules_dir: PathBuf,
    /// Directories the file sinks create and rotate files in.
    pub sink_dirs: Vec<PathBuf>,
    /// Sockets that get the group: the API socket, and the bus socket when
    /// `bus.socket_group` is empty ("the agent's own group").
    pub sockets: Vec<PathBuf>,
}

/// Step 3: waits until procmond has been started and `api_socket` accepts
/// connections, then drops to `plan`'s user (through `gate`, so procmond is
/// never started again by a half-privileged agent) and checks `after`'s
/// paths. Returns at once without a plan; early on cancel.
pub async fn drop_when_ready(
    plan: Option<Arc<DropPlan>>,
    gate: Arc<SpawnGate>,
    api_socket: PathBuf,
    after: AfterDrop,
    cancel: CancellationToken,
) -> Result<(), PrivilegeError> {
    let Some(plan) = plan else { return Ok(()) };
    tokio::select! {
        () = gate.wait_spawned() => {}
        () = cancel.cancelled() => return Ok(()),
    }
    while tokio::net::UnixStream::connect(&api_socket).await.is_err() {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            () = cancel.cancelled() => return Ok(()),
        }
    }
    gate.close(&plan.user, || plan.drop_now(&after.sockets))?;
    check_access(&plan, &after);
    Ok(())
}

/// Warns about paths the user cannot use (the access check uses the real
/// ids, the user's since the drop).
fn check_access(plan: &DropPlan, after: &AfterDrop) {
    use nix::unistd::AccessFlags;
    let read = AccessFlags::R_OK | AccessFlags::X_OK;
    let checks = [(&after.ledger_dir, read, "ledger catch-up (after a dropped bus message or a restart) will fail")]
        .into_iter()
        .chain([(&after.rules_dir, read, "rule reloads will fail")])
        .chain(after.sink_dirs.iter().map(|d| {
            (d, AccessFlags::W_OK | AccessFlags::X_OK, "the file sink cannot create or rotate its files there")
        }));
    for (path, mode, consequence) in checks {
        if path.as_os_str().is_empty() || !plan.needed {
            continue;
        }
        if let Err(e) = nix::unistd::access(path.as_path(), mode) {
            tracing::error!(
                path = %path.display(),
                user = %plan.user,
                group = %plan.group,
                error = %e,
                "after the privilege drop the agent cannot use this path: {consequence}; give the group access"
            );
        }
    }
}

#[cfg(target_os = "linux")]
mod os_impl {
    use caps::{CapSet, Capability};
    use nix::unistd::Uid;

    use super::{PrivilegeError, os};

    pub(super) fn can_switch(euid: Uid) -> bool {
        let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
        euid.is_root() && effective.contains(&Capability::CAP_SETUID) && effective.contains(&Capability::CAP_SETGID)
    }

    /// `no_new_privs` (no exec can gain privileges: setuid binaries, file
    /// capabilities) and no inheritable capabilities, for this thread and
    /// every thread it starts.
    pub(super) fn restrict_exec() -> Result<(), PrivilegeError> {
        nix::sys::prctl::set_no_new_privs().map_err(os("setting no_new_privs"))?;
        caps::clear(None, CapSet::Inheritable)
            .map_err(|e| PrivilegeError::Caps { what: "clearing the inheritable capabilities", reason: e.to_string() })
    }

    /// Every thread runs as `uid` with no effective, permitted or ambient
    /// capability (`/proc/self/task/*/status`).
    pub(super) fn verify_threads(uid: u32) -> Result<(), String> {
        let tasks = std::fs::read_dir("/proc/self/task").map_err(|e| format!("cannot list its threads: {e}"))?;
        for task in tasks.flatten() {
            let path = task.path().join("status");
            let Ok(status) = std::fs::read_to_string(&path) else { continue }; // the thread ended
            for line in status.lines() {
                let (key, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.trim();
                let bad = match key {
                    "Uid" => value.split_whitespace().any(|u| u != uid.to_string()),
                    "CapEff" | "CapPrm" | "CapAmb" => !value.trim_start_matches('0').is_empty(),
                    _ => false,
                };
                if bad {
                    return Err(format!("{}: {key} is {value}", path.display()));
                }
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod os_impl {
    use nix::unistd::Uid;

    use super::PrivilegeError;

    pub(super) fn can_switch(euid: Uid) -> bool {
        euid.is_root()
    }

    pub(super) fn restrict_exec() -> Result<(), PrivilegeError> {
        tracing::debug!("no no_new_privs or capability sets on this OS");
        Ok(())
    }

    pub(super) fn verify_threads(_uid: u32) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(user: &str, group: &str) -> AgentConfig {
        let mut c = daemoneye_lib::config::Config::load(&daemoneye_lib::config::LoadOptions {
            skip_system_files: true,
            ..Default::default()
        })
        .unwrap()
        .agent;
        c.user = user.into();
        c.group = group.into();
        c
    }

    #[test]
    fn no_user_no_plan_and_unknown_names_say_which_key() {
        assert!(DropPlan::resolve(&agent("", "")).unwrap().is_none());
        let e = DropPlan::resolve(&agent("", "nogroup")).unwrap_err().to_string();
        assert!(e.contains("agent.user is empty"), "{e}");
        let e = DropPlan::resolve(&agent("no-such-user-daemoneye", "")).unwrap_err().to_string();
        assert!(e.contains("agent.user = \"no-such-user-daemoneye\": no such user"), "{e}");
        let e = DropPlan::resolve(&agent("root", "no-such-group-daemoneye")).unwrap_err().to_string();
        assert!(e.contains("no such group"), "{e}");
    }

    #[test]
    fn resolves_the_primary_group_and_supplementary_groups() {
        let plan = DropPlan::resolve(&agent("root", "")).unwrap().unwrap();
        assert_eq!(plan.user(), "root");
        assert_eq!(plan.gid(), 0);
        assert!(plan.groups.contains(&Gid::from_raw(0)));
    }
}
