//! The agent's gRPC API (`proto/agent.proto`) on a Unix socket.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use daemoneye_lib::detection::{Params, Query, Value};
use daemoneye_lib::proto::agent_api_server::{AgentApi, AgentApiServer};
use daemoneye_lib::proto::{
    ComponentHealth, HealthRequest, HealthResponse, HealthStatus, ListAlertsRequest, ListAlertsResponse, QueryRequest,
    QueryResponse, SqlRow, SqlValue, sql_value,
};
use daemoneye_lib::proto::{DetectionResult, RunTaskRequest, WatchProcessTreeRequest};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::pipeline::Shared;
use crate::table::QueryTables;

/// The service implementation.
#[derive(Debug)]
pub struct Api {
    shared: Arc<Shared>,
    started_ms: i64,
    bus: Option<crate::bus::BusServices>,
}

/// Serves the API on `socket` until `cancel`.
/// `bus`: statistics and detection tasks (`None`: those calls answer "unavailable").
pub async fn serve(
    shared: Arc<Shared>,
    bus: Option<crate::bus::BusServices>,
    socket: &Path,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    if socket.exists() {
        std::fs::remove_file(socket).with_context(|| format!("removing stale agent socket {}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding the agent API socket {}", socket.display()))?;
    set_mode(socket, 0o660)?;
    let api = Api { shared, started_ms: daemoneye_lib::models::time::now_ms(), bus };
    tracing::info!(socket = %socket.display(), "agent API listening");
    tonic::transport::Server::builder()
        .add_service(AgentApiServer::new(api))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), cancel.cancelled_owned())
        .await
        .context("agent API server failed")?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))
}

fn to_sql(v: &Value) -> SqlValue {
    let value = match v {
        Value::Null => sql_value::Value::Null(true),
        Value::Integer(i) => sql_value::Value::Integer(*i),
        Value::Real(r) => sql_value::Value::Real(*r),
        Value::Text(s) => sql_value::Value::Text(s.clone()),
    };
    SqlValue { value: Some(value) }
}

fn from_sql(v: &SqlValue) -> Value {
    match &v.value {
        None | Some(sql_value::Value::Null(_)) => Value::Null,
        Some(sql_value::Value::Integer(i)) => Value::Integer(*i),
        Some(sql_value::Value::Real(r)) => Value::Real(*r),
        Some(sql_value::Value::Text(s)) => Value::Text(s.clone()),
    }
}

#[tonic::async_trait]
impl AgentApi for Api {
    type WatchProcessTreeStream = crate::api_tasks::WatchStream;

    async fn run_task(&self, request: Request<RunTaskRequest>) -> Result<Response<DetectionResult>, Status> {
        crate::api_tasks::run_task(self.bus.as_ref().map(|b| &b.tasks), request.into_inner()).await
    }

    async fn watch_process_tree(
        &self,
        request: Request<WatchProcessTreeRequest>,
    ) -> Result<Response<Self::WatchProcessTreeStream>, Status> {
        crate::api_tasks::watch(self.bus.as_ref().map(|b| &b.tasks), request.into_inner()).await
    }

    async fn list_rules(
        &self,
        _request: Request<daemoneye_lib::proto::ListRulesRequest>,
    ) -> Result<Response<daemoneye_lib::proto::ListRulesResponse>, Status> {
        Ok(Response::new(crate::api_rules::list_rules(&self.shared)))
    }

    async fn reload_rules(
        &self,
        _request: Request<daemoneye_lib::proto::ReloadRulesRequest>,
    ) -> Result<Response<daemoneye_lib::proto::ListRulesResponse>, Status> {
        crate::api_rules::reload_rules(Arc::clone(&self.shared)).await.map(Response::new)
    }

