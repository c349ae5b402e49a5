//! A portable [`ProcessEnumerator`] over the `sysinfo` crate.
//!
//! Used by the poll backend where no platform reader is wired in. Its process
//! keys are coarser than the kernel's: sysinfo reports start times in whole
//! seconds, so the key's start is `(start - boot) * 100` ticks — the start
//! second, not the start tick. Keys are stable for the life of a process and
//! still distinguish pid reuse unless a pid is reused within the same second,
//! but they do **not** equal the keys of `/proc` or eBPF events of the same
//! process; never mix this enumerator with another source in one ledger
//! without a `gap` (backend switch) between them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use daemoneye_lib::models::{ProcessKey, boot_id, join_command_line};
use daemoneye_lib::proto::{Argv, ProcessRecord};
use sysinfo::{Pid, Process, ProcessRefreshKind, ProcessesToUpdate, System, ThreadKind, UpdateKind, Users};

use crate::poll::ProcessEnumerator;
use crate::source::SourceError;

/// Clock ticks per second in process keys (USER_HZ).
const TICKS_PER_SEC: u64 = 100;

/// How often the user list may be re-read when a uid has no name.
const USERS_REFRESH_AFTER: Duration = Duration::from_secs(60);

/// Enumerates processes with `sysinfo`.
pub struct SysinfoEnumerator {
    system: System,
    users: Users,
    boot_id: String,
    boot_time_s: u64,
    users_read_at: Instant,
}

impl std::fmt::Debug for SysinfoEnumerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysinfoEnumerator")
            .field("boot_id", &self.boot_id)
            .field("boot_time_s", &self.boot_time_s)
            .finish_non_exhaustive()
    }
}

impl SysinfoEnumerator {
    /// An enumerator for this machine.
    pub fn new() -> Result<Self, SourceError> {
        let unavailable =
            |e: sysinfo::Error| SourceError::Unavailable { source_name: "poll", reason: format!("sysinfo: {e:?}") };
        let system = System::new().map_err(unavailable)?;
        let users = Users::new_with_refreshed_list().map_err(unavailable)?;
        let boot_time_s = System::boot_time().map_err(unavailable)?;
        Ok(Self { system, users, boot_id: boot_id(), boot_time_s, users_read_at: Instant::now() })
    }

    /// The process key sysinfo's view gives `pid` (coarse: see the module
    /// docs).
    fn key(&self, p: &Process) -> ProcessKey {
        let since_boot = p.start_time().saturating_sub(self.boot_time_s);
        ProcessKey::from_ticks(&self.boot_id, p.pid().as_u32(), since_boot.saturating_mul(TICKS_PER_SEC))
    }

    fn record(&self, p: &Process) -> ProcessRecord {
        let parent = p.parent().and_then(|pp| self.system.process(pp));
        let args: Vec<String> = p.cmd().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let (uid, euid) = ids(p);
        ProcessRecord {
            pid: p.pid().as_u32(),
            ppid: p.parent().map(Pid::as_u32),
            process_key: self.key(p).to_string(),
            parent_key: parent.map(|pp| self.key(pp).to_string()),
            name: Some(p.name().to_string_lossy().into_owned()),
            executable_path: p.exe().map(|e| e.to_string_lossy().into_owned()),
            command_line: (!args.is_empty()).then(|| join_command_line(&args)),
            argv: (!args.is_empty()).then_some(Argv { args, truncated: false }),
            cwd: p.cwd().map(|c| c.to_string_lossy().into_owned()),
            uid,
            euid,
            gid: p.group_id().map(|g| *g),
            egid: p.effective_group_id().map(|g| *g),
            user_name: p.user_id().and_then(|u| self.users.get_user_by_id(u)).map(|u| u.name().to_owned()),
            start_time_ns: i64::try_from(p.start_time()).ok().and_then(|s| s.checked_mul(1_000_000_000)),
            memory_usage: Some(p.memory()),
            ..ProcessRecord::default()
        }
    }
}

#[cfg(unix)]
fn ids(p: &Process) -> (Option<u32>, Option<u32>) {
    (p.user_id().map(|u| **u), p.effective_user_id().map(|u| **u))
}

/// Windows user ids are SIDs, not numbers: unknown here.
#[cfg(not(unix))]
fn ids(_p: &Process) -> (Option<u32>, Option<u32>) {
    (None, None)
}

impl ProcessEnumerator for SysinfoEnumerator {
    fn enumerate(&mut self) -> Result<Vec<ProcessRecord>, SourceError> {
        let refresh = ProcessRefreshKind::nothing()
            .without_tasks()
            .with_memory()
            .with_user(UpdateKind::OnlyIfNotSet)
            // An exec in place changes these: always re-read them.
            .with_exe(UpdateKind::Always)
            .with_cmd(UpdateKind::Always)
            .with_cwd(UpdateKind::Always);
        self.system.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh);
        let procs: HashMap<_, _> =
            self.system.processes().iter().filter(|(_, p)| p.thread_kind() != Some(ThreadKind::Userland)).collect();
        let mut missing_user = false;
        let mut out = Vec::with_capacity(procs.len());
        for p in procs.values() {
            let rec = self.record(p);
            missing_user |= rec.uid.is_some() && rec.user_name.is_none();
            out.push(rec);
        }
        if missing_user && self.users_read_at.elapsed() >= USERS_REFRESH_AFTER {
            self.users_read_at = Instant::now();
            // New accounts appear rarely; refreshing on a miss keeps names fresh.
            self.users.refresh();
        }
        Ok(out)
    }
}
