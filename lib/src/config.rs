//! The one configuration loader: figment layers over the embedded defaults.
//!
//! Layers, lowest first: [`DEFAULT_CONFIG_TOML`] < `/etc/daemoneye/config.toml`
//! < the user's config < `--config FILE` (replaces the two files) <
//! `DAEMONEYE_<SECTION>__<KEY>` < command-line overrides. Unknown keys are
//! errors, reported with the layer they came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[cfg(feature = "flags")]
mod flags;
mod sinks;

#[cfg(feature = "flags")]
pub use flags::DaemonFlags;
pub use sinks::{SinkConfig, SinkType, validate_sinks};

/// The built-in defaults, with comments: also what `service install` writes.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config/default.toml");

/// The system-wide config file.
pub const SYSTEM_CONFIG_PATH: &str = "/etc/daemoneye/config.toml";

/// Errors from loading configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is missing, of the wrong type, or an unknown key was given.
    /// The message names the key and the layer (file, env var) it came from.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An explicitly named config file does not exist.
    #[error("config file {0} does not exist: check the --config path")]
    Missing(PathBuf),
}

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Paths and logging.
    pub general: GeneralConfig,
    /// The collector.
    pub procmond: ProcmondConfig,
    /// The agent's store and supervisor.
    pub agent: AgentConfig,
    /// Detection rules and query limits.
    pub rules: RulesConfig,
    /// Alert handling.
    pub alerts: AlertsConfig,
    /// The event bus.
    pub bus: BusConfig,
    /// The audit ledger.
    pub ledger: LedgerConfig,
}

/// The range of `general.latency_slice` the kernel takes (it clamps to it).
const MIN_LATENCY_SLICE: Duration = Duration::from_micros(100);
const MAX_LATENCY_SLICE: Duration = Duration::from_millis(100);

/// `[general]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GeneralConfig {
    /// Store, ledger and default socket directory.
    pub data_dir: PathBuf,
    /// Socket directory; empty means `<data_dir>/run`.
    pub run_dir: PathBuf,
    /// Default log level.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// The scheduler time slice both daemons ask for (0: the kernel's
    /// default); see [`crate::daemon::request_latency_slice`].
    #[serde(with = "humantime_serde")]
    pub latency_slice: Duration,
}

/// The kernel telemetry backend procmond uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The best that works: the platform's kernel source first (Linux: ebpf,
    /// then proc-connector; Windows: etw; macOS: endpoint-security), then poll.
    Auto,
    /// eBPF tracepoints (Linux).
    Ebpf,
    /// Netlink proc connector (Linux).
    ProcConnector,
    /// Periodic diffing of the process list (every OS; lossy).
    Poll,
    /// ETW `Microsoft-Windows-Kernel-Process` (Windows).
    Etw,
    /// EndpointSecurity (macOS).
    EndpointSecurity,
}

impl Backend {
    /// The name as written in config and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Ebpf => "ebpf",
            Backend::ProcConnector => "proc-connector",
            Backend::Poll => "poll",
            Backend::Etw => "etw",
            Backend::EndpointSecurity => "endpoint-security",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "ebpf" => Ok(Self::Ebpf),
            "proc-connector" | "proc_connector" => Ok(Self::ProcConnector),
            "poll" => Ok(Self::Poll),
            "etw" => Ok(Self::Etw),
            "endpoint-security" | "endpoint_security" => Ok(Self::EndpointSecurity),
            other => Err(format!(
                "unknown backend {other:?}: expected auto, ebpf, proc-connector, etw, endpoint-security or poll"
            )),
        }
    }
}

/// `[procmond]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcmondConfig {
    /// Telemetry backend.
    pub backend: Backend,
    /// procmond binary; empty means next to the agent.
    pub binary: PathBuf,
    /// eBPF ring buffer size; also the proc connector socket receive buffer.
    pub ringbuf_size: ByteSize,
    /// Poll backend interval.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Resource sampling interval (zero: off).
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// Largest executable that is hashed.
    pub hash_max_size: ByteSize,
    /// Hashing threads.
    pub hash_workers: usize,
    /// Hash cache entries.
    pub hash_cache_entries: usize,
}

