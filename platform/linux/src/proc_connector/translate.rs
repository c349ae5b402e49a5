//! Proc connector messages to `ProcessEvent`s.
//!
//! The kernel's messages carry ids only (pid, tgid, parent, exit status and
//! a `CLOCK_MONOTONIC` timestamp). [`Translator`] adds what `/proc` still
//! has and keeps a pid -> process key map so that a process that is gone
//! before `/proc` could be read keeps one identity from fork to exit:
//!
//! - fork: the child's key from its `/proc` start ticks; when the child is
//!   already gone, estimated from the fork's timestamp (the child's start
//!   time precedes it by microseconds, so the 10 ms tick is the same but
//!   for a boundary in between).
//! - exec: the full record from [`ProcfsReader::read_process`]; when the
//!   process is gone (or its pid is already someone else's), the ids from
//!   the fork, every other field NULL.
//! - exit: the key from the map (or `/proc` for a process known only from
//!   before), the exit code or signal from the message's wait status.
//!
//! Loss: the kernel numbers its messages per CPU (`cn_msg.seq`, one
//! counter for every listener), so a skipped number is a message this
//! socket did not get; [`Translator::check_seq`] turns those into `gap`
//! events with exact counts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use daemoneye_lib::models::{ProcessKey, TICK_NS};
use daemoneye_lib::proto::{EventSource, EventType, GapInfo, ProcessEvent, ProcessRecord};
use proc_connector::ProcEvent;

use crate::procfs::{ProcfsError, ProcfsReader};

/// How often the clock offsets are read again (they move only with clock
/// steps and suspend).
const CLOCK_REFRESH: Duration = Duration::from_secs(1);

/// Gap reason: the socket's receive buffer overflowed (`ENOBUFS`).
pub(crate) const REASON_OVERRUN: &str = "proc_connector_enobufs";
/// Gap reason: per-CPU message numbers skipped (exact count).
pub(crate) const REASON_SEQ_GAP: &str = "proc_connector_seq_gap";
/// Gap reason: an exec of a process that was never seen and is gone.
pub(crate) const REASON_UNIDENTIFIED: &str = "proc_connector_exec_unidentified";

/// What the source remembers about a live process.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    key: String,
    ppid: Option<u32>,
    parent_key: Option<String>,
    start_time_ns: Option<i64>,
}

/// Turns proc connector messages into events; owns the pid -> key map.
#[derive(Debug)]
pub(crate) struct Translator {
    reader: ProcfsReader,
    known: HashMap<u32, Known>,
    last_seq: HashMap<u32, u32>,
    clocks: Clocks,
}

impl Translator {
    pub(crate) fn new(reader: ProcfsReader) -> Self {
        Self { reader, known: HashMap::new(), last_seq: HashMap::new(), clocks: Clocks::now() }
    }

    /// The reader (for the start-up snapshot).
    pub(crate) fn reader(&self) -> &ProcfsReader {
        &self.reader
    }

    /// Remembers a process from the start-up snapshot.
    pub(crate) fn note(&mut self, rec: &ProcessRecord) {
        self.known.insert(rec.pid, Known::of(rec));
    }

    /// Processes the source believes alive.
    pub(crate) fn known_len(&self) -> usize {
        self.known.len()
    }

    /// Records message `seq` from `cpu`; returns a `gap` event when numbers
    /// were skipped since the last message from that CPU.
    pub(crate) fn check_seq(&mut self, cpu: u32, seq: u32) -> Option<ProcessEvent> {
        let last = self.last_seq.insert(cpu, seq)?;
        let step = seq.wrapping_sub(last);
        // A step "backwards" (more than half the range) is a reordering we
        // cannot judge, not a loss.
        if step <= 1 || step > u32::MAX / 2 {
            return None;
        }
        let lost = u64::from(step - 1);
        tracing::warn!(cpu, lost, "proc connector messages lost");
        Some(gap_event(lost, REASON_SEQ_GAP))
    }

