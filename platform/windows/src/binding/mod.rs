//! The ETW binding: a private real-time session on
//! `Microsoft-Windows-Kernel-Process` (keyword `WINEVENT_KEYWORD_PROCESS`)
//! through ferrisetw, the start-up snapshot under SeDebugPrivilege, and the
//! hand-off of translated events to the collector.
//!
//! Start-up order, as on Linux: the session is started first
//! ([`EtwSource::start`], so a failure lets `auto` fall back at once), then
//! [`EtwSource::run`] takes the snapshot, then applies the events queued
//! since the session started. Nothing between the two is missed; a process
//! seen by both is reported twice with the same key, which merges.
//!
//! The ETW callback runs on ferrisetw's processing thread: it reads the
//! event's fields and, for a start, the live process's command line and
//! token (the process may be gone a moment later), then `try_send`s into a
//! bounded queue. When the queue is full the event is dropped and counted,
//! and the next event is preceded by a `gap` with the count.

mod privilege;
pub mod process;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::{self, EventType, GapInfo, ProcessEvent, ProcessRecord};
use ferrisetw::parser::Parser;
use ferrisetw::provider::Provider;
use ferrisetw::trace::{UserTrace, stop_trace_by_name};
use ferrisetw::{EventRecord, SchemaLocator};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use privilege::DebugPrivilege;

use crate::fields::{
    EVENT_PROCESS_START, EVENT_PROCESS_STOP, FieldType, FieldValue, KEYWORD_PROCESS, PROCESS_START_FIELDS,
    PROCESS_STOP_FIELDS, PROVIDER_GUID, RawEvent,
};
use crate::translate::{FILETIME_UNIX_EPOCH, ProcessDetails, Translator};

/// The name of DaemonEye's ETW session (visible in `logman query -ets`).
pub const SESSION_NAME: &str = "DaemonEye-procmond";

/// Why the ETW source failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtwError {
    /// The session could not start.
    #[error(
        "cannot start the ETW session {SESSION_NAME} on {PROVIDER_GUID}: {0} (procmond must run as LocalSystem \
         or an administrator, and fewer than 64 sessions may exist)"
    )]
    Start(String),
    /// The start-up snapshot failed.
    #[error("start-up process snapshot failed: {0}")]
    Snapshot(String),
    /// The receiver of the events is gone.
    #[error("the event sink is closed")]
    SinkClosed,
}

type Queued = (RawEvent, ProcessDetails, i64);

