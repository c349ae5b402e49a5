//! The agent's gRPC API (`proto/agent.proto`) on a Unix socket (a named pipe
//! on Windows), through the event bus's transport layer.

use std::path::Path;
use std::sync::Arc;

use daemoneye_eventbus::transport::{self, BindOptions, Listener};
use daemoneye_lib::detection::{Params, Query, Value};
use daemoneye_lib::proto::agent_api_server::{AgentApi, AgentApiServer};
use daemoneye_lib::proto::{DetectionResult, RunTaskRequest, WatchProcessTreeRequest};
use daemoneye_lib::proto::{
    GetAlertRequest, GetAlertResponse, HealthRequest, HealthResponse, ListAlertsRequest, ListAlertsResponse,
    MetricsRequest, MetricsResponse, QueryRequest, QueryResponse, RuleInfo, SetRuleEnabledRequest, SqlRow, SqlValue,
    TestRuleRequest, TestRuleResponse, WatchAlertsRequest, sql_value,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::health::HealthSource;
use crate::pipeline::Shared;
use crate::table::QueryTables;

/// The service implementation.
#[derive(Debug)]
pub struct Api {
    shared: Arc<Shared>,
    health: HealthSource,
    bus: Option<crate::bus::BusServices>,
    /// Ends the open streams (`WatchAlerts`) at shutdown.
    cancel: CancellationToken,
}

/// Serves the API on `socket` (a pipe name on Windows) until `cancel`.
/// `bus`: statistics and detection tasks (`None`: those calls answer "unavailable").
pub async fn serve(
    shared: Arc<Shared>,
    bus: Option<crate::bus::BusServices>,
    socket: &Path,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use tokio_stream::StreamExt as _;
    // Bound like the bus: mode 0660 before the socket is reachable, a stale
    // socket replaced, a live agent's refused; on Windows a pipe for SYSTEM
    // and Administrators only. Dropping the listener removes the socket.
    let listener = Listener::bind(socket, &BindOptions { mode: 0o660, gid: None })
        .await
        .with_context(|| format!("binding the agent API socket {}", socket.display()))?;
    let health = HealthSource::new(Arc::clone(&shared), bus.as_ref().map(|b| b.broker.clone()));
    let api = Api { shared, health, bus, cancel: cancel.clone() };
    tracing::info!(socket = %socket.display(), "agent API listening");
    let incoming = listener.into_incoming().map(|conn| conn.map(ApiConn));
    tonic::transport::Server::builder()
        .add_service(AgentApiServer::new(api))
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await
        .context("agent API server failed")?;
    Ok(())
}

/// One API connection as tonic takes it. No connect info: who may connect
/// is decided by the socket's mode (the pipe's descriptor on Windows).
struct ApiConn(transport::Stream);

impl tonic::transport::server::Connected for ApiConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for ApiConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ApiConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A SQL value on the wire.
pub(crate) fn to_sql(v: &Value) -> SqlValue {
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
    type WatchAlertsStream = crate::api_alerts::AlertStream;

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
            let table = shared.table_snapshot();
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
        crate::api_alerts::list(&self.shared, request.into_inner()).await.map(Response::new)
    }

    async fn get_alert(&self, request: Request<GetAlertRequest>) -> Result<Response<GetAlertResponse>, Status> {
        crate::api_alerts::get(&self.shared, request.into_inner()).await.map(Response::new)
    }

    async fn watch_alerts(
        &self,
        request: Request<WatchAlertsRequest>,
    ) -> Result<Response<Self::WatchAlertsStream>, Status> {
        let stream = crate::api_alerts::watch(Arc::clone(&self.shared), request.into_inner(), self.cancel.clone());
        Ok(Response::new(stream))
    }

    async fn test_rule(&self, request: Request<TestRuleRequest>) -> Result<Response<TestRuleResponse>, Status> {
        crate::api_rules::test_rule(Arc::clone(&self.shared), request.into_inner()).await.map(Response::new)
    }

    async fn set_rule_enabled(&self, request: Request<SetRuleEnabledRequest>) -> Result<Response<RuleInfo>, Status> {
        crate::api_rules::set_enabled(Arc::clone(&self.shared), request.into_inner()).await.map(Response::new)
    }

    async fn health(&self, _request: Request<HealthRequest>) -> Result<Response<HealthResponse>, Status> {
        let source = self.health.clone();
        tokio::task::spawn_blocking(move || source.snapshot())
            .await
            .map(Response::new)
            .map_err(|e| Status::internal(format!("health task failed: {e}")))
    }

    async fn metrics(&self, _request: Request<MetricsRequest>) -> Result<Response<MetricsResponse>, Status> {
        let source = self.health.clone();
        tokio::task::spawn_blocking(move || crate::metrics::text(&source))
            .await
            .map(|text| Response::new(MetricsResponse { text }))
            .map_err(|e| Status::internal(format!("metrics task failed: {e}")))
    }
}
