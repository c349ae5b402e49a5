//! From EndpointSecurity messages to [`ProcessEvent`]s. Pure: compiled and
//! unit-tested on every OS. The binding copies each message into the plain
//! structs below ([`EsMessage`], [`EsProcess`]), whose fields carry the
//! names of `es_message_t` / `es_process_t`.
//!
//! What the rest of DaemonEye must not see is settled here:
//!
//! - **Process key.** `es_process_t.start_time` (a `timeval`, wall clock) is
//!   the same in every message about a process, including the fork that made
//!   it and its exit, and across `exec` (same process, new image). The key is
//!   `ProcessKey::from_ticks(boot, pid, ticks)` with `ticks` the start time in
//!   10 ms ticks ([`TICK_NS`]) **since the Unix epoch**; the boot part is the
//!   boot session UUID (`kern.bootsessionuuid`). `pidversion` is not used: it
//!   changes at every exec.
//! - **Code signing.** `signing_id`, `team_id`, `cdhash` and
//!   `is_platform_binary` come from the message; an empty identifier or an
//!   all-zero cdhash (unsigned code) is unknown, never derived from the path.
//! - **Parents.** A fork message's instigator *is* the parent, with its own
//!   start time: the parent key is exact. For exec and exit the parent is
//!   `ppid`; its key comes from the live table (forks seen, plus the
//!   start-up snapshot) and only when that process started no later than the
//!   child.
//! - **Exit status.** `es_event_exit_t.stat` is a `wait(2)` status: decoded
//!   into `exit_code` (normal exit) or `signal` (killed).

use std::collections::HashMap;

use daemoneye_lib::models::{ProcessKey, TICK_NS, join_command_line};
use daemoneye_lib::proto::{self, Argv, EventType, ProcessEvent, ProcessRecord};

/// The fields of an `es_process_t` DaemonEye reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EsProcess {
    /// `audit_token`: pid (`audit_token_to_pid`).
    pub pid: i32,
    /// `audit_token`: real uid, real gid, effective uid, effective gid.
    pub ruid: u32,
    /// Real gid.
    pub rgid: u32,
    /// Effective uid.
    pub euid: u32,
    /// Effective gid.
    pub egid: u32,
    /// `ppid`: the current parent pid.
    pub ppid: i32,
    /// `original_ppid`: the parent at fork time (before any reparenting).
    pub original_ppid: i32,
    /// `session_id`.
    pub session_id: i32,
    /// `codesigning_flags` (`CS_*` from `<kern/cs_blobs.h>`).
    pub codesigning_flags: u32,
    /// `is_platform_binary`: signed by Apple as part of the OS.
    pub is_platform_binary: bool,
    /// `cdhash`: the code directory hash; all zero for unsigned code.
    pub cdhash: [u8; 20],
    /// `signing_id`: empty for unsigned code.
    pub signing_id: String,
    /// `team_id`: empty for Apple or ad-hoc signed code.
    pub team_id: String,
    /// `executable->path`.
    pub executable_path: String,
    /// `executable->path_truncated`.
    pub path_truncated: bool,
    /// `start_time` as `(tv_sec, tv_usec)`; `None` before message version 3.
    pub start_time: Option<(i64, i64)>,
    /// `responsible_audit_token` pid (message version 4+); `None` before.
    pub responsible_pid: Option<i32>,
}

/// The events DaemonEye subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EsEvent {
    /// `ES_EVENT_TYPE_NOTIFY_EXEC`: `target` is the process after the exec.
    Exec {
        /// `event.exec.target`.
        target: EsProcess,
        /// `es_exec_arg` 0..`es_exec_arg_count`.
        args: Vec<String>,
        /// `event.exec.cwd->path` (version 3+).
        cwd: Option<String>,
    },
    /// `ES_EVENT_TYPE_NOTIFY_FORK`: the message's process is the parent.
    Fork {
        /// `event.fork.child`.
        child: EsProcess,
    },
    /// `ES_EVENT_TYPE_NOTIFY_EXIT`: the message's process exited.
    Exit {
        /// `event.exit.stat`: a `wait(2)` status.
        stat: i32,
    },
}

