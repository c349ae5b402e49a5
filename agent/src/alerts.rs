//! Turning rule matches into alerts: dedupe, store, deliver.
//!
//! An alert is written to the store, with one outbox entry per sink, before
//! it is handed to the sinks ([`crate::sinks`]). Repeats with the same dedupe
//! key inside the window only raise the stored alert's occurrence count (and
//! are not delivered again).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use daemoneye_lib::alerting;
use daemoneye_lib::detection::{Rule, Value};
use daemoneye_lib::models::time::now_ms;
use daemoneye_lib::proto::{Alert, ProcessEvent};
use serde_json::{Map, Value as Json};

use crate::sinks::Delivery;
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

/// How many new alerts a slow `alerts watch` may fall behind before it
/// misses some (it then reads them back from the store).
const FEED_CAPACITY: usize = 1024;

/// Dedupes, stores and delivers alerts.
pub struct AlertManager {
    store: Arc<Store>,
    window: Duration,
    delivery: Arc<Delivery>,
    recent: HashMap<String, Seen>,
    /// Every new alert, once stored (`WatchAlerts`).
    feed: tokio::sync::broadcast::Sender<Alert>,
    /// New alerts per rule since start (metrics).
    per_rule: HashMap<String, u64>,
}

impl std::fmt::Debug for AlertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertManager").field("recent", &self.recent.len()).finish()
    }
}

impl AlertManager {
    /// Builds the manager and reloads the dedupe state of the stored alerts
    /// still inside the window, so a restart does not re-alert.
    pub fn new(store: Arc<Store>, window: Duration, delivery: Arc<Delivery>) -> Result<Self, StoreError> {
        let horizon = now_ms() - window_ms(window);
        let recent = store
            .alerts()?
            .into_iter()
            .filter(|a| a.last_seen_ms >= horizon)
            .map(|a| (a.dedupe_key.clone(), Seen { alert: a }))
            .collect();
        let (feed, _) = tokio::sync::broadcast::channel(FEED_CAPACITY);
        Ok(Self { store, window, delivery, recent, feed, per_rule: HashMap::new() })
    }

    /// A receiver of every new alert from now on, sent once it is stored.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Alert> {
        self.feed.subscribe()
    }

    /// The sinks (names, metrics).
    pub fn delivery(&self) -> &Arc<Delivery> {
        &self.delivery
    }

    /// New alerts per rule id since the agent started.
    pub fn raised_per_rule(&self) -> &HashMap<String, u64> {
        &self.per_rule
    }

    /// Records a match. Returns the alert when it is new (stored and queued for every sink),
    /// `None` when it was a repeat inside the dedupe window.
    pub fn raise(&mut self, m: &Match<'_>) -> Result<Option<Alert>, StoreError> {
        Ok(self.raise_all(std::slice::from_ref(m))?.into_iter().next().flatten())
    }

    /// Records matches (in order) with one store transaction for all of
    /// them: one fsync however many alerts a batch of events raised. Returns,
    /// per match, the alert when it is new. On a store error nothing of the
    /// batch is delivered or remembered.
    pub fn raise_all(&mut self, matches: &[Match<'_>]) -> Result<Vec<Option<Alert>>, StoreError> {
        let now = now_ms();
        let mut new: Vec<Alert> = Vec::new();
        // Per match: the index of the alert it created in `new`.
        let mut created: Vec<Option<usize>> = Vec::with_capacity(matches.len());
        let mut new_by_key: HashMap<String, usize> = HashMap::new();
        // Repeats of alerts raised before this batch, by dedupe key.
        let mut repeats: HashMap<String, Alert> = HashMap::new();
        for m in matches {
            let row = row_object(m.columns, m.row);
            let dedupe_key = dedupe_key(m, &row);
            let window = window_ms(m.rule.dedupe.as_ref().and_then(|d| d.window).unwrap_or(self.window));
            let repeat = match new_by_key.get(&dedupe_key).and_then(|&i| new.get_mut(i)) {
                Some(a) => Some(a),
                None => match repeats.entry(dedupe_key.clone()) {
                    Entry::Occupied(e) => Some(e.into_mut()),
                    Entry::Vacant(e) => match self.recent.get(&dedupe_key) {
                        Some(s) if now - s.alert.last_seen_ms <= window => Some(e.insert(s.alert.clone())),
                        _ => None,
                    },
                },
            };
            if let Some(a) = repeat {
                a.occurrences += 1;
                a.last_seen_ms = now;
                created.push(None);
                continue;
            }
            let alert = Alert {
                id: uuid::Uuid::now_v7().to_string(),
                alert_time_ms: now,
                rule_id: m.rule.id.clone(),
                title: m.rule.name.clone(),
                description: m.rule.description.clone(),
                severity: m.rule.severity as i32,
                pid: alerting::match_pid(&row, m.event),
                process_key: alerting::match_process_key(&row, m.event),
                row_json: Json::Object(row).to_string(),
                event_seq: m.event.map(|e| e.seq),
                correlation_id: m.correlation_id.to_owned(),
                dedupe_key: dedupe_key.clone(),
                occurrences: 1,
                last_seen_ms: now,
            };
            new_by_key.insert(dedupe_key, new.len());
            created.push(Some(new.len()));
            new.push(alert);
        }
        let updated: Vec<Alert> = repeats.into_values().collect();
        self.store.put_alerts(&new, &updated, self.delivery.sink_names())?;
        for a in updated {
            if let Some(s) = self.recent.get_mut(&a.dedupe_key) {
                s.alert = a;
            }
        }
        for alert in &new {
            self.delivery.enqueue(alert);
            *self.per_rule.entry(alert.rule_id.clone()).or_default() += 1;
            // No receiver (nobody watching) is not an error.
            let _ = self.feed.send(alert.clone());
            self.recent.insert(alert.dedupe_key.clone(), Seen { alert: alert.clone() });
        }
        Ok(created.into_iter().map(|i| i.and_then(|i| new.get(i).cloned())).collect())
    }

    /// Forgets dedupe entries older than the longest window.
    pub fn expire(&mut self) {
        let horizon = now_ms() - window_ms(self.window);
        self.recent.retain(|_, s| s.alert.last_seen_ms >= horizon);
    }
}

fn window_ms(w: Duration) -> i64 {
    i64::try_from(w.as_millis()).unwrap_or(i64::MAX)
}

/// The dedupe key: `daemoneye_lib::alerting`'s rule, shared with offline
/// replay so that live and replay cannot drift.
fn dedupe_key(m: &Match<'_>, row: &Map<String, Json>) -> String {
    alerting::dedupe_key(m.rule, row, m.event)
}

fn row_object(columns: &[String], row: &[Value]) -> Map<String, Json> {
    alerting::row_object(columns, row)
}

/// A SQL value as JSON.
pub fn value_json(v: &Value) -> Json {
    alerting::value_json(v)
}
