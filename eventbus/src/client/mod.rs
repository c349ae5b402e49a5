//! [`BusClient`]: a connection to the broker over its Unix socket (named pipe
//! on Windows; see [`crate::transport`]).
//!
//! A client owns two tasks: a writer that drains a bounded outgoing queue
//! into the socket, and a reader that routes `Deliver` frames to the
//! subscriptions' bounded queues and answers pending requests (`Ack`,
//! `Pong`, errors). Both end when the last handle (client clone or
//! subscription) is dropped, on [`BusClient::close`], or when the broker
//! goes away.
//!
//! **Reconnecting is the caller's job.** When the broker is not running,
//! [`BusClient::connect`] fails with [`BusError::BrokerUnavailable`]; when it
//! goes away later, requests fail with [`BusError::ConnectionClosed`] and
//! subscriptions end. In both cases [`BusError::is_disconnected`] is true:
//! connect again with backoff and resubscribe:
//!
//! ```no_run
//! # async fn run(path: &std::path::Path) {
//! use daemoneye_eventbus::BusClient;
//! let mut backoff = std::time::Duration::from_millis(100);
//! loop {
//!     match BusClient::connect(path, "procmond").await {
//!         Ok(client) => {
//!             backoff = std::time::Duration::from_millis(100);
//!             // ... publish until an error with `is_disconnected()` ...
//!         }
//!         Err(e) if e.is_disconnected() => tracing::info!(error = %e, "bus not up yet"),
//!         Err(e) => tracing::warn!(error = %e, "bus connect failed"),
//!     }
//!     tokio::time::sleep(backoff).await;
//!     backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
//! }
//! # }
//! ```
//!
//! Subscribing is confirmed without a dedicated protocol message: the client
//! sends `Subscribe` then `Ping`; the broker handles frames in order, so a
//! `Pong` with no error for the subscription id means it was accepted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use daemoneye_lib::proto::bus_message::Kind;
use daemoneye_lib::proto::{
    BackpressurePolicy, BusMessage, Correlation, Hello, Ping, Publish, Subscribe, Unsubscribe, Welcome,
};
use futures::SinkExt;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::error::BusError;
use crate::frame::{BusCodec, DEFAULT_MAX_FRAME_SIZE, FrameReader, PROTOCOL_VERSION, message};
use crate::subscription::{Delivery, Subscription};
use crate::topic;

mod io;

use io::{read_loop, write_loop};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Largest frame sent or accepted; match the broker's. Default 4 MiB.
    pub max_frame_size: usize,
    /// Time allowed for the Hello/Welcome exchange. Default 5 s.
    pub handshake_timeout: Duration,
    /// Time allowed for an `Ack`, a subscribe confirmation or a `Pong`. Default 10 s.
    pub request_timeout: Duration,
    /// Capacity of the outgoing frame queue (publishers wait when it is full). Default 1024.
    pub outgoing_queue: usize,
    /// Queue capacity of a subscription that asks for 0. Default 8192.
    pub default_queue_capacity: u32,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            outgoing_queue: 1024,
            default_queue_capacity: 8192,
        }
    }
}

/// A connection to the broker. Cloning shares the connection.
#[derive(Debug, Clone)]
pub struct BusClient {
    conn: Arc<ClientConn>,
    welcome: Arc<Welcome>,
}

/// Shared connection state; dropping the last reference stops the tasks.
#[derive(Debug)]
pub(crate) struct ClientConn {
    path: PathBuf,
    out: mpsc::Sender<BusMessage>,
    state: Arc<Mutex<State>>,
    next_id: AtomicU64,
    options: ClientOptions,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

#[derive(Debug, Default)]
struct State {
    acks: HashMap<u64, (String, oneshot::Sender<Result<u32, BusError>>)>,
    sub_requests: HashMap<u64, (String, oneshot::Sender<BusError>)>,
    pings: HashMap<u64, oneshot::Sender<()>>,
    subs: HashMap<u64, SubSlot>,
    closed: Option<String>,
}

#[derive(Debug)]
struct SubSlot {
    tx: mpsc::Sender<Delivery>,
    policy: BackpressurePolicy,
    end: Arc<Mutex<Option<String>>>,
}

impl BusClient {
    /// Connects to the broker at `path` and performs the Hello/Welcome
    /// handshake. `client_name` is informational (logs, statistics); the
    /// broker identifies the client by its socket credentials.
    pub async fn connect(path: &Path, client_name: &str) -> Result<Self, BusError> {
        Self::connect_with(path, client_name, ClientOptions::default()).await
    }

