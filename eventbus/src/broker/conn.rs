//! One connection (socket or pipe): identity, handshake, reader loop, writer
//! task.
//!
//! The reader (this connection's task) decodes frames with a per-frame
//! deadline and applies them; everything it sends back (Welcome, Ack, Pong,
//! errors) and the subscription queues it creates go to the writer task,
//! which alone owns the connection's write half. A client that stops reading
//! therefore fills only its own queues.
//!
//! A bad frame (malformed, oversized, stalled, unknown kind, protocol
//! violation) gets an error frame when possible and closes this connection
//! only.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use daemoneye_lib::proto::bus_message::Kind;
use daemoneye_lib::proto::{Ack, BusErrorCode, BusMessage, Hello, Pong, Welcome};
use futures::stream::{SelectAll, Stream};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::router::{EndNotify, Queued};
use super::{BrokerShared, ConnInfo};
use crate::acl::PeerIdentity;
use crate::error::BusError;
use crate::frame::{BusCodec, FrameReader, OutFrame, PROTOCOL_VERSION, error_message, message};
use crate::stats::SubCounters;
use crate::transport::{self, ReadHalf, WriteHalf};

/// Capacity of a connection's control queue (replies and new subscriptions).
const CONTROL_QUEUE: usize = 256;

/// Commands for a connection's writer task.
#[derive(Debug)]
pub(crate) enum WriterCmd {
    /// Write this frame.
    Frame(Box<BusMessage>),
    /// Start draining a new subscription's queue.
    AddSub { sub_id: u64, rx: mpsc::Receiver<Queued>, counters: Arc<SubCounters> },
    /// Flush what is queued and stop.
    Close,
}

type Writer = FramedWrite<WriteHalf, BusCodec>;
type SubStream = Pin<Box<dyn Stream<Item = SubItem> + Send>>;

struct SubItem {
    sub_id: u64,
    seq: u64,
    counters: Arc<SubCounters>,
    queued: Queued,
}

/// Tells a connection over the limit why it is refused, then closes it.
pub(super) async fn refuse(stream: transport::Stream, max_frame_size: usize) {
    let mut w = FramedWrite::new(stream, BusCodec::new(max_frame_size));
    let msg =
        error_message(BusErrorCode::Protocol, "the event bus broker has reached its connection limit; retry later", 0);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), w.send(msg)).await;
}

/// Serves one accepted connection until it closes or the broker shuts down.
pub(super) async fn serve(shared: Arc<BrokerShared>, stream: transport::Stream) {
    let _active = ActiveGuard(Arc::clone(&shared));
    let peer = match stream.peer_identity().await {
        Ok(p) => p,
        Err(e) => {
            warn!(error = %e, "cannot read the peer credentials of a bus connection; closing it");
            return;
        }
    };
    let span = info_span!("bus_conn", peer_pid = peer.pid, peer_uid = peer.uid, conn_id = tracing::field::Empty);
    run(shared, stream, peer).instrument(span).await;
}

struct ActiveGuard(Arc<BrokerShared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.counters.active_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run(shared: Arc<BrokerShared>, stream: transport::Stream, peer: PeerIdentity) {
    let (rd, wr) = stream.into_split();
    let codec = BusCodec::new(shared.config.max_frame_size);
    let mut reader = FrameReader::new(rd, codec, Some(shared.config.frame_timeout));
    let mut writer = FramedWrite::new(wr, codec);
    let hello = match handshake(&shared, &mut reader).await {
        Ok(h) => h,
        Err(e) => {
            shared.counters.connections_rejected.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "bus handshake failed");
            if !matches!(e, BusError::ConnectionClosed { .. } | BusError::Io { .. }) {
                let frame = error_message(e.code(), e.to_string(), 0);
                let _ = tokio::time::timeout(shared.config.frame_timeout, writer.send(frame)).await;
            }
            return;
        }
    };
    let conn = shared.register_conn(&hello.client_name, peer.clone(), false);
    tracing::Span::current().record("conn_id", conn.id);
    info!(client = %conn.client_name, exe = ?peer.exe, "bus client connected");
    let welcome = message(Kind::Welcome(Welcome {
        broker_name: shared.config.broker_name.clone(),
        protocol_version: PROTOCOL_VERSION,
        peer_uid: peer.uid,
        peer_gid: peer.gid,
        peer_pid: peer.pid,
    }));
    let sent = tokio::select! {
        () = shared.cancel.cancelled() => Ok(Err(BusError::Shutdown)),
        r = tokio::time::timeout(shared.config.frame_timeout, writer.send(welcome)) => r,
    };
    if !matches!(sent, Ok(Ok(()))) {
        shared.unregister_conn(conn.id);
        return;
    }

    let (ctl_tx, ctl_rx) = mpsc::channel(CONTROL_QUEUE);
    let writer_task =
        shared.tracker.spawn(write_loop(writer, ctl_rx, shared.cancel.clone()).instrument(tracing::Span::current()));
    let closing_error = read_loop(&shared, &conn, &mut reader, &ctl_tx).await;
    shared.unregister_conn(conn.id);
    let limit = shared.config.frame_timeout;
    if let Some(frame) = closing_error {
        shared.counters.frames_rejected.fetch_add(1, Ordering::Relaxed);
        let _ = tokio::time::timeout(limit, ctl_tx.send(WriterCmd::Frame(Box::new(frame)))).await;
    }
    let _ = tokio::time::timeout(limit, ctl_tx.send(WriterCmd::Close)).await;
    drop(ctl_tx);
    let abort = writer_task.abort_handle();
    if tokio::time::timeout(limit, writer_task).await.is_err() {
        abort.abort();
    }
    info!(client = %conn.client_name, "bus client disconnected");
}

