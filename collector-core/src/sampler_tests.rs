//! Tests of the resource sampler's change detection and of a real run.

use super::*;

fn keyer(pid: u32) -> Option<String> {
    (pid != 0).then(|| format!("k-{pid}"))
}

fn s(pid: u32, cpu: f64, memory: u64) -> Sample {
    Sample { pid, cpu, memory }
}

fn keys(events: &[ProcessEvent]) -> Vec<String> {
    events.iter().map(|e| e.process.as_ref().unwrap().process_key.clone()).collect()
}

#[test]
fn reports_new_and_noticeably_changed_processes_only() {
    let t = Thresholds::default();
    let mut last = HashMap::new();
    let ev = diff_samples(&mut last, vec![s(1, 0.0, 10 << 20), s(2, 50.0, 100 << 20), s(0, 1.0, 1)], &keyer, t, 5);
    assert_eq!(keys(&ev), vec!["k-1", "k-2"]);
    let p = ev[1].process.as_ref().unwrap();
    assert_eq!((p.cpu_usage, p.memory_usage, p.pid), (Some(50.0), Some(100 << 20), 2));
    assert_eq!(p.name, None, "an update is a delta");
    assert_eq!((ev[1].event_type(), ev[1].seq, ev[1].event_time_ns), (EventType::Update, 0, 5));

    // Small jitter: quiet. Memory +5% of 100 MiB: quiet. CPU +10 points: report.
    let ev = diff_samples(&mut last, vec![s(1, 2.0, (10 << 20) + 4096), s(2, 52.0, 105 << 20)], &keyer, t, 6);
    assert!(ev.is_empty());
    let ev = diff_samples(&mut last, vec![s(1, 12.0, 10 << 20), s(2, 52.0, 112 << 20)], &keyer, t, 7);
    assert_eq!(keys(&ev), vec!["k-1", "k-2"]);
    // Slow drift is measured from the last report, so it is reported eventually.
    let mut reported = 0;
    for i in 1..=10u64 {
        reported += diff_samples(&mut last, vec![s(1, 12.0, (10 << 20) + i * (200 << 10))], &keyer, t, 8).len();
    }
    assert_eq!(reported, 1);
    // Pid 2 vanished and is forgotten: a new process with that key is new.
    assert!(!last.contains_key("k-2"));
    assert_eq!(keys(&diff_samples(&mut last, vec![s(2, 0.0, 1)], &keyer, t, 9)), vec!["k-2"]);
    // An empty round (the baseline) says nothing and forgets nothing.
    assert!(diff_samples(&mut last, Vec::new(), &keyer, t, 10).is_empty());
    assert!(last.contains_key("k-2"));
}

#[tokio::test]
async fn disabled_sampler_returns_at_once_and_real_one_reports_this_process() {
    let (sink, _rx) = EventSink::channel(4);
    let off = ResourceSampler::new(Duration::ZERO, keyer);
    assert!(!off.is_enabled());
    Box::new(off).run(sink, CancellationToken::new()).await.unwrap();

    let me = std::process::id();
    let only_me = move |pid: u32| (pid == me).then(|| format!("me-{pid}"));
    let sampler: Box<dyn EventSource> = Box::new(ResourceSampler::new(Duration::from_millis(50), only_me));
    assert_eq!(sampler.name(), "sampler");
    let (sink, mut rx) = EventSink::channel(4);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(sampler.run(sink, cancel.clone()));
    let ev = rx.recv().await.unwrap().event;
    let p = ev.process.unwrap();
    assert_eq!(p.process_key, format!("me-{me}"));
    assert!(p.memory_usage.unwrap() > 0);
    assert!(p.cpu_usage.is_some());
    cancel.cancel();
    task.await.unwrap().unwrap();
}
