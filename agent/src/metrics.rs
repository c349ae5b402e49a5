//! Prometheus metrics: the health numbers in the text exposition format
//! 0.0.4, and the optional HTTP listener (`agent.metrics_listen`, off by
//! default, loopback only) that serves them on `GET /metrics`.
//!
//! *Architecture invariant:* [`text`] is the only place the exposition is
//! generated; `daemoneye-cli metrics` (the `Metrics` call) and the listener
//! both serve its output.

use std::fmt::Write as _;
use std::net::SocketAddr;

use daemoneye_lib::proto::{HealthResponse, HealthStatus};
use tokio_util::sync::CancellationToken;

use crate::health::HealthSource;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why the metrics listener cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Only loopback addresses are served (the metrics are not authenticated).
    #[error(
        "agent.metrics_listen = {0}: not a loopback address; the metrics listener serves this host only \
         (use 127.0.0.1:PORT or [::1]:PORT, and a reverse proxy or an agent-side scraper for remote access)"
    )]
    NotLoopback(SocketAddr),
    /// The address cannot be bound.
    #[error("agent.metrics_listen = {addr}: cannot listen: {source} (is the port in use?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The exposition of the agent's health now (blocking: reads `/proc`).
pub fn text(source: &HealthSource) -> String {
    let h = source.snapshot();
    let rules = source.shared().rules();
    let rule_states: Vec<(&str, bool, bool)> =
        rules.rules.iter().map(|lr| (lr.rule.id.as_str(), lr.rule.enabled, lr.query.is_streaming())).collect();
    render(&h, &rule_states)
}

/// Binds the listener; refuses addresses that are not loopback.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    if !addr.ip().is_loopback() {
        return Err(MetricsError::NotLoopback(addr));
    }
    tokio::net::TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })
}

/// Serves `GET /metrics` on `listener` until `cancel`.
pub async fn serve(listener: tokio::net::TcpListener, source: HealthSource, cancel: CancellationToken) {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;

    let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let source = source.clone();
            async move {
                match tokio::task::spawn_blocking(move || text(&source)).await {
                    Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
                    Err(e) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics task failed: {e}\n")).into_response()
                    }
                }
            }
        }),
    );
    tracing::info!(addr = %addr, "metrics listening on http://{addr}/metrics");
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await {
        tracing::error!(addr = %addr, error = %e, "the metrics listener failed");
    }
}

