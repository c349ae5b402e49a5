//! Periodic resource sampling: CPU and memory of live processes as `update`
//! events.
//!
//! [`ResourceSampler`] reads every live process's CPU time and resident
//! memory from a [`UsageReader`] every interval (default 10 s; zero turns it
//! off) and emits an `update` carrying only the identity, `cpu_usage`
//! (percent of one core over the interval) and `memory_usage` (resident
//! bytes) — and only when a value moved noticeably since the last report for
//! that process, so an idle machine produces almost nothing.
//!
//! The reader keys each process itself (on Linux from the same
//! `/proc/<pid>/stat` read that gives its CPU time and memory, see
//! `daemoneye_platform_linux::procfs::UsageFromProc`), so the updates land
//! on the rows the primary source created and a reused pid is a new
//! process. A process's first reading is its CPU baseline: it is reported
//! from the second round it is seen in. The first round is one interval
//! after start, when the primary source's own start-up snapshot is done. (This used `sysinfo`, whose table of
//! every process cost procmond 15 MB with 10,000 processes, on top of a
//! second read of each process's `stat` for its key.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::{self, EventType, ProcessEvent, ProcessRecord};
use tokio_util::sync::CancellationToken;

use crate::source::{EventSink, EventSource, SourceError, SourceFuture};

/// One live process's resource use, as a [`UsageReader`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Its pid.
    pub pid: u32,
    /// Its start time, in the reader's unit: with the pid, the process's
    /// identity (a reused pid is a new process).
    pub start: u64,
    /// CPU time used so far (user + system), in nanoseconds.
    pub cpu_time_ns: u64,
    /// Resident memory in bytes.
    pub memory_bytes: u64,
}

/// Reads the resource use of every live process (blocking: called on a
/// blocking thread).
pub trait UsageReader: Send + 'static {
    /// Every live process now.
    fn read(&mut self) -> Vec<Usage>;
    /// The process key of a process read by [`UsageReader::read`] (called
    /// only for the few that are reported).
    fn key(&self, usage: &Usage) -> String;
}

/// When a change is "noticeable".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Minimum CPU change, in percentage points.
    pub cpu_points: f64,
    /// Minimum memory change as a fraction of the last reported value.
    pub memory_ratio: f64,
    /// Minimum memory change in bytes (small processes jitter by pages).
    pub memory_bytes: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self { cpu_points: 5.0, memory_ratio: 0.10, memory_bytes: 1 << 20 }
    }
}

/// Samples CPU and memory of live processes; runs as an [`EventSource`].
pub struct ResourceSampler {
    interval: Duration,
    reader: Box<dyn UsageReader>,
    thresholds: Thresholds,
}

impl std::fmt::Debug for ResourceSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceSampler")
            .field("interval", &self.interval)
            .field("thresholds", &self.thresholds)
            .finish_non_exhaustive()
    }
}

impl ResourceSampler {
    /// The default sampling interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

    /// A sampler every `interval` (zero: disabled) reading with `reader`.
    pub fn new(interval: Duration, reader: impl UsageReader) -> Self {
        Self { interval, reader: Box::new(reader), thresholds: Thresholds::default() }
    }

    /// Overrides what counts as a noticeable change.
    #[must_use]
    pub fn with_thresholds(mut self, thresholds: Thresholds) -> Self {
        self.thresholds = thresholds;
        self
    }

    /// False when the interval is zero.
    pub fn is_enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    async fn run_loop(self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        if !self.is_enabled() {
            tracing::info!("resource sampler disabled (interval 0)");
            return Ok(());
        }
        let mut state = Some(SamplerState { reader: self.reader, cpu: HashMap::new(), at: None, last: HashMap::new() });
        // The first round, a CPU baseline that reports nothing, one interval
        // after start rather than at once: at start the primary source's
        // snapshot reads every process too, and with 10,000 processes a
        // baseline beside it cost procmond ~0.25 s of CPU and the snapshot
        // ~0.15 s (medians of 7 alternating runs).
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let Some(mut st) = state.take() else {
                return Err(SourceError::Task("sampler state lost".into()));
            };
            let thresholds = self.thresholds;
            let (st, reported) = tokio::task::spawn_blocking(move || {
                let samples = st.refresh();
                let reported = diff_samples(&mut st.last, samples, thresholds);
                (st, reported)
            })
            .await
            .map_err(|e| SourceError::Task(format!("sampler task: {e}")))?;
            tracing::debug!(updates = reported.len(), "resource sample");
            // Events are made as they are sent: the round that first
            // reports them reports every process, and 10,000 events at once were 8 MB of procmond's
            // resident memory until the next trim.
            let now = now_ns();
            for sample in &reported {
                if !sink.send_or_cancel(update_event(&*st.reader, sample, now), &cancel).await? {
                    return Ok(());
                }
            }
            state = Some(st);
        }
    }
}

