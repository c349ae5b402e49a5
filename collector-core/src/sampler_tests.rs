//! Tests of the resource sampler's change detection and of a real run.

use super::*;

/// A reader that hands out prepared rounds; keys are `k-<pid>`.
struct Rounds(std::collections::VecDeque<Vec<Usage>>);

impl UsageReader for Rounds {
    fn read(&mut self) -> Vec<Usage> {
        self.0.pop_front().unwrap_or_default()
    }
    fn key(&self, u: &Usage) -> String {
        format!("k-{}", u.pid)
    }
}

fn u(pid: u32, cpu_time_ns: u64, memory_bytes: u64) -> Usage {
    Usage { pid, start: 1, cpu_time_ns, memory_bytes }
}

fn s(pid: u32, cpu: f64, memory: u64) -> Sample {
    Sample { usage: u(pid, 0, memory), cpu }
}

/// One round's `update` events, as the sampler sends them.
fn diff(
    last: &mut HashMap<Identity, (f64, u64)>,
    samples: Vec<Sample>,
    r: &dyn UsageReader,
    t: Thresholds,
    now: i64,
) -> Vec<ProcessEvent> {
    diff_samples(last, samples, t).iter().map(|s| update_event(r, s, now)).collect()
}

fn keys(events: &[ProcessEvent]) -> Vec<String> {
    events.iter().map(|e| e.process.as_ref().unwrap().process_key.clone()).collect()
}

#[test]
fn reports_new_and_noticeably_changed_processes_only() {
    let t = Thresholds::default();
    let r = Rounds(Default::default());
    let mut last = HashMap::new();
    let ev = diff(&mut last, vec![s(1, 0.0, 10 << 20), s(2, 50.0, 100 << 20)], &r, t, 5);
    assert_eq!(keys(&ev), vec!["k-1", "k-2"]);
    let p = ev[1].process.as_ref().unwrap();
    assert_eq!((p.cpu_usage, p.memory_usage, p.pid), (Some(50.0), Some(100 << 20), 2));
    assert_eq!(p.name, None, "an update is a delta");
    assert_eq!((ev[1].event_type(), ev[1].seq, ev[1].event_time_ns), (EventType::Update, 0, 5));

    // Small jitter: quiet. Memory +5% of 100 MiB: quiet. CPU +10 points: report.
    let ev = diff(&mut last, vec![s(1, 2.0, (10 << 20) + 4096), s(2, 52.0, 105 << 20)], &r, t, 6);
    assert!(ev.is_empty());
    let ev = diff(&mut last, vec![s(1, 12.0, 10 << 20), s(2, 52.0, 112 << 20)], &r, t, 7);
    assert_eq!(keys(&ev), vec!["k-1", "k-2"]);
    // Slow drift is measured from the last report, so it is reported eventually.
    let mut reported = 0;
    for i in 1..=10u64 {
        reported += diff(&mut last, vec![s(1, 12.0, (10 << 20) + i * (200 << 10))], &r, t, 8).len();
    }
    assert_eq!(reported, 1);
    // Pid 2 vanished and is forgotten: a new process with that pid is new.
    assert!(!last.contains_key(&(2, 1)));
    assert_eq!(keys(&diff(&mut last, vec![s(2, 0.0, 1)], &r, t, 9)), vec!["k-2"]);
    // An empty round (the baseline) says nothing and forgets nothing.
    assert!(diff(&mut last, Vec::new(), &r, t, 10).is_empty());
    assert!(last.contains_key(&(2, 1)));
}

/// CPU use is the CPU time spent between two rounds over the wall time
/// between them; a process's first round is only its baseline, and a pid
/// with another start time is another process.
#[test]
fn cpu_use_is_time_spent_over_time_passed() {
    let rounds = vec![
        vec![u(1, 1_000_000_000, 4096)],
        vec![u(1, 2_000_000_000, 4096), u(2, 7, 1)],
        vec![u(1, 2_000_000_000, 4096), u(2, 7, 1), Usage { start: 9, ..u(1, 5, 5) }],
    ];
    let mut st =
        SamplerState { reader: Box::new(Rounds(rounds.into())), cpu: HashMap::new(), at: None, last: HashMap::new() };
    assert!(st.refresh().is_empty(), "the first round is the baseline");
    // Pretend a second passed between the rounds.
    st.at = st.at.and_then(|t| t.checked_sub(Duration::from_secs(1)));
    let samples = st.refresh();
    assert_eq!(samples.len(), 1, "pid 2 is new: baseline only");
    let a = samples[0];
    assert_eq!((a.usage.pid, a.usage.memory_bytes), (1, 4096));
    // One second of CPU over (a bit more than) one second of wall time.
    assert!(a.cpu > 90.0 && a.cpu <= 100.0, "{}", a.cpu);
    st.at = st.at.and_then(|t| t.checked_sub(Duration::from_secs(1)));
    let seen: Vec<(u32, u64)> = st.refresh().into_iter().map(|s| (s.usage.pid, s.usage.start)).collect();
    assert_eq!(seen, [(1, 1), (2, 1)], "pid 1 started anew is a baseline");
}

#[tokio::test]
async fn disabled_sampler_returns_at_once_and_a_running_one_reports() {
    let (sink, _rx) = EventSink::channel(4);
    let off = ResourceSampler::new(Duration::ZERO, Rounds(Default::default()));
    assert!(!off.is_enabled());
    Box::new(off).run(sink, CancellationToken::new()).await.unwrap();

    let rounds = (1..100u64).map(|k| vec![u(42, k * 5_000_000, 1 << 20)]).collect();
    let sampler: Box<dyn EventSource> = Box::new(ResourceSampler::new(Duration::from_millis(50), Rounds(rounds)));
    assert_eq!(sampler.name(), "sampler");
    let (sink, mut rx) = EventSink::channel(4);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(sampler.run(sink, cancel.clone()));
    let ev = rx.recv().await.unwrap().event;
    let p = ev.process.unwrap();
    assert_eq!((p.process_key.as_str(), p.pid, p.memory_usage), ("k-42", 42, Some(1 << 20)));
    assert!(p.cpu_usage.is_some_and(|c| c > 0.0));
    cancel.cancel();
    task.await.unwrap().unwrap();
}
