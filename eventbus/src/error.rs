//! The crate's error type, [`BusError`].
//!
//! Every variant says what failed, where (socket path, topic, subscription)
//! and, where there is something to do, what to do. Errors the broker sends
//! back over the wire (`daemoneye.v1.BusError` frames) surface on the client
//! side as [`BusError::Remote`] or, for refusals, [`BusError::AccessDenied`]
//! and [`BusError::InvalidTopic`].

use std::path::PathBuf;
use std::time::Duration;

use daemoneye_lib::proto::BusErrorCode;

use crate::topic::TopicError;

/// Errors of the event bus broker and clients.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Nothing listens on the socket: the file is missing or the broker is
    /// not running. Callers (procmond) reconnect with backoff.
    #[error(
        "event bus socket {path} is not available ({source}); is the agent running? \
         retry with backoff"
    )]
    BrokerUnavailable {
        /// The socket path that was tried.
        path: PathBuf,
        /// The underlying error (`NotFound`, `ConnectionRefused`, ...).
        #[source]
        source: std::io::Error,
    },

    /// Connecting to the socket failed for another reason (permissions, ...).
    #[error(
        "cannot connect to event bus socket {path}: {source}; check that this user may \
         open the socket (mode 0660, group daemoneye; on Windows the pipe admits SYSTEM and \
         elevated administrators)"
    )]
    Connect {
        /// The socket path that was tried.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The broker could not bind its socket.
    #[error("cannot bind event bus socket {path}: {reason}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What went wrong and what to do.
        reason: String,
    },

    /// Another broker already serves this socket.
    #[error(
        "event bus socket {path} is served by another running broker; stop it or \
         configure another run directory"
    )]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },

    /// The Hello/Welcome handshake failed.
    #[error("event bus handshake on {path} failed: {reason}")]
    Handshake {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },

    /// A frame's announced length exceeds the configured maximum.
    #[error(
        "frame of {len} bytes exceeds the maximum of {max} bytes; split the payload or \
         raise max_frame_size"
    )]
    FrameTooLarge {
        /// Announced or encoded length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },

    /// A frame could not be decoded as a `BusMessage`.
    #[error("malformed event bus frame: {reason}")]
    MalformedFrame {
        /// Decoder diagnostics.
        reason: String,
    },

    /// A frame was started but not completed in time (a stalled peer).
    #[error("incomplete frame: {received} bytes received, the rest did not arrive within {after:?}")]
    FrameTimeout {
        /// Bytes of the frame received so far.
        received: usize,
        /// The frame timeout.
        after: Duration,
    },

    /// The peer broke the protocol (unexpected message, unknown kind, ...).
    #[error("event bus protocol violation: {reason}")]
    Protocol {
        /// What was wrong.
        reason: String,
    },

    /// A topic or pattern is not valid.
    #[error("invalid topic or pattern {topic:?}: {source}")]
    InvalidTopic {
        /// The offending topic or pattern.
        topic: String,
        /// Why it is invalid.
        #[source]
        source: TopicError,
    },

    /// The broker refused a publish or subscribe.
    #[error("access denied on {topic:?}: {message}")]
    AccessDenied {
        /// The topic or pattern that was refused.
        topic: String,
        /// The broker's explanation.
        message: String,
    },

    /// Any other error frame the broker sent.
    #[error("event bus broker reported {code:?}: {message}")]
    Remote {
        /// Error code from the frame.
        code: BusErrorCode,
        /// Message from the frame.
        message: String,
        /// The message or subscription it refers to (0 if none).
        ref_id: u64,
    },

    /// The connection to the broker is gone (broker stopped, connection
    /// closed after an error). Callers reconnect with backoff.
    #[error("event bus connection to {path} closed: {reason}; reconnect with backoff")]
    ConnectionClosed {
        /// The socket path (or `<local>` for in-process clients).
        path: PathBuf,
        /// Why, when known.
        reason: String,
    },

    /// A request got no answer in time.
    #[error("event bus request {what} got no answer within {after:?}; the broker may be overloaded")]
    Timeout {
        /// The request, e.g. `publish_acked to events.process.lifecycle`.
        what: String,
        /// How long we waited.
        after: Duration,
    },

    /// The broker is shutting down or has stopped.
    #[error("event bus broker is shut down")]
    Shutdown,

    /// An I/O error with context.
    #[error("event bus I/O error while {context}: {source}")]
    Io {
        /// What the code was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl BusError {
    /// The wire error code that corresponds to this error, for errors the
    /// broker reports to clients.
    pub fn code(&self) -> BusErrorCode {
        match self {
            Self::FrameTooLarge { .. } => BusErrorCode::FrameTooLarge,
            Self::MalformedFrame { .. } => BusErrorCode::MalformedFrame,
            Self::Protocol { .. } | Self::Handshake { .. } | Self::FrameTimeout { .. } => BusErrorCode::Protocol,
            Self::InvalidTopic { .. } => BusErrorCode::InvalidTopic,
            Self::AccessDenied { .. } => BusErrorCode::AccessDenied,
            Self::Remote { code, .. } => *code,
            _ => BusErrorCode::Unspecified,
        }
    }

    /// True when the error means "the broker is not there (any more)": the
    /// caller should reconnect with backoff.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Self::BrokerUnavailable { .. } | Self::ConnectionClosed { .. } | Self::Shutdown)
    }

    /// Builds the client-side error for an error frame received from the
    /// broker. `topic` is the topic or pattern of the request, when known.
    pub(crate) fn from_wire(frame: &daemoneye_lib::proto::BusError, topic: &str) -> Self {
        let code = BusErrorCode::try_from(frame.code).unwrap_or(BusErrorCode::Unspecified);
        match code {
            BusErrorCode::AccessDenied => {
                Self::AccessDenied { topic: topic.to_owned(), message: frame.message.clone() }
            }
            _ => Self::Remote { code, message: frame.message.clone(), ref_id: frame.ref_id },
        }
    }
}

impl From<std::io::Error> for BusError {
    fn from(source: std::io::Error) -> Self {
        Self::Io { context: "reading or writing the bus socket".to_owned(), source }
    }
}
