//! Publish/subscribe behaviour over real Unix sockets (through the transport
//! layer; the same tests address a named pipe on Windows): wildcards, local
//! clients, backpressure policies, access control, statistics, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use daemoneye_eventbus::{
    AccessLevel, AccessPolicy, AccessRule, BackpressurePolicy, BrokerConfig, BusClient, BusError, CorrelationMetadata,
    Principal,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_subscriptions_across_two_clients() {
    let b = TestBroker::start_default().await;
    let a = BusClient::connect(&b.path, "client-a").await.unwrap();
    let c = BusClient::connect(&b.path, "client-b").await.unwrap();
    let mut sa = a.subscribe("events.+.lifecycle", BackpressurePolicy::Block, 16).await.unwrap();
    let mut sb = c.subscribe("events.process.#", BackpressurePolicy::Drop, 16).await.unwrap();
    let publisher = BusClient::connect(&b.path, "procmond").await.unwrap();

    let corr = CorrelationMetadata::new("wf-1").with_stage("collect").with_tag("k", "v");
    let n = publisher
        .publish_acked("events.process.lifecycle", payload("exec"), "daemoneye.v1.ProcessEvent", corr.clone())
        .await
        .unwrap();
    assert_eq!(n, 2);
    let n = publisher.publish_acked("events.process.metadata", payload("meta"), "t", corr.child("c2")).await.unwrap();
    assert_eq!(n, 1);
    let n = publisher.publish_acked("control.health.status", payload("ok"), "t", corr.clone()).await.unwrap();
    assert_eq!(n, 0);
    // Fire-and-forget publish arrives too.
    publisher.publish("events.network.lifecycle", payload("net"), "t", corr.clone()).await.unwrap();

    let d = recv(&mut sa).await;
    assert_eq!(d.topic, "events.process.lifecycle");
    assert_eq!(&d.payload[..], b"exec");
    assert_eq!(d.content_type, "daemoneye.v1.ProcessEvent");
    assert_eq!(d.correlation, corr);
    assert_eq!(d.delivery_seq, 1);
    assert!(d.published_at_ns > 0);
    let d = recv(&mut sa).await;
    assert_eq!(d.topic, "events.network.lifecycle");
    assert_eq!(d.delivery_seq, 2);
    assert_quiet(&mut sa).await;

    let d1 = recv(&mut sb).await;
    let d2 = recv(&mut sb).await;
    assert_eq!((d1.topic.as_str(), d1.delivery_seq), ("events.process.lifecycle", 1));
    assert_eq!((d2.topic.as_str(), d2.delivery_seq), ("events.process.metadata", 2));
    assert_eq!(d2.correlation.parent_id.as_deref(), Some("wf-1"));
    assert_eq!(d2.correlation.stage.as_deref(), Some("collect"));
    assert_quiet(&mut sb).await;

    // Unsubscribing (drop) stops deliveries.
    drop(sa);
    let pong = a.ping().await.unwrap();
    assert!(pong < common::WAIT);
    let n = publisher.publish_acked("events.process.lifecycle", payload("x"), "t", corr).await.unwrap();
    assert_eq!(n, 1);
    b.stop().await;
}

#[tokio::test]
async fn local_client_talks_to_socket_clients() {
    let b = TestBroker::start_default().await;
    let agent = b.handle.local_client("agent");
    assert_eq!(agent.peer_identity().peer_pid, std::process::id());
    let mut lifecycle = agent.subscribe("events.process.lifecycle", BackpressurePolicy::Block, 0).await.unwrap();
    let procmond = BusClient::connect(&b.path, "procmond").await.unwrap();
    assert_eq!(procmond.peer_identity().peer_pid, std::process::id());
    let mut tasks = procmond.subscribe("control.collector.task", BackpressurePolicy::Block, 0).await.unwrap();

    procmond.publish("events.process.lifecycle", payload("e1"), "t", CorrelationMetadata::new("c")).await.unwrap();
    let d = recv(&mut lifecycle).await;
    assert_eq!(&d.payload[..], b"e1");

    let n = agent
        .publish_acked("control.collector.task", payload("task"), "t", CorrelationMetadata::new("t1"))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(&recv(&mut tasks).await.payload[..], b"task");

    let err = agent.publish("bad..topic", payload(""), "t", CorrelationMetadata::new("x")).await.unwrap_err();
    assert!(matches!(err, BusError::InvalidTopic { .. }), "{err}");
    b.stop().await;
}

