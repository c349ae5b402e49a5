//! The ledger's one error type.

use std::path::PathBuf;

use super::RecordKind;

/// Everything that can go wrong opening, writing, reading or verifying a
/// ledger. Every variant names the file (and offset where there is one) and
/// its message says what to do.
///
/// Tampering found by [`verify`](super::verify()) is *not* an error: it is
/// reported in [`VerifyReport::problem`](super::VerifyReport::problem).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A file system operation failed.
    #[error("ledger: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("open", "read", "fdatasync", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the writer lock.
    #[error(
        "ledger {}: another writer holds {}; only one procmond may write a ledger (stop the other one)",
        dir.display(),
        lock.display()
    )]
    Locked {
        /// The ledger directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A segment header is unreadable (wrong magic, unknown version, or a
    /// first seq that disagrees with the file name).
    #[error("ledger segment {}: bad header: {what}; run `daemoneye-cli ledger verify` and restore the file from a copy", file.display())]
    BadHeader {
        /// The segment file.
        file: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A record cannot be decoded or does not link (found while reading).
    #[error("ledger segment {} offset {offset} (seq {seq}): {what}; run `daemoneye-cli ledger verify` for the full report", file.display())]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte offset of the record in the file.
        offset: u64,
        /// The seq expected at this position.
        seq: u64,
        /// What is wrong.
        what: String,
    },
    /// A key file is missing, malformed or too widely readable.
    #[error("ledger key {}: {what}", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do.
        what: String,
    },
    /// The exported public key next to the ledger (or, when it is missing,
    /// the newest checkpoint) is not the writer's key.
    #[error(
        "ledger public key {} (or, if it is missing, the ledger's last checkpoint) does not match the signing key in {}: the key directory was replaced or the ledger belongs to another host; restore the original key, or move the ledger aside to start a new one",
        public.display(),
        private.display()
    )]
    KeyMismatch {
        /// `ledger.pub` in the ledger directory.
        public: PathBuf,
        /// The private key file.
        private: PathBuf,
    },
    /// Verification needs a public key and none was given or found.
    #[error("ledger {}: no public key: pass one explicitly or restore {}", dir.display(), expected.display())]
    NoPublicKey {
        /// The ledger directory.
        dir: PathBuf,
        /// Where `ledger.pub` was looked for.
        expected: PathBuf,
    },
    /// The directory holds no segment files.
    #[error("ledger {}: no segment files (NNNNNNNNNNNNNNNNNNNN.log): wrong directory?", dir.display())]
    Empty {
        /// The ledger directory.
        dir: PathBuf,
    },
    /// A payload exceeds [`MAX_PAYLOAD`](super::MAX_PAYLOAD).
    #[error("ledger: payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Only the writer itself writes checkpoint records.
    #[error("ledger: records of kind {0:?} are written by the ledger itself, not appended")]
    ReservedKind(RecordKind),
    /// An earlier write or fdatasync failed; the file state is unknown.
    #[error("ledger {}: an earlier write failed; reopen the writer to recover the tail", file.display())]
    Poisoned {
        /// The segment being written.
        file: PathBuf,
    },
}

impl LedgerError {
    /// Wraps an I/O error with the operation and path.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LedgerError::Io { op, path: path.into(), source }
    }
}
