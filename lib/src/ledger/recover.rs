//! Crash recovery on open: find the end of the chain in the last segment,
//! cut (and preserve) a torn or bad tail, describe it for the audit record.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use super::format::{Checkpoint, HEADER_LEN, Header, ZERO_HASH, list_segments, segment_path, sync_dir};
use super::scan::{Scanner, Step};
use super::writer::create_segment;
use super::{AuditRecord, LedgerError, RecordKind, keys, now_ns};

/// Read size for scanning the last segment on open.
const SCAN_CHUNK: usize = 1024 * 1024;

/// What [`LedgerWriter::open`] found and repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files present after recovery.
    pub segments: usize,
    /// Records verified in the last segment.
    pub tail_records_checked: u64,
    /// Last seq before the recovery audit record (0: empty ledger).
    pub last_seq: u64,
    /// The cut tail, if the last segment ended in a torn or bad record.
    pub truncated: Option<Truncation>,
    /// Segment files shorter than a header (crash while creating) removed.
    pub removed_segments: Vec<PathBuf>,
    /// Seq of the audit record describing the repair, if there was one.
    pub audit_seq: Option<u64>,
}

/// A tail cut off the last segment on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment.
    pub file: PathBuf,
    /// Where the cut was made (end of the last good record).
    pub offset: u64,
    /// How many bytes were cut.
    pub bytes: u64,
    /// The seq the first cut record would have had (now reused).
    pub first_lost_seq: u64,
    /// Why the bytes at `offset` were not a good record.
    pub reason: String,
    /// The cut bytes are preserved here (nothing is destroyed).
    pub saved_to: PathBuf,
    /// BLAKE3 of the cut bytes (hex), also in the audit record.
    pub blake3: String,
}

/// The state of the chain at the end of the last segment.
pub(crate) struct Tail {
    pub(crate) seg_path: PathBuf,
    pub(crate) seg_bytes: u64,
    pub(crate) seg_records: u64,
    pub(crate) last_seq: u64,
    pub(crate) last_hash: [u8; 32],
    pub(crate) since_checkpoint: u64,
}

/// Finds the end of the chain in the last segment, cutting a bad tail.
///
/// With `key_check`, the newest checkpoint of the last segment must verify
/// under that key (checked before anything is cut).
pub(crate) fn recover_tail(
    dir: &Path,
    report: &mut RecoveryReport,
    key_check: Option<(&VerifyingKey, &Path)>,
) -> Result<Tail, LedgerError> {
    let mut segments = list_segments(dir)?;
    loop {
        let Some((first_seq, path)) = segments.pop() else {
            let header = Header { first_seq: 1, prev_hash: ZERO_HASH };
            let path = segment_path(dir, 1);
            drop(create_segment(dir, &path, &header)?);
            return Ok(Tail {
                seg_path: path,
                seg_bytes: HEADER_LEN as u64,
                seg_records: 0,
                last_seq: 0,
                last_hash: ZERO_HASH,
                since_checkpoint: 0,
            });
        };
        let file_len = std::fs::metadata(&path).map_err(|e| LedgerError::io("stat", &path, e))?.len();
        let mut sc = Scanner::open(&path, SCAN_CHUNK)?;
        let Some(header) = sc.header()? else {
            // Shorter than a header: the writer crashed while creating it
            // (header and fdatasync come before any record), so it holds
            // nothing. Remove it and continue from the previous segment.
            std::fs::remove_file(&path).map_err(|e| LedgerError::io("remove torn segment", &path, e))?;
            sync_dir(dir)?;
            report.removed_segments.push(path);
            continue;
        };
        if header.first_seq != first_seq {
            return Err(LedgerError::BadHeader {
                file: path,
                what: format!("header says first seq {}, file name says {first_seq}", header.first_seq),
            });
        }
        let mut t = Tail {
            seg_path: path.clone(),
            seg_bytes: HEADER_LEN as u64,
            seg_records: 0,
            last_seq: first_seq.saturating_sub(1),
            last_hash: header.prev_hash,
            since_checkpoint: 0,
        };
        let mut last_checkpoint = None;
        let bad = loop {
            let expected = t.last_seq.saturating_add(1);
            let r = match sc.peek()? {
                Step::Record(r) => r,
                Step::End => break None,
                Step::Incomplete { avail } => {
                    break Some(format!("incomplete record ({avail} bytes)"));
                }
                Step::Invalid(what) => break Some(what),
            };
            let what = if r.seq != expected {
                Some(format!("seq {} where {expected} was expected", r.seq))
            } else if *r.prev_hash != t.last_hash {
                Some("prev_hash does not link to the previous record".to_owned())
            } else if r.computed_hash() != *r.entry_hash {
                Some("entry_hash does not match the record".to_owned())
            } else if RecordKind::from_u8(r.kind).is_none() {
                Some(format!("unknown record kind {}", r.kind))
            } else {
                None
            };
            if what.is_some() {
                break what;
            }
            let (len, hash, kind) = (r.bytes.len(), *r.entry_hash, r.kind);
            if kind == RecordKind::Checkpoint as u8 {
                last_checkpoint = Some(Checkpoint::decode(r.payload));
            }
            sc.consume(len);
            t.last_seq = expected;
            t.last_hash = hash;
            t.seg_records += 1;
            t.since_checkpoint = if kind == RecordKind::Checkpoint as u8 { 0 } else { t.since_checkpoint + 1 };
        };
        t.seg_bytes = sc.offset();
        if let (Some((key, key_dir)), Some(ck)) = (key_check, last_checkpoint)
            && !ck.is_some_and(|ck| ck.verify(key))
        {
            return Err(LedgerError::KeyMismatch {
                public: dir.join(keys::PUBLIC_KEY_FILE),
                private: key_dir.join(keys::PRIVATE_KEY_FILE),
            });
        }
        if let Some(reason) = bad.filter(|_| t.seg_bytes < file_len) {
            report.truncated = Some(cut_tail(dir, &path, t.seg_bytes, file_len, t.last_seq.saturating_add(1), reason)?);
        }
        return Ok(t);
    }
}