#[tokio::test]
async fn drop_policy_counts_exactly_what_a_stalled_subscriber_lost() {
    let b = TestBroker::start_default().await;
    let agent = b.handle.local_client("stalled");
    let mut stalled = agent.subscribe("events.process.#", BackpressurePolicy::Drop, 4).await.unwrap();
    let reader = BusClient::connect(&b.path, "reader").await.unwrap();
    let mut normal = reader.subscribe("events.process.#", BackpressurePolicy::Block, 256).await.unwrap();
    let publisher = BusClient::connect(&b.path, "procmond").await.unwrap();

    let total = 100u32;
    let mut accepted = 0;
    for i in 0..total {
        accepted += publisher
            .publish_acked(
                "events.process.lifecycle",
                payload(&i.to_string()),
                "t",
                CorrelationMetadata::new(i.to_string()),
            )
            .await
            .unwrap();
    }
    // The normal subscriber took all, the stalled one its queue's worth.
    assert_eq!(accepted, total + 4);
    for i in 0..total {
        let d = recv(&mut normal).await;
        assert_eq!(d.payload, payload(&i.to_string()));
        assert_eq!(d.delivery_seq, u64::from(i) + 1);
    }

    let stats = b.handle.stats();
    let s = stats.subscriptions_of("stalled").next().unwrap();
    assert_eq!(s.dropped, u64::from(total) - 4);
    assert_eq!(s.queue_depth, 4);
    assert_eq!(s.delivered, 0);
    let topic = stats.topic("events.process.lifecycle").unwrap();
    assert_eq!(topic.published, u64::from(total));
    assert_eq!(topic.dropped, u64::from(total) - 4);

    // The stalled subscriber gets the first four, then nothing.
    assert_eq!(stalled.queued(), 4);
    for i in 0..4 {
        assert_eq!(recv(&mut stalled).await.payload, payload(&i.to_string()));
    }
    assert_eq!(stalled.queued(), 0);
    assert_quiet(&mut stalled).await;
    let stats = b.handle.stats();
    let s = stats.subscriptions_of("stalled").next().unwrap();
    assert_eq!((s.delivered, s.dropped, s.queue_depth), (4, 96, 0));
    b.stop().await;
}

