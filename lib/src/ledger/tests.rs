//! Writer, reader and recovery tests on real files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;

use super::*;
use crate::config::LedgerConfig;

pub(super) fn config(segment_size: u64, checkpoint_every: u64) -> LedgerConfig {
    LedgerConfig {
        segment_size: ByteSize::b(segment_size),
        commit_batch: 16,
        commit_interval: Duration::from_millis(5),
        sync_interval: Duration::ZERO,
        checkpoint_every,
        checkpoint_interval: Duration::from_secs(3600),
    }
}

pub(super) fn payload(seq: u64) -> Vec<u8> {
    format!("event {seq} {}", "x".repeat((seq % 37) as usize)).into_bytes()
}

/// A ledger dir and a key dir side by side.
pub(super) struct Fixture {
    _tmp: tempfile::TempDir,
    pub(super) dir: PathBuf,
    pub(super) keys: PathBuf,
}

pub(super) fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let keys = tmp.path().join("keys");
    Fixture { _tmp: tmp, dir, keys }
}

/// Writes `n` event records (committing every 16) and closes the writer.
pub(super) fn write_events(f: &Fixture, cfg: &LedgerConfig, n: u64) {
    let (mut w, _) = LedgerWriter::open(&f.dir, &f.keys, cfg).unwrap();
    for _ in 0..n {
        w.append_with(RecordKind::Event, 1_000, payload).unwrap();
        if w.commit_due() {
            w.commit().unwrap();
        }
    }
    w.commit().unwrap();
}

pub(super) fn read_all(dir: &Path) -> Vec<LedgerRecord> {
    LedgerReader::open(dir).unwrap().iter_from(1).unwrap().map(Result::unwrap).collect()
}

pub(super) fn no_progress() -> impl FnMut(u64, u64) {
    |_, _| {}
}

#[test]
fn round_trip_across_segments() {
    let f = fixture();
    let cfg = config(2048, 50);
    write_events(&f, &cfg, 300);
    let segments = format::list_segments(&f.dir).unwrap();
    assert!(segments.len() > 5, "{} segments", segments.len());
    assert_eq!(segments[0].0, 1);

    let all = read_all(&f.dir);
    let events: Vec<_> = all.iter().filter(|r| r.kind == RecordKind::Event).collect();
    assert_eq!(events.len(), 300);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        if i > 0 {
            assert_eq!(r.prev_hash, all[i - 1].entry_hash);
        }
    }
    // Event payloads were built from their own seq.
    for r in &events {
        assert_eq!(r.payload, payload(r.seq));
        assert_eq!(r.time_ns, 1_000);
    }
    // A checkpoint at the first commit after every 50 events, each signing
    // the record just before it.
    let cks: Vec<_> = all.iter().filter_map(LedgerRecord::checkpoint).collect();
    assert!(cks.len() >= 4, "{} checkpoints", cks.len());
    for ck in &cks {
        let signed = &all[ck.seq as usize - 1];
        assert_eq!(signed.entry_hash, ck.entry_hash);
    }
    let total = all.len() as u64;
    assert_eq!(total, 300 + cks.len() as u64);
    let last_ck = cks[cks.len() - 1];

    // Seeking lands in the right segment and returns exactly from seq on.
    let reader = LedgerReader::open(&f.dir).unwrap();
    for start in [0, 1, 2, 77, 150, total - 1, total] {
        let got: Vec<u64> = reader.iter_from(start).unwrap().map(|r| r.unwrap().seq).collect();
        let want: Vec<u64> = (start.max(1)..=total).collect();
        assert_eq!(got, want, "from {start}");
    }
    assert_eq!(reader.iter_from(total + 1).unwrap().count(), 0);
    assert_eq!(reader.head().unwrap(), Some(total));

    let report = verify(&f.dir, None, &mut no_progress()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!((report.records, report.checkpoints), (total, cks.len() as u64));
    assert_eq!((report.first_seq, report.last_seq), (Some(1), Some(total)));
    assert_eq!(report.segments, segments.len() as u64);
    assert_eq!(report.signed_through, Some(last_ck.seq));
    assert_eq!(report.unsigned_records(), total - last_ck.seq);
}