async fn handshake(shared: &BrokerShared, reader: &mut FrameReader<ReadHalf>) -> Result<Hello, BusError> {
    let path = shared.socket_path.clone();
    let limit = shared.config.handshake_timeout;
    let first = tokio::select! {
        () = shared.cancel.cancelled() => return Err(BusError::Shutdown),
        r = tokio::time::timeout(limit, reader.next()) => r,
    };
    let first = first
        .map_err(|_| BusError::Handshake { path: path.clone(), reason: format!("no Hello within {limit:?}") })??;
    match first.and_then(|m| m.kind) {
        Some(Kind::Hello(h)) if h.protocol_version == PROTOCOL_VERSION => Ok(h),
        Some(Kind::Hello(h)) => Err(BusError::Handshake {
            path,
            reason: format!(
                "client speaks protocol version {}, this broker speaks {PROTOCOL_VERSION}; \
                 upgrade the client or the agent",
                h.protocol_version
            ),
        }),
        Some(_) => Err(BusError::Handshake { path, reason: "the first frame must be Hello".to_owned() }),
        None => Err(BusError::ConnectionClosed { path, reason: "closed before Hello".to_owned() }),
    }
}

/// Applies the client's frames; returns the error frame to send before
/// closing, if the connection ends because of a bad frame.
async fn read_loop(
    shared: &BrokerShared,
    conn: &Arc<ConnInfo>,
    reader: &mut FrameReader<ReadHalf>,
    ctl: &mpsc::Sender<WriterCmd>,
) -> Option<BusMessage> {
    loop {
        let next = tokio::select! {
            () = shared.cancel.cancelled() => return None,
            r = reader.next() => r,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => return None,
            Err(
                e @ (BusError::FrameTooLarge { .. } | BusError::MalformedFrame { .. } | BusError::FrameTimeout { .. }),
            ) => {
                warn!(error = %e, "bad frame; closing this bus connection");
                return Some(error_message(e.code(), e.to_string(), 0));
            }
            Err(e) => {
                debug!(error = %e, "bus connection read ended");
                return None;
            }
        };
        let reply = match msg.kind {
            Some(Kind::Publish(p)) => {
                let (id, ack) = (p.message_id, p.ack_requested);
                match shared.publish(conn, p).await {
                    Ok(n) if ack => Some(message(Kind::Ack(Ack { message_id: id, delivered_to: n }))),
                    Ok(_) => None,
                    Err(e) => Some(error_message(e.code(), e.to_string(), id)),
                }
            }
            Some(Kind::Subscribe(s)) => match shared.subscribe(conn, &s, EndNotify::Remote(ctl.clone())) {
                Ok(new) => {
                    let cmd = WriterCmd::AddSub { sub_id: s.subscription_id, rx: new.rx, counters: new.counters };
                    if !send_ctl(shared, ctl, cmd).await {
                        return None;
                    }
                    None
                }
                Err(e) => Some(error_message(e.code(), e.to_string(), s.subscription_id)),
            },
            Some(Kind::Unsubscribe(u)) => {
                shared.router.remove(conn.id, u.subscription_id);
                None
            }
            Some(Kind::Ping(p)) => Some(message(Kind::Pong(Pong { nonce: p.nonce }))),
            Some(Kind::Pong(_)) => None,
            Some(Kind::Error(e)) => {
                debug!(code = e.code, message = %e.message, "bus client reported an error");
                None
            }
            Some(other) => {
                let what = kind_name(&other);
                warn!(kind = what, "unexpected message from a bus client; closing");
                return Some(error_message(
                    BusErrorCode::Protocol,
                    format!("a client may not send {what}; closing the connection"),
                    0,
                ));
            }
            None => {
                warn!("bus frame with an unknown or empty message kind; closing");
                return Some(error_message(
                    BusErrorCode::Protocol,
                    format!(
                        "unknown or empty message kind (this broker speaks protocol version \
                         {PROTOCOL_VERSION}); closing the connection"
                    ),
                    0,
                ));
            }
        };
        if let Some(frame) = reply
            && !send_ctl(shared, ctl, WriterCmd::Frame(Box::new(frame))).await
        {
            return None;
        }
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Hello(_) => "Hello after the handshake",
        Kind::Welcome(_) => "Welcome",
        Kind::Deliver(_) => "Deliver",
        Kind::Ack(_) => "Ack",
        Kind::Subscribe(_) => "Subscribe",
        Kind::Unsubscribe(_) => "Unsubscribe",
        Kind::Publish(_) => "Publish",
        Kind::Ping(_) => "Ping",
        Kind::Pong(_) => "Pong",
        Kind::Error(_) => "Error",
    }
}

