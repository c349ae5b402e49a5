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
    /// Its place in the rule set (orders the alerts of one event).
    pub rule_index: usize,
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
            // After a crash the events after the store's durable seq are
            // applied again: a match whose alert the alert file kept is
            // neither new nor a repeat.
            if let Some(ev) = m.event
                && self.recent.get(&dedupe_key).is_some_and(|s| s.alert.event_seq == Some(ev.seq))
            {
                created.push(None);
                continue;
            }
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
                id: alert_id(m),
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

/// A new alert's id: a UUIDv7 (time-ordered). An event's alert is made
/// from the event alone, so that raising it again from the ledger after a
/// crash (see `store::alerts`) gives it the same id (a sink sees the same
/// alert twice at most, never two alerts): the event's time, then its seq
/// and the rule's place (alerts of one millisecond sort as they were
/// raised), then a hash of the rule and the process.
fn alert_id(m: &Match<'_>) -> String {
    let Some(ev) = m.event else { return uuid::Uuid::now_v7().to_string() };
    let mut h = blake3::Hasher::new();
    h.update(m.rule.id.as_bytes());
    h.update(&[0]);
    h.update(ev.process.as_ref().map_or("", |r| r.process_key.as_str()).as_bytes());
    let hash = h.finalize().as_bytes().first().copied().unwrap_or(0);
    // 74 bits after the time: 48 of seq, 16 of rule place, 10 of hash.
    let bits: u128 =
        (u128::from(ev.seq) & ((1 << 48) - 1)) << 26 | (m.rule_index as u128 & 0xFFFF) << 10 | u128::from(hash) << 2;
    let (rand_a, rand_b) = (bits >> 62, bits & ((1 << 62) - 1));
    let mut rand = [0u8; 10];
    for (i, byte) in rand.iter_mut().enumerate() {
        // rand[0..2]: the 12 bits of rand_a; rand[2..10]: the 62 of rand_b.
        let (value, shift) = if i < 2 { (rand_a, 8 * (1 - i)) } else { (rand_b, 8 * (9 - i)) };
        *byte = (value >> shift) as u8;
    }
    let ms = u64::try_from(ev.event_time_ns / 1_000_000).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(ms, &rand).into_uuid().to_string()
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

#[cfg(test)]
mod tests {
    use daemoneye_lib::config::AlertsConfig;
    use daemoneye_lib::proto::{ProcessRecord, Severity};
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::*;

    fn rule() -> Rule {
        Rule {
            id: "r1".into(),
            name: "R1".into(),
            description: String::new(),
            severity: Severity::High,
            category: None,
            tags: Vec::new(),
            author: None,
            version: None,
            enabled: true,
            sql: String::new(),
            dedupe: None,
            source: std::path::PathBuf::new(),
        }
    }

    fn exec(seq: u64, key: &str) -> ProcessEvent {
        ProcessEvent {
            seq,
            event_time_ns: 1_800_000_000_000_000_000,
            process: Some(ProcessRecord { process_key: key.into(), pid: 7, ..Default::default() }),
            ..Default::default()
        }
    }

    /// After a crash the agent re-applies the events after the store's
    /// durable seq; an event whose alert the alert file kept must raise
    /// nothing, and one whose alert was lost gets it back with its id.
    #[tokio::test]
    async fn an_event_applied_again_raises_its_alert_once_with_one_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
        let config = AlertsConfig { dedupe_window: Duration::from_secs(300), stdout: false, sinks: Vec::new() };
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        let delivery = Arc::new(Delivery::start(&config, Arc::clone(&store), &cancel, &tasks).unwrap());
        let rule = rule();
        let columns = vec!["pid".to_owned()];
        let row = vec![Value::Integer(7)];
        let ev = exec(42, "k-7");
        let m =
            Match { rule: &rule, rule_index: 0, columns: &columns, row: &row, event: Some(&ev), correlation_id: "c" };

        let mut alerts = AlertManager::new(Arc::clone(&store), config.dedupe_window, Arc::clone(&delivery)).unwrap();
        let first = alerts.raise(&m).unwrap().expect("a new alert");
        assert_eq!(first.event_seq, Some(42));
        assert!(alerts.raise(&m).unwrap().is_none(), "the same event again is no new alert");
        assert_eq!(store.alerts().unwrap().len(), 1);
        assert_eq!(store.alerts().unwrap()[0].occurrences, 1, "and no repeat either");

        // Another event with the same dedupe key is a repeat.
        let ev2 = exec(43, "k-7");
        let m2 = Match { event: Some(&ev2), ..m };
        assert!(alerts.raise(&m2).unwrap().is_none());
        assert_eq!(store.alerts().unwrap()[0].occurrences, 2);

        // A fresh agent whose alert file lost the alert raises it again
        // with the same id.
        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Arc::new(Store::open(&dir2.path().join("store.redb")).unwrap());
        let mut again = AlertManager::new(Arc::clone(&store2), config.dedupe_window, delivery).unwrap();
        let second = again.raise(&m).unwrap().expect("raised again");
        assert_eq!(second.id, first.id);
        // Ids sort as alerts are raised: by event, then by rule.
        let later_rule = alert_id(&Match { rule_index: 1, ..m });
        let later_event = alert_id(&m2);
        assert!(first.id < later_rule && later_rule < later_event, "{} {later_rule} {later_event}", first.id);
        cancel.cancel();
    }
}
