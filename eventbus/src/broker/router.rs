//! Subscription registry and routing.
//!
//! Each subscription owns a bounded queue (a tokio mpsc channel) drained by
//! its connection's writer task (socket clients) or by
//! [`crate::Subscription::recv`] (local clients). Routing a publish:
//!
//! 1. validate the topic and check the publisher against the access policy;
//! 2. find the matching subscriptions whose peers may read this topic;
//! 3. `try_send` to every one of them, so nobody waits for anybody;
//! 4. for full queues apply the policy: `Drop` counts a drop, `Error` counts
//!    a drop, ends the subscription and tells the subscriber (`QueueFull`),
//!    `Block` waits for space — concurrently for all blocked subscribers and
//!    at most `block_timeout`, after which the message is dropped and
//!    counted for that subscriber.
//!
//! A blocked publish holds only its own publisher (the publishing
//! connection's reader), never the broker or other publishers.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use daemoneye_lib::proto::{BackpressurePolicy, BusErrorCode, Publish, Subscribe};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::conn::WriterCmd;
use super::{BrokerShared, ConnInfo};
use crate::acl::Operation;
use crate::error::BusError;
use crate::frame::{Published, error_message, unix_now_ns};
use crate::stats::{SubCounters, SubscriberStats, TopicCounters};
use crate::topic;

/// One queued delivery: the shared message and its topic's counters.
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    pub(crate) msg: Arc<Published>,
    pub(crate) topic: Arc<TopicCounters>,
}

/// How to tell a subscriber that its subscription ended (Error policy).
#[derive(Debug)]
pub(crate) enum EndNotify {
    /// Send an error frame through the connection's writer.
    Remote(mpsc::Sender<WriterCmd>),
    /// Record the reason where the local `Subscription` reads it.
    Local(Arc<Mutex<Option<String>>>),
}

/// A live subscription.
#[derive(Debug)]
pub(crate) struct SubEntry {
    pub(crate) conn: Arc<ConnInfo>,
    pub(crate) sub_id: u64,
    pub(crate) pattern: String,
    wildcard: bool,
    pub(crate) policy: BackpressurePolicy,
    capacity: usize,
    tx: mpsc::Sender<Queued>,
    pub(crate) counters: Arc<SubCounters>,
    notify: EndNotify,
}

/// The subscription registry.
#[derive(Debug, Default)]
pub(crate) struct Router {
    subs: RwLock<HashMap<(u64, u64), Arc<SubEntry>>>,
}

/// What `subscribe` hands back: the queue's receiving end and its counters.
#[derive(Debug)]
pub(crate) struct NewSubscription {
    pub(crate) rx: mpsc::Receiver<Queued>,
    pub(crate) counters: Arc<SubCounters>,
    /// The effective policy (`Unspecified` becomes `Drop`).
    pub(crate) policy: BackpressurePolicy,
}

impl Router {
    pub(crate) fn remove(&self, conn_id: u64, sub_id: u64) -> bool {
        self.subs.write().unwrap_or_else(PoisonError::into_inner).remove(&(conn_id, sub_id)).is_some()
    }

    pub(crate) fn remove_connection(&self, conn_id: u64) {
        self.subs.write().unwrap_or_else(PoisonError::into_inner).retain(|(c, _), _| *c != conn_id);
    }

    fn matching(&self, topic_name: &str) -> Vec<Arc<SubEntry>> {
        self.subs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|s| topic::matches(&s.pattern, topic_name))
            .cloned()
            .collect()
    }

    pub(crate) fn snapshot(&self) -> Vec<SubscriberStats> {
        let subs = self.subs.read().unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<SubscriberStats> = subs
            .values()
            .map(|s| SubscriberStats {
                connection_id: s.conn.id,
                client_name: s.conn.client_name.clone(),
                peer: s.conn.peer.clone(),
                subscription_id: s.sub_id,
                pattern: s.pattern.clone(),
                policy: s.policy,
                capacity: s.capacity,
                queue_depth: s.tx.max_capacity().saturating_sub(s.tx.capacity())
                    + s.counters.in_writer.load(Ordering::Relaxed) as usize,
                delivered: s.counters.delivered.load(Ordering::Relaxed),
                dropped: s.counters.dropped.load(Ordering::Relaxed),
                latency: s.counters.latency.snapshot(),
            })
            .collect();
        v.sort_by_key(|s| (s.connection_id, s.subscription_id));
        v
    }
}

