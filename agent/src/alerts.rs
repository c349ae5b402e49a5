//! Turning rule matches into alerts: dedupe, store, deliver.
//!
//! An alert is written to the store before it is delivered. Repeats with the
//! same dedupe key inside the window only raise the stored alert's
//! occurrence count (and are not delivered again).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use daemoneye_lib::detection::{Rule, Value};
use daemoneye_lib::models::{alert_json, time::now_ms};
use daemoneye_lib::proto::{Alert, ProcessEvent};
use serde_json::{Map, Value as Json};

use crate::store::{Store, StoreError};

/// One row a rule matched, with what it came from.
#[derive(Debug)]
pub struct Match<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// Output column names.
    pub columns: &'a [String],
    /// The row.
    pub row: &'a [Value],
    /// The event a streaming rule evaluated (none for table rules).
    pub event: Option<&'a ProcessEvent>,
    /// The correlation id of that event's bus message.
    pub correlation_id: &'a str,
}

struct Seen {
    alert: Alert,
}

/// Dedupes, stores and delivers alerts.
pub struct AlertManager {
    store: Arc<Store>,
    window: Duration,
    stdout: bool,
    recent: HashMap<String, Seen>,
}

impl std::fmt::Debug for AlertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertManager").field("recent", &self.recent.len()).finish()
    }
}

impl AlertManager {
    /// Builds the manager and reloads the dedupe state of the stored alerts
    /// still inside the window, so a restart does not re-alert.
    pub fn new(store: Arc<Store>, window: Duration, stdout: bool) -> Result<Self, StoreError> {
        let horizon = now_ms() - window_ms(window);
        let recent = store
            .alerts()?
            .into_iter()
            .filter(|a| a.last_seen_ms >= horizon)
            .map(|a| (a.dedupe_key.clone(), Seen { alert: a }))
            .collect();
        Ok(Self { store, window, stdout, recent })
    }

    /// Records a match. Returns the alert when it is new (and was delivered),
    /// `None` when it was a repeat inside the dedupe window.
    pub fn raise(&mut self, m: &Match<'_>) -> Result<Option<Alert>, StoreError> {
        let now = now_ms();
        let row = row_object(m.columns, m.row);
        let dedupe_key = dedupe_key(m, &row);
        let window = m.rule.dedupe.as_ref().and_then(|d| d.window).unwrap_or(self.window);
        if let Some(seen) = self.recent.get_mut(&dedupe_key)
            && now - seen.alert.last_seen_ms <= window_ms(window)
        {
            seen.alert.occurrences += 1;
            seen.alert.last_seen_ms = now;
            self.store.put_alert(&seen.alert)?;
            return Ok(None);
        }
        let pid = int_col(&row, "pid")
            .and_then(|p| u32::try_from(p).ok())
            .or_else(|| m.event.and_then(|e| e.process.as_ref()).map(|r| r.pid));
        let process_key = str_col(&row, "process_key")
            .or_else(|| m.event.and_then(|e| e.process.as_ref()).map(|r| r.process_key.clone()));
        let alert = Alert {
            id: uuid::Uuid::now_v7().to_string(),
            alert_time_ms: now,
            rule_id: m.rule.id.clone(),
            title: m.rule.name.clone(),
            description: m.rule.description.clone(),
            severity: m.rule.severity as i32,
            row_json: Json::Object(row).to_string(),
            process_key,
            pid,
            event_seq: m.event.map(|e| e.seq),
            correlation_id: m.correlation_id.to_owned(),
            dedupe_key: dedupe_key.clone(),
            occurrences: 1,
            last_seen_ms: now,
        };
        self.store.put_alert(&alert)?;
        self.deliver(&alert);
        self.recent.insert(dedupe_key, Seen { alert: alert.clone() });
        Ok(Some(alert))
    }

    /// Forgets dedupe entries older than the longest window.
    pub fn expire(&mut self) {
        let horizon = now_ms() - window_ms(self.window);
        self.recent.retain(|_, s| s.alert.last_seen_ms >= horizon);
    }

    fn deliver(&self, alert: &Alert) {
        if self.stdout {
            let line = alert_json(alert).to_string();
            let mut out = std::io::stdout().lock();
            // stdout is the alert sink: a closed pipe must not stop detection.
            if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                tracing::warn!(error = %e, alert_id = %alert.id, "could not write alert to stdout");
            }
        }
    }
}

fn window_ms(w: Duration) -> i64 {
    i64::try_from(w.as_millis()).unwrap_or(i64::MAX)
}

/// The rule's dedupe columns when it names them; otherwise the process key
/// (one alert per rule and process); otherwise the whole row.
fn dedupe_key(m: &Match<'_>, row: &Map<String, Json>) -> String {
    let mut key = m.rule.id.clone();
    if let Some(cols) = m.rule.dedupe.as_ref().map(|d| &d.key).filter(|k| !k.is_empty()) {
        for c in cols {
            key.push('|');
            key.push_str(&row.get(c).map(Json::to_string).unwrap_or_default());
        }
        return key;
    }
    let process_key =
        str_col(row, "process_key").or_else(|| m.event.and_then(|e| e.process.as_ref()).map(|r| r.process_key.clone()));
    key.push('|');
    match process_key {
        Some(pk) if !pk.is_empty() => key.push_str(&pk),
        _ => key.push_str(&Json::Object(row.clone()).to_string()),
    }
    key
}

fn row_object(columns: &[String], row: &[Value]) -> Map<String, Json> {
    columns.iter().zip(row).map(|(c, v)| (c.clone(), value_json(v))).collect()
}

/// A SQL value as JSON.
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Integer(i) => Json::from(*i),
        Value::Real(r) => serde_json::Number::from_f64(*r).map_or(Json::Null, Json::Number),
        Value::Text(s) => Json::from(s.as_str()),
    }
}

fn int_col(row: &Map<String, Json>, name: &str) -> Option<i64> {
    row.get(name).and_then(Json::as_i64)
}

fn str_col(row: &Map<String, Json>, name: &str) -> Option<String> {
    row.get(name).and_then(Json::as_str).map(str::to_owned)
}