/// Renders `h` (and each rule's `(id, enabled, streaming)`).
pub fn render(h: &HealthResponse, rules: &[(&str, bool, bool)]) -> String {
    let mut w = Writer::default();
    let status = match h.status() {
        HealthStatus::Healthy => 0.0,
        HealthStatus::Degraded => 1.0,
        HealthStatus::Unhealthy | HealthStatus::Unspecified => 2.0,
    };
    w.family("daemoneye_build_info", "gauge", "Always 1; the agent's version is a label.");
    w.sample("daemoneye_build_info", &[("version", &h.version)], 1.0);
    w.gauge("daemoneye_health_status", "Overall health: 0 healthy, 1 degraded, 2 unhealthy.", status);
    w.gauge("daemoneye_agent_start_time_seconds", "When the agent started (Unix seconds).", ms(h.agent_started_ms));

    w.family("daemoneye_component_up", "gauge", "1 when the component is healthy, 0 otherwise.");
    for c in &h.components {
        let up = if c.status() == HealthStatus::Healthy { 1.0 } else { 0.0 };
        w.sample("daemoneye_component_up", &[("component", &c.name)], up);
    }
    w.family("daemoneye_component_restarts_total", "counter", "Restarts of the component since the agent started.");
    for c in h.components.iter().filter(|c| c.pid.is_some() || c.restarts > 0) {
        w.sample("daemoneye_component_restarts_total", &[("component", &c.name)], c.restarts as f64);
    }
    w.family("daemoneye_component_resident_memory_bytes", "gauge", "Resident memory of the component's process.");
    for c in &h.components {
        if let Some(rss) = c.rss_bytes {
            w.sample("daemoneye_component_resident_memory_bytes", &[("component", &c.name)], rss as f64);
        }
    }
    w.family("daemoneye_component_cpu_seconds_total", "counter", "User and system CPU time of the component.");
    for c in &h.components {
        if let Some(cpu) = c.cpu_seconds {
            w.sample("daemoneye_component_cpu_seconds_total", &[("component", &c.name)], cpu);
        }
    }

    w.family("daemoneye_backend_info", "gauge", "Always 1; procmond's event source is a label.");
    w.sample("daemoneye_backend_info", &[("backend", &h.backend)], 1.0);
    w.counter(
        "daemoneye_events_received_total",
        "Process events the agent took off the bus or the ledger.",
        h.events_received,
    );
    w.counter(
        "daemoneye_events_lost_total",
        "Process events known lost at the source (sum of gap counts).",
        h.events_lost,
    );
    w.counter("daemoneye_events_malformed_total", "Event payloads that did not decode.", h.events_malformed);
    w.counter("daemoneye_seq_gaps_total", "Sequence gaps on the bus, filled from the ledger.", h.seq_gaps);
    w.gauge("daemoneye_events_per_second", "procmond's recent event rate.", h.events_per_second);
    w.gauge(
        "daemoneye_last_applied_seq",
        "Ledger seq of the last event applied to the process table.",
        h.last_applied_seq as f64,
    );
    w.gauge("daemoneye_ledger_head_seq", "Last seq procmond wrote to its ledger.", h.ledger_head as f64);
    w.gauge("daemoneye_processes_alive", "Live processes in the table.", h.processes_alive as f64);
    w.gauge("daemoneye_processes_tracked", "Processes in the table, exited ones included.", h.processes_total as f64);
    if let Some(bytes) = h.store_bytes {
        w.gauge("daemoneye_store_size_bytes", "Size of the redb files (store and alerts).", bytes as f64);
    }

    w.gauge("daemoneye_rules_loaded", "Rules loaded.", f64::from(h.rules_loaded));
    w.gauge("daemoneye_rules_failed", "Rule files or rules that failed to load.", f64::from(h.rules_failed));
    w.counter("daemoneye_rule_errors_total", "Rule evaluations that failed at run time.", h.rule_errors);
    w.family("daemoneye_rule_enabled", "gauge", "1 when the rule is evaluated, 0 when disabled.");
    for (id, enabled, streaming) in rules {
        let kind = if *streaming { "streaming" } else { "table" };
        w.sample("daemoneye_rule_enabled", &[("rule", id), ("kind", kind)], if *enabled { 1.0 } else { 0.0 });
    }
    w.counter("daemoneye_alerts_total", "New alerts (not repeats) since the agent started.", h.alerts_total);
    w.family("daemoneye_rule_alerts_total", "counter", "New alerts per rule since the agent started.");
    for r in &h.rule_alerts {
        w.sample("daemoneye_rule_alerts_total", &[("rule", &r.rule_id)], r.alerts as f64);
    }

    type SinkField = fn(&daemoneye_lib::proto::SinkHealth) -> u64;
    let sink_counters: [(&str, &str, SinkField); 5] = [
        ("daemoneye_sink_delivered_total", "Alerts the sink delivered.", |s| s.delivered),
        ("daemoneye_sink_failed_total", "Failed delivery attempts.", |s| s.failed),
        ("daemoneye_sink_retried_total", "Delivery attempts that were retries.", |s| s.retried),
        ("daemoneye_sink_rejected_total", "Alerts the receiver refused for good.", |s| s.rejected),
        (
            "daemoneye_sink_overflowed_total",
            "Enqueues that found the queue full (the alert waited in the outbox).",
            |s| s.overflowed,
        ),
    ];
    for (name, help, get) in sink_counters {
        w.family(name, "counter", help);
        for s in &h.sinks {
            w.sample(name, &[("sink", &s.name), ("type", &s.kind)], get(s) as f64);
        }
    }
    w.family("daemoneye_sink_queue_depth", "gauge", "Alerts waiting in the sink's worker.");
    for s in &h.sinks {
        w.sample("daemoneye_sink_queue_depth", &[("sink", &s.name), ("type", &s.kind)], s.queue_depth as f64);
    }
    w.family("daemoneye_sink_breaker_state", "gauge", "1 for the circuit breaker's current state, 0 for the others.");
    for s in &h.sinks {
        for state in ["closed", "open", "half-open"] {
            let v = if s.breaker == state { 1.0 } else { 0.0 };
            w.sample("daemoneye_sink_breaker_state", &[("sink", &s.name), ("state", state)], v);
        }
    }

    if let Some(b) = &h.bus {
        w.gauge("daemoneye_bus_connections", "Open event bus connections.", b.connections as f64);
        w.counter("daemoneye_bus_connections_total", "Event bus connections accepted.", b.connections_total);
        w.counter("daemoneye_bus_connections_rejected_total", "Event bus connections refused.", b.connections_rejected);
        w.counter("daemoneye_bus_frames_rejected_total", "Malformed or oversized bus frames.", b.frames_rejected);
        w.counter(
            "daemoneye_bus_access_denied_total",
            "Bus publishes or subscribes refused by the ACL.",
            b.access_denied,
        );
        type TopicField = fn(&daemoneye_lib::proto::BusTopicHealth) -> u64;
        let topic_counters: [(&str, &str, TopicField); 3] = [
            ("daemoneye_bus_topic_published_total", "Messages published on the topic.", |t| t.published),
            ("daemoneye_bus_topic_delivered_total", "Messages of the topic delivered to subscribers.", |t| t.delivered),
            ("daemoneye_bus_topic_dropped_total", "Messages of the topic dropped (full subscriber queues).", |t| {
                t.dropped
            }),
        ];
        for (name, help, get) in topic_counters {
            w.family(name, "counter", help);
            for t in &b.topics {
                w.sample(name, &[("topic", &t.topic)], get(t) as f64);
            }
        }
        w.family("daemoneye_bus_subscriber_queue_depth", "gauge", "Messages waiting in a bus subscription's queue.");
        for s in &b.subscribers {
            let id = s.subscription_id.to_string();
            let labels = [("client", s.client_name.as_str()), ("pattern", &s.pattern), ("subscription", &id)];
            w.sample("daemoneye_bus_subscriber_queue_depth", &labels, s.queue_depth as f64);
        }
        w.family("daemoneye_bus_subscriber_dropped_total", "counter", "Messages a bus subscription dropped.");
        for s in &b.subscribers {
            let id = s.subscription_id.to_string();
            let labels = [("client", s.client_name.as_str()), ("pattern", &s.pattern), ("subscription", &id)];
            w.sample("daemoneye_bus_subscriber_dropped_total", &labels, s.dropped as f64);
        }
    }
    w.out
}