/// One message: its version, time and instigating process, and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsMessage {
    /// `version`.
    pub version: u32,
    /// `time` as Unix nanoseconds.
    pub time_ns: i64,
    /// `process`: the instigator (for exec: the image before the exec).
    pub process: EsProcess,
    /// `event`.
    pub event: EsEvent,
}

/// Why a message could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// A pid that no process can have.
    #[error("EndpointSecurity {event} message (version {version}): invalid pid {pid}; message dropped")]
    BadPid {
        /// The event kind.
        event: &'static str,
        /// The message version.
        version: u32,
        /// The pid.
        pid: i32,
    },
    /// No usable start time, so no key.
    #[error(
        "EndpointSecurity {event} message (version {version}), pid {pid}: no valid es_process_t.start_time \
         (needs message version 3, macOS 10.15.4+); message dropped"
    )]
    NoStartTime {
        /// The event kind.
        event: &'static str,
        /// The message version.
        version: u32,
        /// The pid.
        pid: i32,
    },
}

/// A start time as Unix nanoseconds (`None` when negative or out of range).
fn start_ns((sec, usec): (i64, i64)) -> Option<i64> {
    if sec < 0 || !(0..1_000_000).contains(&usec) {
        return None;
    }
    sec.checked_mul(1_000_000_000)?.checked_add(usec * 1_000)
}

/// Decodes a `wait(2)` status into `(exit_code, signal)`.
pub fn decode_wait_status(stat: i32) -> (Option<i32>, Option<i32>) {
    let low = stat & 0x7f;
    if low == 0 {
        (Some((stat >> 8) & 0xff), None)
    } else if low != 0x7f {
        (None, Some(low))
    } else {
        // Stopped, not exited: no exit status.
        (None, None)
    }
}

/// Turns messages into events, keeping live processes' start times.
#[derive(Debug, Clone)]
pub struct Translator {
    boot_id: String,
    /// pid -> start ticks of the live process with that pid.
    live: HashMap<u32, u64>,
}

impl Translator {
    /// A translator for this boot (`boot_id`: `kern.bootsessionuuid`).
    pub fn new(boot_id: &str) -> Self {
        Self { boot_id: boot_id.to_owned(), live: HashMap::new() }
    }

    /// How many processes are known to be alive.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Translates one message.
    pub fn translate(&mut self, msg: &EsMessage) -> Result<ProcessEvent, TranslateError> {
        match &msg.event {
            EsEvent::Fork { child } => {
                let (parent_pid, parent_ticks) = self.identity(msg, &msg.process, "fork")?;
                let mut rec = self.record(msg, child, "fork")?;
                rec.parent_key = Some(ProcessKey::from_ticks(&self.boot_id, parent_pid, parent_ticks).to_string());
                self.live.insert(parent_pid, parent_ticks);
                Ok(event(EventType::Fork, msg.time_ns, rec))
            }
            EsEvent::Exec { target, args, cwd } => {
                let mut rec = self.record(msg, target, "exec")?;
                rec.command_line = (!args.is_empty()).then(|| join_command_line(args));
                rec.argv = Some(Argv { args: args.clone(), truncated: false });
                rec.cwd.clone_from(cwd);
                Ok(event(EventType::Exec, msg.time_ns, rec))
            }
            EsEvent::Exit { stat } => {
                let (pid, ticks) = self.identity(msg, &msg.process, "exit")?;
                if self.live.get(&pid) == Some(&ticks) {
                    self.live.remove(&pid);
                }
                let (exit_code, signal) = decode_wait_status(*stat);
                let rec = ProcessRecord {
                    pid,
                    process_key: ProcessKey::from_ticks(&self.boot_id, pid, ticks).to_string(),
                    exit_code,
                    signal,
                    exit_time_ns: Some(msg.time_ns),
                    ..ProcessRecord::default()
                };
                Ok(event(EventType::Exit, msg.time_ns, rec))
            }
        }
    }

