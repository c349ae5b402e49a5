//! Recent events for the table rules, kept in memory as they arrive.
//!
//! A table rule that reads `process_events` used to load every retained
//! event from the store on each run (every `rules.table_interval`): at
//! 1,600 exec/s that is tens of thousands of rows decoded every 5 s, under
//! the view's read lock, which the ingest thread then waits for. Most such
//! rules read a short, filtered window — the shipped `discovery-burst`
//! wants the last two minutes of execs of a few discovery commands — which
//! [`EventInterest`] reads off the compiled SQL. For each table rule that
//! has one, the agent keeps exactly the rows it admits, younger than its
//! horizon, fed by the pipeline with each event it applies (before the
//! store has it), and runs the rule over those.
//!
//! A window is *complete* once it has watched a whole horizon: before that
//! (after start, a reload that changed the rule, or when it overflowed
//! [`MAX_ROWS`] and dropped rows) the rule reads the store as before, so the
//! result never misses an event.

use std::collections::VecDeque;
use std::sync::Arc;

use daemoneye_lib::detection::schema::event_row;
use daemoneye_lib::detection::{EventInterest, RuleSet, Value};
use daemoneye_lib::models::time::now_ms;

use crate::store::Store;

/// Rows one window holds at most; beyond it the oldest are dropped and the
/// rule reads the store until the window is complete again.
pub const MAX_ROWS: usize = 20_000;

/// The windows of one rule set's table rules.
#[derive(Debug, Default)]
pub struct EventWindows {
    /// The rule set the windows are for.
    rules: Option<Arc<RuleSet>>,
    /// Indexed like the rule set's rules; `None` for rules without a
    /// window (streaming rules, rules that do not read `process_events` or
    /// read it without a bound).
    windows: Vec<Option<Window>>,
}

#[derive(Debug)]
struct Window {
    /// Identifies the rule across reloads: same id and SQL, same window.
    id: String,
    sql: String,
    interest: EventInterest,
    rows: VecDeque<Arc<[Value]>>,
    /// Wall-clock ms from which the window holds every row the rule may
    /// read.
    complete_at_ms: i64,
}

/// What a table rule reads `process_events` from.
#[derive(Debug)]
pub enum EventSource {
    /// Its window (complete): these rows.
    Window(Vec<Arc<[Value]>>),
    /// The store's retained events.
    Store,
}

