//! The audit ledger: procmond's write-ahead log and the evidence for
//! forensic replay (see `docs/ledger-format.md` for the byte layout).
//!
//! An append-only, hash-chained sequence of records in size-rotated segment
//! files. Every record carries `entry_hash = BLAKE3(domain || fields ||
//! prev_hash)`, so changing, removing, reordering or inserting any record
//! breaks a link; signed checkpoints (ed25519, key created at first start)
//! make the chain unforgeable without the private key.
//!
//! - [`LedgerWriter`] (procmond only): group-committed appends, rotation,
//!   checkpoints, and crash recovery of a torn tail on open.
//! - [`LedgerReader`] (agent, CLI): iterate from any seq; never locks, never
//!   blocks the writer, stops cleanly at a record still being written.
//! - [`verify()`]: every link, hash, seq and checkpoint signature; names the
//!   first bad record by seq, file and offset.
//!
//! *Architecture invariant:* only [`LedgerWriter`] writes into a ledger
//! directory, and only one at a time (an advisory lock enforces it);
//! readers never write anything, not even a lock file.

mod error;
mod format;
mod keys;
mod reader;
mod recover;
mod scan;
mod verify;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_tamper;

use std::path::PathBuf;

pub use error::LedgerError;
pub use format::{AuditRecord, Checkpoint, MAX_PAYLOAD};
pub use keys::{PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, read_public_key};
pub use reader::{LedgerIter, LedgerReader};
pub use recover::{RecoveryReport, Truncation};
pub use verify::{Tamper, VerifyOptions, VerifyReport, verify, verify_with};
pub use writer::{LedgerWriter, SyncDone, SyncJob};

/// What a record holds. The byte value is part of the format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// A `ProcessEvent` (protobuf) from the collector.
    Event = 1,
    /// Events known to be lost (protobuf, defined by the collector).
    Gap = 2,
    /// A signed checkpoint, written by the ledger itself ([`Checkpoint`]).
    Checkpoint = 3,
    /// A security-relevant action ([`AuditRecord`]).
    Audit = 4,
}

impl RecordKind {
    /// The kind for a byte read from disk.
    pub fn from_u8(b: u8) -> Option<RecordKind> {
        match b {
            1 => Some(RecordKind::Event),
            2 => Some(RecordKind::Gap),
            3 => Some(RecordKind::Checkpoint),
            4 => Some(RecordKind::Audit),
            _ => None,
        }
    }
}

/// Where a record is: segment file and byte offset of its length field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLocation {
    /// The segment file.
    pub file: PathBuf,
    /// Byte offset of the record within the file.
    pub offset: u64,
}

impl std::fmt::Display for RecordLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} offset {}", self.file.display(), self.offset)
    }
}

/// One record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRecord {
    /// Sequence number (1, 2, 3, ... with no gaps).
    pub seq: u64,
    /// Unix time in nanoseconds, as given by the writer.
    pub time_ns: i64,
    /// What the payload is.
    pub kind: RecordKind,
    /// Protobuf bytes (opaque to the ledger for events and gaps).
    pub payload: Vec<u8>,
    /// Entry hash of the previous record (zeros for seq 1).
    pub prev_hash: [u8; 32],
    /// This record's entry hash.
    pub entry_hash: [u8; 32],
    /// Where it was read from.
    pub location: RecordLocation,
}

impl LedgerRecord {
    /// Decodes the payload of an audit record.
    pub fn audit(&self) -> Option<AuditRecord> {
        (self.kind == RecordKind::Audit).then(|| AuditRecord::decode(&self.payload).ok()).flatten()
    }

    /// Decodes the payload of a checkpoint record.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        (self.kind == RecordKind::Checkpoint).then(|| Checkpoint::decode(&self.payload)).flatten()
    }
}

/// Current Unix time in nanoseconds (for records the ledger writes itself).
pub(crate) fn now_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}
