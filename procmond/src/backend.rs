//! Choosing the telemetry backend: one code path for every OS.
//!
//! The preference order is the platform's kernel source first, then the
//! fallbacks; `auto` takes the first that starts and records why the
//! others did not; a forced backend that cannot start is an error.

use collector_core::source::EventSource;
use daemoneye_lib::config::{Backend, Config};

/// The backend that was started, and why the better ones were not.
pub(crate) struct Chosen {
    /// The source to run.
    pub(crate) source: Box<dyn EventSource>,
    /// Its name as reported in health ("ebpf", "proc_connector", "poll").
    pub(crate) name: &'static str,
    /// One line per backend that was tried and not taken.
    pub(crate) notes: Vec<String>,
}

impl std::fmt::Debug for Chosen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chosen").field("name", &self.name).field("notes", &self.notes).finish()
    }
}

/// Tries the backends in order of preference.
pub(crate) fn choose(config: &Config) -> anyhow::Result<Chosen> {
    let wanted = config.procmond.backend;
    let order: Vec<Backend> = match wanted {
        Backend::Auto => crate::platform::auto_order().to_vec(),
        forced => vec![forced],
    };
    let mut notes = Vec::new();
    for b in order {
        match start(b, config) {
            Ok((source, name)) => return Ok(Chosen { source, name, notes }),
            Err(why) => {
                tracing::info!(backend = b.as_str(), reason = %why, "backend not available");
                notes.push(format!("{}: {why}", b.as_str()));
            }
        }
    }
    anyhow::bail!("no telemetry backend could start (asked for {}): {}", wanted.as_str(), notes.join("; "))
}

fn start(b: Backend, config: &Config) -> Result<(Box<dyn EventSource>, &'static str), String> {
    match b {
        Backend::Poll => Ok((crate::platform::poll_source(config)?, "poll")),
        Backend::Ebpf => crate::platform::ebpf_source(config).map(|s| (s, "ebpf")),
        Backend::ProcConnector => crate::platform::proc_connector_source(config).map(|s| (s, "proc_connector")),
        Backend::Etw => crate::platform::etw_source(config).map(|s| (s, "etw")),
        Backend::EndpointSecurity => {
            crate::platform::endpoint_security_source(config).map(|s| (s, "endpoint_security"))
        }
        Backend::Auto => Err("auto is not a backend".into()),
    }
}
