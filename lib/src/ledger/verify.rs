//! Full verification: every header, link, entry hash, seq and checkpoint
//! signature, stopping at the first bad record.
//!
//! Speed comes from reading multi-megabyte chunks and hashing records in
//! place out of the read buffer (no per-record allocation or copy).

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use super::format::{Checkpoint, ZERO_HASH, list_segments};
use super::keys::{PUBLIC_KEY_FILE, read_public_key};
use super::scan::{Scanner, Step};
use super::{LedgerError, RecordKind, RecordLocation};

/// Read size for verification.
const VERIFY_CHUNK: usize = 4 * 1024 * 1024;
/// Progress is reported at most every this many records.
const PROGRESS_EVERY: u64 = 64 * 1024;

/// What [`verify_with`] checks beyond the chain itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The checkpoint key; `None` reads `<dir>/ledger.pub`. Pass a key kept
    /// elsewhere to rule out an attacker who replaced `ledger.pub` and
    /// re-signed the ledger.
    pub public_key: Option<VerifyingKey>,
    /// A (seq, entry_hash) saved earlier, e.g. from an exported checkpoint:
    /// the ledger must still contain that record with that hash. Detects a
    /// tail that was cut off after the save.
    pub expect_at_least: Option<(u64, [u8; 32])>,
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Good records checked (up to the first problem).
    pub records: u64,
    /// Good checkpoints (signature valid) among them.
    pub checkpoints: u64,
    /// First seq in the ledger.
    pub first_seq: Option<u64>,
    /// Last good seq.
    pub last_seq: Option<u64>,
    /// Entry hash of the last good record.
    pub last_entry_hash: Option<[u8; 32]>,
    /// Seq of the last record covered by a valid checkpoint signature.
    pub signed_through: Option<u64>,
    /// Segment files checked.
    pub segments: u64,
    /// Bytes read.
    pub bytes: u64,
    /// The last segment ends inside a record: a write in progress (the
    /// writer is running) or a crash the writer has not yet recovered.
    /// Not tampering by itself; the writer cuts it on its next start.
    pub incomplete_tail: Option<(RecordLocation, u64)>,
    /// The first bad record, if any.
    pub problem: Option<Tamper>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }

    /// Records after the last valid checkpoint: protected by the hash chain
    /// only, not yet by a signature.
    pub fn unsigned_records(&self) -> u64 {
        match (self.last_seq, self.signed_through) {
            (Some(last), Some(signed)) => last.saturating_sub(signed),
            (Some(last), None) => last.saturating_sub(self.first_seq.unwrap_or(1)) + 1,
            _ => 0,
        }
    }
}

/// The first bad record found by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tamper {
    /// The seq that should be at `offset` (the first seq not proven good).
    pub seq: u64,
    /// The segment file.
    pub file: PathBuf,
    /// Byte offset in the file (of the record, or 0 for a header).
    pub offset: u64,
    /// What is wrong.
    pub what: String,
    /// The last seq proven by a valid checkpoint signature before the
    /// problem: records up to it are authentic.
    pub signed_through: Option<u64>,
}

impl std::fmt::Display for Tamper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seq {} at {} offset {}: {}", self.seq, self.file.display(), self.offset, self.what)
    }
}

