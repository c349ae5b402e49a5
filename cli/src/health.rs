//! `daemoneye-cli health` and `daemoneye-cli metrics`.
//!
//! `health` exit code: 0 healthy, 1 degraded, 2 unhealthy, 3 the agent
//! could not be asked. `metrics` prints the agent's Prometheus exposition
//! (the same text its optional `agent.metrics_listen` listener serves).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use daemoneye_lib::models::time::now_ms;
use daemoneye_lib::proto::{BusHealth, HealthRequest, HealthResponse, HealthStatus, MetricsRequest};
use serde_json::{Value as Json, json};

use crate::client;
use crate::output::{Format, Grid, Ui};

/// Runs `health`.
pub(crate) async fn health(socket: &std::path::Path, ui: &Ui, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let resp = async {
        let mut client = client::connect(socket).await?;
        client
            .health(HealthRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| client::status_error("health check failed", &s))
    }
    .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            #[allow(clippy::print_stderr, reason = "the error, with exit code 3 (not asked)")]
            {
                eprintln!("error: {e:#}");
            }
            return Ok(ExitCode::from(3));
        }
    };
    let doc = health_json(&resp);
    match ui.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Format::Csv => flat_grid(&doc).write(Format::Csv, out)?,
        Format::Table => write_tables(&doc, resp.bus.as_ref(), ui, out)?,
    }
    Ok(ExitCode::from(match resp.status() {
        HealthStatus::Healthy => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Unhealthy | HealthStatus::Unspecified => 2,
    }))
}

/// Runs `metrics`: the exposition text, as the agent renders it.
pub(crate) async fn metrics(socket: &std::path::Path, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(socket).await?;
    let text = client
        .metrics(MetricsRequest {})
        .await
        .map_err(|s| client::status_error("reading the metrics failed", &s))?
        .into_inner()
        .text;
    out.write_all(text.as_bytes()).context("writing the metrics")?;
    Ok(ExitCode::SUCCESS)
}

fn status_name(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Healthy => "healthy",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Unhealthy => "unhealthy",
        HealthStatus::Unspecified => "unknown",
    }
}

/// The `--format json` document (stable keys; scripts rely on them).
fn health_json(resp: &HealthResponse) -> Json {
    let components: Vec<Json> = resp
        .components
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "status": status_name(c.status()),
                "detail": c.detail,
                "pid": c.pid,
                "restarts": c.restarts,
                "running_since": c.running_since_ms,
                "rss_bytes": c.rss_bytes,
                "cpu_seconds": c.cpu_seconds,
                "cpu_percent": c.cpu_percent,
            })
        })
        .collect();
    let sinks: Vec<Json> = resp
        .sinks
        .iter()
        .map(|s| {
            json!({
                "name": s.name, "type": s.kind, "breaker": s.breaker, "queue_depth": s.queue_depth,
                "delivered": s.delivered, "failed": s.failed, "retried": s.retried,
                "rejected": s.rejected, "overflowed": s.overflowed,
            })
        })
        .collect();
    json!({
        "status": status_name(resp.status()),
        "version": resp.version,
        "backend": resp.backend,
        "events_received": resp.events_received,
        "events_lost": resp.events_lost,
        "events_per_second": resp.events_per_second,
        "events_malformed": resp.events_malformed,
        "seq_gaps": resp.seq_gaps,
        "last_applied_seq": resp.last_applied_seq,
        "ledger_head": resp.ledger_head,
        "rules_loaded": resp.rules_loaded,
        "rules_failed": resp.rules_failed,
        "rule_errors": resp.rule_errors,
        "processes_alive": resp.processes_alive,
        "processes_total": resp.processes_total,
        "alerts_raised": resp.alerts_total,
        "store_bytes": resp.store_bytes,
        "uptime_s": (now_ms() - resp.agent_started_ms) / 1000,
        "components": components,
        "sinks": sinks,
        "bus": resp.bus.as_ref().map(bus_json),
    })
}