/// `[agent]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Unprivileged user to switch to after start (empty: none).
    pub user: String,
    /// Group to switch to with `user` (empty: the user's primary group).
    pub group: String,
    /// Restart back-off lower bound.
    #[serde(with = "humantime_serde")]
    pub restart_backoff_min: Duration,
    /// Restart back-off upper bound.
    #[serde(with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// Uptime after which the back-off resets.
    #[serde(with = "humantime_serde")]
    pub restart_reset_after: Duration,
    /// Deltas per store transaction.
    pub batch_size: usize,
    /// How long exited processes stay in the table.
    #[serde(with = "humantime_serde")]
    pub process_retention: Duration,
    /// How long events stay queryable.
    #[serde(with = "humantime_serde")]
    pub event_retention: Duration,
    /// Exited processes kept at most, whatever their age (the longest
    /// exited go first).
    pub max_exited_processes: usize,
    /// Events kept at most, whatever their age (the oldest go first).
    pub max_events: u64,
    /// Serve Prometheus metrics on `GET /metrics` at this loopback address
    /// (absent: no listener; `daemoneye-cli metrics` works either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// `[rules]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// Rule directory.
    pub dir: PathBuf,
    /// Table rule interval.
    #[serde(with = "humantime_serde")]
    pub table_interval: Duration,
    /// Per-query time limit.
    #[serde(with = "humantime_serde")]
    pub query_timeout: Duration,
    /// Per-query row limit.
    pub max_rows: u64,
}

/// `[alerts]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Dedupe window.
    #[serde(with = "humantime_serde")]
    pub dedupe_window: Duration,
    /// JSON lines on stdout (the sink named `stdout`).
    pub stdout: bool,
    /// `[[alerts.sinks]]`: file, syslog, webhook (and more stdout) sinks.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

/// `[bus]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Frame size cap.
    pub max_frame_size: ByteSize,
    /// Per-subscription queue capacity.
    pub queue_capacity: usize,
    /// Group (name or numeric gid) of the bus socket; empty: the agent's group.
    #[serde(default)]
    pub socket_group: String,
    /// Interval of the agent's `control.health.bus` statistics message.
    #[serde(with = "humantime_serde", default = "default_bus_health_interval")]
    pub health_interval: Duration,
    /// Access rules in order (first match wins); empty: the built-in policy.
    #[serde(default)]
    pub acl: Vec<BusAclRule>,
}

fn default_bus_health_interval() -> Duration {
    Duration::from_secs(5)
}

/// One `[[bus.acl]]` rule. Principals: `any`, `root`, `broker` (the agent's
/// user), `uid:N`, `gid:N`, `user:NAME`, `group:NAME`, `exe:PATH-or-NAME`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BusAclRule {
    /// Topic pattern (`+` and `#` allowed).
    pub pattern: String,
    /// `public`, `restricted` or `privileged`.
    pub level: String,
    /// Who may publish to matching topics.
    #[serde(default)]
    pub publishers: Vec<String>,
    /// Who may subscribe to matching topics.
    #[serde(default)]
    pub subscribers: Vec<String>,
}

/// `[ledger]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// Segment rotation size.
    pub segment_size: ByteSize,
    /// Records per group commit, at most.
    pub commit_batch: usize,
    /// Time per group commit, at most.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Least time between two fdatasyncs of committed records (0: one per
    /// commit). Committed records are always written (readers and the
    /// agent see them) before they are published; this bounds what a power
    /// loss can take, like auditd's incremental flush.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Records between checkpoints.
    pub checkpoint_every: u64,
    /// Time between checkpoints.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
}