fn ms(t: i64) -> f64 {
    t as f64 / 1000.0
}

/// Builds the exposition: `# HELP`/`# TYPE` once per family, then samples.
#[derive(Default)]
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // HELP text escapes only backslash and newline.
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value as f64);
    }
}

/// A sample value: integers without a fraction, NaN and infinities as Go's
/// text format spells them.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use daemoneye_lib::proto::{ComponentHealth, SinkHealth};

    #[test]
    fn exposition_has_help_type_and_escaped_labels() {
        let h = HealthResponse {
            status: HealthStatus::Degraded as i32,
            version: "0.1.0".into(),
            events_received: 12,
            components: vec![ComponentHealth {
                name: "agent".into(),
                status: HealthStatus::Healthy as i32,
                pid: Some(1),
                rss_bytes: Some(4096),
                cpu_seconds: Some(0.25),
                ..Default::default()
            }],
            sinks: vec![SinkHealth {
                name: "we\"b\\hook".into(),
                kind: "webhook".into(),
                breaker: "open".into(),
                delivered: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&h, &[("r1", true, true)]);
        assert!(text.contains("# TYPE daemoneye_events_received_total counter\ndaemoneye_events_received_total 12\n"));
        assert!(text.contains("daemoneye_health_status 1\n"));
        assert!(text.contains("daemoneye_component_resident_memory_bytes{component=\"agent\"} 4096\n"));
        assert!(text.contains("daemoneye_component_cpu_seconds_total{component=\"agent\"} 0.25\n"));
        assert!(text.contains(r#"daemoneye_sink_delivered_total{sink="we\"b\\hook",type="webhook"} 3"#), "{text}");
        assert!(text.contains(r#"daemoneye_sink_breaker_state{sink="we\"b\\hook",state="open"} 1"#));
        assert!(text.contains(r#"daemoneye_rule_enabled{rule="r1",kind="streaming"} 1"#));
        // Every family is declared once, before its samples.
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert!(declared.insert(rest.split(' ').next().unwrap().to_owned()), "declared twice: {line}");
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "sample before its TYPE: {line}");
            }
        }
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(1.5), "1.5");
    }

    #[tokio::test]
    async fn refuses_non_loopback_addresses() {
        let err = bind("0.0.0.0:0".parse().unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("not a loopback address"), "{err}");
        assert!(bind("127.0.0.1:0".parse().unwrap()).await.is_ok());
    }
}