    /// [`Self::connect`] with explicit options.
    pub async fn connect_with(path: &Path, client_name: &str, options: ClientOptions) -> Result<Self, BusError> {
        let stream = crate::transport::connect(path).await.map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                BusError::BrokerUnavailable { path: path.to_owned(), source }
            }
            _ => BusError::Connect { path: path.to_owned(), source },
        })?;
        let (rd, wr) = stream.into_split();
        let codec = BusCodec::new(options.max_frame_size);
        let mut reader = FrameReader::new(rd, codec, Some(options.request_timeout));
        let mut writer = FramedWrite::new(wr, codec);
        let handshake_err = |reason: String| BusError::Handshake { path: path.to_owned(), reason };
        let hello =
            message(Kind::Hello(Hello { client_name: client_name.to_owned(), protocol_version: PROTOCOL_VERSION }));
        let exchange = async {
            writer.send(hello).await?;
            reader.next().await
        };
        let first = tokio::time::timeout(options.handshake_timeout, exchange)
            .await
            .map_err(|_| handshake_err(format!("no Welcome within {:?}", options.handshake_timeout)))?
            .map_err(|e| handshake_err(e.to_string()))?;
        let welcome = match first.and_then(|m| m.kind) {
            Some(Kind::Welcome(w)) => w,
            Some(Kind::Error(e)) => {
                return Err(handshake_err(format!("the broker refused: {}", e.message)));
            }
            Some(_) => {
                return Err(handshake_err("the broker did not answer with Welcome".to_owned()));
            }
            None => return Err(handshake_err("the broker closed the connection".to_owned())),
        };
        let (out, out_rx) = mpsc::channel(options.outgoing_queue.max(1));
        let state = Arc::new(Mutex::new(State::default()));
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(write_loop(writer, out_rx, cancel.clone()));
        tracker.spawn(read_loop(reader, Arc::clone(&state), out.clone(), cancel.clone()));
        tracker.close();
        let conn =
            ClientConn { path: path.to_owned(), out, state, next_id: AtomicU64::new(0), options, cancel, tracker };
        Ok(Self { conn: Arc::new(conn), welcome: Arc::new(welcome) })
    }

    /// Publishes without waiting for the broker. Refusals (access denied)
    /// arrive asynchronously and are only logged; use
    /// [`Self::publish_acked`] to learn about them.
    pub async fn publish(
        &self,
        topic_name: &str,
        payload: Bytes,
        content_type: &str,
        correlation: impl Into<Correlation>,
    ) -> Result<(), BusError> {
        let (_, msg) = self.conn.publish_frame(topic_name, payload, content_type, correlation.into(), false)?;
        self.conn.send(msg).await
    }

    /// Publishes and waits for the broker's `Ack`; returns the number of
    /// subscriptions that accepted the message.
    pub async fn publish_acked(
        &self,
        topic_name: &str,
        payload: Bytes,
        content_type: &str,
        correlation: impl Into<Correlation>,
    ) -> Result<u32, BusError> {
        let conn = &self.conn;
        let (id, msg) = conn.publish_frame(topic_name, payload, content_type, correlation.into(), true)?;
        let (tx, rx) = oneshot::channel();
        conn.with_state(|s| s.acks.insert(id, (topic_name.to_owned(), tx)))?;
        let what = || format!("publish_acked to {topic_name}");
        let answer = conn.request(msg, rx, what).await;
        conn.with_state(|s| s.acks.remove(&id)).ok();
        answer?
    }

    /// Subscribes to `pattern`. `capacity` bounds both the broker-side and
    /// the client-side queue (0: defaults); `policy` applies to both.
    ///
    /// Several subscriptions share the connection: a `Block` subscription
    /// that is not read slows every subscription of this client, so give
    /// slow consumers their own connection.
    pub async fn subscribe(
        &self,
        pattern: &str,
        policy: BackpressurePolicy,
        capacity: u32,
    ) -> Result<Subscription, BusError> {
        topic::validate_pattern(pattern)
            .map_err(|source| BusError::InvalidTopic { topic: pattern.to_owned(), source })?;
        let conn = &self.conn;
        let id = conn.next_id();
        let nonce = conn.next_id();
        let cap = if capacity == 0 { conn.options.default_queue_capacity } else { capacity };
        let (dtx, drx) = mpsc::channel(cap.clamp(1, 1 << 20) as usize);
        let end = Arc::new(Mutex::new(None));
        let (etx, erx) = oneshot::channel();
        let (ptx, prx) = oneshot::channel();
        conn.with_state(|s| {
            s.subs.insert(id, SubSlot { tx: dtx, policy, end: Arc::clone(&end) });
            s.sub_requests.insert(id, (pattern.to_owned(), etx));
            s.pings.insert(nonce, ptx);
        })?;
        let subscribe = message(Kind::Subscribe(Subscribe {
            subscription_id: id,
            pattern: pattern.to_owned(),
            policy: policy as i32,
            queue_capacity: capacity,
        }));
        let sent = match conn.send(subscribe).await {
            Ok(()) => conn.send(message(Kind::Ping(Ping { nonce }))).await,
            Err(e) => Err(e),
        };
        let outcome = match sent {
            Err(e) => Err(e),
            Ok(()) => {
                let wait = async {
                    tokio::select! {
                        biased;
                        e = erx => Err(e.ok()),
                        p = prx => p.map_err(|_| None),
                    }
                };
                match tokio::time::timeout(conn.options.request_timeout, wait).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(Some(e))) => Err(e),
                    Ok(Err(None)) => Err(conn.closed_error()),
                    Err(_) => Err(BusError::Timeout {
                        what: format!("subscribe to {pattern}"),
                        after: conn.options.request_timeout,
                    }),
                }
            }
        };
        let _ = conn.with_state(|s| {
            s.sub_requests.remove(&id);
            s.pings.remove(&nonce);
            if outcome.is_err() {
                s.subs.remove(&id);
            }
        });
        outcome?;
        Ok(Subscription::remote(id, pattern.to_owned(), policy, end, drx, Arc::clone(conn)))
    }

    /// Round trip to the broker.
    pub async fn ping(&self) -> Result<Duration, BusError> {
        let conn = &self.conn;
        let nonce = conn.next_id();
        let (tx, rx) = oneshot::channel();
        conn.with_state(|s| s.pings.insert(nonce, tx))?;
        let start = Instant::now();
        let answer = conn.request(message(Kind::Ping(Ping { nonce })), rx, || "ping".to_owned()).await;
        conn.with_state(|s| s.pings.remove(&nonce)).ok();
        answer.map(|()| start.elapsed())
    }

    /// What the broker observed about this connection (uid, gid, pid).
    pub fn peer_identity(&self) -> &Welcome {
        &self.welcome
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.conn.path
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.conn.cancel.is_cancelled()
    }

    /// Closes the connection (for every clone and subscription) and waits
    /// for the client's tasks to end.
    pub async fn close(self) {
        self.conn.cancel.cancel();
        self.conn.tracker.wait().await;
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl ClientConn {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, BusError> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(reason) = &s.closed {
            return Err(BusError::ConnectionClosed { path: self.path.clone(), reason: reason.clone() });
        }
        Ok(f(&mut s))
    }

    fn closed_error(&self) -> BusError {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let reason = s.closed.clone().unwrap_or_else(|| "the connection ended".to_owned());
        BusError::ConnectionClosed { path: self.path.clone(), reason }
    }

    async fn send(&self, msg: BusMessage) -> Result<(), BusError> {
        if self.out.send(msg).await.is_err() {
            return Err(self.closed_error());
        }
        Ok(())
    }

    async fn request<T>(
        &self,
        msg: BusMessage,
        rx: oneshot::Receiver<T>,
        what: impl FnOnce() -> String,
    ) -> Result<T, BusError> {
        self.send(msg).await?;
        match tokio::time::timeout(self.options.request_timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => Err(BusError::Timeout { what: what(), after: self.options.request_timeout }),
        }
    }

    fn publish_frame(
        &self,
        topic_name: &str,
        payload: Bytes,
        content_type: &str,
        correlation: Correlation,
        ack_requested: bool,
    ) -> Result<(u64, BusMessage), BusError> {
        topic::validate_topic(topic_name)
            .map_err(|source| BusError::InvalidTopic { topic: topic_name.to_owned(), source })?;
        let id = self.next_id();
        let msg = message(Kind::Publish(Publish {
            topic: topic_name.to_owned(),
            payload: Vec::from(payload),
            correlation: Some(correlation),
            message_id: id,
            ack_requested,
            content_type: content_type.to_owned(),
        }));
        // Deliver frames carry ~40 bytes more than the Publish; keep room.
        let len = msg.encoded_len() + 64;
        if len > self.options.max_frame_size {
            return Err(BusError::FrameTooLarge { len, max: self.options.max_frame_size });
        }
        Ok((id, msg))
    }

    /// Forgets a subscription and tells the broker (best effort: if the
    /// outgoing queue is full the broker drops it when the connection ends).
    pub(crate) fn unsubscribe(&self, id: u64) {
        let removed = self.state.lock().unwrap_or_else(PoisonError::into_inner).subs.remove(&id);
        if removed.is_some() {
            let msg = message(Kind::Unsubscribe(Unsubscribe { subscription_id: id }));
            if self.out.try_send(msg).is_err() {
                debug!(sub_id = id, "could not queue Unsubscribe");
            }
        }
    }
}