/// What the binary's command line says about configuration.
#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// `--config FILE`: replaces the system and user files.
    pub config_file: Option<PathBuf>,
    /// Skip `/etc` and the user config (tests, `xtask run`).
    pub skip_system_files: bool,
    /// Flag values, as `section.key` = TOML value; the top layer.
    pub overrides: Vec<(String, toml_value::Value)>,
}

/// Re-export of the value type used for overrides.
pub mod toml_value {
    pub use figment::value::Value;
}

impl LoadOptions {
    /// Adds a command-line override, e.g. `("general.data_dir", "/tmp/d")`.
    pub fn set(&mut self, key: &str, value: impl Into<toml_value::Value>) -> &mut Self {
        self.overrides.push((key.to_owned(), value.into()));
        self
    }
}

impl Config {
    /// Loads the layered configuration.
    pub fn load(opts: &LoadOptions) -> Result<Self, ConfigError> {
        let config: Self = Self::figment(opts)?.extract().map_err(|e| ConfigError::Invalid(render_errors(e)))?;
        validate_sinks(&config.alerts.sinks, config.alerts.stdout).map_err(ConfigError::Invalid)?;
        if let Some(addr) = config.agent.metrics_listen.filter(|a| !a.ip().is_loopback()) {
            return Err(ConfigError::Invalid(format!(
                "agent.metrics_listen = \"{addr}\": not a loopback address; the metrics listener serves this \
                 host only (use 127.0.0.1:PORT or [::1]:PORT)"
            )));
        }
        let slice = config.general.latency_slice;
        if !slice.is_zero() && !(MIN_LATENCY_SLICE..=MAX_LATENCY_SLICE).contains(&slice) {
            return Err(ConfigError::Invalid(format!(
                "general.latency_slice = {slice:?}: outside what the scheduler accepts; use 0s (the kernel's \
                 default) or a value from 100us to 100ms"
            )));
        }
        Ok(config)
    }

    /// The layered figment (for `config show` with sources).
    pub fn figment(opts: &LoadOptions) -> Result<Figment, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULT_CONFIG_TOML));
        match &opts.config_file {
            Some(path) => {
                if !path.exists() {
                    return Err(ConfigError::Missing(path.clone()));
                }
                fig = fig.merge(Toml::file_exact(path));
            }
            None if !opts.skip_system_files => {
                // Optional layers: merged only when present (a missing
                // file is not an error, an unreadable one is).
                let system = Path::new(SYSTEM_CONFIG_PATH);
                if system.exists() {
                    fig = fig.merge(Toml::file_exact(system));
                }
                if let Some(user) = user_config_path().filter(|p| p.exists()) {
                    fig = fig.merge(Toml::file_exact(user));
                }
            }
            None => {}
        }
        // DAEMONEYE_PROCMOND__BACKEND -> procmond.backend
        fig = fig.merge(Env::prefixed("DAEMONEYE_").split("__"));
        for (key, value) in &opts.overrides {
            fig = fig.merge(Serialized::global(key.as_str(), value.clone()));
        }
        Ok(fig)
    }

    /// The socket directory.
    pub fn run_dir(&self) -> PathBuf {
        if self.general.run_dir.as_os_str().is_empty() {
            self.general.data_dir.join("run")
        } else {
            self.general.run_dir.clone()
        }
    }

    /// The event bus endpoint: `<run_dir>/bus.sock`, a named pipe on
    /// Windows (see [`local_endpoint`]).
    pub fn bus_socket(&self) -> PathBuf {
        local_endpoint(&self.run_dir(), "bus", cfg!(windows))
    }

    /// The agent API endpoint: `<run_dir>/agent.sock`, a named pipe on
    /// Windows (see [`local_endpoint`]).
    pub fn agent_socket(&self) -> PathBuf {
        local_endpoint(&self.run_dir(), "agent", cfg!(windows))
    }

    /// The ledger directory.
    pub fn ledger_dir(&self) -> PathBuf {
        self.general.data_dir.join("ledger")
    }

    /// The redb store file.
    pub fn store_path(&self) -> PathBuf {
        self.general.data_dir.join("store.redb")
    }

    /// Renders the configuration as TOML.
    pub fn to_toml(&self) -> String {
        // Serializing plain structs of strings, numbers and paths cannot
        // fail; fall back to Debug rather than panic if it ever did.
        toml_string(self).unwrap_or_else(|e| format!("# cannot render as TOML: {e}\n{self:#?}"))
    }
}

