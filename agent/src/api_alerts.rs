//! The API's alert calls (`ListAlerts`, `GetAlert`, `WatchAlerts`), kept out
//! of `api.rs` so that the service file stays a list of thin handlers.
//!
//! `WatchAlerts` follows the alert manager's feed (every new alert, sent
//! once it is stored). A watcher that falls more than the feed's capacity
//! behind reads what it missed back from the store, so it skips nothing.

use std::pin::Pin;
use std::sync::Arc;

use daemoneye_lib::proto::{
    Alert, GetAlertRequest, GetAlertResponse, ListAlertsRequest, ListAlertsResponse, Severity, SinkDelivery,
    WatchAlertsRequest,
};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::pipeline::Shared;
use crate::store::Store;

/// The stream type of `WatchAlerts`.
pub type AlertStream = Pin<Box<dyn Stream<Item = Result<Alert, Status>> + Send + 'static>>;

/// `ListAlerts`: stored alerts, oldest first, filtered.
pub async fn list(shared: &Shared, req: ListAlertsRequest) -> Result<ListAlertsResponse, Status> {
    let mut alerts = all_alerts(&shared.store).await?;
    let min = req.min_severity.map(|_| req.min_severity());
    alerts.retain(|a| {
        req.rule_id.as_ref().is_none_or(|r| &a.rule_id == r)
            && req.since_ms.is_none_or(|t| a.alert_time_ms >= t)
            && req.until_ms.is_none_or(|t| a.alert_time_ms < t)
            && min.is_none_or(|m| severity_at_least(a, m))
    });
    if req.limit > 0 {
        let keep = req.limit as usize;
        if alerts.len() > keep {
            alerts.drain(..alerts.len() - keep);
        }
    }
    Ok(ListAlertsResponse { alerts })
}

/// `GetAlert`: one alert by id or unique id prefix, with its delivery state
/// per configured sink.
pub async fn get(shared: &Shared, req: GetAlertRequest) -> Result<GetAlertResponse, Status> {
    let want = req.id.trim().to_owned();
    if want.is_empty() {
        return Err(Status::invalid_argument("give an alert id (`daemoneye-cli alerts list` shows them)"));
    }
    let alerts = all_alerts(&shared.store).await?;
    let mut found: Vec<Alert> = alerts.into_iter().filter(|a| a.id.starts_with(&want)).collect();
    let alert = match found.len() {
        0 => {
            return Err(Status::not_found(format!(
                "no alert has id {want}; `daemoneye-cli alerts list` shows the stored alerts"
            )));
        }
        1 => found.remove(0),
        n => match found.iter().position(|a| a.id == want) {
            Some(i) => found.swap_remove(i),
            None => {
                return Err(Status::invalid_argument(format!(
                    "{n} alerts have ids starting with {want}; give more of the id"
                )));
            }
        },
    };
    let sinks = {
        let alerts = shared.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        alerts.delivery().snapshot()
    };
    let store = Arc::clone(&shared.store);
    let id = alert.id.clone();
    let deliveries = tokio::task::spawn_blocking(move || {
        sinks
            .into_iter()
            .map(|s| {
                let pending = store.outbox_contains(&s.name, &id)?;
                Ok(SinkDelivery {
                    state: if pending { "pending" } else { "delivered" }.into(),
                    sink: s.name,
                    kind: s.kind.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, crate::store::StoreError>>()
    })
    .await
    .map_err(|e| Status::internal(format!("alert task failed: {e}")))?
    .map_err(|e| Status::unavailable(e.to_string()))?;
    Ok(GetAlertResponse { alert: Some(alert), deliveries })
}

/// `WatchAlerts`: new alerts as they are stored, until the client goes away
/// or the agent stops.
pub fn watch(shared: Arc<Shared>, req: WatchAlertsRequest, cancel: CancellationToken) -> AlertStream {
    let mut feed = {
        let alerts = shared.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        alerts.subscribe()
    };
    let min = req.min_severity.map(|_| req.min_severity());
    let wanted = move |a: &Alert| {
        req.rule_id.as_ref().is_none_or(|r| &a.rule_id == r) && min.is_none_or(|m| severity_at_least(a, m))
    };
    let (tx, rx) = mpsc::channel::<Result<Alert, Status>>(64);
    tokio::spawn(async move {
        // The newest alert time sent, and the ids sent lately: after a lag
        // the store is read from that time on and what was sent is skipped.
        let mut newest: Option<i64> = None;
        let mut sent = Recent::default();
        loop {
            let got = tokio::select! {
                r = feed.recv() => r,
                () = tx.closed() => return,
                () = cancel.cancelled() => return,
            };
            let batch = match got {
                Ok(a) => vec![a],
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "alert watcher fell behind; reading the store");
                    match all_alerts(&shared.store).await {
                        Ok(all) => all.into_iter().filter(|a| newest.is_none_or(|t| a.alert_time_ms >= t)).collect(),
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                }
                Err(RecvError::Closed) => return,
            };
            for a in batch {
                if !sent.insert(&a.id) {
                    continue;
                }
                newest = Some(newest.map_or(a.alert_time_ms, |t| t.max(a.alert_time_ms)));
                if wanted(&a) && tx.send(Ok(a)).await.is_err() {
                    return;
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The ids of the last alerts sent to one watcher (bounded).
#[derive(Default)]
struct Recent {
    order: std::collections::VecDeque<String>,
    ids: std::collections::HashSet<String>,
}

impl Recent {
    const CAPACITY: usize = 4096;

    /// Records `id`; false when it was sent already.
    fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= Self::CAPACITY
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
        true
    }
}

fn severity_at_least(a: &Alert, min: Severity) -> bool {
    a.severity >= min as i32
}

async fn all_alerts(store: &Arc<Store>) -> Result<Vec<Alert>, Status> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || store.alerts())
        .await
        .map_err(|e| Status::internal(format!("alert task failed: {e}")))?
        .map_err(|e| Status::unavailable(e.to_string()))
}
