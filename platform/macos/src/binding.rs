//! The EndpointSecurity binding: an `es_client_t` (endpoint-sec) subscribed
//! to `NOTIFY_EXEC`, `NOTIFY_FORK` and `NOTIFY_EXIT`, the start-up snapshot
//! (`proc_listallpids` + `proc_pidinfo`), and the hand-off of translated
//! events to the collector.
//!
//! Start-up order, as on Linux: the client subscribes first
//! ([`EsSource::start`], so a missing entitlement or TCC approval lets
//! `auto` fall back at once), then [`EsSource::run`] takes the snapshot,
//! then applies the messages queued since. The client lives on its own
//! thread (it is not `Send`); its handler copies each message into the pure
//! [`EsMessage`] and `try_send`s it into a bounded queue; when full, the
//! message is dropped, counted, and reported as a `gap`. NOTIFY messages
//! have no deadline, so nothing here can get the client killed.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::{self, EventType, GapInfo, ProcessEvent, ProcessRecord};
use endpoint_sec::sys::es_event_type_t;
use endpoint_sec::{Client, Event, Message, Process};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::translate::{EsEvent, EsMessage, EsProcess, Translator};

/// Why the EndpointSecurity source failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EsError {
    /// The client could not be created or subscribed.
    #[error(
        "cannot start the EndpointSecurity client: {0} (procmond needs root, the \
         com.apple.developer.endpoint-security.client entitlement and Full Disk Access)"
    )]
    Start(String),
    /// The receiver of the events is gone.
    #[error("the event sink is closed")]
    SinkClosed,
}

/// A subscribed EndpointSecurity client and the queue its handler fills.
#[derive(Debug)]
pub struct EsSource {
    rx: mpsc::Receiver<EsMessage>,
    dropped: Arc<AtomicU64>,
    stop: std::sync::mpsc::Sender<()>,
}

impl EsSource {
    /// Creates the client on its own thread and subscribes it; messages
    /// queue (at most `capacity`) until [`EsSource::run`].
    pub fn start(capacity: usize) -> Result<Self, EsError> {
        let (major, minor, patch) =
            os_version().ok_or_else(|| EsError::Start("cannot read kern.osproductversion".into()))?;
        if major < 11 {
            return Err(EsError::Start(format!("macOS {major}.{minor} is older than 11")));
        }
        endpoint_sec::version::set_runtime_version(major, minor, patch);
        let (tx, rx) = mpsc::channel::<EsMessage>(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let counter = AssertUnwindSafe(Arc::clone(&dropped));
        let tx = AssertUnwindSafe(tx);
        std::thread::Builder::new()
            .name("es-client".into())
            .spawn(move || {
                let handler = move |_: &mut Client<'_>, message: Message| {
                    let Some(m) = copy_message(&message) else { return };
                    if tx.try_send(m).is_err() {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                };
                let mut client = match Client::new(handler) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("es_new_client: {e:?}")));
                        return;
                    }
                };
                let events = [
                    es_event_type_t::ES_EVENT_TYPE_NOTIFY_EXEC,
                    es_event_type_t::ES_EVENT_TYPE_NOTIFY_FORK,
                    es_event_type_t::ES_EVENT_TYPE_NOTIFY_EXIT,
                ];
                if let Err(e) = client.subscribe(&events) {
                    let _ = ready_tx.send(Err(format!("es_subscribe: {e:?}")));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                // Until the source is dropped; then the client is deleted.
                let _ = stopped.recv();
                drop(client);
            })
            .map_err(|e| EsError::Start(format!("cannot spawn the client thread: {e}")))?;
        ready_rx.recv().map_err(|_| EsError::Start("the client thread ended".into()))?.map_err(EsError::Start)?;
        tracing::info!("EndpointSecurity client subscribed to NOTIFY_EXEC, NOTIFY_FORK, NOTIFY_EXIT");
        Ok(Self { rx, dropped, stop })
    }

    /// Takes the snapshot, then forwards events through `send` until
    /// `cancel` fires. `send` waiting is backpressure; its error ends the
    /// source with [`EsError::SinkClosed`].
    pub async fn run<F, Fut, E>(self, mut send: F, cancel: CancellationToken) -> Result<(), EsError>
    where
        F: FnMut(ProcessEvent) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let Self { mut rx, dropped, stop } = self;
        let mut translator = Translator::new(&boot_session_uuid().unwrap_or_default());
        let snapshot = tokio::task::spawn_blocking(crate::snapshot::processes).await.unwrap_or_default();
        let now = now_ns();
        for p in &snapshot {
            match translator.snapshot(p, now) {
                Ok(ev) => send(ev).await.map_err(|_| EsError::SinkClosed)?,
                Err(e) => tracing::warn!(error = %e, pid = p.pid, "snapshot record skipped"),
            }
        }
        tracing::info!(processes = snapshot.len(), "start-up snapshot taken");
        let result = loop {
            let msg = tokio::select! {
                biased;
                () = cancel.cancelled() => break Ok(()),
                m = rx.recv() => m,
            };
            let Some(msg) = msg else { break Err(EsError::Start("the client thread ended".into())) };
            let lost = dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                tracing::warn!(lost, "EndpointSecurity messages dropped: the queue was full");
                if send(gap(lost, msg.time_ns)).await.is_err() {
                    break Err(EsError::SinkClosed);
                }
            }
            match translator.translate(&msg) {
                Ok(ev) => {
                    if send(ev).await.is_err() {
                        break Err(EsError::SinkClosed);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "EndpointSecurity message skipped"),
            }
        };
        let _ = stop.send(());
        result
    }
}