    async fn query(&self, request: Request<QueryRequest>) -> Result<Response<QueryResponse>, Status> {
        let req = request.into_inner();
        let query = Query::compile(&req.sql).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut params = Params::default();
        for p in &req.params {
            let v = p.value.as_ref().map_or(Value::Null, from_sql);
            if p.name.is_empty() {
                params.positional.push(v);
            } else {
                params.named.insert(p.name.trim_start_matches([':', '@', '$']).to_owned(), v);
            }
        }
        let mut limits = self.shared.limits.clone();
        if req.max_rows > 0 {
            limits.max_rows = limits.max_rows.min(req.max_rows);
        }
        let shared = Arc::clone(&self.shared);
        let result = tokio::task::spawn_blocking(move || {
            let table = shared.table.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let tables = QueryTables::with_store(&table, &shared.store);
            let rs = query.execute(&tables, &params, &limits);
            (rs, tables.take_error())
        })
        .await
        .map_err(|e| Status::internal(format!("query task failed: {e}")))?;
        let rs = match result {
            (_, Some(store_err)) => return Err(Status::unavailable(store_err.to_string())),
            (Ok(rs), None) => rs,
            (Err(e), None) => return Err(Status::invalid_argument(e.to_string())),
        };
        Ok(Response::new(QueryResponse {
            columns: rs.columns.to_vec(),
            rows: rs.rows.iter().map(|r| SqlRow { values: r.iter().map(to_sql).collect() }).collect(),
            truncated: rs.truncated,
        }))
    }

    async fn list_alerts(&self, request: Request<ListAlertsRequest>) -> Result<Response<ListAlertsResponse>, Status> {
        let req = request.into_inner();
        let store = Arc::clone(&self.shared.store);
        let mut alerts = tokio::task::spawn_blocking(move || store.alerts())
            .await
            .map_err(|e| Status::internal(format!("alert task failed: {e}")))?
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if let Some(rule) = &req.rule_id {
            alerts.retain(|a| &a.rule_id == rule);
        }
        if let Some(since) = req.since_ms {
            alerts.retain(|a| a.alert_time_ms >= since);
        }
        if req.limit > 0 {
            let keep = req.limit as usize;
            if alerts.len() > keep {
                alerts.drain(..alerts.len() - keep);
            }
        }
        Ok(Response::new(ListAlertsResponse { alerts }))
    }

    async fn health(&self, _request: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        let h = &self.shared.health;
        let pm = h.procmond();
        let collector = h.collector();
        let rules = self.shared.rules();
        let (alive, total) = self.shared.table.read().map(|t| t.counts()).unwrap_or_default();
        let procmond_status = if pm.pid.is_some() { HealthStatus::Healthy } else { HealthStatus::Unhealthy };
        let procmond_detail = match (&pm.pid, &pm.error, &pm.last_exit) {
            (Some(_), _, _) => "running".to_owned(),
            (None, Some(err), _) => err.clone(),
            (None, None, Some(exit)) => format!("not running (last {exit})"),
            (None, None, None) => "not running".to_owned(),
        };
        let rules_failed = u32::try_from(rules.errors.len()).unwrap_or(u32::MAX);
        let rule_status = if rules_failed > 0 { HealthStatus::Degraded } else { HealthStatus::Healthy };
        let components = vec![
            ComponentHealth {
                name: "agent".into(),
                status: HealthStatus::Healthy as i32,
                detail: "running".into(),
                pid: Some(std::process::id()),
                restarts: 0,
                running_since_ms: Some(self.started_ms),
            },
            ComponentHealth {
                name: "procmond".into(),
                status: procmond_status as i32,
                detail: procmond_detail,
                pid: pm.pid,
                restarts: pm.restarts,
                running_since_ms: pm.running_since_ms,
            },
            ComponentHealth {
                name: "rules".into(),
                status: rule_status as i32,
                detail: format!("{} loaded, {} failed", rules.rules.len(), rules_failed),
                pid: None,
                restarts: 0,
                running_since_ms: None,
            },
        ];
        let overall = components.iter().map(|c| c.status).max().unwrap_or(HealthStatus::Healthy as i32);
        Ok(Response::new(HealthResponse {
            status: overall,
            components,
            backend: collector.as_ref().map(|c| c.backend.clone()).unwrap_or_default(),
            events_received: h.events_received.load(Relaxed),
            events_lost: collector.as_ref().map_or(0, |c| c.events_lost),
            last_applied_seq: h.last_applied_seq.load(Relaxed),
            rules_loaded: u32::try_from(rules.rules.len()).unwrap_or(u32::MAX),
            rules_failed,
            processes_alive: alive,
            processes_total: total,
            alerts_total: h.alerts_raised.load(Relaxed),
            events_per_second: collector.as_ref().map_or(0.0, |c| c.events_per_second),
            version: env!("CARGO_PKG_VERSION").into(),
            agent_started_ms: self.started_ms,
            bus: self.bus.as_ref().map(|b| crate::bus::bus_health(&b.broker.stats())),
        }))
    }
}