    /// A process found by the start-up snapshot (`proc_pidinfo`, parents
    /// first), as a `snapshot` event with the same key its later messages
    /// will have. The snapshot does not read code signatures or sessions:
    /// those fields are left unknown whatever `p` holds.
    pub fn snapshot(&mut self, p: &EsProcess, time_ns: i64) -> Result<ProcessEvent, TranslateError> {
        let msg = EsMessage { version: 0, time_ns, process: p.clone(), event: EsEvent::Exit { stat: 0 } };
        let mut rec = self.record(&msg, p, "snapshot")?;
        rec.platform_binary = None;
        rec.session_id = None;
        rec.signing_id = None;
        rec.team_id = None;
        rec.cdhash = None;
        rec.responsible_pid = None;
        Ok(event(EventType::Snapshot, time_ns, rec))
    }

    fn identity(&self, msg: &EsMessage, p: &EsProcess, event: &'static str) -> Result<(u32, u64), TranslateError> {
        let pid =
            u32::try_from(p.pid).map_err(|_| TranslateError::BadPid { event, version: msg.version, pid: p.pid })?;
        let ns = p.start_time.and_then(start_ns).ok_or(TranslateError::NoStartTime {
            event,
            version: msg.version,
            pid: p.pid,
        })?;
        Ok((pid, u64::try_from(ns).unwrap_or(0) / TICK_NS))
    }

    /// The full record of `p`, and `p` recorded as live.
    fn record(&mut self, msg: &EsMessage, p: &EsProcess, event: &'static str) -> Result<ProcessRecord, TranslateError> {
        let (pid, ticks) = self.identity(msg, p, event)?;
        let ppid = u32::try_from(p.ppid).ok().filter(|pp| *pp != pid);
        let parent_key = ppid.and_then(|pp| {
            let parent_ticks = *self.live.get(&pp)?;
            (parent_ticks <= ticks).then(|| ProcessKey::from_ticks(&self.boot_id, pp, parent_ticks).to_string())
        });
        // A truncated path is not the path: unknown.
        let path = (!p.executable_path.is_empty() && !p.path_truncated).then(|| p.executable_path.clone());
        let name = path.as_deref().and_then(|x| x.rsplit('/').next()).filter(|n| !n.is_empty()).map(str::to_owned);
        self.live.insert(pid, ticks);
        Ok(ProcessRecord {
            pid,
            ppid,
            process_key: ProcessKey::from_ticks(&self.boot_id, pid, ticks).to_string(),
            parent_key,
            name,
            executable_path: path,
            uid: Some(p.ruid),
            gid: Some(p.rgid),
            euid: Some(p.euid),
            egid: Some(p.egid),
            start_time_ns: p.start_time.and_then(start_ns),
            signing_id: (!p.signing_id.is_empty()).then(|| p.signing_id.clone()),
            team_id: (!p.team_id.is_empty()).then(|| p.team_id.clone()),
            cdhash: p.cdhash.iter().any(|b| *b != 0).then(|| hex(&p.cdhash)),
            platform_binary: Some(p.is_platform_binary),
            responsible_pid: p.responsible_pid.and_then(|r| u32::try_from(r).ok()),
            session_id: u32::try_from(p.session_id).ok(),
            ..ProcessRecord::default()
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn event(t: EventType, time_ns: i64, record: ProcessRecord) -> ProcessEvent {
    ProcessEvent {
        seq: 0,
        event_type: t as i32,
        event_time_ns: time_ns,
        source: proto::EventSource::EndpointSecurity as i32,
        process: Some(record),
        gap: None,
        prev_seq: 0,
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
