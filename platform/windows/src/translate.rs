//! From `Microsoft-Windows-Kernel-Process` events (and what the binding read
//! from the process) to [`ProcessEvent`]s. Pure: compiled and unit-tested on
//! every OS. Everything Windows-specific that the rest of DaemonEye must not
//! see is settled here:
//!
//! - **Process key.** The kernel stamps every process with its `CreateTime`
//!   (a FILETIME, 100 ns since 1601, UTC wall clock), carried by both
//!   `ProcessStart` and `ProcessStop` and returned by `GetProcessTimes` for
//!   the start-up snapshot, so all three agree exactly. The key is
//!   `ProcessKey::from_ticks(boot_id, pid, ticks)` with `ticks` the create
//!   time in 10 ms ticks ([`TICK_NS`]) **since the Unix epoch** (not since
//!   boot as on Linux: Windows has no exact boot-relative creation time, and
//!   the wall-clock one is already unique across boots). The boot part is
//!   the boot stand-in the binding passes in (the registry `BootId` counter).
//! - **User identity.** Windows users are SIDs: the token user's SID string
//!   (`S-1-5-21-...`) goes into `user_name` and `user_sid`; `uid`/`gid` stay
//!   `None`.
//! - **Paths.** `ImageName` is an NT path (`\Device\HarddiskVolume3\...`);
//!   [`DeviceMap`] turns it into the DOS path (`C:\...`) users know.
//! - **Arguments.** Windows has one command-line string; `argv` is its split
//!   by the `CommandLineToArgvW` rules ([`crate::cmdline`]).
//! - **Parents.** `ProcessStart` names the parent by pid only. The translator
//!   keeps the create time of every live process (snapshot + starts) and gives
//!   a `parent_key` only when a live process has that pid and was created no
//!   later than the child (a pid reused after the parent exited is not the
//!   parent); otherwise the parent key stays unknown.

use std::collections::HashMap;

use daemoneye_lib::models::{ProcessKey, TICK_NS};
use daemoneye_lib::proto::{self, Argv, EventType, ProcessEvent, ProcessRecord};

use crate::cmdline::split_command_line;
use crate::fields::{EVENT_PROCESS_START, EVENT_PROCESS_STOP, FieldError, ProcessStart, ProcessStop, RawEvent};

/// 100 ns intervals between 1601-01-01 and 1970-01-01.
pub const FILETIME_UNIX_EPOCH: i64 = 116_444_736_000_000_000;

/// What the binding read from the live process (not carried by the event).
/// Every field is optional: a process that exited at once, or that even
/// SeDebugPrivilege cannot open (protected processes), leaves them unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessDetails {
    /// The full command line (`NtQueryInformationProcess`,
    /// `ProcessCommandLineInformation`).
    pub command_line: Option<String>,
    /// The image as a DOS path (`QueryFullProcessImageNameW`); preferred to
    /// the event's NT path when present.
    pub image_path: Option<String>,
    /// The token user's SID string (`GetTokenInformation(TokenUser)` +
    /// `ConvertSidToStringSidW`).
    pub user_sid: Option<String>,
    /// `TokenElevationType`: 1 default, 2 full, 3 limited (used when the
    /// event does not carry it).
    pub token_elevation_type: Option<u32>,
    /// `TokenElevation.TokenIsElevated` (used when the event does not carry
    /// it).
    pub token_is_elevated: Option<bool>,
}

/// Why an event could not be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TranslateError {
    /// A field is missing or mistyped.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The event id is not one this translator handles.
    #[error("Microsoft-Windows-Kernel-Process event id {0} is not handled (only 1 ProcessStart and 2 ProcessStop)")]
    UnknownEvent(u16),
    /// A create time before 1970 or beyond the representable range: the event
    /// is corrupt, so no key can be made.
    #[error("process {pid}: CreateTime {filetime} is not a valid time after 1970; event dropped")]
    BadCreateTime {
        /// The pid.
        pid: u32,
        /// The raw FILETIME.
        filetime: i64,
    },
}