impl BrokerShared {
    /// Registers a subscription for `conn`. Errors are refusals to report to
    /// the client (the connection stays open).
    pub(crate) fn subscribe(
        &self,
        conn: &Arc<ConnInfo>,
        req: &Subscribe,
        notify: EndNotify,
    ) -> Result<NewSubscription, BusError> {
        topic::validate_pattern(&req.pattern)
            .map_err(|source| BusError::InvalidTopic { topic: req.pattern.clone(), source })?;
        if let Err(message) = self.config.acl.check_subscribe(&req.pattern, &conn.peer, self.broker_uid) {
            self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
            warn!(peer_pid = conn.peer.pid, peer_uid = conn.peer.uid, pattern = %req.pattern, "bus subscribe denied");
            return Err(BusError::AccessDenied { topic: req.pattern.clone(), message });
        }
        let policy = match BackpressurePolicy::try_from(req.policy) {
            Ok(BackpressurePolicy::Unspecified) | Err(_) => BackpressurePolicy::Drop,
            Ok(p) => p,
        };
        let capacity = match req.queue_capacity as usize {
            0 => self.config.default_queue_capacity,
            n => n,
        }
        .clamp(1, self.config.max_queue_capacity.max(1));
        let (tx, rx) = mpsc::channel(capacity);
        let counters = Arc::new(SubCounters::default());
        let entry = Arc::new(SubEntry {
            conn: Arc::clone(conn),
            sub_id: req.subscription_id,
            pattern: req.pattern.clone(),
            wildcard: topic::is_wildcard(&req.pattern),
            policy,
            capacity,
            tx,
            counters: Arc::clone(&counters),
            notify,
        });
        let mut subs = self.router.subs.write().unwrap_or_else(PoisonError::into_inner);
        if subs.contains_key(&(conn.id, req.subscription_id)) {
            return Err(BusError::Protocol {
                reason: format!("subscription id {} is already in use on this connection", req.subscription_id),
            });
        }
        let count = subs.keys().filter(|(c, _)| *c == conn.id).count();
        if count >= self.config.max_subscriptions_per_connection {
            return Err(BusError::Protocol {
                reason: format!(
                    "this connection already has {count} subscriptions (the limit); unsubscribe \
                     first or open another connection"
                ),
            });
        }
        subs.insert((conn.id, req.subscription_id), entry);
        debug!(conn_id = conn.id, sub_id = req.subscription_id, pattern = %req.pattern, ?policy, capacity, "bus subscribe");
        Ok(NewSubscription { rx, counters, policy })
    }