fn gap(lost: u64, time_ns: i64) -> ProcessEvent {
    ProcessEvent {
        seq: 0,
        event_type: EventType::Gap as i32,
        event_time_ns: time_ns,
        source: proto::EventSource::EndpointSecurity as i32,
        process: Some(ProcessRecord::default()),
        gap: Some(GapInfo { lost_events: lost, reason: "es_queue_full".into() }),
        prev_seq: 0,
    }
}

fn copy_process(p: &Process<'_>) -> EsProcess {
    let token = p.audit_token();
    let start = p.start_time().and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    EsProcess {
        pid: token.pid(),
        ruid: token.ruid(),
        rgid: token.rgid(),
        euid: token.euid(),
        egid: token.egid(),
        ppid: p.ppid(),
        original_ppid: p.original_ppid(),
        session_id: p.session_id(),
        codesigning_flags: p.codesigning_flags(),
        is_platform_binary: p.is_platform_binary(),
        cdhash: p.cdhash(),
        signing_id: p.signing_id().to_string_lossy().into_owned(),
        team_id: p.team_id().to_string_lossy().into_owned(),
        executable_path: p.executable().path().to_string_lossy().into_owned(),
        path_truncated: p.executable().path_truncated(),
        start_time: start.and_then(|d| Some((i64::try_from(d.as_secs()).ok()?, i64::from(d.subsec_micros())))),
        responsible_pid: p.responsible_audit_token().map(|t| t.pid()),
    }
}

fn copy_message(m: &Message) -> Option<EsMessage> {
    let event = match m.event()? {
        Event::NotifyExec(e) => EsEvent::Exec {
            target: copy_process(&e.target()),
            args: e.args().map(|a| a.to_string_lossy().into_owned()).collect(),
            cwd: e.cwd().map(|f| f.path().to_string_lossy().into_owned()),
        },
        Event::NotifyFork(e) => EsEvent::Fork { child: copy_process(&e.child()) },
        Event::NotifyExit(e) => EsEvent::Exit { stat: e.stat() },
        _ => return None,
    };
    let time_ns = m.time().duration_since(UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_nanos()).ok())?;
    Some(EsMessage { version: m.version(), time_ns, process: copy_process(&m.process()), event })
}

/// `sysctlbyname(name)` as a string.
fn sysctl_string(name: &str) -> Option<String> {
    let cname = std::ffi::CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    let mut len = buf.len();
    // SAFETY: `cname` is NUL-terminated; `buf` holds `len` bytes and `len`
    // is updated to the bytes written; no new value is set (null, 0).
    #[allow(unsafe_code)]
    let rc = unsafe { libc::sysctlbyname(cname.as_ptr(), buf.as_mut_ptr().cast(), &mut len, std::ptr::null_mut(), 0) };
    if rc != 0 {
        return None;
    }
    buf.truncate(len);
    let text = String::from_utf8_lossy(&buf);
    Some(text.trim_end_matches('\0').trim().to_owned())
}

/// The boot stand-in of the process key: the boot session UUID.
fn boot_session_uuid() -> Option<String> {
    sysctl_string("kern.bootsessionuuid").filter(|s| !s.is_empty())
}

/// macOS `major.minor.patch` from `kern.osproductversion`.
fn os_version() -> Option<(u64, u64, u64)> {
    let v = sysctl_string("kern.osproductversion")?;
    let mut parts = v.split('.').map(|p| p.parse::<u64>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}
