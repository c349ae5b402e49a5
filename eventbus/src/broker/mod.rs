//! The embedded broker: binds its endpoint (a Unix socket, a named pipe on
//! Windows: see [`crate::transport`]), accepts connections, routes messages
//! and reports statistics.
//!
//! - `mod.rs` (this file): configuration, [`Broker::bind`], the accept loop
//!   and [`BrokerHandle`].
//! - `router`: the subscription registry and message routing with
//!   per-subscription bounded queues and backpressure policies.
//! - `conn`: one connection: handshake, a reader loop that applies
//!   requests, and a writer task that owns the connection's write half.
//! - `local`: in-process clients for the agent itself (no socket hop).
//!
//! *Architecture invariant:* the broker never trusts what a client says
//! about itself; access decisions use the identity the OS reports for the
//! connection (`SO_PEERCRED` and `/proc/<pid>/exe`; on Windows the pipe
//! client's process and token).
//! *Architecture invariant:* nothing a peer sends can stall another peer:
//! each connection has its own reader and writer task, each subscription its
//! own bounded queue, and a `Block` subscriber holds a publisher for at most
//! `block_timeout`.

mod conn;
mod local;
mod router;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::acl::{AccessPolicy, PeerIdentity};
use crate::error::BusError;
use crate::frame::DEFAULT_MAX_FRAME_SIZE;
use crate::stats::{BrokerStats, ConnectionStats, TopicTable};
use crate::transport::{BindOptions, Listener};

pub use local::LocalClient;
pub(crate) use local::LocalConnGuard;
pub(crate) use router::Queued;

/// Broker settings. Build with `BrokerConfig { field: .., ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Largest frame accepted or sent (length prefix excluded). Default 4 MiB.
    pub max_frame_size: usize,
    /// Queue capacity of a subscription that asks for 0. Default 8192.
    pub default_queue_capacity: usize,
    /// Upper bound on any subscription's queue capacity. Default 65536.
    pub max_queue_capacity: usize,
    /// Time a new connection has to send `Hello`. Default 5 s.
    pub handshake_timeout: Duration,
    /// Time a started frame has to arrive completely. Default 10 s.
    pub frame_timeout: Duration,
    /// How long a publish waits for a full `Block` subscription before the
    /// message is dropped (and counted) for that subscriber. Default 5 s.
    pub block_timeout: Duration,
    /// Mode of the socket file. Default `0o660`. (Windows: unused, the
    /// pipe's descriptor is [`crate::transport::PIPE_SDDL`].)
    pub socket_mode: u32,
    /// Group of the socket file (e.g. the `daemoneye` group), if set.
    /// (Windows: unused.)
    pub socket_gid: Option<u32>,
    /// Most simultaneous socket connections. Default 256.
    pub max_connections: usize,
    /// Most subscriptions per connection. Default 64.
    pub max_subscriptions_per_connection: usize,
    /// Name sent in `Welcome`. Default `daemoneye-agent`.
    pub broker_name: String,
    /// Access control policy. Default [`AccessPolicy::default`].
    pub acl: AccessPolicy,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            default_queue_capacity: 8192,
            max_queue_capacity: 65536,
            handshake_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(10),
            block_timeout: Duration::from_secs(5),
            socket_mode: 0o660,
            socket_gid: None,
            max_connections: 256,
            max_subscriptions_per_connection: 64,
            broker_name: "daemoneye-agent".to_owned(),
            acl: AccessPolicy::default(),
        }
    }
}

/// The broker. See [`Broker::bind`].
#[derive(Debug)]
pub struct Broker {
    _private: (),
}

impl Broker {
    /// Binds `path` (a socket path; a pipe name on Windows) and serves until
    /// `cancel` fires.
    ///
    /// On Unix: creates the parent directory, removes a stale socket file
    /// (but refuses to replace a live broker's socket or a non-socket file),
    /// binds under a temporary name, sets `socket_mode` (and `socket_gid`),
    /// then renames the socket into place so it is never reachable with the
    /// wrong mode. On Windows: creates the pipe's first instance, refusing a
    /// name someone else holds. See [`crate::transport`].
    pub async fn bind(path: &Path, config: BrokerConfig, cancel: CancellationToken) -> Result<BrokerHandle, BusError> {
        let options = BindOptions { mode: config.socket_mode, gid: config.socket_gid };
        let listener = Listener::bind(path, &options).await?;
        let identity = listener.owner().clone();
        let shared = Arc::new(BrokerShared {
            broker_uid: identity.uid,
            identity,
            socket_path: path.to_owned(),
            config,
            router: router::Router::default(),
            topics: TopicTable::default(),
            counters: Counters::default(),
            connections: Mutex::new(HashMap::new()),
            cancel,
            tracker: TaskTracker::new(),
        });
        info!(socket = %path.display(), uid = shared.broker_uid, "event bus broker listening");
        let accept = Arc::clone(&shared);
        shared.tracker.spawn(accept_loop(accept, listener));
        Ok(BrokerHandle { shared })
    }
}

