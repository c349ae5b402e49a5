//! Connecting to the agent's gRPC API over its Unix socket.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use daemoneye_lib::proto::agent_api_client::AgentApiClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// A connected API client.
pub(crate) type Client = AgentApiClient<Channel>;

/// Connects to the agent listening on `socket`.
pub(crate) async fn connect(socket: &Path) -> anyhow::Result<Client> {
    if !socket.exists() {
        anyhow::bail!(
            "no agent socket at {}: is daemoneye-agent running? Point to it with --socket or --data-dir",
            socket.display()
        );
    }
    let path: PathBuf = socket.to_owned();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://daemoneye-agent.local")
        .context("building the endpoint")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .with_context(|| format!("connecting to the agent at {}", socket.display()))?;
    Ok(AgentApiClient::new(channel))
}

/// Renders a gRPC error for a person: the agent's message without the
/// transport noise.
pub(crate) fn status_error(what: &str, s: &tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::InvalidArgument => anyhow::anyhow!("{what}: {}", s.message()),
        tonic::Code::Unavailable => {
            anyhow::anyhow!("{what}: the agent is unavailable ({}); check that daemoneye-agent is running", s.message())
        }
        code => anyhow::anyhow!("{what}: {} ({code:?})", s.message()),
    }
}