async fn send_ctl(shared: &BrokerShared, ctl: &mpsc::Sender<WriterCmd>, cmd: WriterCmd) -> bool {
    tokio::select! {
        () = shared.cancel.cancelled() => false,
        r = ctl.send(cmd) => r.is_ok(),
    }
}

enum Event {
    Write(OutFrame, Option<SubItem>),
    AddSub(SubStream),
    Close,
    Cancelled,
}

async fn next_event(
    ctl: &mut mpsc::Receiver<WriterCmd>,
    subs: &mut SelectAll<SubStream>,
    cancel: &CancellationToken,
) -> Event {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Event::Cancelled,
        cmd = ctl.recv() => match cmd {
            Some(WriterCmd::Frame(m)) => Event::Write(OutFrame::Message(m), None),
            Some(WriterCmd::AddSub { sub_id, rx, counters }) => Event::AddSub(sub_stream(sub_id, rx, counters)),
            Some(WriterCmd::Close) | None => Event::Close,
        },
        Some(item) = subs.next(), if !subs.is_empty() => {
            let frame = OutFrame::Deliver {
                subscription_id: item.sub_id,
                delivery_seq: item.seq,
                msg: Arc::clone(&item.queued.msg),
            };
            Event::Write(frame, Some(item))
        }
    }
}

fn sub_stream(sub_id: u64, rx: mpsc::Receiver<Queued>, counters: Arc<SubCounters>) -> SubStream {
    Box::pin(futures::stream::unfold((rx, 0u64), move |(mut rx, seq)| {
        let counters = Arc::clone(&counters);
        async move {
            let queued = rx.recv().await?;
            counters.in_writer.fetch_add(1, Ordering::Relaxed);
            let seq = seq + 1;
            Some((SubItem { sub_id, seq, counters, queued }, (rx, seq)))
        }
    }))
}

/// Owns the write half: writes control frames first, then deliveries from
/// all subscriptions (fairly), batching writes until nothing is ready.
async fn write_loop(mut w: Writer, mut ctl: mpsc::Receiver<WriterCmd>, cancel: CancellationToken) {
    let mut subs: SelectAll<SubStream> = SelectAll::new();
    'outer: loop {
        let mut event = next_event(&mut ctl, &mut subs, &cancel).await;
        loop {
            match event {
                Event::Cancelled => break 'outer,
                Event::Close => {
                    let _ = with_cancel(&cancel, SinkExt::<OutFrame>::flush(&mut w)).await;
                    break 'outer;
                }
                Event::AddSub(s) => subs.push(s),
                Event::Write(frame, item) => {
                    match with_cancel(&cancel, w.feed(frame)).await.inspect(|_| {
                        if let Some(item) = &item {
                            item.counters.in_writer.fetch_sub(1, Ordering::Relaxed);
                        }
                    }) {
                        Some(Ok(())) => {
                            if let Some(item) = item {
                                item.counters
                                    .record_delivery(&item.queued.topic, item.queued.msg.received_at.elapsed());
                            }
                        }
                        Some(Err(BusError::FrameTooLarge { len, max })) => {
                            if let Some(item) = item {
                                item.counters.record_drop(&item.queued.topic);
                            }
                            warn!(len, max, "delivery would exceed the frame limit; dropped");
                        }
                        Some(Err(e)) => {
                            debug!(error = %e, "bus write failed; closing");
                            break 'outer;
                        }
                        None => break 'outer,
                    }
                }
            }
            match next_event(&mut ctl, &mut subs, &cancel).now_or_never() {
                Some(e) => event = e,
                None => break,
            }
        }
        match with_cancel(&cancel, SinkExt::<OutFrame>::flush(&mut w)).await {
            Some(Ok(())) => {}
            _ => break,
        }
    }
}

async fn with_cancel<F: Future>(cancel: &CancellationToken, f: F) -> Option<F::Output> {
    tokio::select! {
        () = cancel.cancelled() => None,
        r = f => Some(r),
    }
}