/// Maps NT device names to drive letters (from `QueryDosDeviceW` on every
/// drive letter), to render NT image paths as DOS paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceMap {
    /// `(\Device\HarddiskVolume3, C:)` pairs.
    entries: Vec<(String, String)>,
}

impl DeviceMap {
    /// A map from `(device, drive)` pairs, e.g.
    /// `("\Device\HarddiskVolume3", "C:")`.
    pub fn new<I, D, L>(entries: I) -> Self
    where
        I: IntoIterator<Item = (D, L)>,
        D: Into<String>,
        L: Into<String>,
    {
        let mut entries: Vec<(String, String)> = entries
            .into_iter()
            .map(|(d, l)| (d.into().trim_end_matches('\\').to_owned(), l.into()))
            .filter(|(d, _)| !d.is_empty())
            .collect();
        // Longest device first, so no device shadows a longer one.
        entries.sort_by_key(|e| std::cmp::Reverse(e.0.len()));
        Self { entries }
    }

    /// The DOS form of an NT path: `\Device\HarddiskVolume3\x` -> `C:\x`,
    /// `\??\C:\x` and `\\?\C:\x` -> `C:\x`, `\Device\Mup\srv\share\x` ->
    /// `\\srv\share\x`. A path on an unknown device is returned unchanged.
    pub fn to_dos_path(&self, nt: &str) -> String {
        for prefix in [r"\??\", r"\\?\"] {
            if let Some(rest) = nt.strip_prefix(prefix) {
                return rest.strip_prefix(r"UNC\").map_or_else(|| rest.to_owned(), |unc| format!(r"\\{unc}"));
            }
        }
        if let Some(rest) = strip_prefix_ci(nt, r"\Device\Mup\") {
            return format!(r"\\{rest}");
        }
        for (device, drive) in &self.entries {
            if let Some(rest) = strip_prefix_ci(nt, device)
                && (rest.is_empty() || rest.starts_with('\\'))
            {
                return format!("{drive}{rest}");
            }
        }
        nt.to_owned()
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// A FILETIME as nanoseconds since the Unix epoch; `None` before 1970 or on
/// overflow.
pub fn filetime_to_unix_ns(filetime: i64) -> Option<i64> {
    filetime.checked_sub(FILETIME_UNIX_EPOCH).filter(|d| *d >= 0)?.checked_mul(100)
}

/// The lowercase name of a `TOKEN_ELEVATION_TYPE`; `None` for values the
/// documentation does not define.
pub fn elevation_type_name(value: u32) -> Option<&'static str> {
    match value {
        1 => Some("default"),
        2 => Some("full"),
        3 => Some("limited"),
        _ => None,
    }
}

/// Turns events into [`ProcessEvent`]s, keeping the live processes' create
/// times to resolve parent keys.
#[derive(Debug, Clone)]
pub struct Translator {
    boot_id: String,
    devices: DeviceMap,
    /// pid -> CreateTime of the live process with that pid.
    live: HashMap<u32, i64>,
}

impl Translator {
    /// A translator for this boot (`boot_id`: the boot stand-in, see the
    /// module docs) and drive mapping.
    pub fn new(boot_id: &str, devices: DeviceMap) -> Self {
        Self { boot_id: boot_id.to_owned(), devices, live: HashMap::new() }
    }

    /// The process key of `(pid, CreateTime)`.
    pub fn key(&self, pid: u32, create_time: i64) -> Result<ProcessKey, TranslateError> {
        let ns =
            filetime_to_unix_ns(create_time).ok_or(TranslateError::BadCreateTime { pid, filetime: create_time })?;
        let ticks = u64::try_from(ns).map_err(|_| TranslateError::BadCreateTime { pid, filetime: create_time })?;
        Ok(ProcessKey::from_ticks(&self.boot_id, pid, ticks / TICK_NS))
    }

    /// How many processes are known to be alive.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Translates one raw event: `ProcessStart` -> `exec`, `ProcessStop` ->
    /// `exit`. `details` is used for starts only; `header_time_ns` (the ETW
    /// header's timestamp, Unix ns) is the event time when the event carries
    /// none of its own.
    pub fn translate(
        &mut self,
        raw: &RawEvent,
        details: &ProcessDetails,
        header_time_ns: i64,
    ) -> Result<ProcessEvent, TranslateError> {
        match raw.event_id {
            EVENT_PROCESS_START => self.start(&ProcessStart::decode(raw)?, details, EventType::Exec, header_time_ns),
            EVENT_PROCESS_STOP => self.stop(&ProcessStop::decode(raw)?, header_time_ns),
            other => Err(TranslateError::UnknownEvent(other)),
        }
    }

    /// A process start (`Exec`, from the event) or a process found by the
    /// start-up snapshot (`Snapshot`, with the same fields read from the
    /// process). Snapshot records must be fed parents first for their
    /// parent keys to resolve. The event time is the create time.
    pub fn start(
        &mut self,
        ev: &ProcessStart,
        details: &ProcessDetails,
        event_type: EventType,
        header_time_ns: i64,
    ) -> Result<ProcessEvent, TranslateError> {
        let key = self.key(ev.process_id, ev.create_time)?;
        let start_ns = filetime_to_unix_ns(ev.create_time);
        let parent_key = match ev.parent_process_id {
            Some(ppid) if ppid != ev.process_id => match self.live.get(&ppid) {
                Some(&parent_created) if parent_created <= ev.create_time => {
                    Some(self.key(ppid, parent_created)?.to_string())
                }
                _ => None,
            },
            _ => None,
        };
        let executable_path =
            details.image_path.clone().or_else(|| ev.image_name.as_deref().map(|n| self.devices.to_dos_path(n)));
        let name = executable_path.as_deref().map(file_name).filter(|n| !n.is_empty()).map(str::to_owned);
        let args = details.command_line.as_deref().map(split_command_line);
        let elevation = ev.token_elevation_type.or(details.token_elevation_type);
        let record = ProcessRecord {
            pid: ev.process_id,
            ppid: ev.parent_process_id,
            process_key: key.to_string(),
            parent_key,
            name,
            executable_path,
            argv: args.map(|args| Argv { args, truncated: false }),
            command_line: details.command_line.clone(),
            user_name: details.user_sid.clone(),
            user_sid: details.user_sid.clone(),
            start_time_ns: start_ns,
            session_id: ev.session_id,
            token_elevation_type: elevation.and_then(elevation_type_name).map(str::to_owned),
            token_elevated: ev.token_is_elevated.or(details.token_is_elevated),
            ..ProcessRecord::default()
        };
        self.live.insert(ev.process_id, ev.create_time);
        Ok(event(event_type, start_ns.unwrap_or(header_time_ns), record))
    }

    /// A process stop -> `exit` with the exit code and time (the header's
    /// time when the event has no `ExitTime`).
    pub fn stop(&mut self, ev: &ProcessStop, header_time_ns: i64) -> Result<ProcessEvent, TranslateError> {
        let key = self.key(ev.process_id, ev.create_time)?;
        if self.live.get(&ev.process_id) == Some(&ev.create_time) {
            self.live.remove(&ev.process_id);
        }
        let exit_ns = ev.exit_time.and_then(filetime_to_unix_ns);
        let record = ProcessRecord {
            pid: ev.process_id,
            process_key: key.to_string(),
            // The exit status is 32 bits: an NTSTATUS such as 0xC0000005
            // reads as a negative number, as `%ERRORLEVEL%` shows it.
            exit_code: ev.exit_code.map(|c| i32::from_ne_bytes(c.to_ne_bytes())),
            exit_time_ns: exit_ns,
            ..ProcessRecord::default()
        };
        Ok(event(EventType::Exit, exit_ns.unwrap_or(header_time_ns), record))
    }
}

fn event(t: EventType, time_ns: i64, record: ProcessRecord) -> ProcessEvent {
    ProcessEvent {
        seq: 0,
        event_type: t as i32,
        event_time_ns: time_ns,
        source: proto::EventSource::Etw as i32,
        process: Some(record),
        gap: None,
        prev_seq: 0,
    }
}

/// The last component of a Windows path.
fn file_name(path: &str) -> &str {
    path.rsplit(['\\', '/']).next().unwrap_or(path)
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
