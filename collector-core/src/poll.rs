//! The polling source: enumerate processes every interval and diff.
//!
//! [`PollSource`] is the last backend of the fallback chain and is lossy by
//! nature: a process that starts and exits between two rounds is never seen,
//! and exit codes are unknown. Each round is diffed by process key against
//! the previous one:
//!
//! - first round: every process as `snapshot` (source `procfs` on Linux,
//!   where the enumerator reads `/proc`; `poll` elsewhere);
//! - a new key: `exec` (source `poll`) — pid reuse is a new key, so it shows
//!   as the exit of the old process and the exec of the new one;
//! - a known key whose executable path or argv changed: `exec` again (an
//!   `execve` without a fork);
//! - a vanished key: `exit` with `exit_time` = detection time and no exit
//!   code.
//!
//! Within a round, exits come first (children before their parents), then
//! new processes ordered so that a parent is always emitted before its
//! children.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use daemoneye_lib::models::{merge_record, time::now_ns};
use daemoneye_lib::proto::{self, EventType, ProcessEvent, ProcessRecord};
use tokio_util::sync::CancellationToken;

use crate::source::{EventSink, EventSource, SourceError, SourceFuture};

/// Lists the processes that exist now. Blocking (file I/O): the poll source
/// runs it on `spawn_blocking`.
pub trait ProcessEnumerator: Send + 'static {
    /// Every visible process with a non-empty `process_key`.
    fn enumerate(&mut self) -> Result<Vec<ProcessRecord>, SourceError>;
}

/// Polls a [`ProcessEnumerator`] and emits the differences as events.
#[derive(Debug)]
pub struct PollSource<E> {
    enumerator: E,
    interval: Duration,
    snapshot_source: proto::EventSource,
}

impl<E: ProcessEnumerator> PollSource<E> {
    /// The default polling interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    /// A poll source over `enumerator`, every [`Self::DEFAULT_INTERVAL`].
    pub fn new(enumerator: E) -> Self {
        let snapshot_source =
            if cfg!(target_os = "linux") { proto::EventSource::Procfs } else { proto::EventSource::Poll };
        Self { enumerator, interval: Self::DEFAULT_INTERVAL, snapshot_source }
    }

    /// Polls every `interval` (at least 10 ms).
    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The `source` of the first round's `snapshot` events.
    #[must_use]
    pub fn with_snapshot_source(mut self, source: proto::EventSource) -> Self {
        self.snapshot_source = source;
        self
    }

    async fn run_loop(self, sink: EventSink, cancel: CancellationToken) -> Result<(), SourceError> {
        let Self { enumerator, interval, snapshot_source } = self;
        let mut enumerator = Some(enumerator);
        let mut differ = Differ::new(snapshot_source);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tracing::info!(interval_ms = interval.as_millis() as u64, "poll source started (lossy backend)");
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Ok(()),
                _ = ticker.tick() => {}
            }
            let Some(mut e) = enumerator.take() else {
                return Err(SourceError::Task("enumerator lost".into()));
            };
            let (e, result) = tokio::task::spawn_blocking(move || {
                let r = e.enumerate();
                (e, r)
            })
            .await
            .map_err(|err| SourceError::Task(format!("enumeration task: {err}")))?;
            enumerator = Some(e);
            let records = match result {
                Ok(r) => r,
                // Nothing seen yet: this backend does not work here.
                Err(err) if differ.first => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "process enumeration failed; retrying next round");
                    continue;
                }
            };
            let events = differ.round(records, now_ns());
            tracing::debug!(events = events.len(), known = differ.known.len(), "poll round");
            for ev in events {
                if !sink.send_or_cancel(ev, &cancel).await? {
                    return Ok(());
                }
            }
        }
    }
}

impl<E: ProcessEnumerator> EventSource for PollSource<E> {
    fn kind(&self) -> proto::EventSource {
        proto::EventSource::Poll
    }

    fn name(&self) -> &'static str {
        "poll"
    }

    fn run(self: Box<Self>, sink: EventSink, cancel: CancellationToken) -> SourceFuture {
        Box::pin((*self).run_loop(sink, cancel))
    }
}

