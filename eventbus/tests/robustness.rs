//! Bad input over raw sockets: every bad frame gets an error frame and closes
//! that connection only; other clients keep working.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use daemoneye_eventbus::frame::{encode_to_bytes, message};
use daemoneye_eventbus::transport;
use daemoneye_eventbus::{BackpressurePolicy, BrokerConfig, BusClient, BusErrorCode, CorrelationMetadata};
use daemoneye_lib::proto::bus_message::Kind;
use daemoneye_lib::proto::{Ping, Publish};
use tokio::io::AsyncWriteExt;

fn small_config() -> BrokerConfig {
    BrokerConfig {
        max_frame_size: 1024,
        frame_timeout: Duration::from_millis(300),
        handshake_timeout: Duration::from_millis(300),
        ..BrokerConfig::default()
    }
}

/// A healthy client that must keep working while another misbehaves.
async fn assert_still_serving(b: &TestBroker) {
    let client = BusClient::connect(&b.path, "healthy").await.unwrap();
    let mut sub = client.subscribe("events.process.#", BackpressurePolicy::Block, 0).await.unwrap();
    let n = client
        .publish_acked("events.process.lifecycle", payload("ok"), "t", CorrelationMetadata::new("c"))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(recv(&mut sub).await.payload, payload("ok"));
}

#[tokio::test]
async fn oversized_frame_is_refused_before_its_body() {
    let b = TestBroker::start(small_config()).await;
    let mut raw = raw_connect(&b.path).await;
    // Announce 1 MiB; send no body at all.
    raw.write_all(&(1024u32 * 1024).to_be_bytes()).await.unwrap();
    let e = read_error(&mut raw).await;
    assert_eq!(e.code, BusErrorCode::FrameTooLarge as i32);
    assert!(e.message.contains("1048576"), "{}", e.message);
    assert_closed(&mut raw).await;
    assert_still_serving(&b).await;
    assert_eq!(b.handle.stats().frames_rejected, 1);
    b.stop().await;
}