/// Verifies the ledger in `dir` with `public_key` (or `<dir>/ledger.pub`).
/// `progress` is called with (records, bytes) so far.
pub fn verify(
    dir: &Path,
    public_key: Option<&VerifyingKey>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, LedgerError> {
    let opts = VerifyOptions { public_key: public_key.copied(), expect_at_least: None };
    verify_with(dir, &opts, progress)
}

/// [`verify`] with all options. `Err` only for I/O problems and a missing
/// key; tampering is reported in [`VerifyReport::problem`].
pub fn verify_with(
    dir: &Path,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, LedgerError> {
    let key = match opts.public_key {
        Some(k) => k,
        None => {
            let path = dir.join(PUBLIC_KEY_FILE);
            if !path.exists() {
                return Err(LedgerError::NoPublicKey { dir: dir.to_path_buf(), expected: path });
            }
            read_public_key(&path)?
        }
    };
    let segments = list_segments(dir)?;
    if segments.is_empty() {
        return Err(LedgerError::Empty { dir: dir.to_path_buf() });
    }
    let mut v = Verifier { key, report: VerifyReport::default(), next_seq: 1, prev: ZERO_HASH, opts };
    let last_index = segments.len() - 1;
    for (i, (first, path)) in segments.iter().enumerate() {
        v.report.segments += 1;
        if let Err(t) = v.segment(*first, path, i == last_index, progress)? {
            v.report.problem = Some(t);
            break;
        }
    }
    if v.report.problem.is_none()
        && let Some((seq, _)) = opts.expect_at_least
        && v.report.last_seq.unwrap_or(0) < seq
    {
        let (file, offset) = match &v.report.incomplete_tail {
            Some((loc, _)) => (loc.file.clone(), loc.offset),
            None => {
                let file = segments.last().map(|(_, p)| p.clone()).unwrap_or_default();
                let offset = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                (file, offset)
            }
        };
        v.report.problem = Some(Tamper {
            seq: v.next_seq,
            file,
            offset,
            what: format!(
                "ledger ends at seq {} but a saved checkpoint proves seq {seq} existed: records were cut off",
                v.next_seq.saturating_sub(1)
            ),
            signed_through: v.report.signed_through,
        });
    }
    progress(v.report.records, v.report.bytes);
    Ok(v.report)
}

struct Verifier<'a> {
    key: VerifyingKey,
    report: VerifyReport,
    next_seq: u64,
    prev: [u8; 32],
    opts: &'a VerifyOptions,
}

impl Verifier<'_> {
    fn tamper(&self, file: &Path, offset: u64, what: impl Into<String>) -> Tamper {
        Tamper {
            seq: self.next_seq,
            file: file.to_path_buf(),
            offset,
            what: what.into(),
            signed_through: self.report.signed_through,
        }
    }

    /// Checks one segment. Outer `Err`: I/O; inner `Err`: the first problem.
    fn segment(
        &mut self,
        first: u64,
        path: &Path,
        is_last: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Result<(), Tamper>, LedgerError> {
        let mut sc = Scanner::open(path, VERIFY_CHUNK)?;
        let header = match sc.header() {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(Err(self.tamper(path, 0, "segment shorter than its header"))),
            Err(LedgerError::BadHeader { what, .. }) => return Ok(Err(self.tamper(path, 0, what))),
            Err(e) => return Err(e),
        };
        if header.first_seq != first {
            let what = format!("header says first seq {}, file name says {first}", header.first_seq);
            return Ok(Err(self.tamper(path, 0, what)));
        }
        if first != self.next_seq {
            let what = if first > self.next_seq {
                format!("segment starts at seq {first}: seqs {}..={} are missing", self.next_seq, first - 1)
            } else {
                format!("segment starts at seq {first}, overlapping earlier records")
            };
            return Ok(Err(self.tamper(path, 0, what)));
        }
        if header.prev_hash != self.prev {
            return Ok(Err(self.tamper(path, 0, "header prev_hash does not link to the previous record")));
        }
        let mut last_progress = self.report.records;
        loop {
            let offset = sc.offset();
            let r = match sc.peek()? {
                Step::Record(r) => r,
                Step::End => break,
                Step::Incomplete { avail } if is_last => {
                    let loc = RecordLocation { file: path.to_path_buf(), offset };
                    self.report.incomplete_tail = Some((loc, avail as u64));
                    self.report.bytes += avail as u64;
                    break;
                }
                Step::Incomplete { avail } => {
                    let what = format!("segment ends inside a record ({avail} bytes) but later segments exist");
                    return Ok(Err(self.tamper(path, offset, what)));
                }
                Step::Invalid(what) => return Ok(Err(self.tamper(path, offset, what))),
            };
            let seq = self.next_seq;
            if r.seq != seq {
                let what = format!("seq {} where {seq} was expected (record deleted, inserted or moved)", r.seq);
                return Ok(Err(self.tamper(path, offset, what)));
            }
            if *r.prev_hash != self.prev {
                return Ok(Err(self.tamper(path, offset, "prev_hash does not link to the previous record")));
            }
            if r.computed_hash() != *r.entry_hash {
                return Ok(Err(self.tamper(path, offset, "entry_hash does not match the record's contents")));
            }
            match RecordKind::from_u8(r.kind) {
                None => {
                    return Ok(Err(self.tamper(path, offset, format!("unknown record kind {}", r.kind))));
                }
                Some(RecordKind::Checkpoint) => {
                    let Some(ck) = Checkpoint::decode(r.payload) else {
                        return Ok(Err(self.tamper(path, offset, "checkpoint payload is malformed")));
                    };
                    if ck.seq.checked_add(1) != Some(seq) || ck.entry_hash != self.prev {
                        let what =
                            format!("checkpoint names seq {} and a hash that are not the previous record's", ck.seq);
                        return Ok(Err(self.tamper(path, offset, what)));
                    }
                    if !ck.verify(&self.key) {
                        let what = "checkpoint signature is invalid for this public key: records since the previous checkpoint were forged or re-signed with another key";
                        return Ok(Err(self.tamper(path, offset, what)));
                    }
                    self.report.checkpoints += 1;
                    self.report.signed_through = Some(ck.seq);
                }
                Some(_) => {}
            }
            if let Some((want_seq, want_hash)) = self.opts.expect_at_least
                && want_seq == seq
                && want_hash != *r.entry_hash
            {
                return Ok(Err(self.tamper(path, offset, "entry_hash differs from the saved checkpoint for this seq")));
            }
            let (len, hash) = (r.bytes.len(), *r.entry_hash);
            sc.consume(len);
            self.prev = hash;
            self.next_seq += 1;
            self.report.records += 1;
            self.report.bytes += len as u64;
            self.report.first_seq.get_or_insert(seq);
            self.report.last_seq = Some(seq);
            self.report.last_entry_hash = Some(hash);
            if self.report.records - last_progress >= PROGRESS_EVERY {
                last_progress = self.report.records;
                progress(self.report.records, self.report.bytes);
            }
        }
        self.report.bytes += super::format::HEADER_LEN as u64;
        Ok(Ok(()))
    }
}
