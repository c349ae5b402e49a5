//! Tamper detection: every kind of change is found and located exactly.

use std::path::Path;

use ed25519_dalek::SigningKey;
use proptest::prelude::*;

use super::format::{Checkpoint, HEADER_LEN, Header, ZERO_HASH, encode_record, list_segments, segment_path};
use super::tests::{Fixture, config, fixture, no_progress, read_all, write_events};
use super::*;

fn location(dir: &Path, seq: u64) -> RecordLocation {
    let r = LedgerReader::open(dir).unwrap().iter_from(seq).unwrap().next().unwrap().unwrap();
    assert_eq!(r.seq, seq);
    r.location
}

fn record_len(dir: &Path, seq: u64) -> usize {
    let r = LedgerReader::open(dir).unwrap().iter_from(seq).unwrap().next().unwrap().unwrap();
    4 + format::MIN_BODY + r.payload.len()
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

fn problem(dir: &Path) -> Tamper {
    let report = verify(dir, None, &mut no_progress()).unwrap();
    report.problem.clone().unwrap_or_else(|| panic!("no problem found: {report:?}"))
}

/// A multi-segment ledger of 80 events.
fn multi_segment() -> Fixture {
    let f = fixture();
    write_events(&f, &config(2048, 20), 80);
    assert!(list_segments(&f.dir).unwrap().len() > 4);
    f
}

#[test]
fn a_flipped_byte_anywhere_in_a_record_is_located_exactly() {
    // (field, offset within record as a function of payload length)
    type Field = (&'static str, fn(usize) -> usize);
    let fields: [Field; 9] = [
        ("len", |_| 3),
        ("seq", |_| 11),
        ("time", |_| 12),
        ("kind", |_| 20),
        ("payload_len", |_| 24),
        ("payload", |_| 25),
        ("payload end", |p| 24 + p),
        ("prev_hash", |p| 25 + p + 5),
        ("entry_hash", |p| 25 + p + 32 + 31),
    ];
    for (name, at) in fields {
        let f = multi_segment();
        let seq = 40;
        let loc = location(&f.dir, seq);
        let plen = record_len(&f.dir, seq) - 4 - format::MIN_BODY;
        flip(&loc.file, loc.offset + at(plen) as u64);
        let t = problem(&f.dir);
        assert_eq!((t.seq, &t.file, t.offset), (seq, &loc.file, loc.offset), "{name}: {t}");
        // The reader refuses the record too, at the same place.
        let err = LedgerReader::open(&f.dir).unwrap().iter_from(1).unwrap().find_map(Result::err);
        match err {
            Some(LedgerError::Corrupt { seq: s, offset, file, .. }) => {
                assert_eq!((s, offset, file), (seq, loc.offset, loc.file.clone()), "{name}")
            }
            other => panic!("{name}: reader gave {other:?}"),
        }
    }
}

#[test]
fn a_deleted_record_and_swapped_records_are_located() {
    let f = multi_segment();
    // Find two neighbours in the same segment.
    let seq = (30..70).find(|s| location(&f.dir, *s).file == location(&f.dir, s + 1).file).unwrap();
    let (a, b) = (location(&f.dir, seq), location(&f.dir, seq + 1));
    let (la, lb) = (record_len(&f.dir, seq), record_len(&f.dir, seq + 1));
    let original = std::fs::read(&a.file).unwrap();
    let (oa, ob) = (a.offset as usize, b.offset as usize);

    let mut swapped = original[..oa].to_vec();
    swapped.extend_from_slice(&original[ob..ob + lb]);
    swapped.extend_from_slice(&original[oa..oa + la]);
    swapped.extend_from_slice(&original[ob + lb..]);
    std::fs::write(&a.file, &swapped).unwrap();
    let t = problem(&f.dir);
    assert_eq!((t.seq, &t.file, t.offset), (seq, &a.file, a.offset), "{t}");
    assert!(t.what.contains("expected"), "{t}");

    let mut deleted = original[..oa].to_vec();
    deleted.extend_from_slice(&original[ob..]);
    std::fs::write(&a.file, &deleted).unwrap();
    let t = problem(&f.dir);
    assert_eq!((t.seq, &t.file, t.offset), (seq, &a.file, a.offset), "{t}");
}

#[test]
fn segment_headers_and_missing_segments_are_located() {
    let f = multi_segment();
    let segs = list_segments(&f.dir).unwrap();
    let (first, path) = segs[2].clone();
    flip(&path, 30); // inside the header's prev_hash
    let t = problem(&f.dir);
    assert_eq!((t.seq, &t.file, t.offset), (first, &path, 0), "{t}");
    flip(&path, 30);
    assert!(verify(&f.dir, None, &mut no_progress()).unwrap().is_ok());

    std::fs::remove_file(&path).unwrap();
    let (next_first, next_path) = segs[3].clone();
    let t = problem(&f.dir);
    assert_eq!((t.seq, &t.file, t.offset), (first, &next_path, 0), "{t}");
    assert!(t.what.contains("missing"), "{t}");
    let _ = next_first;
}

/// Rewrites the ledger as one segment from `records`, re-chaining every
/// hash as an attacker without the key would. Checkpoints are updated to
/// name their new predecessor and re-signed only if `resign` is given.
fn forge(dir: &Path, records: &[(RecordKind, i64, Vec<u8>)], resign: Option<&SigningKey>) {
    for (_, p) in list_segments(dir).unwrap() {
        std::fs::remove_file(p).unwrap();
    }
    let mut out = Header { first_seq: 1, prev_hash: ZERO_HASH }.encode().to_vec();
    let mut prev = ZERO_HASH;
    for (i, (kind, time, payload)) in records.iter().enumerate() {
        let seq = i as u64 + 1;
        let payload = match kind {
            RecordKind::Checkpoint => {
                let mut ck = Checkpoint::decode(payload).unwrap();
                ck.seq = seq - 1;
                ck.entry_hash = prev;
                if let Some(k) = resign {
                    ck = Checkpoint::sign(k, seq - 1, prev);
                }
                ck.encode()
            }
            _ => payload.clone(),
        };
        prev = encode_record(&mut out, seq, *time, *kind, &payload, &prev).unwrap();
    }
    std::fs::write(segment_path(dir, 1), out).unwrap();
}

fn one_segment_with_checkpoints() -> (Fixture, Vec<(RecordKind, i64, Vec<u8>)>) {
    let f = fixture();
    let mut cfg = config(1 << 20, 10);
    cfg.commit_batch = 1;
    write_events(&f, &cfg, 60);
    let records = read_all(&f.dir).into_iter().map(|r| (r.kind, r.time_ns, r.payload)).collect();
    (f, records)
}

#[test]
fn a_forged_insert_fails_at_the_next_checkpoint_signature() {
    let (f, mut records) = one_segment_with_checkpoints();
    // Checkpoints at 11, 22, 33, ... each signing the record before.
    assert_eq!(records[10].0, RecordKind::Checkpoint);
    assert_eq!(records[21].0, RecordKind::Checkpoint);
    records.insert(15, (RecordKind::Event, 5, b"forged event".to_vec()));
    forge(&f.dir, &records, None);
    let t = problem(&f.dir);
    // Every hash links; the first thing that fails is the checkpoint that
    // now sits at seq 23, and everything through seq 10 is still proven.
    assert_eq!(t.seq, 23, "{t}");
    assert_eq!(t.offset, location(&f.dir, 23).offset);
    assert!(t.what.contains("signature"), "{t}");
    assert_eq!(t.signed_through, Some(10));
}

#[test]
fn checkpoints_re_signed_with_another_key_fail_against_the_exported_key() {
    let (f, mut records) = one_segment_with_checkpoints();
    let real = read_public_key(&f.dir.join(PUBLIC_KEY_FILE)).unwrap();
    records[3].2 = b"changed history".to_vec();
    let attacker = SigningKey::from_bytes(&[42; 32]);
    forge(&f.dir, &records, Some(&attacker));
    let t = problem(&f.dir);
    assert_eq!((t.seq, t.signed_through), (11, None), "{t}");

    // Replacing ledger.pub fools a verifier that trusts the directory, not
    // one given the key exported at install time.
    std::fs::write(f.dir.join(PUBLIC_KEY_FILE), hex::encode(attacker.verifying_key().as_bytes())).unwrap();
    assert!(verify(&f.dir, None, &mut no_progress()).unwrap().is_ok());
    let report = verify(&f.dir, Some(&real), &mut no_progress()).unwrap();
    assert_eq!(report.problem.map(|t| t.seq), Some(11));
}

#[test]
fn a_cut_or_rewritten_tail_is_caught_by_a_saved_checkpoint() {
    let (f, _) = one_segment_with_checkpoints();
    let all = read_all(&f.dir);
    let saved = all.iter().rev().find_map(LedgerRecord::checkpoint).unwrap();
    let expect = VerifyOptions { expect_at_least: Some((saved.seq, saved.entry_hash)), ..Default::default() };
    let report = verify_with(&f.dir, &expect, &mut no_progress()).unwrap();
    assert!(report.is_ok(), "{:?}", report.problem);

    // Cut at a record boundary before the saved seq: the chain itself is
    // intact, only the saved checkpoint reveals the loss.
    let cut = location(&f.dir, saved.seq - 5);
    let file = std::fs::OpenOptions::new().write(true).open(&cut.file).unwrap();
    file.set_len(cut.offset).unwrap();
    drop(file);
    assert!(verify(&f.dir, None, &mut no_progress()).unwrap().is_ok());
    let t = verify_with(&f.dir, &expect, &mut no_progress()).unwrap().problem.unwrap();
    assert_eq!((t.seq, &t.file, t.offset), (saved.seq - 5, &cut.file, cut.offset), "{t}");
    assert!(t.what.contains("cut off"), "{t}");

    // Re-growing the tail with different records is caught at the saved seq.
    let (mut w, report) = LedgerWriter::open(&f.dir, &f.keys, &config(1 << 20, 1000)).unwrap();
    assert!(report.truncated.is_none(), "a cut at a record boundary looks clean to the writer");
    for _ in 0..10 {
        w.append(RecordKind::Event, 2, b"rewritten history").unwrap();
    }
    w.commit().unwrap();
    drop(w);
    let t = verify_with(&f.dir, &expect, &mut no_progress()).unwrap().problem.unwrap();
    assert_eq!((t.seq, t.offset), (saved.seq, location(&f.dir, saved.seq).offset), "{t}");
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { segment: usize, at: usize, xor: u8 },
    Truncate { segment: usize, at: usize },
    Insert { segment: usize, at: usize, bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        4 => (0..8usize, any::<usize>(), 1..=255u8).prop_map(|(segment, at, xor)| Damage::Flip { segment, at, xor }),
        1 => (0..8usize, any::<usize>()).prop_map(|(segment, at)| Damage::Truncate { segment, at }),
        1 => (0..8usize, any::<usize>(), prop::collection::vec(any::<u8>(), 1..120))
            .prop_map(|(segment, at, bytes)| Damage::Insert { segment, at, bytes }),
    ]
}

fn apply(dir: &Path, d: &Damage) {
    let segs = list_segments(dir).unwrap();
    let (seg, at) = match d {
        Damage::Flip { segment, at, .. } | Damage::Truncate { segment, at } | Damage::Insert { segment, at, .. } => {
            (&segs[segment % segs.len()].1, *at)
        }
    };
    let mut bytes = std::fs::read(seg).unwrap();
    if bytes.is_empty() {
        return;
    }
    let at = at % bytes.len();
    match d {
        Damage::Flip { xor, .. } => bytes[at] ^= xor,
        Damage::Truncate { .. } => bytes.truncate(at),
        Damage::Insert { bytes: ins, .. } => {
            bytes.splice(at..at, ins.iter().copied());
        }
    }
    std::fs::write(seg, bytes).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random corruption never panics the reader, verify or recovery; a
    /// single flipped byte is always detected.
    #[test]
    fn random_corruption_never_panics(damages in prop::collection::vec(damage(), 1..4)) {
        let f = fixture();
        write_events(&f, &config(1536, 15), 45);
        for d in &damages {
            apply(&f.dir, d);
        }
        if let Ok(reader) = LedgerReader::open(&f.dir) {
            if let Ok(iter) = reader.iter_from(1) {
                for r in iter.take(1000) {
                    let _ = r;
                }
            }
            let _ = reader.iter_from(20).map(|i| i.take(1000).count());
            let _ = reader.head();
        }
        let report = verify(&f.dir, None, &mut no_progress()).unwrap();
        if let [Damage::Flip { .. }] = damages.as_slice() {
            prop_assert!(report.problem.is_some(), "undetected flip {damages:?}");
        }
        let _ = LedgerWriter::open(&f.dir, &f.keys, &config(1536, 15));
    }
}

#[test]
fn header_length_is_what_the_docs_say() {
    assert_eq!(HEADER_LEN, 8 + 4 + 8 + 32);
}
