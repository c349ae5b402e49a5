//! Broker benchmarks over the real Unix socket: throughput (messages/s, one
//! publisher, several subscribers) and publish-to-deliver latency.
//!
//! `cargo bench -p daemoneye-eventbus --bench broker`. Latency percentiles
//! are printed on stderr (criterion reports means).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr, reason = "benchmark")]

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use daemoneye_eventbus::{BackpressurePolicy, Broker, BrokerConfig, BusClient, CorrelationMetadata, Subscription};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "events.process.lifecycle";
const PAYLOAD: usize = 256;

struct Setup {
    _dir: tempfile::TempDir,
    publisher: BusClient,
    subs: Vec<Subscription>,
    _clients: Vec<BusClient>,
}

async fn setup(rt_subs: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = daemoneye_lib::config::local_endpoint(dir.path(), "bus", cfg!(windows));
    let cancel = CancellationToken::new();
    let config = BrokerConfig { acl: daemoneye_eventbus::AccessPolicy::allow_all(), ..BrokerConfig::default() };
    let _broker = Broker::bind(&path, config, cancel).await.unwrap();
    let publisher = BusClient::connect(&path, "bench-pub").await.unwrap();
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for i in 0..rt_subs {
        let c = BusClient::connect(&path, &format!("bench-sub-{i}")).await.unwrap();
        subs.push(c.subscribe(TOPIC, BackpressurePolicy::Block, 65536).await.unwrap());
        clients.push(c);
    }
    Setup { _dir: dir, publisher, subs, _clients: clients }
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("broker_throughput");
    group.sample_size(10).measurement_time(Duration::from_secs(10));
    for n_subs in [1usize, 4] {
        let mut s = rt.block_on(setup(n_subs));
        const BATCH: u64 = 5_000;
        group.throughput(Throughput::Elements(BATCH));
        group.bench_function(format!("1pub_{n_subs}sub_256B"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let payload = Bytes::from(vec![7u8; PAYLOAD]);
                    for _ in 0..BATCH {
                        let corr = CorrelationMetadata::new("bench");
                        s.publisher.publish(TOPIC, payload.clone(), "bench", corr).await.unwrap();
                    }
                    for sub in &mut s.subs {
                        for _ in 0..BATCH {
                            sub.recv().await.unwrap();
                        }
                    }
                });
            });
        });
    }
    group.finish();
}

fn latency(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut s = rt.block_on(setup(1));
    let mut samples: Vec<Duration> = Vec::new();
    let mut group = c.benchmark_group("broker_latency");
    group.sample_size(20);
    group.bench_function("publish_to_deliver_256B", |b| {
        b.iter(|| {
            rt.block_on(async {
                let start = Instant::now();
                let corr = CorrelationMetadata::new("bench");
                s.publisher.publish(TOPIC, Bytes::from(vec![7u8; PAYLOAD]), "bench", corr).await.unwrap();
                s.subs[0].recv().await.unwrap();
                samples.push(start.elapsed());
            });
        });
    });
    group.finish();
    samples.sort();
    if !samples.is_empty() {
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        eprintln!(
            "publish-to-deliver over the socket: n={} p50={:?} p99={:?} max={:?}",
            samples.len(),
            at(0.50),
            at(0.99),
            samples[samples.len() - 1]
        );
    }
}

criterion_group!(benches, throughput, latency);
criterion_main!(benches);