    /// The event(s) for one message (none for threads, id changes and
    /// processes that were never seen).
    pub(crate) fn translate(&mut self, ev: &ProcEvent, out: &mut Vec<ProcessEvent>) {
        if self.clocks.taken.elapsed() >= CLOCK_REFRESH {
            self.clocks = Clocks::now();
        }
        match *ev {
            ProcEvent::Fork { parent_tgid, child_pid, child_tgid, timestamp_ns, .. } if child_pid == child_tgid => {
                out.push(self.fork(parent_tgid, child_tgid, timestamp_ns));
            }
            ProcEvent::Exec { tgid, timestamp_ns, .. } => out.push(self.exec(tgid, timestamp_ns)),
            ProcEvent::Exit { pid, tgid, exit_code, timestamp_ns, .. } if pid == tgid => {
                if let Some(e) = self.exit(tgid, exit_code, timestamp_ns) {
                    out.push(e);
                }
            }
            _ => {}
        }
    }

    fn fork(&mut self, ppid: u32, pid: u32, ts: u64) -> ProcessEvent {
        let ticks = self.ticks_if_started_by(pid, ts).unwrap_or_else(|| self.clocks.boot_ns(ts) / TICK_NS);
        let parent_key = self.key_of(ppid, ts);
        let known = Known {
            key: ProcessKey::from_ticks(self.reader.boot_id(), pid, ticks).to_string(),
            ppid: Some(ppid),
            parent_key,
            start_time_ns: Some(self.reader.ticks_to_unix_ns(ticks)),
        };
        let rec = ProcessRecord { is_thread: Some(false), ..known.record(pid) };
        self.known.insert(pid, known);
        self.event(EventType::Fork, ts, rec)
    }

    fn exec(&mut self, pid: u32, ts: u64) -> ProcessEvent {
        let remembered = self.known.get(&pid).cloned();
        let read = match self.reader.read_process(pid) {
            // The record must be of the process that exec'd: the one we
            // know, or (unknown) one that had started by then.
            Ok(rec) if remembered.as_ref().is_some_and(|k| k.key == rec.process_key) => Some(rec),
            Ok(rec) if remembered.is_none() && self.started_by(&rec.process_key, ts) => Some(rec),
            Ok(_) | Err(ProcfsError::Gone(_) | ProcfsError::Thread { .. }) => None,
            Err(e) => {
                tracing::debug!(pid, error = %e, "cannot enrich exec from /proc");
                None
            }
        };
        match (read, remembered) {
            (Some(rec), _) => {
                self.known.insert(pid, Known::of(&rec));
                self.event(EventType::Exec, ts, rec)
            }
            (None, Some(k)) => {
                let rec = k.record(pid);
                self.event(EventType::Exec, ts, rec)
            }
            (None, None) => {
                tracing::debug!(pid, "exec of a process that is gone and was never seen");
                gap_event(1, REASON_UNIDENTIFIED)
            }
        }
    }

    fn exit(&mut self, pid: u32, status: u32, ts: u64) -> Option<ProcessEvent> {
        let key = match self.known.remove(&pid) {
            Some(k) => k.key,
            None => {
                // Known only from before we listened (and missed by the
                // snapshot): a zombie's /proc entry still names it.
                let Some(key) = self.key_of(pid, ts) else {
                    tracing::trace!(pid, "exit of a process that was never seen");
                    return None;
                };
                key
            }
        };
        let (exit_code, signal) = split_status(status);
        let unix = self.clocks.unix_ns(ts);
        let rec =
            ProcessRecord { pid, process_key: key, exit_code, signal, exit_time_ns: Some(unix), ..Default::default() };
        Some(self.event(EventType::Exit, ts, rec))
    }

