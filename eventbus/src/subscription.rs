//! [`Subscription`] and [`Delivery`]: the receiving side, shared by socket
//! clients ([`crate::BusClient`]) and in-process clients
//! ([`crate::LocalClient`]).
//!
//! A subscription ends (`recv` returns `None`) when it is dropped, when its
//! connection closes or the broker shuts down, or when its queue overflowed
//! under the `Error` policy; [`Subscription::end_reason`] says which.
//! Dropping a `Subscription` unsubscribes.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use daemoneye_lib::proto::BackpressurePolicy;
use tokio::sync::mpsc;

use crate::broker::{LocalConnGuard, Queued};
use crate::client::ClientConn;
use crate::correlation::CorrelationMetadata;
use crate::stats::SubCounters;

/// One message received on a subscription.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The subscription it was delivered to.
    pub subscription_id: u64,
    /// The concrete topic it was published to.
    pub topic: String,
    /// The payload.
    pub payload: Bytes,
    /// The publisher's correlation metadata.
    pub correlation: CorrelationMetadata,
    /// Payload type, e.g. `daemoneye.v1.ProcessEvent`.
    pub content_type: String,
    /// Per-subscription sequence assigned by the broker, starting at 1 and
    /// increasing by one per delivery. (Drops are not visible as gaps; see
    /// the broker statistics. procmond events carry the ledger sequence,
    /// which is the authoritative gap detector.)
    pub delivery_seq: u64,
    /// Broker receive time, Unix nanoseconds.
    pub published_at_ns: i64,
}

/// A live subscription. Receive with [`Subscription::recv`].
#[derive(Debug)]
pub struct Subscription {
    id: u64,
    pattern: String,
    policy: BackpressurePolicy,
    end: Arc<Mutex<Option<String>>>,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Remote { rx: mpsc::Receiver<Delivery>, conn: Arc<ClientConn> },
    Local { rx: mpsc::Receiver<Queued>, counters: Arc<SubCounters>, seq: u64, guard: Arc<LocalConnGuard> },
}

impl Subscription {
    pub(crate) fn remote(
        id: u64,
        pattern: String,
        policy: BackpressurePolicy,
        end: Arc<Mutex<Option<String>>>,
        rx: mpsc::Receiver<Delivery>,
        conn: Arc<ClientConn>,
    ) -> Self {
        Self { id, pattern, policy, end, inner: Inner::Remote { rx, conn } }
    }

    pub(crate) fn local(
        id: u64,
        pattern: String,
        policy: BackpressurePolicy,
        end: Arc<Mutex<Option<String>>>,
        rx: mpsc::Receiver<Queued>,
        counters: Arc<SubCounters>,
        guard: Arc<LocalConnGuard>,
    ) -> Self {
        Self { id, pattern, policy, end, inner: Inner::Local { rx, counters, seq: 0, guard } }
    }

    /// The next delivery, or `None` once the subscription has ended.
    ///
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Delivery> {
        match &mut self.inner {
            Inner::Remote { rx, .. } => rx.recv().await,
            Inner::Local { rx, counters, seq, guard } => {
                let queued = tokio::select! {
                    () = guard.shared.cancel.cancelled() => {
                        set_reason(&self.end, "the broker shut down");
                        return None;
                    }
                    q = rx.recv() => q?,
                };
                *seq += 1;
                counters.record_delivery(&queued.topic, queued.msg.received_at.elapsed());
                Some(local_delivery(self.id, *seq, &queued))
            }
        }
    }

    /// The next delivery if one is queued now, without waiting: a receiver
    /// that woke for one message drains what arrived with it.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        match &mut self.inner {
            Inner::Remote { rx, .. } => rx.try_recv().ok(),
            Inner::Local { rx, counters, seq, .. } => {
                let queued = rx.try_recv().ok()?;
                *seq += 1;
                counters.record_delivery(&queued.topic, queued.msg.received_at.elapsed());
                Some(local_delivery(self.id, *seq, &queued))
            }
        }
    }

    /// Deliveries queued now (what [`try_recv`](Self::try_recv) would
    /// return without waiting).
    pub fn queued(&self) -> usize {
        match &self.inner {
            Inner::Remote { rx, .. } => rx.len(),
            Inner::Local { rx, .. } => rx.len(),
        }
    }

    /// The subscription id (unique per client).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The backpressure policy asked for.
    pub fn policy(&self) -> BackpressurePolicy {
        self.policy
    }

    /// Why the subscription ended, once it has (queue overflow under the
    /// `Error` policy, connection closed, broker shut down).
    pub fn end_reason(&self) -> Option<String> {
        self.end.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

fn local_delivery(subscription_id: u64, delivery_seq: u64, queued: &Queued) -> Delivery {
    let m = &queued.msg;
    Delivery {
        subscription_id,
        topic: m.topic.clone(),
        payload: m.payload.clone(),
        correlation: m.correlation.clone().into(),
        content_type: m.content_type.clone(),
        delivery_seq,
        published_at_ns: m.published_at_ns,
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        match &self.inner {
            Inner::Remote { conn, .. } => conn.unsubscribe(self.id),
            Inner::Local { guard, .. } => {
                guard.shared.router.remove(guard.conn.id, self.id);
            }
        }
    }
}

pub(crate) fn set_reason(slot: &Mutex<Option<String>>, reason: &str) {
    let mut s = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if s.is_none() {
        *s = Some(reason.to_owned());
    }
}
