//! Periodic resource sampling: CPU and memory of live processes as `update`
//! events.
//!
//! [`ResourceSampler`] refreshes CPU and memory with `sysinfo` every interval
//! (default 10 s; zero turns it off) and emits an `update` carrying only the
//! identity, `cpu_usage` (percent of one core) and `memory_usage` (resident
//! bytes) — and only when a value moved noticeably since the last report for
//! that process, so an idle machine produces almost nothing.
//!
//! Processes are keyed by the caller's *keyer* (`pid -> process key`), so the
//! updates land on the rows the primary source created (e.g. keys from
//! `/proc` or eBPF, which sysinfo's own coarse start times would not match).
//! The very first refresh is only a CPU baseline (sysinfo needs two samples
//! to compute a rate) and emits nothing. A pid reused between the refresh and
//! the keyer call would get the new process's key; at a 10 s cadence this is
//! accepted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use daemoneye_lib::models::time::now_ns;
use daemoneye_lib::proto::{self, EventType, ProcessEvent, ProcessRecord};
use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System, ThreadKind};
use tokio_util::sync::CancellationToken;

use crate::source::{EventSink, EventSource, SourceError, SourceFuture};

/// Maps a pid to the process key of the process that has it now.
pub type Keyer = Arc<dyn Fn(u32) -> Option<String> + Send + Sync>;

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
    keyer: Keyer,
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

    /// A sampler every `interval` (zero: disabled) keying processes with
    /// `keyer`.
    pub fn new(interval: Duration, keyer: impl Fn(u32) -> Option<String> + Send + Sync + 'static) -> Self {
        Self { interval, keyer: Arc::new(keyer), thresholds: Thresholds::default() }
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
        let system = System::new()
            .map_err(|e| SourceError::Unavailable { source_name: "sampler", reason: format!("sysinfo: {e:?}") })?;
        let mut state = Some(SamplerState { system, last: HashMap::new(), baseline_done: false });
        let mut ticker = tokio::time::interval(self.interval);
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
            let keyer = Arc::clone(&self.keyer);
            let thresholds = self.thresholds;
            let (st, events) = tokio::task::spawn_blocking(move || {
                let samples = st.refresh();
                let events = st.diff(samples, &*keyer, thresholds, now_ns());
                (st, events)
            })
            .await
            .map_err(|e| SourceError::Task(format!("sampler task: {e}")))?;
            state = Some(st);
            tracing::debug!(updates = events.len(), "resource sample");
            for ev in events {
                if !sink.send_or_cancel(ev, &cancel).await? {
                    return Ok(());
                }
            }
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
    pub(crate) pid: u32,
    pub(crate) cpu: f64,
    pub(crate) memory: u64,
}

struct SamplerState {
    system: System,
    /// Last reported (cpu, memory) by process key.
    last: HashMap<String, (f64, u64)>,
    baseline_done: bool,
}

impl SamplerState {
    /// Refreshes and returns this round's samples (empty for the baseline).
    fn refresh(&mut self) -> Vec<Sample> {
        let kind = ProcessRefreshKind::nothing().without_tasks().with_cpu().with_memory();
        self.system.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
        if !std::mem::replace(&mut self.baseline_done, true) {
            return Vec::new();
        }
        self.system
            .processes()
            .values()
            .filter(|p| p.thread_kind() != Some(ThreadKind::Userland))
            .map(|p| Sample { pid: p.pid().as_u32(), cpu: f64::from(p.cpu_usage()), memory: p.memory() })
            .collect()
    }

    fn diff(
        &mut self,
        samples: Vec<Sample>,
        keyer: &(dyn Fn(u32) -> Option<String> + Send + Sync),
        t: Thresholds,
        now: i64,
    ) -> Vec<ProcessEvent> {
        diff_samples(&mut self.last, samples, keyer, t, now)
    }
}

/// Turns one round of samples into `update` events for the processes whose
/// values moved noticeably (or that were never reported), and forgets
/// processes that are gone.
pub(crate) fn diff_samples(
    last: &mut HashMap<String, (f64, u64)>,
    samples: Vec<Sample>,
    keyer: &(dyn Fn(u32) -> Option<String> + Send + Sync),
    t: Thresholds,
    now: i64,
) -> Vec<ProcessEvent> {
    if samples.is_empty() {
        return Vec::new();
    }
    let mut seen = HashMap::with_capacity(samples.len());
    let mut events = Vec::new();
    for s in samples {
        let Some(key) = keyer(s.pid) else { continue };
        let report = match last.get(&key) {
            None => true,
            Some(&(cpu, mem)) => {
                let mem_delta = s.memory.abs_diff(mem);
                let mem_min = t.memory_bytes.max((mem as f64 * t.memory_ratio) as u64);
                (s.cpu - cpu).abs() >= t.cpu_points || mem_delta >= mem_min
            }
        };
        let reported = if report {
            events.push(ProcessEvent {
                seq: 0,
                event_type: EventType::Update as i32,
                event_time_ns: now,
                source: proto::EventSource::Poll as i32,
                process: Some(ProcessRecord {
                    pid: s.pid,
                    process_key: key.clone(),
                    cpu_usage: Some(s.cpu),
                    memory_usage: Some(s.memory),
                    ..ProcessRecord::default()
                }),
                gap: None,
            });
            (s.cpu, s.memory)
        } else {
            last.get(&key).copied().unwrap_or((s.cpu, s.memory))
        };
        seen.insert(key, reported);
    }
    *last = seen;
    events
}

#[cfg(test)]
#[path = "sampler_tests.rs"]
mod tests;
