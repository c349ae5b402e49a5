//! Broker statistics: live atomic counters and the snapshot types returned by
//! [`crate::BrokerHandle::stats`].
//!
//! Everything that can be lost or delayed is counted: published, delivered
//! and dropped messages per topic and per subscription, queue depths, and
//! delivery latency (broker receipt to socket write, or to `recv` for
//! in-process subscriptions) as a log2 histogram.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use daemoneye_lib::proto::BackpressurePolicy;

use crate::acl::PeerIdentity;

/// At most this many topics get their own counters; the rest share
/// [`OTHER_TOPICS`].
pub const MAX_TRACKED_TOPICS: usize = 1024;
/// Name of the shared counters for topics beyond [`MAX_TRACKED_TOPICS`].
pub const OTHER_TOPICS: &str = "<other>";

const BUCKETS: usize = 32;

/// Snapshot of the broker's statistics.
#[non_exhaustive]
#[derive(Debug, Clone, Default)]
pub struct BrokerStats {
    /// Open connections (socket and in-process clients).
    pub connections_current: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections refused (limit reached, handshake failure).
    pub connections_rejected: u64,
    /// Connections closed because of a bad frame (malformed, oversized,
    /// stalled, unknown kind, protocol violation).
    pub frames_rejected: u64,
    /// Publishes and subscribes refused by access control.
    pub access_denied: u64,
    /// Per topic, sorted by name.
    pub topics: Vec<TopicStats>,
    /// Per live subscription, sorted by connection and subscription id.
    pub subscribers: Vec<SubscriberStats>,
    /// Per open connection, sorted by id.
    pub connections: Vec<ConnectionStats>,
}

impl BrokerStats {
    /// The counters of one topic.
    pub fn topic(&self, name: &str) -> Option<&TopicStats> {
        self.topics.iter().find(|t| t.topic == name)
    }

    /// The subscriptions of the client(s) named `client_name`.
    pub fn subscriptions_of<'a>(&'a self, client_name: &'a str) -> impl Iterator<Item = &'a SubscriberStats> + 'a {
        self.subscribers.iter().filter(move |s| s.client_name == client_name)
    }
}

/// Counters of one topic.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicStats {
    /// The topic (or [`OTHER_TOPICS`]).
    pub topic: String,
    /// Messages accepted from publishers.
    pub published: u64,
    /// Deliveries written to subscribers.
    pub delivered: u64,
    /// Deliveries dropped (full queue under Drop or Error policy, block timeout).
    pub dropped: u64,
}

/// Counters of one subscription.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct SubscriberStats {
    /// Broker-assigned connection id.
    pub connection_id: u64,
    /// The client's self-declared name (informational).
    pub client_name: String,
    /// The peer as observed by the broker.
    pub peer: PeerIdentity,
    /// Client-chosen subscription id.
    pub subscription_id: u64,
    /// The pattern.
    pub pattern: String,
    /// Backpressure policy.
    pub policy: BackpressurePolicy,
    /// Queue capacity.
    pub capacity: usize,
    /// Messages waiting in the queue now.
    pub queue_depth: usize,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages dropped for this subscription.
    pub dropped: u64,
    /// Delivery latency.
    pub latency: LatencyStats,
}

/// Latency summary; percentiles are bucket upper bounds (within a factor of 2).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyStats {
    /// Number of samples.
    pub count: u64,
    /// Mean.
    pub mean: Duration,
    /// Median (upper bound of its bucket).
    pub p50: Duration,
    /// 99th percentile (upper bound of its bucket).
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
}

/// One open connection.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct ConnectionStats {
    /// Broker-assigned id.
    pub id: u64,
    /// The client's self-declared name.
    pub client_name: String,
    /// The peer as observed by the broker.
    pub peer: PeerIdentity,
    /// True for in-process clients of [`crate::BrokerHandle::local_client`].
    pub local: bool,
    /// Messages this connection published.
    pub published: u64,
}