/// Handle to a running broker. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct BrokerHandle {
    shared: Arc<BrokerShared>,
}

impl BrokerHandle {
    /// A snapshot of the statistics.
    pub fn stats(&self) -> BrokerStats {
        let s = &self.shared;
        let connections: Vec<ConnectionStats> = {
            let map = s.connections.lock().unwrap_or_else(PoisonError::into_inner);
            let mut v: Vec<ConnectionStats> = map.values().map(|c| c.snapshot()).collect();
            v.sort_by_key(|c| c.id);
            v
        };
        BrokerStats {
            connections_current: connections.len() as u64,
            connections_total: s.counters.connections_total.load(Ordering::Relaxed),
            connections_rejected: s.counters.connections_rejected.load(Ordering::Relaxed),
            frames_rejected: s.counters.frames_rejected.load(Ordering::Relaxed),
            access_denied: s.counters.access_denied.load(Ordering::Relaxed),
            topics: s.topics.snapshot(),
            subscribers: s.router.snapshot(),
            connections,
        }
    }

    /// An in-process client with the broker's own identity (uid, gid, pid,
    /// executable), subject to the same topic rules, access control and
    /// backpressure as a socket client, without the socket hop.
    pub fn local_client(&self, name: &str) -> LocalClient {
        LocalClient::new(Arc::clone(&self.shared), name)
    }

    /// The socket path (the pipe name on Windows).
    pub fn socket_path(&self) -> &Path {
        &self.shared.socket_path
    }

    /// The broker's effective uid (as the access policy's `BrokerUser`).
    pub fn broker_uid(&self) -> u32 {
        self.shared.broker_uid
    }

    /// Fires the cancellation token the broker was bound with.
    pub fn shutdown(&self) {
        self.shared.cancel.cancel();
    }

    /// Waits until the accept loop and every connection task have ended.
    /// Returns only after the cancellation token fired.
    pub async fn join(self) {
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}

/// State shared by the accept loop, connections and local clients.
#[derive(Debug)]
pub(crate) struct BrokerShared {
    pub(crate) config: BrokerConfig,
    pub(crate) broker_uid: u32,
    pub(crate) identity: PeerIdentity,
    pub(crate) socket_path: PathBuf,
    pub(crate) router: router::Router,
    pub(crate) topics: TopicTable,
    pub(crate) counters: Counters,
    connections: Mutex<HashMap<u64, Arc<ConnInfo>>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

/// Broker-wide counters.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) next_conn_id: AtomicU64,
    pub(crate) active_sockets: AtomicU64,
    pub(crate) connections_total: AtomicU64,
    pub(crate) connections_rejected: AtomicU64,
    pub(crate) frames_rejected: AtomicU64,
    pub(crate) access_denied: AtomicU64,
}

/// One connection (socket or local) as the broker knows it.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    pub(crate) id: u64,
    pub(crate) client_name: String,
    pub(crate) peer: PeerIdentity,
    pub(crate) local: bool,
    pub(crate) published: AtomicU64,
}

impl ConnInfo {
    fn snapshot(&self) -> ConnectionStats {
        ConnectionStats {
            id: self.id,
            client_name: self.client_name.clone(),
            peer: self.peer.clone(),
            local: self.local,
            published: self.published.load(Ordering::Relaxed),
        }
    }
}

impl BrokerShared {
    pub(crate) fn register_conn(&self, client_name: &str, peer: PeerIdentity, local: bool) -> Arc<ConnInfo> {
        let id = self.counters.next_conn_id.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ConnInfo {
            id,
            client_name: client_name.chars().take(128).collect(),
            peer,
            local,
            published: AtomicU64::new(0),
        });
        self.counters.connections_total.fetch_add(1, Ordering::Relaxed);
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).insert(id, Arc::clone(&info));
        info
    }

    pub(crate) fn unregister_conn(&self, id: u64) {
        self.router.remove_connection(id);
        self.connections.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }
}

async fn accept_loop(shared: Arc<BrokerShared>, mut listener: Listener) {
    loop {
        let accepted = tokio::select! {
            () = shared.cancel.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok(stream) => {
                let active = shared.counters.active_sockets.load(Ordering::Relaxed);
                if active >= shared.config.max_connections as u64 {
                    shared.counters.connections_rejected.fetch_add(1, Ordering::Relaxed);
                    warn!(limit = shared.config.max_connections, "event bus connection limit reached; refusing");
                    shared.tracker.spawn(conn::refuse(stream, shared.config.max_frame_size));
                    continue;
                }
                shared.counters.active_sockets.fetch_add(1, Ordering::Relaxed);
                shared.tracker.spawn(conn::serve(Arc::clone(&shared), stream));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "event bus accept failed");
                tokio::select! {
                    () = shared.cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
    // Removes the socket if it is still ours (not replaced by a new broker).
    drop(listener);
    info!(socket = %shared.socket_path.display(), "event bus broker stopped accepting");
}