    /// Routes one publish from `conn`; returns the number of subscriptions
    /// that accepted it. Errors are refusals to report to the publisher.
    pub(crate) async fn publish(&self, conn: &ConnInfo, req: Publish) -> Result<u32, BusError> {
        topic::validate_topic(&req.topic)
            .map_err(|source| BusError::InvalidTopic { topic: req.topic.clone(), source })?;
        let acl = &self.config.acl;
        if let Err(message) = acl.check_topic(Operation::Publish, &req.topic, &conn.peer, self.broker_uid) {
            self.counters.access_denied.fetch_add(1, Ordering::Relaxed);
            warn!(peer_pid = conn.peer.pid, peer_uid = conn.peer.uid, topic = %req.topic, "bus publish denied");
            return Err(BusError::AccessDenied { topic: req.topic, message });
        }
        let topic_counters = self.topics.get(&req.topic);
        topic_counters.published.fetch_add(1, Ordering::Relaxed);
        conn.published.fetch_add(1, Ordering::Relaxed);
        let targets: Vec<Arc<SubEntry>> = self
            .router
            .matching(&req.topic)
            .into_iter()
            .filter(|s| {
                // Concrete subscriptions were checked when made; wildcard ones
                // are checked per topic.
                !s.wildcard || acl.check_topic(Operation::Subscribe, &req.topic, &s.conn.peer, self.broker_uid).is_ok()
            })
            .collect();
        let queued = Queued {
            msg: Arc::new(Published {
                topic: req.topic,
                payload: req.payload.into(),
                correlation: req.correlation.unwrap_or_default(),
                content_type: req.content_type,
                published_at_ns: unix_now_ns(),
                received_at: std::time::Instant::now(),
            }),
            topic: topic_counters,
        };
        let mut accepted = 0u32;
        let mut blocked = Vec::new();
        for sub in targets {
            match sub.tx.try_send(queued.clone()) {
                Ok(()) => accepted += 1,
                Err(mpsc::error::TrySendError::Full(q)) => match sub.policy {
                    BackpressurePolicy::Block => blocked.push((sub, q)),
                    BackpressurePolicy::Error => {
                        sub.counters.record_drop(&queued.topic);
                        self.end_subscription(&sub, "its queue was full (policy Error)");
                    }
                    BackpressurePolicy::Drop | BackpressurePolicy::Unspecified => {
                        sub.counters.record_drop(&queued.topic);
                    }
                },
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.router.remove(sub.conn.id, sub.sub_id);
                }
            }
        }
        if !blocked.is_empty() {
            let waits = blocked.into_iter().map(|(sub, q)| self.wait_for_space(sub, q));
            let results = futures::future::join_all(waits).await;
            accepted += results.into_iter().filter(|ok| *ok).count() as u32;
        }
        Ok(accepted)
    }

    /// Block policy: waits up to `block_timeout` for queue space.
    async fn wait_for_space(&self, sub: Arc<SubEntry>, q: Queued) -> bool {
        let topic_counters = Arc::clone(&q.topic);
        let waited = tokio::select! {
            () = self.cancel.cancelled() => None,
            r = tokio::time::timeout(self.config.block_timeout, sub.tx.send(q)) => Some(r),
        };
        match waited {
            Some(Ok(Ok(()))) => true,
            Some(Ok(Err(_closed))) => false,
            Some(Err(_elapsed)) => {
                sub.counters.record_drop(&topic_counters);
                warn!(
                    conn_id = sub.conn.id, peer_pid = sub.conn.peer.pid, sub_id = sub.sub_id,
                    timeout = ?self.config.block_timeout,
                    "bus subscriber did not make room in time; message dropped for it"
                );
                false
            }
            None => {
                sub.counters.record_drop(&topic_counters);
                false
            }
        }
    }

    fn end_subscription(&self, sub: &SubEntry, why: &str) {
        if !self.router.remove(sub.conn.id, sub.sub_id) {
            return; // already ended by a concurrent publish
        }
        let text = format!(
            "subscription {} to {:?} ended: {why}; resubscribe, read faster or use a larger queue",
            sub.sub_id, sub.pattern
        );
        warn!(conn_id = sub.conn.id, peer_pid = sub.conn.peer.pid, sub_id = sub.sub_id, "{text}");
        match &sub.notify {
            EndNotify::Remote(ctl) => {
                let frame = error_message(BusErrorCode::QueueFull, text, sub.sub_id);
                if ctl.try_send(WriterCmd::Frame(Box::new(frame))).is_err() {
                    debug!(conn_id = sub.conn.id, "could not queue the QueueFull error frame");
                }
            }
            EndNotify::Local(slot) => {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(text);
            }
        }
    }
}