/// Where the local service `name` (`bus`, `agent`) of the agent with
/// `run_dir` listens; the one place this is decided. Unix (`windows` false):
/// the socket `<run_dir>/<name>.sock`. Windows: the named pipe
/// `\\.\pipe\daemoneye-<name>-<16 hex digits>`, the digits from the SHA-256
/// of the run directory as Windows compares paths (ASCII case folded, `/` as
/// `\`, no trailing separator), so agents with different data directories
/// never share a pipe and the CLI finds the agent of the configuration it
/// reads.
pub fn local_endpoint(run_dir: &Path, name: &str, windows: bool) -> PathBuf {
    if !windows {
        return run_dir.join(format!("{name}.sock"));
    }
    use sha2::Digest as _;
    let dir = run_dir.to_string_lossy().to_ascii_lowercase().replace('/', "\\");
    let digest = sha2::Sha256::digest(dir.trim_end_matches('\\').as_bytes());
    PathBuf::from(format!(r"\\.\pipe\daemoneye-{name}-{}", hex::encode(&digest[..8])))
}

fn toml_string(c: &Config) -> Result<String, String> {
    let v = figment::value::Value::serialize(c).map_err(|e| e.to_string())?;
    let json = serde_json::to_value(&v).map_err(|e| e.to_string())?;
    render_toml(&json)
}

