//! The proc connector backend: the kernel's process events over netlink
//! (`NETLINK_CONNECTOR`, group `CN_IDX_PROC`), enriched from `/proc`.
//!
//! The fallback when eBPF cannot load: it needs only root (`CAP_NET_ADMIN`)
//! and `CONFIG_PROC_EVENTS`. The messages carry ids, so everything else is
//! read from `/proc` when the message arrives; a process that is already
//! gone keeps its ids and NULL elsewhere ([`translate`] says how identity
//! survives that).
//!
//! - Start-up: [`ProcConnectorSource::open`] subscribes
//!   (`PROC_CN_MCAST_LISTEN`); running the source then snapshots `/proc`
//!   (events with source `procfs`) and drains what queued meanwhile, so no
//!   process is missed.
//! - Receiving runs on its own thread (blocking `recv` with a short poll
//!   timeout so cancellation is prompt); the `/proc` reads for enrichment
//!   happen there too, right after each message, while the process most
//!   likely still exists.
//! - Loss is never silent: `ENOBUFS` on the socket becomes a `gap` event
//!   (`proc_connector_enobufs`, count unknown = 0), and skipped per-CPU
//!   message numbers become `gap` events with the exact count
//!   (`proc_connector_seq_gap`).
//! - The socket's receive buffer is set to the configured size with
//!   `SO_RCVBUFFORCE` (root may exceed `rmem_max`).
//!
//! Limits: an exit is reported when the thread-group leader exits, so a
//! process whose leader thread ends early (`pthread_exit` in `main`) is
//! reported gone then; a non-leader thread's exec may first show the old
//! leader's exit.

mod translate;

use std::time::Duration;

use collector_core::source::{EventSink, EventSource, SourceError, SourceFuture};
use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::{self, EventType, ProcessEvent};
use proc_connector::{Error as CnError, ProcConnector};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::procfs::ProcfsReader;
use translate::Translator;

/// Default receive buffer for the netlink socket.
pub const DEFAULT_RECV_BUFFER_BYTES: usize = 8 << 20;
/// How long a blocking receive waits before checking for cancellation.
const RECV_POLL: Duration = Duration::from_millis(100);
/// Events between the receiving thread and the async side.
const HANDOFF_CAPACITY: usize = 4096;
/// One receive: netlink datagrams are small, but leave room.
const RECV_BYTES: usize = 64 * 1024;

/// Errors of the proc connector backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcConnectorError {
    /// The socket could not be opened or subscribed; the reason says what
    /// to do.
    #[error("proc connector unavailable: {0}")]
    Unavailable(String),
    /// Receiving failed.
    #[error("receiving proc connector events: {0}")]
    Receive(String),
}

/// The subscribed netlink socket, ready to run as an [`EventSource`].
pub struct ProcConnectorSource {
    conn: ProcConnector,
    translator: Translator,
    snapshot: bool,
    recv_buffer: Option<usize>,
}

impl ProcConnectorSource {
    /// Opens and subscribes the socket and asks for a receive buffer of
    /// `recv_buffer_bytes` (the kernel doubles it for bookkeeping; if even
    /// root cannot set it, the default stays and a warning says so).
    ///
    /// Errors: not root, or a kernel without `CONFIG_PROC_EVENTS`.
    pub fn open(reader: ProcfsReader, recv_buffer_bytes: usize) -> Result<Self, ProcConnectorError> {
        let conn = ProcConnector::new().map_err(|e| {
            ProcConnectorError::Unavailable(format!(
                "opening the netlink proc connector: {e} (it needs root or CAP_NET_ADMIN, and a kernel with \
                 CONFIG_PROC_EVENTS)"
            ))
        })?;
        let recv_buffer = set_recv_buffer(&conn, recv_buffer_bytes);
        tracing::info!(fd = conn.as_raw_fd(), recv_buffer, "proc connector subscribed");
        Ok(Self { conn, translator: Translator::new(reader), snapshot: false, recv_buffer })
    }

    /// When run, first send a `/proc` snapshot (source `procfs`, type
    /// `snapshot`) read after subscribing, then the queued events.
    #[must_use]
    pub fn with_startup_snapshot(mut self, on: bool) -> Self {
        self.snapshot = on;
        self
    }

    /// The receive buffer the kernel granted (bytes), if it could be read.
    pub fn recv_buffer(&self) -> Option<usize> {
        self.recv_buffer
    }

    /// Blocks until a message arrives (or `timeout` passes) and appends its
    /// events to `out`. For the receiving thread and tests.
    pub fn receive(
        &mut self,
        buf: &mut [u8],
        timeout: Duration,
        out: &mut Vec<ProcessEvent>,
    ) -> Result<(), ProcConnectorError> {
        match self.conn.recv_raw_timeout(buf, timeout) {
            Ok(None) | Err(CnError::Interrupted | CnError::WouldBlock) => Ok(()),
            Ok(Some(n)) => {
                self.handle(buf.get(..n).unwrap_or_default(), out);
                Ok(())
            }
            Err(CnError::Overrun) => {
                tracing::warn!("proc connector receive buffer overflowed (ENOBUFS): events lost");
                out.push(translate::gap_event(0, translate::REASON_OVERRUN));
                Ok(())
            }
            Err(e) => Err(ProcConnectorError::Receive(e.to_string())),
        }
    }