fn write_tables(doc: &Json, bus: Option<&BusHealth>, ui: &Ui, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut grid = Grid { columns: vec!["item".into(), "value".into()], rows: Vec::new() };
    if let Some(obj) = doc.as_object() {
        for (k, v) in obj {
            if !matches!(k.as_str(), "components" | "sinks" | "bus") {
                let v = match (k.as_str(), v.as_u64()) {
                    ("store_bytes", Some(b)) => Json::from(bytes_text(b)),
                    _ => v.clone(),
                };
                grid.rows.push(vec![Json::from(k.as_str()), v]);
            }
        }
    }
    grid.render(ui, out).context("writing health")?;
    let components = |key: &str| doc[key].as_array().cloned().unwrap_or_default();
    let comp_rows = components("components")
        .iter()
        .map(|c| {
            vec![
                c["name"].clone(),
                c["status"].clone(),
                c["pid"].clone(),
                c["rss_bytes"].as_u64().map_or(Json::Null, |b| Json::from(bytes_text(b))),
                c["cpu_percent"].as_f64().map_or(Json::Null, |p| Json::from(format!("{p:.1}%"))),
                c["restarts"].clone(),
                c["detail"].clone(),
            ]
        })
        .collect();
    writeln!(out, "components:")?;
    let columns = ["name", "status", "pid", "rss", "cpu", "restarts", "detail"];
    Grid { columns: columns.iter().map(|c| (*c).to_owned()).collect(), rows: comp_rows }.render(ui, out)?;
    let cols = ["name", "type", "breaker", "queue_depth", "delivered", "failed", "retried", "rejected"];
    let rows = components("sinks").iter().map(|s| cols.iter().map(|c| s[*c].clone()).collect()).collect();
    writeln!(out, "sinks:")?;
    Grid { columns: cols.iter().map(|c| (*c).to_owned()).collect(), rows }.render(ui, out)?;
    if let Some(bus) = bus {
        write_bus_tables(bus, ui, out)?;
    }
    Ok(())
}

/// One CSV document: every number as an item/value row, components as
/// `component.<name>.<field>`, sinks as `sink.<name>.<field>` (the bus
/// details are in `--format json`).
fn flat_grid(doc: &Json) -> Grid {
    let mut grid = Grid { columns: vec!["item".into(), "value".into()], rows: Vec::new() };
    let Some(obj) = doc.as_object() else { return grid };
    for (k, v) in obj {
        match (k.as_str(), v) {
            ("components" | "sinks", Json::Array(items)) => {
                let prefix = if k == "components" { "component" } else { "sink" };
                for item in items {
                    let name = item["name"].as_str().unwrap_or_default();
                    for (field, value) in item.as_object().into_iter().flatten().filter(|(f, _)| *f != "name") {
                        grid.rows.push(vec![Json::from(format!("{prefix}.{name}.{field}")), value.clone()]);
                    }
                }
            }
            ("bus", _) => {}
            _ => grid.rows.push(vec![Json::from(k.as_str()), v.clone()]),
        }
    }
    grid
}

/// Bytes for a person: 1.5 MiB.
fn bytes_text(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{b} B") } else { format!("{v:.1} {}", units[i]) }
}

/// The `bus` section of `health`: counters, then per topic and per subscriber.
fn bus_json(b: &BusHealth) -> Json {
    json!({
        "connections": b.connections,
        "connections_total": b.connections_total,
        "connections_rejected": b.connections_rejected,
        "frames_rejected": b.frames_rejected,
        "access_denied": b.access_denied,
        "topics": b.topics.iter().map(|t| json!({
            "topic": t.topic, "published": t.published, "delivered": t.delivered, "dropped": t.dropped,
        })).collect::<Vec<_>>(),
        "subscribers": b.subscribers.iter().map(|s| json!({
            "connection_id": s.connection_id, "client": s.client_name, "uid": s.peer_uid, "pid": s.peer_pid,
            "subscription_id": s.subscription_id, "pattern": s.pattern, "policy": s.policy,
            "capacity": s.capacity, "queue_depth": s.queue_depth, "delivered": s.delivered, "dropped": s.dropped,
            "latency_p50_us": s.latency_p50_us, "latency_p99_us": s.latency_p99_us, "latency_max_us": s.latency_max_us,
        })).collect::<Vec<_>>(),
    })
}

fn write_bus_tables(b: &BusHealth, ui: &Ui, out: &mut dyn Write) -> anyhow::Result<()> {
    let doc = bus_json(b);
    for (key, cols) in [
        ("topics", &["topic", "published", "delivered", "dropped"][..]),
        (
            "subscribers",
            &[
                "client",
                "pid",
                "pattern",
                "policy",
                "queue_depth",
                "delivered",
                "dropped",
                "latency_p50_us",
                "latency_p99_us",
            ][..],
        ),
    ] {
        let rows =
            doc[key].as_array().map(|a| a.iter().map(|r| cols.iter().map(|c| r[*c].clone()).collect()).collect());
        let grid = Grid { columns: cols.iter().map(|c| (*c).to_owned()).collect(), rows: rows.unwrap_or_default() };
        writeln!(out, "bus {key}:")?;
        grid.render(ui, out).context("writing bus statistics")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_is_one_flat_document() {
        let doc = json!({
            "status": "healthy",
            "components": [{"name": "agent", "status": "healthy", "rss_bytes": 10}],
            "sinks": [{"name": "stdout", "breaker": "closed"}],
            "bus": {"connections": 1},
        });
        let mut out = Vec::new();
        flat_grid(&doc).write(Format::Csv, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("item,value\n"), "{text}");
        assert!(text.contains("component.agent.rss_bytes,10\n") && text.contains("sink.stdout.breaker,closed\n"));
        assert!(!text.contains("connections"));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(1536), "1.5 KiB");
        assert_eq!(bytes_text(3 * 1024 * 1024), "3.0 MiB");
    }
}
