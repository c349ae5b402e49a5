//! The single writer: group commit, rotation, checkpoints (recovery of a
//! torn tail on open is in `recover.rs`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};

use super::format::{
    Checkpoint, HEADER_LEN, Header, MAX_PAYLOAD, MIN_BODY, encode_record, list_segments, segment_path, sync_dir,
};
use super::recover::{RecoveryReport, recover_tail, recovery_audit};
use super::{AuditRecord, LedgerError, RecordKind, keys, now_ns};
use crate::config::LedgerConfig;

/// Name of the advisory lock file that keeps a second writer out.
const LOCK_FILE: &str = ".writer.lock";
/// Pending bytes above which `append` writes (without syncing) to bound
/// memory when the caller commits rarely.
const FLUSH_AT: usize = 4 * 1024 * 1024;

/// The ledger's only writer (procmond).
///
/// Appends are buffered; once [`commit`](Self::commit) returns they are
/// written to the segment file (every reader sees them, a crash of the
/// process loses nothing), and durable — fdatasync'ed — at most
/// `sync_interval` later (at once when it is zero, and always at a
/// checkpoint, a rotation and close). Call `commit` when
/// [`commit_due`](Self::commit_due) says so (the configured `commit_batch`
/// records pending or `commit_interval` elapsed), before publishing the
/// events it covers, and periodically while idle so a late sync happens:
/// the ledger is the WAL.
///
/// A caller on an event path uses [`commit_nowait`](Self::commit_nowait)
/// instead: it writes without ever waiting for the disk, and hands the
/// fdatasync that is due to the caller as a [`SyncJob`] to run elsewhere
/// (events keep flowing while it runs; an fdatasync under write load takes
/// milliseconds) and report with [`sync_done`](Self::sync_done).
pub struct LedgerWriter {
    dir: PathBuf,
    key: SigningKey,
    verifying: VerifyingKey,
    segment_size: u64,
    commit_batch: usize,
    commit_interval: Duration,
    sync_interval: Duration,
    checkpoint_every: u64,
    checkpoint_interval: Duration,
    /// Held for the writer's lifetime: the OS releases the lock on close.
    _lock: File,
    seg_path: PathBuf,
    /// Shared with a [`SyncJob`] in flight.
    file: Arc<File>,
    /// Bytes in the current segment, header and pending bytes included.
    seg_bytes: u64,
    seg_records: u64,
    last_seq: u64,
    last_hash: [u8; 32],
    pending: Vec<u8>,
    pending_records: usize,
    pending_since: Option<Instant>,
    /// Bytes written to `file` since the last fdatasync.
    dirty: bool,
    last_sync: Instant,
    /// Counts writes to the segment files, so that a [`SyncJob`] knows
    /// whether anything was written after it started.
    writes: u64,
    /// A [`SyncJob`] was handed out and not reported yet.
    sync_in_flight: bool,
    since_checkpoint: u64,
    last_checkpoint_at: Instant,
    /// Set when a write or sync failed: the file's state is unknown, so
    /// nothing more is written until a reopen recovers the tail.
    poisoned: bool,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWriter")
            .field("dir", &self.dir)
            .field("segment", &self.seg_path)
            .field("last_seq", &self.last_seq)
            .field("pending_records", &self.pending_records)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl LedgerWriter {
    /// Opens (or creates) the ledger in `dir` with the signing key in
    /// `key_dir` (created at first start), recovering a torn tail: the last
    /// segment is verified record by record, anything after the last good
    /// record is cut (and preserved in `<segment>.cut-<offset>-<time>`), and
    /// an audit record `ledger.recovered` says what was cut.
    pub fn open(
        dir: &Path,
        key_dir: &Path,
        config: &LedgerConfig,
    ) -> Result<(LedgerWriter, RecoveryReport), LedgerError> {
        keys::create_dir(dir, 0o750)?;
        let lock = take_lock(dir)?;
        let key = keys::load_or_create(key_dir)?;
        let verifying = key.verifying_key();
        // A missing ledger.pub must not let a new key adopt an old ledger:
        // recovery then checks the newest checkpoint against our key.
        let exported = keys::check_public(dir, key_dir, &verifying)?;
        let key_check = (!exported).then_some((&verifying, key_dir));

        let mut report = RecoveryReport {
            segments: 0,
            tail_records_checked: 0,
            last_seq: 0,
            truncated: None,
            removed_segments: Vec::new(),
            audit_seq: None,
        };
        let tail = recover_tail(dir, &mut report, key_check)?;
        if !exported {
            keys::write_public(dir, &verifying)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&tail.seg_path)
            .map_err(|e| LedgerError::io("open for append", &tail.seg_path, e))?;
        report.segments = list_segments(dir)?.len();
        report.last_seq = tail.last_seq;
        report.tail_records_checked = tail.seg_records;

        let mut w = LedgerWriter {
            dir: dir.to_path_buf(),
            key,
            verifying,
            segment_size: config.segment_size.as_u64(),
            commit_batch: config.commit_batch.max(1),
            commit_interval: config.commit_interval,
            sync_interval: config.sync_interval,
            checkpoint_every: config.checkpoint_every.max(1),
            checkpoint_interval: config.checkpoint_interval,
            _lock: lock,
            seg_path: tail.seg_path,
            file: Arc::new(file),
            seg_bytes: tail.seg_bytes,
            seg_records: tail.seg_records,
            last_seq: tail.last_seq,
            last_hash: tail.last_hash,
            pending: Vec::with_capacity(256 * 1024),
            pending_records: 0,
            pending_since: None,
            last_sync: Instant::now(),
            dirty: false,
            writes: 0,
            sync_in_flight: false,
            since_checkpoint: tail.since_checkpoint,
            last_checkpoint_at: Instant::now(),
            poisoned: false,
        };
        if let Some(audit) = recovery_audit(&report) {
            let details: Vec<(&str, &str)> = audit.details.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            report.audit_seq = Some(w.audit(&audit.action, &details)?);
            w.commit()?;
            tracing::warn!(dir = %dir.display(), ?report, "ledger tail recovered");
        }
        Ok((w, report))
    }

    /// Appends a record; returns its seq. Buffered: durable after
    /// [`commit`](Self::commit). Checkpoint records are the ledger's own.
    pub fn append(&mut self, kind: RecordKind, time_ns: i64, payload: &[u8]) -> Result<u64, LedgerError> {
        self.check_appendable(kind, payload.len())?;
        self.push(kind, time_ns, payload)
    }

    /// Like [`append`](Self::append), with the payload built knowing its seq
    /// (procmond puts the seq inside the `ProcessEvent`). Returns the seq
    /// and the payload (procmond publishes the same bytes).
    pub fn append_with<P: AsRef<[u8]>, F: FnOnce(u64) -> P>(
        &mut self,
        kind: RecordKind,
        time_ns: i64,
        make_payload: F,
    ) -> Result<(u64, P), LedgerError> {
        self.check_appendable(kind, 0)?;
        let payload = make_payload(self.last_seq.saturating_add(1));
        self.check_appendable(kind, payload.as_ref().len())?;
        let seq = self.push(kind, time_ns, payload.as_ref())?;
        Ok((seq, payload))
    }

    /// Appends an audit record (time: now) for a security-relevant action.
    pub fn audit(&mut self, action: &str, details: &[(&str, &str)]) -> Result<u64, LedgerError> {
        let payload = AuditRecord::new(action, details).encode();
        self.append(RecordKind::Audit, now_ns(), &payload)
    }

    /// Writes the pending records (and a checkpoint, when one is due) and
    /// makes them durable with one fdatasync.
    pub fn commit(&mut self) -> Result<(), LedgerError> {
        self.check_poisoned()?;
        if self.checkpoint_due() {
            self.push_checkpoint()?;
            return self.sync();
        }
        self.write_pending()?;
        self.pending_records = 0;
        self.pending_since = None;
        if self.dirty && self.last_sync.elapsed() >= self.sync_interval {
            self.sync()?;
        }
        Ok(())
    }

    /// Like [`commit`](Self::commit) without waiting for the disk: writes
    /// the pending records (and a checkpoint, when one is due) to the
    /// segment file, where readers see them. When an fdatasync is due (and
    /// none is running), returns it as a job for the caller to run off the
    /// event path and report with [`sync_done`](Self::sync_done); records
    /// are then durable at most `sync_interval` plus one fdatasync after
    /// they were committed.
    pub fn commit_nowait(&mut self) -> Result<Option<SyncJob>, LedgerError> {
        self.check_poisoned()?;
        if self.checkpoint_due() {
            self.push_checkpoint()?;
        }
        self.write_pending()?;
        self.pending_records = 0;
        self.pending_since = None;
        Ok(self.sync_due().then(|| self.start_sync()))
    }

    /// Records that `job` (from [`commit_nowait`](Self::commit_nowait))
    /// ended. A failed fdatasync poisons the writer, as a failed inline one
    /// does: the error is returned here and by every later call.
    pub fn sync_done(&mut self, done: SyncDone) -> Result<(), LedgerError> {
        self.sync_in_flight = false;
        if let Err(e) = done.result {
            self.poisoned = true;
            return Err(LedgerError::io("fdatasync", &done.path, e));
        }
        // Writes made while it ran are still to be synced.
        if done.writes == self.writes {
            self.dirty = false;
        }
        self.last_sync = self.last_sync.max(done.started);
        Ok(())
    }

    fn sync_due(&self) -> bool {
        self.dirty && !self.sync_in_flight && self.last_sync.elapsed() >= self.sync_interval
    }

    fn start_sync(&mut self) -> SyncJob {
        self.sync_in_flight = true;
        SyncJob {
            file: Arc::clone(&self.file),
            path: self.seg_path.clone(),
            writes: self.writes,
            started: Instant::now(),
        }
    }

    /// Writes a checkpoint now (unless the last record is one) and commits.
    /// Call on orderly shutdown so the whole ledger is signed.
    pub fn checkpoint(&mut self) -> Result<(), LedgerError> {
        self.check_poisoned()?;
        if self.since_checkpoint > 0 {
            self.push_checkpoint()?;
        }
        self.sync()
    }

    /// Checkpoints, commits and releases the writer lock.
    pub fn close(mut self) -> Result<(), LedgerError> {
        self.checkpoint()
    }

    /// True when `commit_batch` records are pending or the oldest pending
    /// record has waited `commit_interval`.
    pub fn commit_due(&self) -> bool {
        self.pending_records >= self.commit_batch
            || self.pending_since.is_some_and(|t| t.elapsed() >= self.commit_interval)
    }

    /// When the oldest pending record reaches `commit_interval` (for the
    /// caller's timer); `None` when nothing is pending.
    pub fn commit_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|t| t + self.commit_interval)
    }

    /// True when a commit with nothing new appended has work: a deferred
    /// sync (unless one is running) or a time-based checkpoint (call it
    /// from an idle timer).
    pub fn idle_commit_due(&self) -> bool {
        self.checkpoint_due() || self.sync_due()
    }

    /// When [`idle_commit_due`](Self::idle_commit_due) becomes true if
    /// nothing more is appended; `None` when it never does (everything is
    /// synced and checkpointed). An idle caller sleeps until then instead
    /// of polling.
    pub fn idle_commit_at(&self) -> Option<Instant> {
        let sync = (self.dirty && !self.sync_in_flight).then(|| self.last_sync + self.sync_interval);
        let checkpoint = (self.since_checkpoint > 0).then(|| self.last_checkpoint_at + self.checkpoint_interval);
        sync.into_iter().chain(checkpoint).min()
    }

    fn checkpoint_due(&self) -> bool {
        self.since_checkpoint > 0
            && (self.since_checkpoint >= self.checkpoint_every
                || self.last_checkpoint_at.elapsed() >= self.checkpoint_interval)
    }

    /// Records appended but not yet committed.
    pub fn pending(&self) -> usize {
        self.pending_records
    }

    /// The last appended seq (0 for an empty ledger) and its entry hash.
    /// Includes records not yet committed.
    pub fn head(&self) -> (u64, [u8; 32]) {
        (self.last_seq, self.last_hash)
    }

    /// The checkpoint verification key (also exported as `ledger.pub`).
    pub fn public_key(&self) -> VerifyingKey {
        self.verifying
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn check_poisoned(&self) -> Result<(), LedgerError> {
        if self.poisoned {
            return Err(LedgerError::Poisoned { file: self.seg_path.clone() });
        }
        Ok(())
    }

    fn check_appendable(&self, kind: RecordKind, len: usize) -> Result<(), LedgerError> {
        self.check_poisoned()?;
        if kind == RecordKind::Checkpoint {
            return Err(LedgerError::ReservedKind(kind));
        }
        if len > MAX_PAYLOAD {
            return Err(LedgerError::PayloadTooLarge { len, max: MAX_PAYLOAD });
        }
        Ok(())
    }

    fn push_checkpoint(&mut self) -> Result<(), LedgerError> {
        let ck = Checkpoint::sign(&self.key, self.last_seq, self.last_hash);
        self.push(RecordKind::Checkpoint, now_ns(), &ck.encode())?;
        self.since_checkpoint = 0;
        self.last_checkpoint_at = Instant::now();
        Ok(())
    }

    /// Encodes a record into the pending buffer, rotating first if the
    /// current segment would exceed `segment_size` (a segment always takes
    /// at least one record, however large).
    fn push(&mut self, kind: RecordKind, time_ns: i64, payload: &[u8]) -> Result<u64, LedgerError> {
        let rec_len = (4 + MIN_BODY + payload.len()) as u64;
        if self.seg_records > 0 && self.seg_bytes + rec_len > self.segment_size {
            self.rotate()?;
        }
        let seq = self.last_seq.saturating_add(1);
        let hash = encode_record(&mut self.pending, seq, time_ns, kind, payload, &self.last_hash)?;
        self.last_seq = seq;
        self.last_hash = hash;
        self.seg_bytes += rec_len;
        self.seg_records += 1;
        self.pending_records += 1;
        self.pending_since.get_or_insert_with(Instant::now);
        if kind != RecordKind::Checkpoint {
            self.since_checkpoint += 1;
        }
        if self.pending.len() >= FLUSH_AT {
            self.write_pending()?;
        }
        Ok(seq)
    }

    fn write_pending(&mut self) -> Result<(), LedgerError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Err(e) = (&*self.file).write_all(&self.pending) {
            self.poisoned = true;
            return Err(LedgerError::io("write", &self.seg_path, e));
        }
        self.pending.clear();
        self.dirty = true;
        self.writes += 1;
        Ok(())
    }

    fn sync(&mut self) -> Result<(), LedgerError> {
        self.write_pending()?;
        if self.dirty {
            // After a failed fsync the page cache state is unknown (the
            // kernel may have dropped the dirty pages): poison, do not retry.
            if let Err(e) = self.file.sync_data() {
                self.poisoned = true;
                return Err(LedgerError::io("fdatasync", &self.seg_path, e));
            }
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        self.pending_records = 0;
        self.pending_since = None;
        Ok(())
    }

    /// Makes the current segment durable, then starts the next one. The
    /// order matters: a new segment never exists while the previous one
    /// could still lose its tail in a crash.
    fn rotate(&mut self) -> Result<(), LedgerError> {
        let pending_records = self.pending_records;
        let pending_since = self.pending_since;
        self.sync()?;
        // Records synced by rotation still count as pending for commit_due,
        // so the caller's batching rhythm is unchanged.
        self.pending_records = pending_records;
        self.pending_since = pending_since;
        let header = Header { first_seq: self.last_seq.saturating_add(1), prev_hash: self.last_hash };
        let path = segment_path(&self.dir, header.first_seq);
        match create_segment(&self.dir, &path, &header) {
            Ok(file) => {
                tracing::debug!(segment = %path.display(), seq = header.first_seq, "ledger segment rotated");
                self.file = Arc::new(file);
                self.seg_path = path;
                self.seg_bytes = HEADER_LEN as u64;
                self.seg_records = 0;
                Ok(())
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }
}

/// An fdatasync of the ledger's segment, due after
/// [`LedgerWriter::commit_nowait`]: run it on a thread that may block, and
/// hand the result to [`LedgerWriter::sync_done`].
#[derive(Debug)]
#[must_use = "a sync job that is not run leaves the ledger undurable"]
pub struct SyncJob {
    file: Arc<File>,
    path: PathBuf,
    writes: u64,
    started: Instant,
}

impl SyncJob {
    /// The fdatasync (blocks on the disk).
    pub fn run(self) -> SyncDone {
        let result = self.file.sync_data();
        SyncDone { result, path: self.path, writes: self.writes, started: self.started }
    }
}

/// What a [`SyncJob`] did.
#[derive(Debug)]
pub struct SyncDone {
    result: std::io::Result<()>,
    path: PathBuf,
    writes: u64,
    started: Instant,
}

impl Drop for LedgerWriter {
    /// Best effort: commit what is pending. Callers that care about the
    /// result call [`LedgerWriter::close`] or `commit` themselves.
    fn drop(&mut self) {
        if !self.poisoned
            && (!self.pending.is_empty() || self.dirty)
            && let Err(e) = self.sync()
        {
            tracing::error!(error = %e, "ledger: commit on drop failed");
        }
    }
}

fn take_lock(dir: &Path) -> Result<File, LedgerError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LedgerError::io("open lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LedgerError::Locked { dir: dir.to_path_buf(), lock: path }),
        Err(std::fs::TryLockError::Error(e)) => Err(LedgerError::io("lock", &path, e)),
    }
}

/// Creates a segment file with its header, durable with its directory entry.
pub(crate) fn create_segment(dir: &Path, path: &Path, header: &Header) -> Result<File, LedgerError> {
    let mut opts = OpenOptions::new();
    opts.append(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o640);
    }
    let mut file = opts.open(path).map_err(|e| LedgerError::io("create segment", path, e))?;
    file.write_all(&header.encode()).map_err(|e| LedgerError::io("write header", path, e))?;
    file.sync_data().map_err(|e| LedgerError::io("fdatasync", path, e))?;
    sync_dir(dir)?;
    Ok(file)
}
