//! A chunked, forward-only reader over one segment file, shared by the
//! writer's recovery, the reader and the verifier.
//!
//! It reads large chunks into its own buffer (so the verifier hashes
//! straight out of it, with no per-record copies) and never consumes bytes
//! that do not yet form a whole record: a record being written at the tail
//! stays in the buffer and a later call picks up the rest.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::LedgerError;
use super::format::{HEADER_LEN, Header, Parsed, parse_record};

/// One step of a scan.
#[derive(Debug)]
pub(crate) enum Step<'a> {
    /// A complete record at `offset` (length fields consistent; hashes and
    /// links are the caller's job). Call [`Scanner::consume`] with
    /// `raw.bytes.len()` to move past it.
    Record(super::format::RawRecord<'a>),
    /// The file ends here with nothing after the last record.
    End,
    /// The file ends in the middle of a record (`avail` bytes of it so far).
    Incomplete { avail: usize },
    /// The bytes here cannot be a record.
    Invalid(String),
}

pub(crate) struct Scanner {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    /// First unconsumed byte in `buf`.
    start: usize,
    /// End of valid bytes in `buf`.
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
    chunk: usize,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner").field("path", &self.path).field("offset", &self.offset()).finish()
    }
}

impl Scanner {
    /// Opens `path` for reading with `chunk`-byte reads.
    pub(crate) fn open(path: &Path, chunk: usize) -> Result<Scanner, LedgerError> {
        let file = File::open(path).map_err(|e| LedgerError::io("open", path, e))?;
        Ok(Scanner { file, path: path.to_path_buf(), buf: vec![0; chunk], start: 0, end: 0, base: 0, chunk })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// File offset of the next unconsumed byte.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Reads the segment header. `Ok(None)`: the file is shorter than a
    /// header (being created, or torn); `Err(what)` via `BadHeader`.
    pub(crate) fn header(&mut self) -> Result<Option<Header>, LedgerError> {
        if !self.fill(HEADER_LEN)? {
            return Ok(None);
        }
        let h = Header::decode(&self.buf[self.start..self.end])
            .map_err(|what| LedgerError::BadHeader { file: self.path.clone(), what })?;
        self.start += HEADER_LEN;
        Ok(Some(h))
    }

    /// Decodes the record at the current position, reading more as needed.
    pub(crate) fn peek(&mut self) -> Result<Step<'_>, LedgerError> {
        let mut want = 4;
        loop {
            let have = self.fill(want)?;
            let avail = self.end - self.start;
            if !have {
                return Ok(if avail == 0 { Step::End } else { Step::Incomplete { avail } });
            }
            match parse_record(&self.buf[self.start..self.end]) {
                Parsed::Incomplete => {
                    // Ask for the whole record once the length is known;
                    // parse_record has already bounded it.
                    want = match self.buf[self.start..self.end].first_chunk::<4>() {
                        Some(l) if avail >= 25 => 4 + u32::from_be_bytes(*l) as usize,
                        _ => 25,
                    }
                    .max(avail + 1);
                }
                Parsed::Invalid(what) => return Ok(Step::Invalid(what)),
                Parsed::Record(_) => break,
            }
        }
        // Re-parse to return a borrow tied to `self` (the loop above could
        // not hold one across `fill`).
        Ok(match parse_record(&self.buf[self.start..self.end]) {
            Parsed::Record(r) => Step::Record(r),
            Parsed::Invalid(w) => Step::Invalid(w),
            Parsed::Incomplete => Step::Incomplete { avail: self.end - self.start },
        })
    }

    /// Moves past `n` bytes already returned by [`peek`](Self::peek).
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Makes at least `want` unconsumed bytes available if the file has
    /// them; `false` at end of file. Reading again after `false` picks up
    /// bytes appended since.
    fn fill(&mut self, want: usize) -> Result<bool, LedgerError> {
        if self.end - self.start >= want {
            return Ok(true);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want {
            self.buf.resize(want.max(self.chunk), 0);
        }
        while self.end < want {
            let n = loop {
                match self.file.read(&mut self.buf[self.end..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(LedgerError::io("read", &self.path, e)),
                }
            };
            if n == 0 {
                return Ok(false);
            }
            self.end += n;
        }
        Ok(true)
    }
}