/// The diffing state: the processes of the previous round by key.
#[derive(Debug)]
pub(crate) struct Differ {
    known: HashMap<String, ProcessRecord>,
    first: bool,
    snapshot_source: proto::EventSource,
}

impl Differ {
    pub(crate) fn new(snapshot_source: proto::EventSource) -> Self {
        Self { known: HashMap::new(), first: true, snapshot_source }
    }

    /// Diffs one round against the previous one and returns its events.
    pub(crate) fn round(&mut self, records: Vec<ProcessRecord>, now: i64) -> Vec<ProcessEvent> {
        let first = std::mem::replace(&mut self.first, false);
        let mut seen: HashSet<String> = HashSet::with_capacity(records.len());
        let mut started = Vec::new();
        for rec in records {
            if rec.process_key.is_empty() || !seen.insert(rec.process_key.clone()) {
                continue;
            }
            match self.known.get_mut(&rec.process_key) {
                None => {
                    self.known.insert(rec.process_key.clone(), rec.clone());
                    started.push(rec);
                }
                Some(old) => {
                    let execed = image_changed(old, &rec);
                    // Keep what was known when a field is unreadable now
                    // (zombie, denied): unknown is not a change.
                    merge_record(old, &rec);
                    if execed {
                        started.push(rec);
                    }
                }
            }
        }
        let mut events = Vec::new();
        if !first {
            let mut gone: Vec<ProcessRecord> = Vec::new();
            self.known.retain(|key, rec| {
                let keep = seen.contains(key);
                if !keep {
                    gone.push(std::mem::take(rec));
                }
                keep
            });
            // Children exit before their parents: the reverse of start order.
            let gone = parents_first(gone);
            events.extend(gone.into_iter().rev().map(|old| {
                let rec = ProcessRecord {
                    pid: old.pid,
                    process_key: old.process_key,
                    exit_time_ns: Some(now),
                    ..ProcessRecord::default()
                };
                event(EventType::Exit, proto::EventSource::Poll, now, rec)
            }));
        }
        let (kind, source) = if first {
            (EventType::Snapshot, self.snapshot_source)
        } else {
            (EventType::Exec, proto::EventSource::Poll)
        };
        events.extend(parents_first(started).into_iter().map(|r| event(kind, source, now, r)));
        events
    }
}

/// An `execve` without a fork: the image or the argument vector changed.
/// A field that became unreadable is not a change.
fn image_changed(old: &ProcessRecord, new: &ProcessRecord) -> bool {
    let path = new.executable_path.is_some() && new.executable_path != old.executable_path;
    let argv = new.argv.is_some() && new.argv != old.argv;
    path || argv
}

fn event(kind: EventType, source: proto::EventSource, now: i64, rec: ProcessRecord) -> ProcessEvent {
    ProcessEvent {
        seq: 0,
        event_type: kind as i32,
        event_time_ns: now,
        source: source as i32,
        process: Some(rec),
        gap: None,
        prev_seq: 0,
    }
}

/// Orders records by start time, then moves every parent that is in the
/// batch before its children (start times are coarse — 10 ms, 1 s with
/// sysinfo — so a child may tie with its parent).
pub(crate) fn parents_first(mut records: Vec<ProcessRecord>) -> Vec<ProcessRecord> {
    records.sort_by_key(|r| (r.start_time_ns, r.pid));
    let index: HashMap<String, usize> = records.iter().enumerate().map(|(i, r)| (r.process_key.clone(), i)).collect();
    let mut emitted = vec![false; records.len()];
    let mut order = Vec::with_capacity(records.len());
    for i in 0..records.len() {
        // Walk up to the oldest ancestor in the batch not yet emitted.
        let mut chain = Vec::new();
        let mut cur = Some(i);
        while let Some(c) = cur {
            if emitted[c] || chain.contains(&c) {
                break;
            }
            chain.push(c);
            cur = records[c].parent_key.as_ref().and_then(|k| index.get(k)).copied();
        }
        for &c in chain.iter().rev() {
            emitted[c] = true;
            order.push(c);
        }
    }
    let mut slots: Vec<Option<ProcessRecord>> = records.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots.get_mut(i).and_then(Option::take)).collect()
}

#[cfg(test)]
#[path = "poll_tests.rs"]
mod tests;