impl EventWindows {
    /// The windows of `rules` when the agent starts, seeded with the
    /// events the store retains (see [`EventWindows::seed`]).
    pub fn at_start(rules: &Arc<RuleSet>, store: &Store) -> Self {
        let mut windows = Self::default();
        let now = now_ms();
        windows.rebuild(rules, now);
        if !windows.is_empty() {
            match store.events(0) {
                Ok(evs) => windows.seed(evs.iter().map(|ev| event_row(ev, None)), now),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot seed the table rules' event windows; they read the store until complete")
                }
            }
        }
        windows
    }

    /// Windows for `rules` at `now_ms`, keeping the rows of windows whose
    /// rule (id and SQL) is unchanged from `self`.
    pub fn rebuild(&mut self, rules: &Arc<RuleSet>, now_ms: i64) {
        self.rules = Some(Arc::clone(rules));
        let mut old: Vec<Window> = self.windows.drain(..).flatten().collect();
        self.windows = rules
            .rules
            .iter()
            .map(|lr| {
                let interest = lr.query.event_interest()?;
                if let Some(i) = old.iter().position(|w| w.id == lr.rule.id && w.sql == lr.rule.sql) {
                    return Some(old.swap_remove(i));
                }
                Some(Window {
                    id: lr.rule.id.clone(),
                    sql: lr.rule.sql.clone(),
                    complete_at_ms: now_ms.saturating_add(interest.horizon_ms()),
                    interest,
                    rows: VecDeque::new(),
                })
            })
            .collect();
    }

    /// Fills the windows from `rows` (the store's events, oldest first,
    /// at start-up, before any event is applied) and makes them complete:
    /// with everything the store holds, nothing a rule may read is missing.
    pub fn seed(&mut self, rows: impl IntoIterator<Item = Vec<Value>>, now_ms: i64) {
        if self.is_empty() {
            return;
        }
        for row in rows {
            let row: Arc<[Value]> = row.into();
            self.offer(&mut || Arc::clone(&row), now_ms);
        }
        for w in self.windows.iter_mut().flatten() {
            if w.rows.len() < MAX_ROWS {
                w.complete_at_ms = w.complete_at_ms.min(now_ms);
            }
        }
    }

    /// Whether any rule has a window (else the pipeline builds no rows for
    /// them).
    pub fn is_empty(&self) -> bool {
        self.windows.iter().all(Option::is_none)
    }

    /// Offers an applied event's `process_events` row to every window.
    /// `row` is built only if some window is there to look at it.
    pub fn offer(&mut self, row: &mut dyn FnMut() -> Arc<[Value]>, now_ms: i64) {
        let mut shared: Option<Arc<[Value]>> = None;
        for w in self.windows.iter_mut().flatten() {
            let r = shared.get_or_insert_with(&mut *row);
            if !w.interest.admits(r) || !w.interest.keeps(r, now_ms) {
                continue;
            }
            w.rows.push_back(Arc::clone(r));
            if w.rows.len() > MAX_ROWS {
                w.rows.pop_front();
                // A row it may read is gone: read the store until the
                // window has watched a whole horizon again.
                w.complete_at_ms = now_ms.saturating_add(w.interest.horizon_ms());
                tracing::debug!(rule_id = %w.id, max = MAX_ROWS, "event window full; the rule reads the store for a while");
            }
        }
    }

    /// Where rule `index` of `rules` reads its events from at `now_ms`: its
    /// window's rows (older ones pruned first) once complete, else the
    /// store (also when the windows are for another rule set).
    pub fn source(&mut self, rules: &Arc<RuleSet>, index: usize, now_ms: i64) -> EventSource {
        if !self.rules.as_ref().is_some_and(|r| Arc::ptr_eq(r, rules)) {
            return EventSource::Store;
        }
        let Some(Some(w)) = self.windows.get_mut(index) else { return EventSource::Store };
        // Rows arrive in seq order, which is time order for one ledger, so
        // the old ones are at the front.
        while w.rows.front().is_some_and(|r| !w.interest.keeps(r, now_ms)) {
            w.rows.pop_front();
        }
        if now_ms < w.complete_at_ms {
            return EventSource::Store;
        }
        EventSource::Window(w.rows.iter().cloned().collect())
    }

    /// Rows held, over all windows (for health).
    pub fn rows(&self) -> usize {
        self.windows.iter().flatten().map(|w| w.rows.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use daemoneye_lib::detection::{Table, load_rules_dir};
    use daemoneye_lib::proto::{EventType, ProcessEvent, ProcessRecord};

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn rules(yaml: &str) -> Arc<RuleSet> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r.yaml"), yaml).unwrap();
        let set = load_rules_dir(dir.path());
        assert!(set.errors.is_empty(), "{:?}", set.errors);
        Arc::new(set)
    }

    fn exec(seq: u64, name: &str, time_ms: i64) -> Arc<[Value]> {
        let ev = ProcessEvent {
            seq,
            event_type: EventType::Exec.into(),
            event_time_ns: time_ms * 1_000_000,
            process: Some(ProcessRecord { pid: 7, name: Some(name.into()), ..Default::default() }),
            ..Default::default()
        };
        event_row(&ev, None).into()
    }

    const BURST: &str = "
- id: burst
  name: burst
  description: d
  severity: low
  sql: WITH e AS (SELECT seq FROM process_events WHERE event_type = 'exec' AND name = 'id' AND event_time >= now_ms() - 60000) SELECT count(*) AS n FROM e
- id: table-only
  name: t
  description: d
  severity: low
  sql: SELECT pid FROM processes WHERE pid = 1
- id: streaming
  name: s
  description: d
  severity: low
  sql: SELECT pid FROM process_events WHERE name = 'id'
";

    fn names(src: &EventSource) -> Vec<String> {
        let col = Table::ProcessEvents.column_index("seq").unwrap();
        match src {
            EventSource::Window(rows) => rows.iter().map(|r| format!("{:?}", r[col])).collect(),
            EventSource::Store => vec!["store".into()],
        }
    }

    #[test]
    fn a_window_keeps_admitted_young_rows_and_is_used_once_complete() {
        let set = rules(BURST);
        let mut w = EventWindows::default();
        w.rebuild(&set, NOW);
        assert!(!w.is_empty());
        let offer = |w: &mut EventWindows, row: Arc<[Value]>, now| w.offer(&mut || Arc::clone(&row), now);
        offer(&mut w, exec(1, "id", NOW), NOW);
        offer(&mut w, exec(2, "ls", NOW), NOW);
        offer(&mut w, exec(3, "id", NOW - 61_000), NOW);
        // Before a whole horizon has passed the rule reads the store.
        assert_eq!(names(&w.source(&set, 0, NOW + 1_000)), ["store"]);
        // Rules without a window read the store.
        assert_eq!(names(&w.source(&set, 1, NOW + 60_000)), ["store"]);
        assert_eq!(names(&w.source(&set, 2, NOW + 60_000)), ["store"]);
        offer(&mut w, exec(4, "id", NOW + 30_000), NOW + 30_000);
        assert_eq!(names(&w.source(&set, 0, NOW + 60_000)), ["Integer(1)", "Integer(4)"]);
        // Seq 1 ages out of the 60 s horizon.
        assert_eq!(names(&w.source(&set, 0, NOW + 60_001)), ["Integer(4)"]);
        assert_eq!(w.rows(), 1);
    }

    #[test]
    fn seeded_windows_are_complete_at_once() {
        let set = rules(BURST);
        let mut w = EventWindows::default();
        w.rebuild(&set, NOW);
        w.seed([exec(1, "id", NOW - 1_000).to_vec(), exec(2, "ls", NOW).to_vec()], NOW);
        assert_eq!(names(&w.source(&set, 0, NOW)), ["Integer(1)"]);
    }

    #[test]
    fn an_unchanged_rule_keeps_its_window_across_a_reload() {
        let set = rules(BURST);
        let mut w = EventWindows::default();
        w.rebuild(&set, NOW);
        w.offer(&mut || exec(1, "id", NOW + 60_000), NOW + 60_000);
        let same = rules(BURST);
        w.rebuild(&same, NOW + 60_000);
        assert_eq!(names(&w.source(&same, 0, NOW + 60_000)), ["Integer(1)"]);
        // Windows answer only for the rule set they were built for.
        assert_eq!(names(&w.source(&set, 0, NOW + 60_000)), ["store"]);
        // A changed rule starts over (and reads the store meanwhile).
        let changed = rules(&BURST.replace("name = 'id'", "name = 'whoami'"));
        w.rebuild(&changed, NOW + 60_000);
        assert_eq!(names(&w.source(&changed, 0, NOW + 60_000)), ["store"]);
    }

    #[test]
    fn an_overflowing_window_falls_back_to_the_store_for_a_horizon() {
        let set = rules(BURST);
        let mut w = EventWindows::default();
        w.rebuild(&set, NOW);
        let t = NOW + 60_000;
        for seq in 0..=MAX_ROWS as u64 {
            w.offer(&mut || exec(seq, "id", t), t);
        }
        assert_eq!(w.rows(), MAX_ROWS);
        assert_eq!(names(&w.source(&set, 0, t + 59_999)), ["store"]);
        match w.source(&set, 0, t + 60_000) {
            EventSource::Window(rows) => assert_eq!(rows.len(), MAX_ROWS),
            EventSource::Store => panic!("complete again after a horizon"),
        }
    }
}
