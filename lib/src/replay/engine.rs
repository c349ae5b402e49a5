//! The ledger walk behind [`state_at`] and [`replay`].

use std::path::Path;
use std::time::Duration;

use prost::Message;

use super::dedupe::Deduper;
use super::table::ReplayTable;
use super::{ReplayError, ReplayOptions, ReplayOutcome, RuleFailure, StateAt};
use crate::detection::schema::event_row;
use crate::detection::{Params, RuleIndex, RuleSet};
use crate::ledger::{LedgerError, LedgerReader, LedgerRecord, RecordKind};
use crate::models::event_type_name;
use crate::models::time::ns_to_ms;
use crate::proto::{Alert, EventType, ProcessEvent};

/// The agent prunes exited processes and old events this often.
const PRUNE_EVERY: Duration = Duration::from_secs(30);

/// The process table (and the events in the retention window) as of
/// `at_ns`: every event and gap record up to the first record committed
/// after `at_ns`, applied in seq order, then pruned as the agent prunes.
pub fn state_at(dir: &Path, at_ns: i64, opts: &ReplayOptions) -> Result<StateAt, ReplayError> {
    let mut walk = Walk::open(dir, opts)?;
    let mut out = StateAt { table: ReplayTable::new(), last_seq: 0, last_time_ns: None, events: 0, malformed: 0 };
    while let Some(rec) = walk.next_record()? {
        if rec.time_ns > at_ns {
            break;
        }
        out.last_seq = rec.seq;
        out.last_time_ns = Some(rec.time_ns);
        if walk.apply(&rec, true).is_some() {
            out.events += 1;
        }
    }
    walk.prune(at_ns);
    out.malformed = walk.malformed;
    out.table = walk.table;
    Ok(out)
}

/// Re-runs `rules` over the records committed in `[since_ns, until_ns]` as
/// the agent would have run them live: the table is rebuilt from the start
/// of the ledger; matches in the dedupe window before `since_ns` are
/// evaluated only to seed deduplication (as the agent remembers recent
/// alerts); table rules run every `table_interval` from `since_ns`.
pub fn replay(
    dir: &Path,
    since_ns: i64,
    until_ns: i64,
    rules: &RuleSet,
    opts: &ReplayOptions,
) -> Result<ReplayOutcome, ReplayError> {
    if since_ns > until_ns {
        return Err(ReplayError::EmptyRange { since_ns, until_ns });
    }
    let longest_window = rules
        .rules
        .iter()
        .filter_map(|r| r.rule.dedupe.as_ref().and_then(|d| d.window))
        .fold(opts.dedupe_window, Duration::max);
    let warmup_from = since_ns.saturating_sub(duration_ns(longest_window));
    let keep_events = rules.rules.iter().any(|r| r.rule.enabled && !r.query.is_streaming());
    let mut walk = Walk::open(dir, opts)?;
    let mut run = Run {
        rules,
        index: rules.streaming_index(),
        opts,
        dedupe: Deduper::new(opts.dedupe_window),
        out: ReplayOutcome::default(),
    };
    let interval = duration_ns(opts.table_interval);
    let mut next_tick = (interval > 0).then_some(since_ns);
    while let Some(rec) = walk.next_record()? {
        if rec.time_ns > until_ns {
            break;
        }
        while let Some(tick) = next_tick.filter(|t| *t < rec.time_ns) {
            walk.prune(tick);
            run.table_pass(&mut walk.table, tick);
            next_tick = tick.checked_add(interval);
        }
        let Some((event, state_known)) = walk.apply(&rec, keep_events) else { continue };
        if rec.time_ns < warmup_from || !state_known {
            continue;
        }
        let emit = rec.time_ns >= since_ns;
        if emit {
            run.out.events_evaluated += 1;
            run.out.first_seq.get_or_insert(rec.seq);
            run.out.last_seq = Some(rec.seq);
        }
        for alert in run.streaming(&walk.table, &event, ns_to_ms(rec.time_ns)) {
            if keep_events {
                walk.table.retain_alert(alert.clone());
            }
            if emit {
                run.out.alerts.push(alert);
            }
        }
    }
    while let Some(tick) = next_tick.filter(|t| *t <= until_ns && walk.seen_until(*t)) {
        walk.prune(tick);
        run.table_pass(&mut walk.table, tick);
        next_tick = tick.checked_add(interval);
    }
    run.out.malformed = walk.malformed;
    // Repeats inside the window raised the counts after the alert was first
    // recorded: report each alert as it stands at the end.
    for a in &mut run.out.alerts {
        if let Some(cur) = run.dedupe.current(&a.dedupe_key).filter(|c| c.id == a.id) {
            a.occurrences = cur.occurrences;
            a.last_seen_ms = cur.last_seen_ms;
        }
    }
    Ok(run.out)
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Reading the ledger and keeping the table.
struct Walk<'a> {
    iter: crate::ledger::LedgerIter,
    table: ReplayTable,
    opts: &'a ReplayOptions,
    last_prune_ns: Option<i64>,
    /// The latest record time read so far.
    last_time_ns: Option<i64>,
    malformed: u64,
}

impl<'a> Walk<'a> {
    fn open(dir: &Path, opts: &'a ReplayOptions) -> Result<Self, ReplayError> {
        let reader = match LedgerReader::open(dir) {
            Ok(r) => r,
            Err(LedgerError::Empty { dir }) => return Err(ReplayError::NotALedger { dir }),
            Err(e) => return Err(e.into()),
        };
        Ok(Walk {
            iter: reader.iter_from(1)?,
            table: ReplayTable::new(),
            opts,
            last_prune_ns: None,
            last_time_ns: None,
            malformed: 0,
        })
    }

