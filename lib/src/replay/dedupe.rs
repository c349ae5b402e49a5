//! Alert deduplication by key within a window, in ledger time.
//!
//! The same rule as the agent's alert manager: a match whose dedupe key was
//! seen within the window (the rule's own or the default) only raises the
//! earlier alert's occurrence count and last-seen time.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value as Json;

use crate::alerting::{dedupe_key, match_pid, match_process_key, row_object};
use crate::detection::{Rule, Value};
use crate::proto::{Alert, ProcessEvent};

/// Turns rule matches into alerts, deduplicated.
#[derive(Debug)]
pub struct Deduper {
    window: Duration,
    /// dedupe key -> the alert it last raised.
    recent: HashMap<String, Alert>,
    raised: u64,
}

impl Deduper {
    /// A deduper with the default window.
    pub fn new(window: Duration) -> Self {
        Deduper { window, recent: HashMap::new(), raised: 0 }
    }

    /// Records a match at `now_ms`. Returns the new alert, or `None` when it
    /// repeats an alert inside the window (whose count is raised instead;
    /// see [`Deduper::current`]).
    pub fn raise(
        &mut self,
        now_ms: i64,
        rule: &Rule,
        columns: &[String],
        row: &[Value],
        event: Option<&ProcessEvent>,
    ) -> Option<Alert> {
        let row = row_object(columns, row);
        let key = dedupe_key(rule, &row, event);
        let window = rule.dedupe.as_ref().and_then(|d| d.window).unwrap_or(self.window);
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        if let Some(seen) = self.recent.get_mut(&key)
            && now_ms.saturating_sub(seen.last_seen_ms) <= window_ms
        {
            seen.occurrences += 1;
            seen.last_seen_ms = now_ms;
            return None;
        }
        self.raised += 1;
        let seq = event.map(|e| e.seq);
        let alert = Alert {
            id: format!("replay-{}-{}", seq.unwrap_or(0), self.raised),
            alert_time_ms: now_ms,
            rule_id: rule.id.clone(),
            title: rule.name.clone(),
            description: rule.description.clone(),
            severity: rule.severity as i32,
            process_key: match_process_key(&row, event),
            pid: match_pid(&row, event),
            row_json: Json::Object(row).to_string(),
            event_seq: seq,
            correlation_id: seq.map(|s| format!("ledger:{s}")).unwrap_or_default(),
            dedupe_key: key.clone(),
            occurrences: 1,
            last_seen_ms: now_ms,
        };
        self.recent.insert(key, alert.clone());
        Some(alert)
    }

    /// The current state of the alert with this dedupe key.
    pub fn current(&self, dedupe_key: &str) -> Option<&Alert> {
        self.recent.get(dedupe_key)
    }
}
