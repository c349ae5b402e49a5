//! Read-only access for the agent (catch-up after a restart or a dropped bus
//! message) and the CLI (tail, replay).
//!
//! The reader takes no lock and writes nothing, so it can never block the
//! writer. It relies on the writer's ordering instead: records are appended
//! whole, and a segment is complete and fdatasynced before the next one is
//! created. A record still being written shows up as an incomplete tail,
//! where iteration stops cleanly.

use std::path::{Path, PathBuf};

use super::format::{Header, list_segments};
use super::scan::{Scanner, Step};
use super::{LedgerError, LedgerRecord, RecordKind, RecordLocation};

/// Read size for iteration: small enough to start fast, big enough to
/// stream.
const READ_CHUNK: usize = 256 * 1024;

/// Read-only view of a ledger directory.
#[derive(Debug, Clone)]
pub struct LedgerReader {
    dir: PathBuf,
}

impl LedgerReader {
    /// Opens the ledger in `dir` (which must hold at least one segment).
    pub fn open(dir: &Path) -> Result<LedgerReader, LedgerError> {
        if list_segments(dir)?.is_empty() {
            return Err(LedgerError::Empty { dir: dir.to_path_buf() });
        }
        Ok(LedgerReader { dir: dir.to_path_buf() })
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Iterates records from `seq` on (from the first record if `seq` is
    /// older than the ledger). Each returned record's entry hash is
    /// recomputed and its link to the previous record checked; a mismatch
    /// is returned as [`LedgerError::Corrupt`] and ends the iteration.
    ///
    /// At the current end of the ledger `next()` returns `None`; calling it
    /// again later returns records appended since (follows rotation), so
    /// one iterator can tail the ledger.
    pub fn iter_from(&self, seq: u64) -> Result<LedgerIter, LedgerError> {
        let segments = list_segments(&self.dir)?;
        let start = segments.iter().rev().find(|(first, _)| *first <= seq).or(segments.first());
        let cursor = match start {
            Some((first, path)) => Some(Cursor::open(*first, path)?),
            None => None,
        };
        Ok(LedgerIter { dir: self.dir.clone(), target: seq, cursor, failed: false })
    }

    /// The last complete seq, or `None` for a ledger with no records.
    pub fn head(&self) -> Result<Option<u64>, LedgerError> {
        let segments = list_segments(&self.dir)?;
        // The newest segment may be brand new (no header yet): then the
        // chain ends in the one before it.
        for (first, path) in segments.iter().rev() {
            let mut sc = Scanner::open(path, READ_CHUNK)?;
            if sc.header()?.is_none() {
                continue;
            }
            let mut last = first.saturating_sub(1);
            while let Step::Record(r) = sc.peek()? {
                let len = r.bytes.len();
                last = r.seq;
                sc.consume(len);
            }
            return Ok((last > 0).then_some(last));
        }
        Ok(None)
    }
}

/// Iterator over records, returned by [`LedgerReader::iter_from`].
#[derive(Debug)]
pub struct LedgerIter {
    dir: PathBuf,
    target: u64,
    cursor: Option<Cursor>,
    /// After an error the iterator yields nothing more.
    failed: bool,
}

/// Position in one segment.
#[derive(Debug)]
struct Cursor {
    first_seq: u64,
    scanner: Scanner,
    /// `None` until the header has been read (it may not be written yet).
    next: Option<(u64, [u8; 32])>,
}

impl Cursor {
    fn open(first_seq: u64, path: &Path) -> Result<Cursor, LedgerError> {
        Ok(Cursor { first_seq, scanner: Scanner::open(path, READ_CHUNK)?, next: None })
    }

    fn corrupt(&self, seq: u64, what: impl Into<String>) -> LedgerError {
        LedgerError::Corrupt {
            file: self.scanner.path().to_path_buf(),
            offset: self.scanner.offset(),
            seq,
            what: what.into(),
        }
    }
}

impl Iterator for LedgerIter {
    type Item = Result<LedgerRecord, LedgerError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.advance() {
            Ok(r) => r.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

impl LedgerIter {
    fn advance(&mut self) -> Result<Option<LedgerRecord>, LedgerError> {
        loop {
            if self.cursor.is_none() {
                // The directory had no segment when iteration started.
                match list_segments(&self.dir)?.first() {
                    Some((first, path)) => self.cursor = Some(Cursor::open(*first, path)?),
                    None => return Ok(None),
                }
            }
            let Some(cur) = self.cursor.as_mut() else {
                return Ok(None);
            };
            let (expected, prev) = match cur.next {
                Some(n) => n,
                None => match cur.scanner.header()? {
                    Some(h) => {
                        check_header(cur, &h)?;
                        cur.next = Some((h.first_seq, h.prev_hash));
                        (h.first_seq, h.prev_hash)
                    }
                    None => return Ok(None), // being created: nothing yet
                },
            };
            match cur.scanner.peek()? {
                Step::Record(r) => {
                    if r.seq != expected {
                        let what = format!("seq {} where {expected} was expected", r.seq);
                        return Err(cur.corrupt(expected, what));
                    }
                    if *r.prev_hash != prev {
                        return Err(cur.corrupt(expected, "prev_hash does not link to the previous record"));
                    }
                    let (len, hash) = (r.bytes.len(), *r.entry_hash);
                    let wanted = r.seq >= self.target;
                    // Records skipped on the way to `target` are only
                    // linked, not rehashed: the first returned record's
                    // prev_hash still ties it to them.
                    let out = if wanted {
                        if r.computed_hash() != hash {
                            return Err(cur.corrupt(expected, "entry_hash does not match the record"));
                        }
                        let kind_byte = r.kind;
                        let Some(kind) = RecordKind::from_u8(kind_byte) else {
                            return Err(cur.corrupt(expected, format!("unknown record kind {kind_byte}")));
                        };
                        Some(LedgerRecord {
                            seq: r.seq,
                            time_ns: r.time_ns,
                            kind,
                            payload: r.payload.to_vec(),
                            prev_hash: *r.prev_hash,
                            entry_hash: hash,
                            location: RecordLocation {
                                file: cur.scanner.path().to_path_buf(),
                                offset: cur.scanner.offset(),
                            },
                        })
                    } else {
                        None
                    };
                    cur.scanner.consume(len);
                    cur.next = Some((expected.saturating_add(1), hash));
                    if out.is_some() {
                        return Ok(out);
                    }
                }
                Step::Invalid(what) => return Err(cur.corrupt(expected, what)),
                Step::End | Step::Incomplete { .. } => {
                    // Either the writer is mid-record, or this segment is
                    // finished and the next one exists. Look for it first,
                    // then re-read: a segment only gets a successor after
                    // its last byte is written, so bytes still missing now
                    // mean a damaged segment.
                    let first = cur.first_seq;
                    let Some((next_first, next_path)) = list_segments(&self.dir)?.into_iter().find(|(s, _)| *s > first)
                    else {
                        return Ok(None);
                    };
                    match cur.scanner.peek()? {
                        Step::Record(_) => continue,
                        Step::Invalid(what) => return Err(cur.corrupt(expected, what)),
                        Step::Incomplete { avail } => {
                            let what =
                                format!("segment ends inside a record ({avail} bytes) but a later segment exists");
                            return Err(cur.corrupt(expected, what));
                        }
                        Step::End => {}
                    }
                    if next_first != expected {
                        let what = format!(
                            "segment ends at seq {} but the next segment {} starts at seq {next_first}",
                            expected.saturating_sub(1),
                            next_path.display()
                        );
                        return Err(cur.corrupt(expected, what));
                    }
                    let mut next = Cursor::open(next_first, &next_path)?;
                    next.next = None;
                    // The new segment's header must carry our chain head.
                    if let Some(h) = next.scanner.header()? {
                        if h.prev_hash != prev {
                            return Err(next
                                .corrupt(expected, "segment header prev_hash does not link to the previous segment"));
                        }
                        check_header(&next, &h)?;
                        next.next = Some((h.first_seq, h.prev_hash));
                    } else {
                        // Header not written yet: reopen next time.
                        return Ok(None);
                    }
                    self.cursor = Some(next);
                }
            }
        }
    }
}

fn check_header(cur: &Cursor, h: &Header) -> Result<(), LedgerError> {
    if h.first_seq != cur.first_seq {
        return Err(LedgerError::BadHeader {
            file: cur.scanner.path().to_path_buf(),
            what: format!("header says first seq {}, file name says {}", h.first_seq, cur.first_seq),
        });
    }
    Ok(())
}
