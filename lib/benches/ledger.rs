//! Ledger throughput (PRODUCT.md §15: append >= 100k records/s with group
//! commit, verify >= 1M records/s).
//!
//! `cargo bench -p daemoneye-lib --bench ledger`. Files go to a temporary
//! directory (set TMPDIR to measure a specific disk).

// A benchmark that cannot set up its files has nothing to measure: failing
// loudly is the intent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use bytesize::ByteSize;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use daemoneye_lib::config::LedgerConfig;
use daemoneye_lib::ledger::{LedgerReader, LedgerWriter, RecordKind, verify};

/// Records per group commit (the shipped default).
const BATCH: usize = 512;
/// Records in the ledger that verify and the reader walk.
const VERIFY_RECORDS: u64 = 200_000;
/// A typical encoded ProcessEvent is 150-400 bytes.
const PAYLOAD: usize = 256;

fn config() -> LedgerConfig {
    LedgerConfig {
        segment_size: ByteSize::mib(16),
        commit_batch: BATCH,
        commit_interval: Duration::from_millis(5),
        sync_interval: Duration::ZERO,
        checkpoint_every: 10_000,
        checkpoint_interval: Duration::from_secs(10),
    }
}

fn payload(seq: u64) -> Vec<u8> {
    (0..PAYLOAD).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8).collect()
}

fn append(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut w, _) = LedgerWriter::open(&tmp.path().join("ledger"), &tmp.path().join("keys"), &config()).unwrap();
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("append_512_then_commit", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(w.append_with(RecordKind::Event, 1, payload).unwrap());
            }
            w.commit().unwrap();
        });
    });
    g.finish();
}

fn read_and_verify(c: &mut Criterion) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    {
        let (mut w, _) = LedgerWriter::open(&dir, &tmp.path().join("keys"), &config()).unwrap();
        for _ in 0..VERIFY_RECORDS {
            w.append_with(RecordKind::Event, 1, payload).unwrap();
            if w.commit_due() {
                w.commit().unwrap();
            }
        }
        w.close().unwrap();
    }
    let records = verify(&dir, None, &mut |_, _| {}).unwrap().records;
    let mut g = c.benchmark_group("ledger");
    g.throughput(Throughput::Elements(records));
    g.bench_function("verify", |b| {
        b.iter(|| {
            let report = verify(&dir, None, &mut |_, _| {}).unwrap();
            assert!(report.is_ok());
            black_box(report.records)
        });
    });
    g.bench_function("reader_iter", |b| {
        let reader = LedgerReader::open(&dir).unwrap();
        b.iter(|| black_box(reader.iter_from(1).unwrap().map(|r| r.unwrap().seq).last()));
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = append, read_and_verify
}
criterion_main!(benches);