/// Live counters of a topic.
#[derive(Debug, Default)]
pub(crate) struct TopicCounters {
    pub(crate) published: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

/// Live counters of a subscription.
#[derive(Debug, Default)]
pub(crate) struct SubCounters {
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Taken from the queue by the writer but not yet written (0 or 1).
    pub(crate) in_writer: AtomicU64,
    pub(crate) latency: LatencyHistogram,
}

impl SubCounters {
    /// Records one delivery of a message of topic `topic` received `latency` ago.
    pub(crate) fn record_delivery(&self, topic: &TopicCounters, latency: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        topic.delivered.fetch_add(1, Ordering::Relaxed);
        self.latency.record(latency);
    }

    /// Records one drop.
    pub(crate) fn record_drop(&self, topic: &TopicCounters) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        topic.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Log2 histogram of microseconds: bucket 0 is < 1 µs, bucket k is
/// `[2^(k-1), 2^k)` µs.
#[derive(Debug)]
pub(crate) struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub(crate) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let us = ns / 1000;
        let idx = ((u64::BITS - us.leading_zeros()) as usize).min(BUCKETS - 1);
        if let Some(b) = self.buckets.get(idx) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LatencyStats {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return LatencyStats::default();
        }
        let percentile = |q: f64| {
            // Rank of the q-quantile, 1-based; f64 precision is ample here.
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_micros(1u64 << i);
                }
            }
            Duration::from_micros(1u64 << (BUCKETS - 1))
        };
        let max = Duration::from_nanos(self.max_ns.load(Ordering::Relaxed));
        LatencyStats {
            count,
            mean: Duration::from_nanos(self.sum_ns.load(Ordering::Relaxed) / count),
            p50: percentile(0.50).min(max.max(Duration::from_micros(1))),
            p99: percentile(0.99).min(max.max(Duration::from_micros(1))),
            max,
        }
    }
}

/// The per-topic counters, bounded by [`MAX_TRACKED_TOPICS`].
#[derive(Debug, Default)]
pub(crate) struct TopicTable {
    map: Mutex<HashMap<String, Arc<TopicCounters>>>,
}

impl TopicTable {
    pub(crate) fn get(&self, topic: &str) -> Arc<TopicCounters> {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = map.get(topic) {
            return Arc::clone(c);
        }
        let key = if map.len() >= MAX_TRACKED_TOPICS { OTHER_TOPICS } else { topic };
        Arc::clone(map.entry(key.to_owned()).or_default())
    }

    pub(crate) fn snapshot(&self) -> Vec<TopicStats> {
        let map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<TopicStats> = map
            .iter()
            .map(|(topic, c)| TopicStats {
                topic: topic.clone(),
                published: c.published.load(Ordering::Relaxed),
                delivered: c.delivered.load(Ordering::Relaxed),
                dropped: c.dropped.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by(|a, b| a.topic.cmp(&b.topic));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles() {
        let h = LatencyHistogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(3));
        }
        h.record(Duration::from_millis(10));
        h.record(Duration::from_millis(10));
        let s = h.snapshot();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50, Duration::from_micros(4));
        assert!(s.p99 >= Duration::from_millis(8) && s.p99 <= Duration::from_millis(10), "{s:?}");
        assert_eq!(s.max, Duration::from_millis(10));
        assert!(s.mean > Duration::from_micros(3));
    }

    #[test]
    fn topic_table_is_bounded() {
        let t = TopicTable::default();
        for i in 0..(MAX_TRACKED_TOPICS + 10) {
            t.get(&format!("t{i}")).published.fetch_add(1, Ordering::Relaxed);
        }
        let snap = t.snapshot();
        assert!(snap.len() <= MAX_TRACKED_TOPICS + 1);
        let other = snap.iter().find(|s| s.topic == OTHER_TOPICS).unwrap();
        assert_eq!(other.published, 10);
    }
}