fn render_toml(v: &serde_json::Value) -> Result<String, String> {
    let mut out = String::new();
    let obj = v.as_object().ok_or("configuration is not a table")?;
    for (section, body) in obj {
        out.push_str(&format!("[{section}]\n"));
        if let Some(fields) = body.as_object() {
            for (k, val) in fields {
                out.push_str(&format!("{k} = {}\n", toml_inline(val)));
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// A JSON value as a TOML inline value: tables as `{ "k" = v }` (JSON's
/// strings, numbers and booleans are valid TOML as they are).
fn toml_inline(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => {
            format!("[{}]", items.iter().map(toml_inline).collect::<Vec<_>>().join(", "))
        }
        serde_json::Value::Object(fields) => {
            let body: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{} = {}", serde_json::Value::from(k.as_str()), toml_inline(v)))
                .collect();
            format!("{{ {} }}", body.join(", "))
        }
        other => other.to_string(),
    }
}

/// `$XDG_CONFIG_HOME/daemoneye/config.toml`, or `~/.config/...`.
pub fn user_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")))?;
    Some(base.join("daemoneye").join("config.toml"))
}

fn render_errors(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let source = err
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(src) => format!(" (from {} {src})", m.name),
                    None => format!(" (from {})", m.name),
                })
                .unwrap_or_default();
            let path = if err.path.is_empty() { String::new() } else { format!("{}: ", err.path.join(".")) };
            format!("{path}{}{source}", err.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_endpoints_are_sockets_on_unix_and_pipes_on_windows() {
        let run = Path::new("/var/lib/daemoneye/run");
        assert_eq!(local_endpoint(run, "bus", false), Path::new("/var/lib/daemoneye/run/bus.sock"));
        assert_eq!(local_endpoint(run, "agent", false), Path::new("/var/lib/daemoneye/run/agent.sock"));
        let pipe = |dir: &str, name: &str| local_endpoint(Path::new(dir), name, true).display().to_string();
        let bus = pipe(r"C:\ProgramData\DaemonEye\run", "bus");
        assert!(bus.starts_with(r"\\.\pipe\daemoneye-bus-"), "{bus}");
        assert_eq!(bus.len(), r"\\.\pipe\daemoneye-bus-".len() + 16, "{bus}");
        // The same directory however it is spelled; another directory or service differs.
        assert_eq!(bus, pipe(r"c:/programdata/daemoneye/run/", "bus"));
        assert_ne!(bus, pipe(r"C:\ProgramData\DaemonEye\run2", "bus"));
        assert_ne!(bus, pipe(r"C:\ProgramData\DaemonEye\run", "agent"));
    }

    fn isolated() -> LoadOptions {
        LoadOptions { skip_system_files: true, ..Default::default() }
    }

    #[test]
    fn embedded_defaults_load() {
        let c = Config::load(&isolated()).unwrap();
        assert_eq!(c.procmond.backend, Backend::Auto);
        assert_eq!(c.procmond.poll_interval, Duration::from_secs(1));
        assert_eq!(c.bus.max_frame_size, ByteSize::mib(4));
        assert_eq!(c.run_dir(), PathBuf::from("/var/lib/daemoneye/run"));
    }

    #[test]
    fn file_then_overrides_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[procmond]\nbackend = \"poll\"\n[general]\ndata_dir = \"/x\"\n").unwrap();
        let mut opts = LoadOptions { config_file: Some(file), ..Default::default() };
        opts.set("general.data_dir", "/y");
        let c = Config::load(&opts).unwrap();
        assert_eq!(c.procmond.backend, Backend::Poll);
        assert_eq!(c.general.data_dir, PathBuf::from("/y"));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[procmond]\nbakend = \"poll\"\n").unwrap();
        let opts = LoadOptions { config_file: Some(file.clone()), ..Default::default() };
        let err = Config::load(&opts).unwrap_err().to_string();
        assert!(err.contains("bakend"), "{err}");
        assert!(err.contains("bad.toml"), "{err}");

        std::fs::write(&file, "[agent]\nprocess_retention = \"soon\"\n").unwrap();
        let err = Config::load(&opts).unwrap_err().to_string();
        assert!(err.contains("agent.process_retention"), "{err}");
    }

    #[test]
    fn a_latency_slice_the_scheduler_would_not_take_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("slice.toml");
        let opts = LoadOptions { config_file: Some(file.clone()), ..Default::default() };
        for ok in ["0s", "100us", "2ms", "100ms"] {
            std::fs::write(&file, format!("[general]\nlatency_slice = \"{ok}\"\n")).unwrap();
            assert!(Config::load(&opts).is_ok(), "{ok}");
        }
        for bad in ["50us", "1s"] {
            std::fs::write(&file, format!("[general]\nlatency_slice = \"{bad}\"\n")).unwrap();
            let err = Config::load(&opts).unwrap_err().to_string();
            assert!(err.contains("general.latency_slice") && err.contains("100us to 100ms"), "{bad}: {err}");
        }
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let opts = LoadOptions { config_file: Some("/nonexistent/daemoneye.toml".into()), ..Default::default() };
        assert!(matches!(Config::load(&opts), Err(ConfigError::Missing(_))));
    }

    #[test]
    fn rendered_toml_with_sinks_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sinks.toml");
        std::fs::write(
            &file,
            "[[alerts.sinks]]\ntype = \"webhook\"\nurl = \"https://x.example/h\"\nheaders = { Authorization = \"Bearer t\" }\n",
        )
        .unwrap();
        let c = Config::load(&LoadOptions { config_file: Some(file.clone()), ..Default::default() }).unwrap();
        std::fs::write(&file, c.to_toml()).unwrap();
        assert_eq!(Config::load(&LoadOptions { config_file: Some(file), ..Default::default() }).unwrap(), c);
    }

    #[test]
    fn rendered_toml_loads_back() {
        let c = Config::load(&isolated()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("round.toml");
        std::fs::write(&file, c.to_toml()).unwrap();
        let opts = LoadOptions { config_file: Some(file), ..Default::default() };
        assert_eq!(Config::load(&opts).unwrap(), c);
    }
}