#[tokio::test]
async fn error_policy_ends_the_subscription() {
    let b = TestBroker::start_default().await;
    let agent = b.handle.local_client("agent");
    let mut sub = agent.subscribe("events.#", BackpressurePolicy::Error, 2).await.unwrap();
    for i in 0..5 {
        agent
            .publish("events.process.tree", payload(&i.to_string()), "t", CorrelationMetadata::new("c"))
            .await
            .unwrap();
    }
    recv(&mut sub).await;
    recv(&mut sub).await;
    assert!(tokio::time::timeout(WAIT, sub.recv()).await.unwrap().is_none());
    let reason = sub.end_reason().unwrap();
    assert!(reason.contains("full"), "{reason}");
    assert_eq!(b.handle.stats().subscriptions_of("agent").count(), 0);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_policy_waits_for_one_subscriber_without_stalling_others() {
    let config = BrokerConfig { block_timeout: Duration::from_secs(30), ..BrokerConfig::default() };
    let b = TestBroker::start(config).await;
    let agent = b.handle.local_client("agent");
    let mut slow = agent.subscribe("events.#", BackpressurePolicy::Block, 1).await.unwrap();
    let other = BusClient::connect(&b.path, "other").await.unwrap();
    let mut fast = other.subscribe("events.#", BackpressurePolicy::Drop, 16).await.unwrap();
    let publisher = BusClient::connect(&b.path, "procmond").await.unwrap();

    assert_eq!(publisher.publish_acked("events.a", payload("1"), "t", CorrelationMetadata::new("1")).await.unwrap(), 2);
    let p2 = publisher.clone();
    let blocked =
        tokio::spawn(
            async move { p2.publish_acked("events.a", payload("2"), "t", CorrelationMetadata::new("2")).await },
        );
    // The fast subscriber gets message 2 while the publish is still blocked on the slow one.
    assert_eq!(recv(&mut fast).await.payload, payload("1"));
    assert_eq!(recv(&mut fast).await.payload, payload("2"));
    assert!(!blocked.is_finished());
    // Making room unblocks the publisher; nothing was lost.
    assert_eq!(recv(&mut slow).await.payload, payload("1"));
    assert_eq!(tokio::time::timeout(WAIT, blocked).await.unwrap().unwrap().unwrap(), 2);
    assert_eq!(recv(&mut slow).await.payload, payload("2"));
    b.stop().await;
}

#[tokio::test]
async fn block_policy_gives_up_after_the_block_timeout() {
    let config = BrokerConfig { block_timeout: Duration::from_millis(100), ..BrokerConfig::default() };
    let b = TestBroker::start(config).await;
    let agent = b.handle.local_client("agent");
    let _slow = agent.subscribe("events.#", BackpressurePolicy::Block, 1).await.unwrap();
    let c = CorrelationMetadata::new("c");
    assert_eq!(agent.publish_acked("events.a", payload("1"), "t", c.clone()).await.unwrap(), 1);
    assert_eq!(agent.publish_acked("events.a", payload("2"), "t", c).await.unwrap(), 0);
    let stats = b.handle.stats();
    assert_eq!(stats.subscriptions_of("agent").next().unwrap().dropped, 1);
    b.stop().await;
}

fn restrictive_policy() -> AccessPolicy {
    // control.#: only uid 12345 (not us) may publish or subscribe; health is public.
    let nobody_we_know = vec![Principal::Uid(12345)];
    AccessPolicy::new(vec![
        AccessRule::new("control.health.#", AccessLevel::Public, vec![Principal::Any], vec![Principal::Any]),
        AccessRule::new("control.#", AccessLevel::Privileged, nobody_we_know.clone(), nobody_we_know),
        AccessRule::new("#", AccessLevel::Public, vec![Principal::Any], vec![Principal::Any]),
    ])
    .unwrap()
}

#[tokio::test]
async fn access_denied_keeps_the_connection_open() {
    let b = TestBroker::start(BrokerConfig { acl: restrictive_policy(), ..BrokerConfig::default() }).await;
    let client = BusClient::connect(&b.path, "intruder").await.unwrap();
    let c = CorrelationMetadata::new("c");

    let err = client.publish_acked("control.collector.task", payload("x"), "t", c.clone()).await.unwrap_err();
    match &err {
        BusError::AccessDenied { topic, message } => {
            assert_eq!(topic, "control.collector.task");
            assert!(message.contains("uid 12345"), "{message}");
        }
        other => panic!("expected AccessDenied, got {other}"),
    }
    let err = client.subscribe("control.collector.task", BackpressurePolicy::Drop, 0).await.unwrap_err();
    assert!(matches!(err, BusError::AccessDenied { .. }), "{err}");
    // Fire-and-forget publish to a denied topic is refused asynchronously;
    // the connection survives it.
    client.publish("control.agent.x", payload("x"), "t", c.clone()).await.unwrap();

    // A wildcard subscription is accepted but only sees allowed topics.
    let mut all = client.subscribe("#", BackpressurePolicy::Drop, 0).await.unwrap();
    let admin = BusClient::connect(&b.path, "other").await.unwrap();
    admin.publish("control.health.status", payload("h"), "t", c.clone()).await.unwrap();
    assert_eq!(client.publish_acked("events.x", payload("e"), "t", c.clone()).await.unwrap(), 1);
    assert_eq!(recv(&mut all).await.topic, "control.health.status");
    assert_eq!(recv(&mut all).await.topic, "events.x");
    assert!(b.handle.stats().access_denied >= 3);
    b.stop().await;
}

#[tokio::test]
async fn wildcard_deliveries_are_filtered_per_topic() {
    let policy = AccessPolicy::new(vec![
        AccessRule::new("control.#", AccessLevel::Restricted, vec![Principal::Any], vec![Principal::Uid(12345)]),
        AccessRule::new("#", AccessLevel::Public, vec![Principal::Any], vec![Principal::Any]),
    ])
    .unwrap();
    let b = TestBroker::start(BrokerConfig { acl: policy, ..BrokerConfig::default() }).await;
    let client = BusClient::connect(&b.path, "c").await.unwrap();
    let mut all = client.subscribe("#", BackpressurePolicy::Drop, 0).await.unwrap();
    let c = CorrelationMetadata::new("c");
    assert_eq!(client.publish_acked("control.collector.task", payload("secret"), "t", c.clone()).await.unwrap(), 0);
    assert_eq!(client.publish_acked("events.y", payload("ok"), "t", c).await.unwrap(), 1);
    assert_eq!(recv(&mut all).await.topic, "events.y");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_reflect_traffic() {
    let b = TestBroker::start_default().await;
    let sub_client = BusClient::connect(&b.path, "subscriber").await.unwrap();
    let mut sub = sub_client.subscribe("events.process.lifecycle", BackpressurePolicy::Block, 8).await.unwrap();
    let publisher = BusClient::connect(&b.path, "procmond").await.unwrap();
    for i in 0..10 {
        publisher
            .publish_acked("events.process.lifecycle", payload(&i.to_string()), "t", CorrelationMetadata::new("c"))
            .await
            .unwrap();
        recv(&mut sub).await;
    }
    publisher.publish_acked("events.process.tree", payload("t"), "t", CorrelationMetadata::new("c")).await.unwrap();

    let stats = b.handle.stats();
    assert_eq!(stats.connections_current, 2);
    assert_eq!(stats.connections_total, 2);
    let t = stats.topic("events.process.lifecycle").unwrap();
    assert_eq!((t.published, t.delivered, t.dropped), (10, 10, 0));
    let t = stats.topic("events.process.tree").unwrap();
    assert_eq!((t.published, t.delivered), (1, 0));
    let s = stats.subscriptions_of("subscriber").next().unwrap();
    assert_eq!(s.pattern, "events.process.lifecycle");
    assert_eq!(s.policy, BackpressurePolicy::Block);
    assert_eq!(s.capacity, 8);
    assert_eq!((s.delivered, s.dropped, s.queue_depth), (10, 0, 0));
    assert_eq!(s.latency.count, 10);
    assert!(s.latency.p50 <= s.latency.p99 && s.latency.max >= s.latency.mean);
    assert_eq!(s.peer.pid, std::process::id());
    let p = stats.connections.iter().find(|c| c.client_name == "procmond").unwrap();
    assert_eq!(p.published, 11);
    assert!(!p.local);

    drop(sub);
    drop(sub_client);
    tokio::time::timeout(WAIT, async {
        while b.handle.stats().connections_current != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    b.stop().await;
}

#[tokio::test]
async fn missing_socket_is_a_clear_reconnectable_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = daemoneye_lib::config::local_endpoint(dir.path(), "bus", cfg!(windows));
    let err = BusClient::connect(&path, "procmond").await.unwrap_err();
    assert!(matches!(err, BusError::BrokerUnavailable { .. }), "{err}");
    assert!(err.is_disconnected());
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()) && text.contains("retry"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_clients_and_removes_the_socket() {
    let b = TestBroker::start_default().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&b.path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }
    let client = BusClient::connect(&b.path, "procmond").await.unwrap();
    let mut sub = client.subscribe("events.#", BackpressurePolicy::Block, 0).await.unwrap();
    let agent = b.handle.local_client("agent");
    let mut local = agent.subscribe("events.#", BackpressurePolicy::Block, 0).await.unwrap();
    let path = b.path.clone();
    b.stop().await;
    assert!(tokio::time::timeout(WAIT, sub.recv()).await.unwrap().is_none());
    assert!(sub.end_reason().is_some());
    assert!(tokio::time::timeout(WAIT, local.recv()).await.unwrap().is_none());
    let err = client.publish_acked("events.x", payload("x"), "t", CorrelationMetadata::new("c")).await.unwrap_err();
    assert!(err.is_disconnected(), "{err}");
    assert!(!daemoneye_eventbus::transport::endpoint_exists(&path));
    client.close().await;
}

#[cfg(unix)]
#[tokio::test]
async fn bind_replaces_stale_sockets_but_not_live_brokers() {
    let b = TestBroker::start_default().await;
    let err = daemoneye_eventbus::Broker::bind(&b.path, BrokerConfig::default(), b.cancel.clone()).await.unwrap_err();
    assert!(matches!(err, BusError::AlreadyRunning { .. }), "{err}");

    // A stale socket (nobody listening) is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("bus.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let cancel = tokio_util::sync::CancellationToken::new();
    let h = daemoneye_eventbus::Broker::bind(&stale, BrokerConfig::default(), cancel.clone()).await.unwrap();
    BusClient::connect(&stale, "x").await.unwrap();
    cancel.cancel();
    h.join().await;

    // A regular file is never deleted.
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, b"data").unwrap();
    let err = daemoneye_eventbus::Broker::bind(&file, BrokerConfig::default(), cancel).await.unwrap_err();
    assert!(matches!(err, BusError::Bind { .. }), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), b"data");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_error_policy_ends_the_subscription_when_not_read() {
    let b = TestBroker::start_default().await;
    let client = BusClient::connect(&b.path, "lazy").await.unwrap();
    let mut sub = client.subscribe("events.#", BackpressurePolicy::Error, 1).await.unwrap();
    let publisher = BusClient::connect(&b.path, "procmond").await.unwrap();
    for i in 0..3 {
        publisher.publish_acked("events.a", payload(&i.to_string()), "t", CorrelationMetadata::new("c")).await.unwrap();
    }
    assert_eq!(recv(&mut sub).await.payload, payload("0"));
    assert!(tokio::time::timeout(WAIT, sub.recv()).await.unwrap().is_none());
    let reason = sub.end_reason().unwrap();
    assert!(reason.contains("full"), "{reason}");
    // The connection itself is fine.
    client.ping().await.unwrap();
    b.stop().await;
}