impl EventSource for ResourceSampler {
    fn kind(&self) -> proto::EventSource {
        proto::EventSource::Poll
    }

    fn name(&self) -> &'static str {
        "sampler"
    }

    fn run(self: Box<Self>, sink: EventSink, cancel: CancellationToken) -> SourceFuture {
        Box::pin((*self).run_loop(sink, cancel))
    }
}

/// One process's values in one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub(crate) usage: Usage,
    pub(crate) cpu: f64,
}

/// A process's identity: (pid, start). Numbers, not key strings: the
/// sampler's maps hold every live process, and no string is made for one
/// that is not reported.
type Identity = (u32, u64);

struct SamplerState {
    reader: Box<dyn UsageReader>,
    /// CPU time at the last round.
    cpu: HashMap<Identity, u64>,
    /// When the last round was read.
    at: Option<Instant>,
    /// Last reported (cpu, memory).
    last: HashMap<Identity, (f64, u64)>,
}

impl SamplerState {
    /// Reads a round and returns the samples of the processes that were
    /// also in the last one (the others' CPU time is only a baseline).
    fn refresh(&mut self) -> Vec<Sample> {
        let usage = self.reader.read();
        let now = Instant::now();
        let elapsed = self.at.replace(now).map(|t| now.duration_since(t).as_nanos() as f64);
        let mut cpu = HashMap::with_capacity(usage.len());
        let mut samples = Vec::new();
        for u in usage {
            if let (Some(dt), Some(before)) = (elapsed.filter(|d| *d > 0.0), self.cpu.get(&(u.pid, u.start))) {
                let used = u.cpu_time_ns.saturating_sub(*before) as f64;
                samples.push(Sample { usage: u, cpu: used / dt * 100.0 });
            }
            cpu.insert((u.pid, u.start), u.cpu_time_ns);
        }
        self.cpu = cpu;
        samples
    }
}

/// The samples of one round that are to be reported: the processes whose
/// values moved noticeably (or that were never reported). Forgets processes
/// that are gone.
pub(crate) fn diff_samples(
    last: &mut HashMap<Identity, (f64, u64)>,
    samples: Vec<Sample>,
    t: Thresholds,
) -> Vec<Sample> {
    if samples.is_empty() {
        return Vec::new();
    }
    let mut seen = HashMap::with_capacity(samples.len());
    let mut reported = Vec::new();
    for s in samples {
        let id = (s.usage.pid, s.usage.start);
        let memory = s.usage.memory_bytes;
        let report = match last.get(&id) {
            None => true,
            Some(&(cpu, mem)) => {
                let mem_delta = memory.abs_diff(mem);
                let mem_min = t.memory_bytes.max((mem as f64 * t.memory_ratio) as u64);
                (s.cpu - cpu).abs() >= t.cpu_points || mem_delta >= mem_min
            }
        };
        let values = if report {
            reported.push(s);
            (s.cpu, memory)
        } else {
            last.get(&id).copied().unwrap_or((s.cpu, memory))
        };
        seen.insert(id, values);
    }
    *last = seen;
    reported
}

/// The `update` event reporting `s`: only the identity, `cpu_usage` and
/// `memory_usage`.
pub(crate) fn update_event(reader: &dyn UsageReader, s: &Sample, now: i64) -> ProcessEvent {
    ProcessEvent {
        seq: 0,
        event_type: EventType::Update as i32,
        event_time_ns: now,
        source: proto::EventSource::Poll as i32,
        process: Some(ProcessRecord {
            pid: s.usage.pid,
            process_key: reader.key(&s.usage),
            cpu_usage: Some(s.cpu),
            memory_usage: Some(s.usage.memory_bytes),
            ..ProcessRecord::default()
        }),
        gap: None,
        prev_seq: 0,
    }
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
