//! Logging set-up shared by the binaries: `tracing` to stderr, filtered by
//! `RUST_LOG` or the configured level. Machine output goes to stdout, so logs
//! never mix with it.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?}: expected \"text\" or \"json\"")),
        }
    }
}

/// Installs the global subscriber. `default_level` applies when `RUST_LOG`
/// is not set. Calling it twice is harmless (the second call is ignored).
pub fn init_logging(default_level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Installs logging as `[general]` configures it (`log_level`, `log_format`).
pub fn init_from_config(general: &crate::config::GeneralConfig) -> Result<(), String> {
    let format: LogFormat = general.log_format.parse()?;
    init_logging(&general.log_level, format);
    Ok(())
}