/// A running ETW session and the queue its callback fills.
pub struct EtwSource {
    trace: UserTrace,
    rx: mpsc::Receiver<Queued>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for EtwSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtwSource").field("dropped", &self.dropped.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl EtwSource {
    /// Starts the session; events queue (at most `capacity`) until
    /// [`EtwSource::run`]. A session left by a crashed procmond is stopped
    /// first.
    pub fn start(capacity: usize) -> Result<Self, EtwError> {
        let (tx, rx) = mpsc::channel::<Queued>(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        let callback = move |record: &EventRecord, locator: &SchemaLocator| {
            let Some(item) = read_event(record, locator) else { return };
            if tx.try_send(item).is_err() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        };
        let provider = Provider::by_guid(PROVIDER_GUID).any(KEYWORD_PROCESS).add_callback(callback).build();
        // A stale session of the same name makes the start fail; ignore
        // "not found".
        let _ = stop_trace_by_name(SESSION_NAME);
        let trace = UserTrace::new()
            .named(SESSION_NAME.to_owned())
            .enable(provider)
            .start_and_process()
            .map_err(|e| EtwError::Start(format!("{e:?}")))?;
        tracing::info!(session = SESSION_NAME, "ETW session started on Microsoft-Windows-Kernel-Process");
        Ok(Self { trace, rx, dropped })
    }

    /// Takes the snapshot (under SeDebugPrivilege, removed afterwards), then
    /// forwards events through `send` until `cancel` fires. `send` waiting is
    /// backpressure; its error ends the source with [`EtwError::SinkClosed`].
    pub async fn run<F, Fut, E>(self, mut send: F, cancel: CancellationToken) -> Result<(), EtwError>
    where
        F: FnMut(ProcessEvent) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let Self { trace, mut rx, dropped } = self;
        let mut translator = Translator::new(&process::boot_id(), process::device_map());
        let snapshot = tokio::task::spawn_blocking(|| {
            let privilege = DebugPrivilege::enable();
            if let Err(e) = &privilege {
                tracing::warn!(error = %e, "snapshot without SeDebugPrivilege: protected and other users' processes lack details");
            }
            let snap = process::snapshot();
            if let Ok(p) = privilege
                && let Err(e) = p.remove()
            {
                tracing::warn!(error = %e, "SeDebugPrivilege is still in the token");
            }
            snap
        })
        .await
        .map_err(|e| EtwError::Snapshot(e.to_string()))?
        .map_err(|e| EtwError::Snapshot(e.to_string()))?;
        let (processes, skipped) = snapshot;
        tracing::info!(processes = processes.len(), skipped, "start-up snapshot taken");
        let now = now_ns();
        for (start, details) in &processes {
            match translator.start(start, details, EventType::Snapshot, now) {
                Ok(ev) => send(ev).await.map_err(|_| EtwError::SinkClosed)?,
                Err(e) => tracing::warn!(error = %e, pid = start.process_id, "snapshot record skipped"),
            }
        }
        let result = loop {
            let item = tokio::select! {
                biased;
                () = cancel.cancelled() => break Ok(()),
                item = rx.recv() => item,
            };
            let Some((raw, details, header_ns)) = item else {
                break Err(EtwError::Start("the ETW processing thread ended".into()));
            };
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                tracing::warn!(lost, "ETW events dropped: the queue was full");
                if send(gap(lost, header_ns)).await.is_err() {
                    break Err(EtwError::SinkClosed);
                }
            }
            match translator.translate(&raw, &details, header_ns) {
                Ok(ev) => {
                    if send(ev).await.is_err() {
                        break Err(EtwError::SinkClosed);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ETW event skipped"),
            }
        };
        if let Err(e) = trace.stop() {
            tracing::warn!(error = ?e, session = SESSION_NAME, "stopping the ETW session failed");
        }
        result
    }
}

fn gap(lost: u64, time_ns: i64) -> ProcessEvent {
    ProcessEvent {
        seq: 0,
        event_type: EventType::Gap as i32,
        event_time_ns: time_ns,
        source: proto::EventSource::Etw as i32,
        process: Some(ProcessRecord::default()),
        gap: Some(GapInfo { lost_events: lost, reason: "etw_queue_full".into() }),
        prev_seq: 0,
    }
}

/// Reads one event's fields (and, for a start, the live process); `None`
/// for events other than start/stop or without a schema.
fn read_event(record: &EventRecord, locator: &SchemaLocator) -> Option<Queued> {
    let fields = match record.event_id() {
        EVENT_PROCESS_START => PROCESS_START_FIELDS,
        EVENT_PROCESS_STOP => PROCESS_STOP_FIELDS,
        _ => return None,
    };
    let schema = match locator.event_schema(record) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = ?e, event_id = record.event_id(), "no TDH schema for the event; skipped");
            return None;
        }
    };
    let parser = Parser::create(record, &schema);
    let mut raw = RawEvent::new(record.event_id(), record.version());
    for (name, ty) in fields {
        let value = match ty {
            FieldType::U32 => parser.try_parse::<u32>(name).ok().map(FieldValue::U32),
            FieldType::U64 => parser.try_parse::<u64>(name).ok().map(FieldValue::U64),
            FieldType::Str => parser.try_parse::<String>(name).ok().map(FieldValue::Str),
            FieldType::FileTime => parser
                .try_parse::<ferrisetw::native::time::FileTime>(name)
                .ok()
                .and_then(|t| i64::try_from(t.as_unix_timestamp_nanos() / 100).ok())
                .map(|t| FieldValue::FileTime(t.saturating_add(FILETIME_UNIX_EPOCH))),
        };
        if let Some(v) = value {
            raw.fields.push(((*name).to_owned(), v));
        }
    }
    let details = match (record.event_id(), raw.fields.iter().find(|(n, _)| n == "ProcessID")) {
        (EVENT_PROCESS_START, Some((_, FieldValue::U32(pid)))) => process::details(*pid),
        _ => ProcessDetails::default(),
    };
    let header_ns = record.raw_timestamp().saturating_sub(FILETIME_UNIX_EPOCH).saturating_mul(100);
    Some((raw, details, header_ns))
}

/// procmond cannot be type-checked for Windows yet (the event bus is
/// Unix-only), so this checks here what its adapter relies on: the source
/// and its `run` future can move between tokio worker threads.
#[cfg(test)]
mod send_check {
    use super::*;

    fn is_send<T: Send>(_: &T) {}

    #[allow(dead_code)]
    fn run_future_is_send(source: EtwSource, cancel: CancellationToken) {
        is_send(&source);
        let future = source.run(|_ev| async { Ok::<(), ()>(()) }, cancel);
        is_send(&future);
    }
}
