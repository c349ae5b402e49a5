//! In-process clients of the broker ([`LocalClient`]): the agent publishes
//! and subscribes without a socket hop, with its own identity, under the same
//! topic rules, access policy, queues and statistics as socket clients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use daemoneye_lib::proto::{BackpressurePolicy, Correlation, Publish, Subscribe, Welcome};

use super::router::EndNotify;
use super::{BrokerShared, ConnInfo};
use crate::error::BusError;
use crate::frame::PROTOCOL_VERSION;
use crate::subscription::Subscription;
use crate::topic;

/// Keeps a local connection registered while the client or any of its
/// subscriptions lives.
#[derive(Debug)]
pub(crate) struct LocalConnGuard {
    pub(crate) shared: Arc<BrokerShared>,
    pub(crate) conn: Arc<ConnInfo>,
    next_id: AtomicU64,
}

impl Drop for LocalConnGuard {
    fn drop(&mut self) {
        self.shared.unregister_conn(self.conn.id);
    }
}

/// An in-process bus client (see [`crate::BrokerHandle::local_client`]).
/// Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct LocalClient {
    guard: Arc<LocalConnGuard>,
    welcome: Arc<Welcome>,
}

impl LocalClient {
    pub(super) fn new(shared: Arc<BrokerShared>, name: &str) -> Self {
        let identity = shared.identity.clone();
        let welcome = Welcome {
            broker_name: shared.config.broker_name.clone(),
            protocol_version: PROTOCOL_VERSION,
            peer_uid: identity.uid,
            peer_gid: identity.gid,
            peer_pid: identity.pid,
        };
        let conn = shared.register_conn(name, identity, true);
        Self {
            guard: Arc::new(LocalConnGuard { shared, conn, next_id: AtomicU64::new(0) }),
            welcome: Arc::new(welcome),
        }
    }

    /// Publishes a message. Unlike the socket client, refusals (invalid
    /// topic, access denied) are returned here directly.
    pub async fn publish(
        &self,
        topic_name: &str,
        payload: Bytes,
        content_type: &str,
        correlation: impl Into<Correlation>,
    ) -> Result<(), BusError> {
        self.publish_acked(topic_name, payload, content_type, correlation).await.map(|_| ())
    }

    /// Publishes a message; returns the number of subscriptions that
    /// accepted it into their queues.
    pub async fn publish_acked(
        &self,
        topic_name: &str,
        payload: Bytes,
        content_type: &str,
        correlation: impl Into<Correlation>,
    ) -> Result<u32, BusError> {
        let shared = &self.guard.shared;
        if shared.cancel.is_cancelled() {
            return Err(BusError::Shutdown);
        }
        let req = Publish {
            topic: topic_name.to_owned(),
            payload: payload.into(),
            correlation: Some(correlation.into()),
            message_id: self.next_id(),
            ack_requested: true,
            content_type: content_type.to_owned(),
        };
        shared.publish(&self.guard.conn, req).await
    }

    /// Subscribes to `pattern`. `capacity` 0 means the broker's default.
    pub async fn subscribe(
        &self,
        pattern: &str,
        policy: BackpressurePolicy,
        capacity: u32,
    ) -> Result<Subscription, BusError> {
        topic::validate_pattern(pattern)
            .map_err(|source| BusError::InvalidTopic { topic: pattern.to_owned(), source })?;
        let shared = &self.guard.shared;
        if shared.cancel.is_cancelled() {
            return Err(BusError::Shutdown);
        }
        let id = self.next_id();
        let end = Arc::new(Mutex::new(None));
        let req = Subscribe {
            subscription_id: id,
            pattern: pattern.to_owned(),
            policy: policy as i32,
            queue_capacity: capacity,
        };
        let new = shared.subscribe(&self.guard.conn, &req, EndNotify::Local(Arc::clone(&end)))?;
        Ok(Subscription::local(id, pattern.to_owned(), new.policy, end, new.rx, new.counters, Arc::clone(&self.guard)))
    }

    /// The identity the broker uses for this client (the broker's own).
    pub fn peer_identity(&self) -> &Welcome {
        &self.welcome
    }

    fn next_id(&self) -> u64 {
        self.guard.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }
}