    /// The key of a live process: remembered, else from `/proc` if it had
    /// started by `ts`.
    fn key_of(&self, pid: u32, ts: u64) -> Option<String> {
        if pid == 0 {
            return None;
        }
        if let Some(k) = self.known.get(&pid) {
            return Some(k.key.clone());
        }
        let ticks = self.ticks_if_started_by(pid, ts)?;
        Some(ProcessKey::from_ticks(self.reader.boot_id(), pid, ticks).to_string())
    }

    /// `/proc` start ticks of `pid`, unless it is gone or started after `ts`
    /// (then the pid is already another process's).
    fn ticks_if_started_by(&self, pid: u32, ts: u64) -> Option<u64> {
        let ticks = self.reader.start_ticks(pid).ok()?;
        (ticks <= self.clocks.boot_ns(ts) / TICK_NS + 1).then_some(ticks)
    }

    fn started_by(&self, key: &str, ts: u64) -> bool {
        key.parse::<ProcessKey>().is_ok_and(|k| k.start_ticks() <= self.clocks.boot_ns(ts) / TICK_NS + 1)
    }

    fn event(&self, kind: EventType, ts: u64, process: ProcessRecord) -> ProcessEvent {
        ProcessEvent {
            seq: 0,
            event_type: kind.into(),
            event_time_ns: self.clocks.unix_ns(ts),
            source: EventSource::ProcConnector.into(),
            process: Some(process),
            gap: None,
            prev_seq: 0,
        }
    }
}

impl Known {
    fn of(rec: &ProcessRecord) -> Self {
        Self {
            key: rec.process_key.clone(),
            ppid: rec.ppid,
            parent_key: rec.parent_key.clone(),
            start_time_ns: rec.start_time_ns,
        }
    }

    /// The identity fields as a record (everything else unknown).
    fn record(&self, pid: u32) -> ProcessRecord {
        ProcessRecord {
            pid,
            ppid: self.ppid,
            process_key: self.key.clone(),
            parent_key: self.parent_key.clone(),
            start_time_ns: self.start_time_ns,
            ..Default::default()
        }
    }
}

/// A `gap` event of this source.
pub(crate) fn gap_event(lost: u64, reason: &str) -> ProcessEvent {
    ProcessEvent {
        seq: 0,
        event_type: EventType::Gap.into(),
        event_time_ns: daemoneye_lib::models::time::now_ns(),
        source: EventSource::ProcConnector.into(),
        process: Some(ProcessRecord::default()),
        gap: Some(GapInfo { lost_events: lost, reason: reason.to_owned() }),
        prev_seq: 0,
    }
}

/// A wait status into (exit code, signal): killed by a signal means no
/// exit code; exited means no signal.
fn split_status(status: u32) -> (Option<i32>, Option<i32>) {
    let signal = (status & 0x7f) as i32;
    let code = ((status >> 8) & 0xff) as i32;
    if signal == 0 { (Some(code), None) } else { (None, Some(signal)) }
}

/// Offsets from `CLOCK_MONOTONIC` (the messages' clock) to boot time and
/// Unix time.
#[derive(Debug, Clone, Copy)]
struct Clocks {
    boot_minus_mono: i64,
    real_minus_mono: i64,
    taken: Instant,
}

impl Clocks {
    fn now() -> Self {
        use nix::time::{ClockId, clock_gettime};
        let ns = |c| clock_gettime(c).map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec()).unwrap_or(0);
        let mono = ns(ClockId::CLOCK_MONOTONIC);
        let boot = ns(ClockId::CLOCK_BOOTTIME);
        let real = ns(ClockId::CLOCK_REALTIME);
        Self { boot_minus_mono: boot - mono, real_minus_mono: real - mono, taken: Instant::now() }
    }

    fn boot_ns(&self, mono: u64) -> u64 {
        let mono = i64::try_from(mono).unwrap_or(i64::MAX);
        u64::try_from(mono.saturating_add(self.boot_minus_mono)).unwrap_or(0)
    }

    fn unix_ns(&self, mono: u64) -> i64 {
        i64::try_from(mono).unwrap_or(i64::MAX).saturating_add(self.real_minus_mono)
    }
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