#[test]
fn reopen_continues_the_chain_and_close_signs_it() {
    let f = fixture();
    let cfg = config(4096, 1000);
    write_events(&f, &cfg, 10);
    let (mut w, report) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
    assert_eq!(report.last_seq, 10);
    assert!(report.truncated.is_none() && report.audit_seq.is_none());
    assert_eq!(w.head().0, 10);
    let seq = w.audit("start", &[("backend", "poll")]).unwrap();
    assert_eq!(seq, 11);
    w.close().unwrap();

    let all = read_all(&f.dir);
    assert_eq!(all.len(), 12);
    assert_eq!(all[10].audit().unwrap(), AuditRecord::new("start", &[("backend", "poll")]));
    assert_eq!(all[11].checkpoint().unwrap().seq, 11);
    let report = verify(&f.dir, None, &mut no_progress()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!(report.signed_through, Some(11));
}

#[test]
fn commit_rhythm_and_reserved_kinds() {
    let f = fixture();
    let mut cfg = config(1 << 20, 1000);
    cfg.commit_batch = 3;
    let (mut w, _) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
    assert!(!w.commit_due() && w.commit_deadline().is_none());
    w.append(RecordKind::Event, 1, b"a").unwrap();
    w.append(RecordKind::Gap, 2, b"b").unwrap();
    assert!(!w.commit_due() && w.commit_deadline().is_some());
    w.append(RecordKind::Event, 3, b"c").unwrap();
    assert!(w.commit_due());
    assert_eq!(w.pending(), 3);
    w.commit().unwrap();
    assert_eq!(w.pending(), 0);
    assert!(matches!(w.append(RecordKind::Checkpoint, 0, b""), Err(LedgerError::ReservedKind(RecordKind::Checkpoint))));
    let big = vec![0u8; MAX_PAYLOAD + 1];
    assert!(matches!(w.append(RecordKind::Event, 0, &big), Err(LedgerError::PayloadTooLarge { .. })));
    // Failed appends consumed no seq.
    assert_eq!(w.append(RecordKind::Event, 4, b"d").unwrap(), 4);
}

#[test]
fn one_writer_at_a_time_and_keys_are_private() {
    let f = fixture();
    let cfg = config(4096, 100);
    let (w, _) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
    let second = LedgerWriter::open(&f.dir, &f.keys, &cfg);
    assert!(matches!(second, Err(LedgerError::Locked { .. })), "{second:?}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = f.keys.join(PRIVATE_KEY_FILE);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&f.keys).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        // No temporary key file is left behind.
        assert_eq!(std::fs::read_dir(&f.keys).unwrap().count(), 1);
    }
    // The exported key is the writer's key.
    let exported = read_public_key(&f.dir.join(PUBLIC_KEY_FILE)).unwrap();
    assert_eq!(exported, w.public_key());
    let pk = w.public_key();
    drop(w);

    // The same key is loaded again, not regenerated.
    let (w, _) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
    assert_eq!(w.public_key(), pk);
    drop(w);

    // Raw 32-byte public key files are accepted too.
    let raw = f.dir.parent().unwrap().join("raw.pub");
    std::fs::write(&raw, pk.as_bytes()).unwrap();
    assert_eq!(read_public_key(&raw).unwrap(), pk);

    // A key dir with a different key is refused (never silently re-keyed).
    let other_keys = f.dir.parent().unwrap().join("other-keys");
    let err = LedgerWriter::open(&f.dir, &other_keys, &cfg).unwrap_err();
    assert!(matches!(err, LedgerError::KeyMismatch { .. }), "{err}");
}

#[test]
fn a_lost_public_key_does_not_let_another_key_adopt_the_ledger() {
    let f = fixture();
    let cfg = config(4096, 5);
    write_events(&f, &cfg, 20);
    let pub_path = f.dir.join(PUBLIC_KEY_FILE);
    let original = std::fs::read(&pub_path).unwrap();
    std::fs::remove_file(&pub_path).unwrap();
    let other_keys = f.dir.parent().unwrap().join("other-keys");
    let err = LedgerWriter::open(&f.dir, &other_keys, &cfg).unwrap_err();
    assert!(matches!(err, LedgerError::KeyMismatch { .. }), "{err}");
    assert!(!pub_path.exists());
    // The right key re-exports it.
    drop(LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap());
    assert_eq!(std::fs::read(&pub_path).unwrap(), original);
}

#[cfg(unix)]
#[test]
fn a_readable_private_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let f = fixture();
    let cfg = config(4096, 100);
    drop(LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap());
    let key = f.keys.join(PRIVATE_KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap_err();
    assert!(matches!(err, LedgerError::Key { .. }), "{err}");
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

fn last_segment(dir: &Path) -> PathBuf {
    format::list_segments(dir).unwrap().pop().unwrap().1
}

/// A torn tail of each shape is cut on open, preserved, audited, and
/// nothing before it is lost.
#[test]
fn torn_tails_are_cut_preserved_and_audited() {
    let mut partial = Vec::new();
    format::encode_record(&mut partial, 41, 5, RecordKind::Event, b"half written", &[7; 32]).unwrap();
    partial.truncate(partial.len() / 2);
    let tails: [(&str, Vec<u8>); 4] = [
        ("partial record", partial),
        ("zeros", vec![0; 300]),
        ("garbage", (0..200u32).map(|i| (i * 37 % 251) as u8).collect()),
        ("three bytes", vec![1, 2, 3]),
    ];
    for (name, tail) in tails {
        let f = fixture();
        let cfg = config(1 << 20, 1000);
        write_events(&f, &cfg, 40);
        let seg = last_segment(&f.dir);
        let good_len = std::fs::metadata(&seg).unwrap().len();
        let before = read_all(&f.dir);
        append_bytes(&seg, &tail);

        // A reader stops cleanly (or reports corruption) but never panics;
        // the records before the tail are all there.
        let seen: Vec<_> = LedgerReader::open(&f.dir).unwrap().iter_from(1).unwrap().collect();
        assert!(seen.iter().take(40).all(Result::is_ok), "{name}");

        let (w, report) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
        let t = report.truncated.clone().unwrap_or_else(|| panic!("{name}: nothing cut"));
        assert_eq!((t.file.clone(), t.offset, t.bytes), (seg.clone(), good_len, tail.len() as u64), "{name}");
        assert_eq!(t.first_lost_seq, 41);
        assert_eq!(std::fs::read(&t.saved_to).unwrap(), tail, "{name}: cut bytes preserved");
        assert_eq!(report.audit_seq, Some(41));
        drop(w);

        let after = read_all(&f.dir);
        assert_eq!(&after[..40], &before[..], "{name}: nothing before the tail lost");
        let audit = after[40].audit().unwrap();
        assert_eq!(audit.action, "ledger.recovered");
        let detail = |k: &str| audit.details.iter().find(|(dk, _)| dk == k).map(|(_, v)| v.clone());
        assert_eq!(detail("offset"), Some(good_len.to_string()));
        assert_eq!(detail("bytes"), Some(tail.len().to_string()));
        assert_eq!(detail("blake3"), Some(blake3::hash(&tail).to_hex().to_string()));
        let report = verify(&f.dir, None, &mut no_progress()).unwrap();
        assert!(report.is_ok(), "{name}: {:?}", report.problem);
    }
}

#[test]
fn a_segment_torn_at_creation_is_removed() {
    let f = fixture();
    let cfg = config(1 << 20, 1000);
    write_events(&f, &cfg, 5);
    let torn = format::segment_path(&f.dir, 6);
    std::fs::write(&torn, &format::MAGIC[..5]).unwrap();
    // The reader treats a header-less newest segment as not there yet.
    assert_eq!(LedgerReader::open(&f.dir).unwrap().head().unwrap(), Some(5));
    assert_eq!(read_all(&f.dir).len(), 5);

    let (w, report) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
    assert_eq!(report.removed_segments, vec![torn.clone()]);
    assert_eq!(report.audit_seq, Some(6));
    drop(w);
    assert!(!torn.exists());
    assert!(verify(&f.dir, None, &mut no_progress()).unwrap().is_ok());
}

#[test]
fn reader_tolerates_a_concurrent_writer() {
    let f = fixture();
    let cfg = config(8 * 1024, 200);
    let total = 3000u64;
    // Create the ledger first so the reader can open it.
    drop(LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap());
    let (dir, keys, wcfg) = (f.dir.clone(), f.keys.clone(), cfg.clone());
    let writer = std::thread::spawn(move || {
        let (mut w, _) = LedgerWriter::open(&dir, &keys, &wcfg).unwrap();
        for i in 0..total {
            w.append_with(RecordKind::Event, 0, payload).unwrap();
            if i % 7 == 0 {
                w.commit().unwrap();
            }
        }
        w.close().unwrap();
    });

    let reader = LedgerReader::open(&f.dir).unwrap();
    // One iterator tails the ledger; a second restarts from its position
    // each round, as the agent does after a dropped bus message.
    let mut tail = reader.iter_from(1).unwrap();
    let (mut next_tail, mut next_fresh, mut events) = (1u64, 1u64, 0u64);
    let mut done = false;
    while !done {
        done = writer.is_finished();
        for r in tail.by_ref() {
            let r = r.unwrap();
            assert_eq!(r.seq, next_tail);
            next_tail += 1;
            events += u64::from(r.kind == RecordKind::Event);
        }
        for r in reader.iter_from(next_fresh).unwrap() {
            assert_eq!(r.unwrap().seq, next_fresh);
            next_fresh += 1;
        }
        std::thread::yield_now();
    }
    writer.join().unwrap();
    assert_eq!(events, total);
    assert_eq!(next_tail, next_fresh);
    assert!(format::list_segments(&f.dir).unwrap().len() > 10);
    assert!(verify(&f.dir, None, &mut no_progress()).unwrap().is_ok());
}

#[test]
fn progress_is_reported_and_empty_dirs_are_errors() {
    let f = fixture();
    write_events(&f, &config(1 << 20, 1000), 10);
    let mut calls = Vec::new();
    let report = verify(&f.dir, None, &mut |r, b| calls.push((r, b))).unwrap();
    assert_eq!(calls.last().copied(), Some((report.records, report.bytes)));
    assert_eq!(report.bytes, std::fs::metadata(last_segment(&f.dir)).unwrap().len());

    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(LedgerReader::open(empty.path()), Err(LedgerError::Empty { .. })));
    let err = verify(empty.path(), None, &mut no_progress()).unwrap_err();
    assert!(matches!(err, LedgerError::NoPublicKey { .. }), "{err}");
}

#[test]
fn committed_records_are_readable_before_their_deferred_sync() {
    // With a long sync interval, commit still writes: a reader (the agent,
    // the CLI) sees every committed record, and a restart of the writer
    // (procmond crashing) finds them all.
    let f = fixture();
    let mut cfg = config(1 << 20, 1_000_000);
    cfg.sync_interval = Duration::from_secs(3600);
    let (mut w, _) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
    for _ in 0..40 {
        w.append_with(RecordKind::Event, 1_000, payload).unwrap();
    }
    w.commit().unwrap();
    assert_eq!(read_all(&f.dir).len(), 40);
    drop(w);
    let (w, report) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
    assert_eq!(report.last_seq, 40);
    assert_eq!(w.head().0, 40);
}

/// An idle writer names when its deferred sync and its time-based
/// checkpoint fall due, and nothing once both are done: the collector
/// sleeps until then instead of polling.
#[test]
fn idle_commit_deadline_covers_the_deferred_sync_and_the_checkpoint() {
    let f = fixture();
    let mut cfg = config(1 << 20, 1_000_000);
    cfg.sync_interval = Duration::from_secs(60);
    cfg.checkpoint_interval = Duration::from_secs(600);
    let (mut w, _) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
    w.checkpoint().unwrap();
    assert_eq!(w.idle_commit_at(), None, "a synced, checkpointed ledger has nothing due");

    let before = std::time::Instant::now();
    w.append_with(RecordKind::Event, 1_000, payload).unwrap();
    w.commit().unwrap();
    let due = w.idle_commit_at().expect("a written record is synced and checkpointed later");
    // The sync (60 s after the last one) comes before the checkpoint (600 s).
    assert!(due <= before + Duration::from_secs(61) && due > before, "{:?}", due - before);
    assert!(!w.idle_commit_due());

    // A checkpoint syncs and signs everything: nothing is due any more.
    w.checkpoint().unwrap();
    assert_eq!(w.idle_commit_at(), None);
}

/// procmond's event path commits without waiting for the disk: records are
/// written (readers see them) at once, and the due fdatasync is handed out
/// as a job, one at a time; writes made while it runs stay due for the next.
#[test]
fn commit_nowait_writes_at_once_and_hands_out_one_sync_at_a_time() {
    let f = fixture();
    let cfg = config(1 << 20, 1_000_000); // sync_interval 0: due at every commit
    let (mut w, _) = LedgerWriter::open(&f.dir, &f.keys, &cfg).unwrap();
    w.append_with(RecordKind::Event, 1_000, payload).unwrap();
    let job = w.commit_nowait().unwrap().expect("a written record is to be synced");
    assert_eq!(read_all(&f.dir).len(), 1, "committed records are readable before the sync");

    // While the job runs nothing else is handed out or due.
    w.append_with(RecordKind::Event, 1_000, payload).unwrap();
    assert!(w.commit_nowait().unwrap().is_none(), "one sync at a time");
    assert_eq!(read_all(&f.dir).len(), 2);
    assert!(!w.idle_commit_due());

    // The second record was written after the job started: still due.
    w.sync_done(job.run()).unwrap();
    assert!(w.idle_commit_due(), "a write made during the sync needs another");
    let job = w.commit_nowait().unwrap().expect("the second record's sync");
    w.sync_done(job.run()).unwrap();
    assert!(!w.idle_commit_due(), "everything written is synced");
    assert!(w.commit_nowait().unwrap().is_none());
    w.close().unwrap();
    assert_eq!(read_all(&f.dir).len(), 3, "two events and the closing checkpoint");
}