/// Preserves bytes `[offset, len)` of `path` in a side file, then truncates.
fn cut_tail(
    dir: &Path,
    path: &Path,
    offset: u64,
    len: u64,
    first_lost_seq: u64,
    reason: String,
) -> Result<Truncation, LedgerError> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let saved_to = dir.join(format!("{name}.cut-{offset}-{}", now_ns()));
    let mut src = File::open(path).map_err(|e| LedgerError::io("open", path, e))?;
    src.seek(SeekFrom::Start(offset)).map_err(|e| LedgerError::io("seek", path, e))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&saved_to)
        .map_err(|e| LedgerError::io("create", &saved_to, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut copied = 0u64;
    while copied < len - offset {
        let n = src.read(&mut buf).map_err(|e| LedgerError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(|e| LedgerError::io("write", &saved_to, e))?;
        copied += n as u64;
    }
    dst.sync_all().map_err(|e| LedgerError::io("fsync", &saved_to, e))?;
    sync_dir(dir)?;
    // Only now, with the bytes preserved, shorten the segment.
    let f = OpenOptions::new().write(true).open(path).map_err(|e| LedgerError::io("open", path, e))?;
    f.set_len(offset).map_err(|e| LedgerError::io("truncate", path, e))?;
    f.sync_all().map_err(|e| LedgerError::io("fsync", path, e))?;
    Ok(Truncation {
        file: path.to_path_buf(),
        offset,
        bytes: copied,
        first_lost_seq,
        reason,
        saved_to,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

/// The audit record describing a repair, if anything was repaired.
pub(crate) fn recovery_audit(report: &RecoveryReport) -> Option<AuditRecord> {
    if report.truncated.is_none() && report.removed_segments.is_empty() {
        return None;
    }
    let mut details = Vec::new();
    if let Some(t) = &report.truncated {
        details.push(("file".to_owned(), t.file.display().to_string()));
        details.push(("offset".to_owned(), t.offset.to_string()));
        details.push(("bytes".to_owned(), t.bytes.to_string()));
        details.push(("first_lost_seq".to_owned(), t.first_lost_seq.to_string()));
        details.push(("reason".to_owned(), t.reason.clone()));
        details.push(("saved_to".to_owned(), t.saved_to.display().to_string()));
        details.push(("blake3".to_owned(), t.blake3.clone()));
    }
    for p in &report.removed_segments {
        details.push(("removed_torn_segment".to_owned(), p.display().to_string()));
    }
    Some(AuditRecord { action: "ledger.recovered".to_owned(), details })
}
