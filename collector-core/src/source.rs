//! The [`EventSource`] trait that platform backends implement and the
//! collector runtime drives, and the [`EventSink`] they write into.
//!
//! A source produces `ProcessEvent`s with `seq = 0`; the runtime assigns the
//! ledger sequence when it appends. The sink is a bounded channel: when the
//! runtime falls behind, [`EventSink::send`] waits, which pushes back on the
//! source (a kernel source then loses in its ring buffer and reports a `gap`,
//! which is counted; nothing is dropped silently here).

use std::future::Future;
use std::pin::Pin;

use daemoneye_lib::proto::{self, ProcessEvent};

use crate::hash::FileIdentity;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The future a source runs as.
pub type SourceFuture = Pin<Box<dyn Future<Output = Result<(), SourceError>> + Send>>;

/// A producer of process events: eBPF, proc connector, ETW, EndpointSecurity,
/// polling.
pub trait EventSource: Send {
    /// The source recorded in the events (for `health` and logs; the events
    /// themselves carry their own `source`, which may differ, e.g. `procfs`
    /// for a start-up snapshot).
    fn kind(&self) -> proto::EventSource;

    /// A short, stable name for logs (`"ebpf"`, `"poll"`).
    fn name(&self) -> &'static str;

    /// Runs until `cancel` fires (then returns `Ok(())` promptly) or the
    /// source fails. Events go to `sink`; a closed sink ends the source with
    /// [`SourceError::SinkClosed`].
    fn run(self: Box<Self>, sink: EventSink, cancel: CancellationToken) -> SourceFuture;
}

/// Why a source stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The backend cannot run here (no BTF, no privilege, unsupported OS);
    /// the runtime falls back to the next backend.
    #[error("source {source_name} is unavailable: {reason}")]
    Unavailable {
        /// The source's name.
        source_name: &'static str,
        /// What is missing, and what to do about it.
        reason: String,
    },
    /// Enumerating processes failed.
    #[error("process enumeration failed: {0}")]
    Enumerate(String),
    /// The receiving side (the runtime) is gone.
    #[error("the event sink is closed")]
    SinkClosed,
    /// A blocking task of the source panicked or was cancelled.
    #[error("source task failed: {0}")]
    Task(String),
    /// An I/O error of the source.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// An event as a source hands it to the runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceEvent {
    /// The event.
    pub event: ProcessEvent,
    /// The running image of an exec, when the source read its inode (the
    /// eBPF exec record does): the runtime looks its hash up in the cache
    /// without a `stat`.
    pub image: Option<FileIdentity>,
}

impl From<ProcessEvent> for SourceEvent {
    fn from(event: ProcessEvent) -> Self {
        Self { event, image: None }
    }
}

/// Where a source sends its events: a bounded channel to the runtime.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: mpsc::Sender<SourceEvent>,
}

impl EventSink {
    /// A sink and its receiving end, holding at most `capacity` events
    /// (at least 1).
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<SourceEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, rx)
    }

    /// Wraps an existing sender.
    pub fn new(tx: mpsc::Sender<SourceEvent>) -> Self {
        Self { tx }
    }

    /// Sends one event, waiting while the channel is full (backpressure).
    /// The event's `seq` is reset to 0: only the runtime assigns sequence
    /// numbers.
    pub async fn send(&self, event: impl Into<SourceEvent>) -> Result<(), SourceError> {
        let mut event = event.into();
        event.event.seq = 0;
        self.tx.send(event).await.map_err(|_| SourceError::SinkClosed)
    }

    /// Like [`EventSink::send`], but gives up when `cancel` fires first.
    /// Returns `Ok(false)` when cancelled (the event was not sent).
    pub async fn send_or_cancel(
        &self,
        event: impl Into<SourceEvent>,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Ok(false),
            r = self.send(event) => r.map(|()| true),
        }
    }

    /// Free slots in the channel now (for queue-depth metrics).
    pub fn capacity(&self) -> usize {
        self.tx.capacity()
    }

    /// True when the runtime dropped the receiver.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sink_resets_seq_blocks_when_full_and_reports_closed() {
        let (sink, mut rx) = EventSink::channel(1);
        sink.send(ProcessEvent { seq: 42, ..Default::default() }).await.unwrap();
        assert_eq!(sink.capacity(), 0);
        // Full: a second send waits until the receiver makes room.
        let cancel = CancellationToken::new();
        let pending = tokio::time::timeout(Duration::from_millis(50), sink.send(ProcessEvent::default()));
        assert!(pending.await.is_err());
        cancel.cancel();
        assert!(!sink.send_or_cancel(ProcessEvent::default(), &cancel).await.unwrap());
        assert_eq!(rx.recv().await.unwrap().event.seq, 0);
        drop(rx);
        assert!(sink.is_closed());
        assert!(matches!(sink.send(ProcessEvent::default()).await, Err(SourceError::SinkClosed)));
    }
}