    /// The next record, or `None` at the end of the ledger.
    fn next_record(&mut self) -> Result<Option<LedgerRecord>, ReplayError> {
        let Some(rec) = self.iter.next().transpose()? else { return Ok(None) };
        let first = *self.last_prune_ns.get_or_insert(rec.time_ns);
        // As the agent: every interval, or at once well over the cap.
        if rec.time_ns.saturating_sub(first) >= duration_ns(PRUNE_EVERY)
            || crate::models::retention::over_cap(self.table.exited_len(), self.opts.max_exited_processes)
        {
            self.prune(rec.time_ns);
        }
        self.last_time_ns = Some(self.last_time_ns.map_or(rec.time_ns, |t| t.max(rec.time_ns)));
        Ok(Some(rec))
    }

    /// True once the ledger has been read past `t` (a later record exists
    /// or was seen), so a table pass at `t` sees the state the agent saw.
    fn seen_until(&self, t: i64) -> bool {
        self.last_time_ns.is_some_and(|last| last >= t)
    }

    /// Applies an event or gap record. Returns the event and whether the
    /// agent would evaluate rules on it (a row, or a gap).
    fn apply(&mut self, rec: &LedgerRecord, keep_event: bool) -> Option<(ProcessEvent, bool)> {
        if !matches!(rec.kind, RecordKind::Event | RecordKind::Gap) {
            return None;
        }
        let event = match ProcessEvent::decode(rec.payload.as_slice()) {
            Ok(e) => e,
            Err(e) => {
                self.malformed += 1;
                tracing::warn!(seq = rec.seq, error = %e, "ledger record does not decode as a ProcessEvent; skipped");
                return None;
            }
        };
        let state = self.table.apply(&event);
        let evaluate = state.is_some() || event.event_type() == EventType::Gap;
        if keep_event {
            // Kept as the agent stores it: with the process as it stood
            // right after this event, so `process_events` rows agree.
            let kept = match state.as_ref().and_then(|s| s.record.clone()) {
                Some(record) => ProcessEvent { process: Some(record), ..event.clone() },
                None => event.clone(),
            };
            self.table.retain_event(kept);
        }
        Some((event, evaluate))
    }

    fn prune(&mut self, now_ns: i64) {
        self.last_prune_ns = Some(now_ns);
        let o = self.opts;
        self.table.prune(
            now_ns.saturating_sub(duration_ns(o.process_retention)),
            now_ns.saturating_sub(duration_ns(o.event_retention)),
            o.max_exited_processes,
            o.max_events,
        );
    }
}

/// Rule evaluation state.
struct Run<'a> {
    rules: &'a RuleSet,
    /// Which streaming rules an event can match (as the agent decides).
    index: RuleIndex,
    opts: &'a ReplayOptions,
    dedupe: Deduper,
    out: ReplayOutcome,
}

impl Run<'_> {
    /// Every enabled streaming rule on one event, in rule order; returns
    /// the new (not deduplicated) alerts.
    fn streaming(&mut self, table: &ReplayTable, event: &ProcessEvent, now_ms: i64) -> Vec<Alert> {
        let mut raised = Vec::new();
        let key = event.process.as_ref().map_or("", |r| r.process_key.as_str());
        let row = event_row(event, table.get(key));
        let tables = table.processes_only();
        // `now_ms()` is the replayed time, as it was when the event happened.
        let params = Params { now_ms: Some(now_ms), ..Params::default() };
        let kind = event_type_name(event.event_type());
        let mut candidates = Vec::new();
        self.index.candidates(&row, &mut candidates);
        for (r, lr) in self.rules.rules.iter().enumerate() {
            if !lr.rule.enabled
                || !lr.query.is_streaming()
                || !lr.query.may_match_event_type(kind)
                || !candidates.get(r).copied().unwrap_or(true)
            {
                continue;
            }
            let rs = match lr.query.evaluate_event(&row, &tables, &params, &self.opts.limits) {
                Ok(rs) => rs,
                Err(e) => {
                    let f = RuleFailure { rule_id: lr.rule.id.clone(), seq: Some(event.seq), error: e.to_string() };
                    self.out.rule_errors.push(f);
                    continue;
                }
            };
            for out_row in &rs.rows {
                raised.extend(self.dedupe.raise(now_ms, &lr.rule, &rs.columns, out_row, Some(event)));
            }
        }
        raised
    }

    /// Every enabled table rule once over the table as of `now_ns`.
    fn table_pass(&mut self, table: &mut ReplayTable, now_ns: i64) {
        // The table as of `now_ns`, with `now_ms()` at that same time (the
        // wall clock would make time-window rules see every old process as
        // long gone).
        let params = Params { now_ms: Some(ns_to_ms(now_ns)), ..Params::default() };
        let mut raised = Vec::new();
        let mut any = false;
        for lr in &self.rules.rules {
            if !lr.rule.enabled || lr.query.is_streaming() {
                continue;
            }
            any = true;
            match lr.query.execute(&*table, &params, &self.opts.limits) {
                Ok(rs) => {
                    for row in &rs.rows {
                        if let Some(a) = self.dedupe.raise(ns_to_ms(now_ns), &lr.rule, &rs.columns, row, None) {
                            raised.push(a);
                        }
                    }
                }
                Err(e) => self.out.rule_errors.push(RuleFailure {
                    rule_id: lr.rule.id.clone(),
                    seq: None,
                    error: e.to_string(),
                }),
            }
        }
        if any {
            self.out.table_passes += 1;
        }
        for a in raised {
            table.retain_alert(a.clone());
            self.out.alerts.push(a);
        }
    }
}
