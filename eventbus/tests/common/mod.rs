//! Shared helpers of the event bus integration tests: a broker in a tempdir
//! (its endpoint from the same function the agent uses: a socket on Unix, a
//! pipe on Windows) and raw-connection frame helpers over the transport.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_eventbus::frame::{encode_to_bytes, message};
use daemoneye_eventbus::transport::{self, Stream};
use daemoneye_eventbus::{AccessPolicy, Broker, BrokerConfig, BrokerHandle, Delivery, Subscription};
use daemoneye_lib::proto::bus_message::Kind;
use daemoneye_lib::proto::{BusMessage, Hello};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Generous bound for "this should happen"; never a performance assertion.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

pub(crate) struct TestBroker {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) path: PathBuf,
    pub(crate) handle: BrokerHandle,
    pub(crate) cancel: CancellationToken,
}

impl TestBroker {
    pub(crate) async fn start(config: BrokerConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = daemoneye_lib::config::local_endpoint(&dir.path().join("run"), "bus", cfg!(windows));
        let cancel = CancellationToken::new();
        let handle = Broker::bind(&path, config, cancel.clone()).await.unwrap();
        Self { dir, path, handle, cancel }
    }

    pub(crate) async fn start_default() -> Self {
        Self::start(BrokerConfig { acl: AccessPolicy::default(), ..BrokerConfig::default() }).await
    }

    pub(crate) async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(WAIT, self.handle.join()).await.expect("broker tasks did not end");
    }
}

pub(crate) async fn recv(sub: &mut Subscription) -> Delivery {
    tokio::time::timeout(WAIT, sub.recv()).await.expect("no delivery in time").expect("subscription ended")
}

/// Asserts that nothing arrives for a short while.
pub(crate) async fn assert_quiet(sub: &mut Subscription) {
    if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
        panic!("unexpected delivery on {}: {:?}", sub.pattern(), d.topic);
    }
}

pub(crate) fn payload(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A raw connection that completed the handshake.
pub(crate) async fn raw_connect(path: &std::path::Path) -> Stream {
    let mut s = transport::connect(path).await.unwrap();
    let hello = message(Kind::Hello(Hello { client_name: "raw".into(), protocol_version: 1 }));
    s.write_all(&encode_to_bytes(&hello)).await.unwrap();
    match read_msg(&mut s).await.and_then(|m| m.kind) {
        Some(Kind::Welcome(_)) => s,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Reads one frame; `None` at end of stream.
pub(crate) async fn read_msg(s: &mut Stream) -> Option<BusMessage> {
    tokio::time::timeout(WAIT, async {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            return None;
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).await.ok()?;
        Some(BusMessage::decode(&body[..]).unwrap())
    })
    .await
    .expect("no frame in time")
}

/// Reads frames until an error frame; returns its code.
pub(crate) async fn read_error(s: &mut Stream) -> daemoneye_lib::proto::BusError {
    loop {
        match read_msg(s).await.and_then(|m| m.kind) {
            Some(Kind::Error(e)) => return e,
            Some(_) => continue,
            None => panic!("connection closed without an error frame"),
        }
    }
}

/// Asserts the broker closed the connection.
pub(crate) async fn assert_closed(s: &mut Stream) {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await.expect("connection not closed in time") {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}
