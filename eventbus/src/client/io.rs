//! The client's two tasks: the writer (outgoing queue to the connection) and the
//! reader (deliveries to subscription queues, answers to pending requests).

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use daemoneye_lib::proto::bus_message::Kind;
use daemoneye_lib::proto::{BackpressurePolicy, BusMessage, Pong, Unsubscribe};
use futures::{FutureExt, SinkExt};
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::State;
use crate::error::BusError;
use crate::frame::{BusCodec, FrameReader, message};
use crate::subscription::{Delivery, set_reason};
use crate::transport::{ReadHalf, WriteHalf};

pub(super) async fn write_loop(
    mut w: FramedWrite<WriteHalf, BusCodec>,
    mut rx: mpsc::Receiver<BusMessage>,
    cancel: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => break,
            m = rx.recv() => m,
        };
        let Some(mut msg) = next else { break };
        loop {
            let fed = tokio::select! {
                () = cancel.cancelled() => return,
                r = w.feed(msg) => r,
            };
            if let Err(e) = fed {
                debug!(error = %e, "bus client write failed");
                cancel.cancel();
                return;
            }
            match rx.recv().now_or_never() {
                Some(Some(m)) => msg = m,
                _ => break,
            }
        }
        let flushed = tokio::select! {
            () = cancel.cancelled() => return,
            r = SinkExt::<BusMessage>::flush(&mut w) => r,
        };
        if flushed.is_err() {
            cancel.cancel();
            return;
        }
    }
}

pub(super) async fn read_loop(
    mut reader: FrameReader<ReadHalf>,
    state: Arc<Mutex<State>>,
    out: mpsc::Sender<BusMessage>,
    cancel: CancellationToken,
) {
    let reason = loop {
        let next = tokio::select! {
            () = cancel.cancelled() => break "the client was closed".to_owned(),
            r = reader.next() => r,
        };
        let kind = match next {
            Ok(Some(m)) => m.kind,
            Ok(None) => break "the broker closed the connection".to_owned(),
            Err(e) => break e.to_string(),
        };
        match kind {
            Some(Kind::Deliver(d)) => {
                if !route_delivery(&state, &out, &cancel, d).await {
                    break "the client was closed".to_owned();
                }
            }
            Some(Kind::Ack(a)) => {
                let waiter = lock(&state).acks.remove(&a.message_id);
                if let Some((_, tx)) = waiter {
                    let _ = tx.send(Ok(a.delivered_to));
                }
            }
            Some(Kind::Pong(p)) => {
                if let Some(tx) = lock(&state).pings.remove(&p.nonce) {
                    let _ = tx.send(());
                }
            }
            Some(Kind::Ping(p)) => {
                let _ = out.try_send(message(Kind::Pong(Pong { nonce: p.nonce })));
            }
            Some(Kind::Error(e)) => handle_error(&state, &e),
            other => {
                debug!(kind = ?other.map(|k| std::mem::discriminant(&k)), "ignoring unexpected frame from the broker")
            }
        }
    };
    cancel.cancel();
    let mut s = lock(&state);
    debug!(%reason, "bus client connection ended");
    for slot in s.subs.values() {
        set_reason(&slot.end, &format!("connection closed: {reason}"));
    }
    s.closed = Some(reason);
    s.subs.clear();
    s.acks.clear();
    s.sub_requests.clear();
    s.pings.clear();
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn handle_error(state: &Mutex<State>, e: &daemoneye_lib::proto::BusError) {
    let mut s = lock(state);
    if let Some((topic_name, tx)) = s.acks.remove(&e.ref_id) {
        let _ = tx.send(Err(BusError::from_wire(e, &topic_name)));
    } else if let Some((pattern, tx)) = s.sub_requests.remove(&e.ref_id) {
        let _ = tx.send(BusError::from_wire(e, &pattern));
    } else if e.ref_id != 0
        && let Some(slot) = s.subs.remove(&e.ref_id)
    {
        set_reason(&slot.end, &e.message);
        warn!(sub_id = e.ref_id, message = %e.message, "bus subscription ended by the broker");
    } else {
        warn!(code = e.code, ref_id = e.ref_id, message = %e.message, "event bus broker reported an error");
    }
}

/// Routes one delivery to its subscription's queue; false if cancelled.
async fn route_delivery(
    state: &Mutex<State>,
    out: &mpsc::Sender<BusMessage>,
    cancel: &CancellationToken,
    d: daemoneye_lib::proto::Deliver,
) -> bool {
    let slot = lock(state).subs.get(&d.subscription_id).map(|s| (s.tx.clone(), s.policy, Arc::clone(&s.end)));
    let Some((tx, policy, end)) = slot else {
        return true; // unsubscribed meanwhile
    };
    let id = d.subscription_id;
    let delivery = Delivery {
        subscription_id: id,
        topic: d.topic,
        payload: Bytes::from(d.payload),
        correlation: d.correlation.unwrap_or_default().into(),
        content_type: d.content_type,
        delivery_seq: d.delivery_seq,
        published_at_ns: d.published_at_ns,
    };
    let full = match policy {
        BackpressurePolicy::Block => {
            tokio::select! {
                () = cancel.cancelled() => return false,
                // An error means the subscription was dropped meanwhile.
                _ = tx.send(delivery) => false,
            }
        }
        _ => matches!(tx.try_send(delivery), Err(mpsc::error::TrySendError::Full(_))),
    };
    if full {
        if policy == BackpressurePolicy::Error {
            set_reason(&end, "the client-side queue was full (policy Error)");
            lock(state).subs.remove(&id);
            let _ = out.try_send(message(Kind::Unsubscribe(Unsubscribe { subscription_id: id })));
        } else {
            debug!(sub_id = id, "client-side subscription queue full; delivery dropped");
        }
    }
    true
}
