//! DaemonEye's local event bus: an embedded pub/sub broker (hosted by the
//! agent) and its clients (procmond, collectors), over a Unix socket (a named
//! pipe on Windows).
//!
//! **In:** length-prefixed protobuf frames (`daemoneye.v1.BusMessage`, see
//! `proto/bus.proto`) from local processes, and in-process calls from the
//! agent. **Out:** deliveries to subscribers, each through its own bounded
//! queue with a backpressure policy, and statistics.
//!
//! Module map:
//! - [`topic`] — topic/pattern grammar (`events.process.lifecycle`, `+`, `#`) and matching.
//! - [`acl`] — access policy decided on the OS-reported peer identity (`SO_PEERCRED`), never on client claims.
//! - [`transport`] — [`transport::Listener`], [`transport::Stream`], [`transport::connect`]: Unix socket or named pipe, peer identity.
//! - [`frame`] — the frame codec and a frame reader with a stalled-frame deadline.
//! - [`broker`] — [`Broker::bind`], connections, routing, in-process [`LocalClient`].
//! - [`client`] — [`BusClient`] over the socket (callers reconnect with backoff).
//! - [`subscription`] — [`Subscription`] and [`Delivery`], shared by both client kinds.
//! - [`correlation`] — [`CorrelationMetadata`] (workflow tracing on every message).
//! - [`stats`] — per-topic and per-subscriber counters and latency.
//! - [`error`] — [`BusError`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), daemoneye_eventbus::BusError> {
//! use daemoneye_eventbus::{Broker, BrokerConfig, BusClient, CorrelationMetadata};
//! use daemoneye_lib::proto::BackpressurePolicy;
//! use tokio_util::sync::CancellationToken;
//!
//! let cancel = CancellationToken::new();
//! let path = std::path::Path::new("/run/daemoneye/bus.sock");
//! let broker = Broker::bind(path, BrokerConfig::default(), cancel.clone()).await?;
//! let agent = broker.local_client("agent");
//! let mut events = agent.subscribe("events.process.#", BackpressurePolicy::Block, 0).await?;
//!
//! let procmond = BusClient::connect(path, "procmond").await?;
//! let corr = CorrelationMetadata::generate();
//! procmond.publish("events.process.lifecycle", bytes::Bytes::from_static(b".."), "daemoneye.v1.ProcessEvent", corr).await?;
//! let delivery = events.recv().await;
//! cancel.cancel();
//! broker.join().await;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod acl;
pub mod broker;
pub mod client;
pub mod correlation;
pub mod error;
pub mod frame;
pub mod stats;
pub mod subscription;
pub mod topic;
pub mod transport;

pub use acl::{AccessLevel, AccessPolicy, AccessRule, PeerIdentity, Principal};
pub use broker::{Broker, BrokerConfig, BrokerHandle, LocalClient};
pub use client::{BusClient, ClientOptions};
pub use correlation::CorrelationMetadata;
pub use daemoneye_lib::proto::{BackpressurePolicy, BusErrorCode, Correlation};
pub use error::BusError;
pub use stats::{BrokerStats, ConnectionStats, LatencyStats, SubscriberStats, TopicStats};
pub use subscription::{Delivery, Subscription};
pub use topic::TopicError;