    /// Every netlink message in one datagram.
    fn handle(&mut self, data: &[u8], out: &mut Vec<ProcessEvent>) {
        let mut pos = 0usize;
        while let Some(msg) = next_message(data, &mut pos) {
            match proc_connector::parse_netlink_message(msg, msg.len()) {
                Ok(Some(ev)) => {
                    if let Some((cpu, seq)) = cpu_seq(msg)
                        && let Some(gap) = self.translator.check_seq(cpu, seq)
                    {
                        out.push(gap);
                    }
                    self.translator.translate(&ev, out);
                }
                Ok(None) => {}
                Err(CnError::Overrun) => out.push(translate::gap_event(0, translate::REASON_OVERRUN)),
                Err(e) => tracing::debug!(error = %e, "skipping a netlink message"),
            }
        }
    }
}

impl std::fmt::Debug for ProcConnectorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcConnectorSource")
            .field("fd", &self.conn.as_raw_fd())
            .field("snapshot", &self.snapshot)
            .field("recv_buffer", &self.recv_buffer)
            .finish_non_exhaustive()
    }
}

impl EventSource for ProcConnectorSource {
    fn kind(&self) -> proto::EventSource {
        proto::EventSource::ProcConnector
    }

    fn name(&self) -> &'static str {
        "proc_connector"
    }

    fn run(self: Box<Self>, sink: EventSink, cancel: CancellationToken) -> SourceFuture {
        Box::pin(run(*self, sink, cancel))
    }
}

async fn run(src: ProcConnectorSource, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
    let (tx, mut rx) = mpsc::channel(HANDOFF_CAPACITY);
    let stop = CancellationToken::new();
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("proc-connector".into())
        .spawn(move || pump(src, &tx, &thread_stop))
        .map_err(|source| SourceError::Io { what: "starting the proc connector thread".into(), source })?;
    let forwarded = loop {
        let ev = tokio::select! {
            biased;
            () = cancel.cancelled() => break Ok(()),
            ev = rx.recv() => ev,
        };
        let Some(ev) = ev else { break Ok(()) };
        match sink.send_or_cancel(ev, &cancel).await {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    // Stop the thread (a blocked send fails once the receiver is gone) and
    // join it off the runtime.
    stop.cancel();
    drop(rx);
    let joined = tokio::task::spawn_blocking(move || thread.join())
        .await
        .map_err(|e| SourceError::Task(format!("joining the proc connector thread: {e}")))?;
    let pumped = joined.map_err(|_| SourceError::Task("the proc connector thread panicked".into()))?;
    forwarded?;
    pumped.map_err(|e| SourceError::Io { what: "proc connector".into(), source: std::io::Error::other(e.to_string()) })
}

/// The receiving thread: snapshot, then messages until `stop` or the async
/// side goes away.
fn pump(
    mut src: ProcConnectorSource,
    tx: &mpsc::Sender<ProcessEvent>,
    stop: &CancellationToken,
) -> Result<(), ProcConnectorError> {
    if src.snapshot {
        let records = src.translator.reader().snapshot();
        tracing::info!(processes = records.len(), "start-up snapshot read");
        for process in records {
            src.translator.note(&process);
            let event = ProcessEvent {
                seq: 0,
                event_type: EventType::Snapshot.into(),
                event_time_ns: now_ns(),
                source: proto::EventSource::Procfs.into(),
                process: Some(process),
                gap: None,
                prev_seq: 0,
            };
            if tx.blocking_send(event).is_err() {
                return Ok(());
            }
        }
    }
    let mut buf = vec![0u8; RECV_BYTES];
    let mut out = Vec::new();
    while !stop.is_cancelled() {
        src.receive(&mut buf, RECV_POLL, &mut out)?;
        for event in out.drain(..) {
            if tx.blocking_send(event).is_err() {
                return Ok(());
            }
        }
    }
    tracing::debug!(known = src.translator.known_len(), "proc connector stopped");
    Ok(())
}

/// Sets `SO_RCVBUFFORCE` (falling back to `SO_RCVBUF`) and returns what
/// the kernel granted.
fn set_recv_buffer(conn: &ProcConnector, bytes: usize) -> Option<usize> {
    use nix::sys::socket::{setsockopt, sockopt};
    if bytes > 0
        && let Err(forced) = setsockopt(conn, sockopt::RcvBufForce, &bytes)
        && let Err(plain) = setsockopt(conn, sockopt::RcvBuf, &bytes)
    {
        tracing::warn!(bytes, %forced, %plain, "cannot size the proc connector receive buffer; the default stays");
    }
    nix::sys::socket::getsockopt(conn, sockopt::RcvBuf).ok()
}

const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;

/// The next netlink message of a datagram (the header's length, bounds
/// checked; a bad length ends the walk).
fn next_message<'a>(data: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let rest = data.get(*pos..)?;
    let len = usize::try_from(u32::from_ne_bytes(rest.get(..4)?.try_into().ok()?)).ok()?;
    let msg = rest.get(..len).filter(|_| len >= NLMSG_HDR)?;
    *pos = pos.saturating_add(len.div_ceil(4) * 4);
    Some(msg)
}

/// `(cpu, cn_msg.seq)` of a proc event message, except the subscription
/// acknowledgement (`what == PROC_EVENT_NONE`), which is not numbered.
fn cpu_seq(msg: &[u8]) -> Option<(u32, u32)> {
    let u32_at = |off: usize| msg.get(off..off + 4).and_then(|b| b.try_into().ok()).map(u32::from_ne_bytes);
    let seq = u32_at(NLMSG_HDR + 8)?;
    let what = u32_at(NLMSG_HDR + CN_MSG_HDR)?;
    let cpu = u32_at(NLMSG_HDR + CN_MSG_HDR + 4)?;
    (what != 0).then_some((cpu, seq))
}

#[cfg(test)]
mod tests;
