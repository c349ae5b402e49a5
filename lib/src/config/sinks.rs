//! `[[alerts.sinks]]`: where alerts are delivered besides stdout.
//!
//! One flat table per sink: `type` chooses the sink, the keys of the other
//! types must not be set (checked by [`SinkConfig::validate`], which names the
//! sink and the key), and the delivery keys (queue, retries, circuit breaker)
//! apply to every type.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

/// The kind of a sink.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkType {
    /// JSON lines on the agent's stdout.
    Stdout,
    /// JSON lines appended to a file, rotated by size.
    File,
    /// RFC 5424 messages to a unix socket, UDP or TCP.
    Syslog,
    /// HTTP(S) POST of the alert JSON.
    Webhook,
}

impl SinkType {
    /// The name as written in config (`type = "..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            SinkType::Stdout => "stdout",
            SinkType::File => "file",
            SinkType::Syslog => "syslog",
            SinkType::Webhook => "webhook",
        }
    }
}

/// One `[[alerts.sinks]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The sink kind.
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// Unique name, used in logs, metrics and the outbox (default: the type).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,

    /// file: the JSON-lines file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// file: rotate when the file would grow past this size (default 64MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    /// file: rotated files kept as `<path>.1` .. `<path>.N` (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_files: Option<u32>,

    /// syslog: `unix:///dev/log`, `udp://HOST:PORT` or `tcp://HOST:PORT`
    /// (default `unix:///dev/log`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// syslog: facility name, e.g. `daemon`, `auth`, `local0` (default `daemon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facility: Option<String>,
    /// syslog: APP-NAME (default `daemoneye`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,

    /// webhook: `https://...` (or `http://` on a trusted network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// webhook: extra request headers, e.g. `{ Authorization = "Bearer ..." }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// webhook: PEM file of extra CA certificates to trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,

    /// webhook and syslog over TCP: time limit of one delivery attempt.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Alerts waiting in memory for this sink; when full, new alerts wait in
    /// the store's outbox and are picked up from there (never dropped).
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// First retry delay; doubles per failed attempt up to `retry_max`.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest retry delay.
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// Consecutive failures that open the circuit breaker.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open breaker waits before one probe attempt (half-open).
    #[serde(default = "default_breaker_cooldown", with = "humantime_serde")]
    pub breaker_cooldown: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_queue_capacity() -> usize {
    1024
}
fn default_retry_initial() -> Duration {
    Duration::from_millis(500)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(60)
}
fn default_breaker_failures() -> u32 {
    5
}
fn default_breaker_cooldown() -> Duration {
    Duration::from_secs(30)
}

impl SinkConfig {
    /// The sink's name: `name`, or the type when unnamed.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() { self.kind.as_str() } else { &self.name }
    }

    /// Checks that the keys fit the type and the required ones are set.
    /// The message names the sink and the key.
    pub fn validate(&self) -> Result<(), String> {
        let who = format!("alerts.sinks {:?} (type {})", self.display_name(), self.kind.as_str());
        let foreign: &[(&str, bool, SinkType)] = &[
            ("path", self.path.is_some(), SinkType::File),
            ("max_size", self.max_size.is_some(), SinkType::File),
            ("max_files", self.max_files.is_some(), SinkType::File),
            ("address", self.address.is_some(), SinkType::Syslog),
            ("facility", self.facility.is_some(), SinkType::Syslog),
            ("app_name", self.app_name.is_some(), SinkType::Syslog),
            ("url", self.url.is_some(), SinkType::Webhook),
            ("headers", self.headers.is_some(), SinkType::Webhook),
            ("ca_file", self.ca_file.is_some(), SinkType::Webhook),
        ];
        for (key, set, owner) in foreign {
            if *set && *owner != self.kind {
                return Err(format!("{who}: `{key}` belongs to {} sinks; remove it", owner.as_str()));
            }
        }
        match self.kind {
            SinkType::File if self.path.as_ref().is_none_or(|p| p.as_os_str().is_empty()) => {
                return Err(format!("{who}: set `path` to the JSON-lines file to write"));
            }
            SinkType::Webhook => {
                let url = self.url.as_deref().unwrap_or_default();
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(format!("{who}: set `url` to an http:// or https:// address (got {url:?})"));
                }
            }
            _ => {}
        }
        if self.max_files == Some(0) {
            return Err(format!("{who}: `max_files` must be at least 1"));
        }
        if self.queue_capacity == 0 {
            return Err(format!("{who}: `queue_capacity` must be at least 1"));
        }
        if self.breaker_failures == 0 {
            return Err(format!("{who}: `breaker_failures` must be at least 1"));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(format!("{who}: need 0 < `retry_initial` <= `retry_max`"));
        }
        Ok(())
    }
}

/// Checks every sink and that names are unique (including the implicit
/// `stdout` sink when `alerts.stdout` is on).
pub fn validate_sinks(sinks: &[SinkConfig], stdout: bool) -> Result<(), String> {
    let mut names: Vec<&str> = if stdout { vec!["stdout"] } else { Vec::new() };
    for s in sinks {
        s.validate()?;
        let name = s.display_name();
        if names.contains(&name) {
            return Err(format!(
                "alerts.sinks: two sinks are named {name:?} (alerts.stdout = true is the sink \"stdout\"); give each a unique `name`"
            ));
        }
        names.push(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<Vec<SinkConfig>, String> {
        #[derive(Deserialize)]
        struct W {
            sinks: Vec<SinkConfig>,
        }
        use figment::providers::Format as _;
        figment::Figment::from(figment::providers::Toml::string(toml_text))
            .extract::<W>()
            .map(|w| w.sinks)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sinks_parse_with_defaults_and_validate() {
        let sinks = parse(
            "[[sinks]]\ntype = \"webhook\"\nname = \"soc\"\nurl = \"https://x.example/hook\"\nheaders = { Authorization = \"Bearer t\" }\ntimeout = \"2s\"\n\
             [[sinks]]\ntype = \"syslog\"\naddress = \"udp://127.0.0.1:514\"\n\
             [[sinks]]\ntype = \"file\"\npath = \"/tmp/a.jsonl\"\nmax_size = \"1MiB\"\n",
        )
        .unwrap();
        assert_eq!(sinks.len(), 3);
        assert_eq!(sinks[0].timeout, Duration::from_secs(2));
        assert_eq!(sinks[0].headers.as_ref().unwrap()["Authorization"], "Bearer t");
        assert_eq!(sinks[1].display_name(), "syslog");
        assert_eq!(sinks[2].max_size, Some(ByteSize::mib(1)));
        assert_eq!(sinks[2].breaker_failures, 5);
        validate_sinks(&sinks, true).unwrap();
    }

    #[test]
    fn bad_sinks_are_explained() {
        assert!(parse("[[sinks]]\ntype = \"webhook\"\nurll = \"x\"\n").unwrap_err().contains("urll"));
        let s = parse("[[sinks]]\ntype = \"file\"\nurl = \"http://x\"\npath = \"/a\"\n").unwrap();
        assert!(validate_sinks(&s, false).unwrap_err().contains("`url` belongs to webhook"));
        let s = parse("[[sinks]]\ntype = \"webhook\"\nurl = \"ftp://x\"\n").unwrap();
        assert!(validate_sinks(&s, false).unwrap_err().contains("http://"));
        let s = parse("[[sinks]]\ntype = \"stdout\"\n").unwrap();
        assert!(validate_sinks(&s, true).unwrap_err().contains("unique"));
        let s = parse("[[sinks]]\ntype = \"file\"\n").unwrap();
        assert!(validate_sinks(&s, false).unwrap_err().contains("path"));
    }
}
