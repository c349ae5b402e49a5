//! Connecting to the agent's gRPC API over its Unix socket (a named pipe on
//! Windows; `daemoneye_eventbus::transport`), and errors that tell the
//! operator what to do.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use daemoneye_eventbus::transport;
use daemoneye_lib::proto::agent_api_client::AgentApiClient;
use daemoneye_lib::proto::{QueryParam, QueryRequest, SqlValue, sql_value};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connected API client.
pub(crate) type Client = AgentApiClient<Channel>;

/// How to start the agent, for error messages.
const START_HINT: &str = "start it (`systemctl start daemoneye-agent`, or `daemoneye-agent --data-dir DIR`), \
                          or point to its socket with --socket PATH or --data-dir DIR";

/// Connects to the agent listening on `socket`.
pub(crate) async fn connect(socket: &Path) -> anyhow::Result<Client> {
    // A first plain connect gives the OS's verdict (missing, refused,
    // permission denied) before tonic wraps it in transport noise.
    match transport::connect(socket).await {
        Ok(probe) => drop(probe),
        Err(e) => return Err(connect_error(socket, &e)),
    }
    let path: PathBuf = socket.to_owned();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://daemoneye-agent.local")
        .context("building the endpoint")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { transport::connect(&path).await.map(TokioIo::new) }
        }))
        .await
        .with_context(|| format!("connecting to the agent at {}", socket.display()))?;
    Ok(AgentApiClient::new(channel))
}

/// What went wrong connecting to `socket`, and what to do about it.
fn connect_error(socket: &Path, e: &std::io::Error) -> anyhow::Error {
    let path = socket.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            anyhow::anyhow!(
                "no agent socket at {path}: is daemoneye-agent running with this data directory? {START_HINT}"
            )
        }
        std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "nothing listens on the agent socket {path} (left over from an agent that stopped or crashed); {START_HINT}"
        ),
        std::io::ErrorKind::PermissionDenied => permission_denied(socket),
        _ => anyhow::anyhow!("cannot connect to the agent socket {path}: {e}; {START_HINT}"),
    }
}

#[cfg(unix)]
fn permission_denied(socket: &Path) -> anyhow::Error {
    let group = socket_group(socket);
    anyhow::anyhow!(
        "permission denied on the agent socket {} ({}): the socket is for its group; add your user to \
         group {group} (`sudo usermod -aG {group} $USER`, then log in again), or run as root",
        socket.display(),
        socket_mode(socket)
    )
}

#[cfg(windows)]
fn permission_denied(socket: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "permission denied on the agent pipe {}: it admits SYSTEM and elevated administrators only; run the CLI \
         from an elevated prompt (Run as administrator)",
        socket.display()
    )
}

/// The socket's group name (or gid), `daemoneye` when it cannot be read.
#[cfg(unix)]
fn socket_group(socket: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(socket) else { return "daemoneye".into() };
    match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(meta.gid())) {
        Ok(Some(g)) => g.name,
        _ => meta.gid().to_string(),
    }
}

#[cfg(unix)]
fn socket_mode(socket: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(socket)
        .map(|m| format!("mode {:o}, uid {}, gid {}", m.mode() & 0o7777, m.uid(), m.gid()))
        .unwrap_or_else(|_| "its directory is not readable".into())
}

/// Rows of a query, as JSON cells.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    /// Column names.
    pub(crate) columns: Vec<String>,
    /// Rows, one JSON value per column.
    pub(crate) rows: Vec<Vec<serde_json::Value>>,
    /// The agent's row limit cut the result.
    pub(crate) truncated: bool,
}

impl Rows {
    /// Each row as an object keyed by column name.
    pub(crate) fn objects(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        self.rows.iter().map(|r| self.columns.iter().cloned().zip(r.iter().cloned()).collect()).collect()
    }
}

/// A named query parameter (`:name` in the SQL).
pub(crate) fn param(name: &str, value: sql_value::Value) -> QueryParam {
    QueryParam { name: name.to_owned(), value: Some(SqlValue { value: Some(value) }) }
}

/// Runs a query through the agent (`what` names it in errors).
pub(crate) async fn query(
    client: &mut Client,
    what: &str,
    sql: String,
    params: Vec<QueryParam>,
    max_rows: u64,
) -> anyhow::Result<Rows> {
    let resp =
        client.query(QueryRequest { sql, params, max_rows }).await.map_err(|s| status_error(what, &s))?.into_inner();
    Ok(Rows {
        columns: resp.columns,
        rows: resp.rows.iter().map(|r| r.values.iter().map(sql_json).collect()).collect(),
        truncated: resp.truncated,
    })
}

/// A SQL value as JSON (NULL as null).
pub(crate) fn sql_json(v: &SqlValue) -> serde_json::Value {
    use serde_json::Value as Json;
    match &v.value {
        None | Some(sql_value::Value::Null(_)) => Json::Null,
        Some(sql_value::Value::Integer(i)) => Json::from(*i),
        Some(sql_value::Value::Real(r)) => serde_json::Number::from_f64(*r).map_or(Json::Null, Json::Number),
        Some(sql_value::Value::Text(s)) => Json::from(s.as_str()),
    }
}

/// Renders a gRPC error for a person: the agent's message without the
/// transport noise.
pub(crate) fn status_error(what: &str, s: &tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => anyhow::anyhow!("{what}: {}", s.message()),
        tonic::Code::Unavailable => {
            anyhow::anyhow!("{what}: the agent is unavailable ({}); check that daemoneye-agent is running", s.message())
        }
        tonic::Code::Unimplemented => anyhow::anyhow!(
            "{what}: the agent does not know this call ({}); it is older than this CLI: upgrade or restart it",
            s.message()
        ),
        code => anyhow::anyhow!("{what}: {} ({code:?})", s.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_name_the_socket_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = daemoneye_lib::config::local_endpoint(dir.path(), "agent", cfg!(windows));
        let e = format!("{:#}", connect(&missing).await.unwrap_err());
        assert!(e.contains(&missing.display().to_string()) && e.contains("daemoneye-agent"), "{e}");

        // A socket file nobody listens on.
        #[cfg(unix)]
        {
            let stale = dir.path().join("stale.sock");
            drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
            let e = format!("{:#}", connect(&stale).await.unwrap_err());
            assert!(e.contains("nothing listens") && e.contains(&stale.display().to_string()), "{e}");
        }
    }
}