#[tokio::test]
async fn malformed_frame_closes_only_that_connection() {
    let b = TestBroker::start(small_config()).await;
    let mut raw = raw_connect(&b.path).await;
    raw.write_all(&[0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
    let e = read_error(&mut raw).await;
    assert_eq!(e.code, BusErrorCode::MalformedFrame as i32);
    assert_closed(&mut raw).await;
    assert_still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn unknown_message_kind_is_a_protocol_error() {
    let b = TestBroker::start(small_config()).await;
    let mut raw = raw_connect(&b.path).await;
    // Field 15 (not in the oneof), varint 1: decodes to a BusMessage without a kind.
    raw.write_all(&[0, 0, 0, 2, 15 << 3, 1]).await.unwrap();
    let e = read_error(&mut raw).await;
    assert_eq!(e.code, BusErrorCode::Protocol as i32);
    assert!(e.message.contains("unknown"), "{}", e.message);
    assert_closed(&mut raw).await;
    assert_still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn stalled_half_frame_times_out() {
    let b = TestBroker::start(small_config()).await;
    let mut raw = raw_connect(&b.path).await;
    raw.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap();
    // The healthy client works while the half frame is pending.
    assert_still_serving(&b).await;
    let e = read_error(&mut raw).await;
    assert_eq!(e.code, BusErrorCode::Protocol as i32);
    assert!(e.message.contains("incomplete frame"), "{}", e.message);
    assert_closed(&mut raw).await;
    b.stop().await;
}

#[tokio::test]
async fn first_frame_must_be_hello() {
    let b = TestBroker::start(small_config()).await;
    let mut raw = transport::connect(&b.path).await.unwrap();
    raw.write_all(&encode_to_bytes(&message(Kind::Ping(Ping { nonce: 1 })))).await.unwrap();
    let e = read_error(&mut raw).await;
    assert!(e.message.contains("Hello"), "{}", e.message);
    assert_closed(&mut raw).await;

    // Silence during the handshake times out as well.
    let mut silent = transport::connect(&b.path).await.unwrap();
    let e = read_error(&mut silent).await;
    assert!(e.message.contains("no Hello"), "{}", e.message);
    assert_closed(&mut silent).await;
    assert_still_serving(&b).await;
    b.stop().await;
}

#[tokio::test]
async fn invalid_topic_is_refused_but_the_connection_stays() {
    let b = TestBroker::start(small_config()).await;
    let mut raw = raw_connect(&b.path).await;
    let publish = |topic: &str, id| {
        encode_to_bytes(&message(Kind::Publish(Publish {
            topic: topic.into(),
            message_id: id,
            ack_requested: true,
            ..Default::default()
        })))
    };
    raw.write_all(&publish("Events..X", 7)).await.unwrap();
    let e = read_error(&mut raw).await;
    assert_eq!(e.code, BusErrorCode::InvalidTopic as i32);
    assert_eq!(e.ref_id, 7);
    assert!(e.message.contains("Events..X"), "{}", e.message);
    // Still open: a valid publish is acknowledged, a ping answered.
    raw.write_all(&publish("events.x", 8)).await.unwrap();
    match read_msg(&mut raw).await.and_then(|m| m.kind) {
        Some(Kind::Ack(a)) => assert_eq!((a.message_id, a.delivered_to), (8, 0)),
        other => panic!("expected Ack, got {other:?}"),
    }
    raw.write_all(&encode_to_bytes(&message(Kind::Ping(Ping { nonce: 5 })))).await.unwrap();
    match read_msg(&mut raw).await.and_then(|m| m.kind) {
        Some(Kind::Pong(p)) => assert_eq!(p.nonce, 5),
        other => panic!("expected Pong, got {other:?}"),
    }
    b.stop().await;
}

#[tokio::test]
async fn client_refuses_oversized_publishes_locally() {
    let b = TestBroker::start(small_config()).await;
    let opts = daemoneye_eventbus::ClientOptions { max_frame_size: 1024, ..Default::default() };
    let client = BusClient::connect_with(&b.path, "c", opts).await.unwrap();
    let big = bytes::Bytes::from(vec![0u8; 4096]);
    let err = client.publish("events.x", big, "t", CorrelationMetadata::new("c")).await.unwrap_err();
    assert!(matches!(err, daemoneye_eventbus::BusError::FrameTooLarge { .. }), "{err}");
    assert!(client.ping().await.is_ok());
    b.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_does_not_stall_the_broker() {
    let b = TestBroker::start_default().await;
    // Subscribes with Drop and never reads its socket.
    let mut lazy = raw_connect(&b.path).await;
    let sub = encode_to_bytes(&message(Kind::Subscribe(daemoneye_lib::proto::Subscribe {
        subscription_id: 1,
        pattern: "events.#".into(),
        policy: BackpressurePolicy::Drop as i32,
        queue_capacity: 8,
    })));
    lazy.write_all(&sub).await.unwrap();
    let reader = BusClient::connect(&b.path, "reader").await.unwrap();
    let mut normal = reader.subscribe("events.#", BackpressurePolicy::Block, 4096).await.unwrap();
    let publisher = BusClient::connect(&b.path, "procmond").await.unwrap();
    let body = bytes::Bytes::from(vec![7u8; 16 * 1024]);
    let total = 2000u64;
    for i in 0..total {
        publisher.publish("events.bulk", body.clone(), "t", CorrelationMetadata::new(i.to_string())).await.unwrap();
        if i % 64 == 0 {
            // Keep the normal reader's client-side queue drained.
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(1), normal.recv()).await {}
        }
    }
    publisher.ping().await.unwrap();
    let stats = b.handle.stats();
    let lazy_stats = stats.subscriptions_of("raw").next().unwrap();
    // Every message is accounted for: delivered to the socket, dropped, or queued.
    assert_eq!(lazy_stats.delivered + lazy_stats.dropped + lazy_stats.queue_depth as u64, total);
    assert!(lazy_stats.dropped > 0, "{lazy_stats:?}");
    let normal_stats = stats.subscriptions_of("reader").next().unwrap();
    assert_eq!(normal_stats.dropped, 0);
    drop(lazy);
    b.stop().await;
}

#[tokio::test]
async fn connection_limit_is_enforced_with_a_clear_error() {
    let b = TestBroker::start(BrokerConfig { max_connections: 1, ..BrokerConfig::default() }).await;
    let first = BusClient::connect(&b.path, "first").await.unwrap();
    let err = BusClient::connect(&b.path, "second").await.unwrap_err();
    assert!(err.to_string().contains("connection limit"), "{err}");
    drop(first);
    // The slot frees up once the first connection is gone.
    tokio::time::timeout(WAIT, async {
        loop {
            if BusClient::connect(&b.path, "third").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(b.handle.stats().connections_rejected >= 1);
    b.stop().await;
}
