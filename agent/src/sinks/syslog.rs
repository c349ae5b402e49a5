//! The syslog sink: RFC 5424 messages over a unix datagram socket
//! (`/dev/log`), UDP (one message per datagram, RFC 5426) or TCP
//! (octet-counted frames, RFC 6587 §3.4.1).
//!
//! A message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] BOM MSG`
//! with the alert's id, rule, severity and occurrence count as structured
//! data (SD-ID `daemoneye@32473`: 32473 is the documentation enterprise
//! number of RFC 5612) and the alert JSON as MSG.

use std::time::Duration;

use daemoneye_lib::models::alert_json;
use daemoneye_lib::proto::{Alert, Severity};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpStream, UdpSocket};

use super::SendError;

/// The SD-ID of the alert's structured data.
pub(super) const SD_ID: &str = "daemoneye@32473";

/// Largest UDP payload sent; bigger messages are refused (not truncated,
/// which would break the JSON).
const MAX_UDP: usize = 65_000;

/// Where messages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix datagram socket such as `/dev/log`.
    Unix(std::path::PathBuf),
    /// `host:port` over UDP.
    Udp(String),
    /// `host:port` over TCP.
    Tcp(String),
}

impl Address {
    /// Parses `unix:///dev/log`, `udp://host:port` or `tcp://host:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("unix://") {
            return Ok(Address::Unix(p.into()));
        }
        let (ctor, rest): (fn(String) -> Address, _) = if let Some(r) = s.strip_prefix("udp://") {
            (Address::Udp, r)
        } else if let Some(r) = s.strip_prefix("tcp://") {
            (Address::Tcp, r)
        } else {
            return Err(format!("syslog address {s:?}: expected unix:///PATH, udp://HOST:PORT or tcp://HOST:PORT"));
        };
        if rest.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(format!("syslog address {s:?}: expected HOST:PORT after the scheme"));
        }
        Ok(ctor(rest.to_owned()))
    }
}

/// The facility number of a name (`kern`=0 .. `local7`=23).
pub(super) fn facility(name: &str) -> Result<u8, String> {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .and_then(|i| u8::try_from(i).ok())
        .ok_or_else(|| format!("unknown syslog facility {name:?}: expected one of {}", NAMES.join(", ")))
}

/// The syslog severity of an alert severity.
fn severity_code(s: Severity) -> u8 {
    match s {
        Severity::Critical => 2,
        Severity::High => 3,
        Severity::Medium => 4,
        Severity::Low => 5,
        Severity::Unspecified => 6,
    }
}

/// The fixed header fields of one sender.
#[derive(Debug, Clone)]
pub struct Header {
    /// Facility number (0..=23).
    pub facility: u8,
    /// HOSTNAME (printable ASCII, at most 255).
    pub hostname: String,
    /// APP-NAME (printable ASCII, at most 48).
    pub app_name: String,
    /// PROCID.
    pub procid: String,
}

impl Header {
    /// This host and process, with the given facility and app name.
    pub fn local(facility: u8, app_name: &str) -> Self {
        let host = crate::os::hostname();
        Self {
            facility,
            hostname: header_field(&host, 255),
            app_name: header_field(app_name, 48),
            procid: std::process::id().to_string(),
        }
    }
}

/// One RFC 5424 message for `alert` (no trailing newline, no framing).
pub fn format(h: &Header, alert: &Alert) -> String {
    let pri = u16::from(h.facility) * 8 + u16::from(severity_code(alert.severity()));
    let json = alert_json(alert);
    let sev = json.get("severity").and_then(|v| v.as_str()).unwrap_or("unspecified");
    format!(
        "<{pri}>1 {ts} {host} {app} {procid} alert [{SD_ID} id=\"{id}\" rule_id=\"{rule}\" severity=\"{sev}\" occurrences=\"{occ}\"] \u{feff}{json}",
        ts = rfc3339_ms(alert.alert_time_ms),
        host = h.hostname,
        app = h.app_name,
        procid = h.procid,
        id = sd_escape(&alert.id),
        rule = sd_escape(&alert.rule_id),
        occ = alert.occurrences,
    )
}

/// A header field: printable US-ASCII without spaces, at most `max`
/// characters; `-` (the NILVALUE) when nothing is left.
fn header_field(s: &str, max: usize) -> String {
    let f: String = s.chars().filter(|c| c.is_ascii_graphic()).take(max).collect();
    if f.is_empty() { "-".into() } else { f }
}

/// PARAM-VALUE escaping: `"`, `\` and `]` get a backslash.
fn sd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Unix milliseconds as `YYYY-MM-DDThh:mm:ss.mmmZ`.
pub fn rfc3339_ms(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// A connected syslog sender; reconnects after a failure.
#[derive(Debug)]
pub(super) struct SyslogSink {
    address: Address,
    header: Header,
    timeout: Duration,
    tcp: Option<TcpStream>,
}

impl SyslogSink {
    /// A sender to `address` (nothing is opened until the first message).
    pub(super) fn new(address: Address, header: Header, timeout: Duration) -> Self {
        Self { address, header, timeout, tcp: None }
    }

    /// Sends one alert.
    pub(super) async fn send(&mut self, alert: &Alert) -> Result<(), SendError> {
        let msg = format(&self.header, alert);
        match tokio::time::timeout(self.timeout, self.send_msg(&msg)).await {
            Ok(r) => r,
            Err(_) => {
                self.tcp = None;
                Err(SendError::Retry(format!("syslog {:?}: no progress within {:?}", self.address, self.timeout)))
            }
        }
    }

    async fn send_msg(&mut self, msg: &str) -> Result<(), SendError> {
        let err = |what: &str, e: std::io::Error| SendError::Retry(format!("syslog {what}: {e}"));
        match &self.address {
            Address::Unix(path) => {
                crate::os::send_unix_datagram(path, msg.as_bytes())
                    .await
                    .map_err(|e| err(&path.display().to_string(), e))?;
            }
            Address::Udp(addr) => {
                if msg.len() > MAX_UDP {
                    return Err(SendError::Reject(format!(
                        "syslog udp://{addr}: message of {} bytes is larger than a UDP datagram; use tcp://",
                        msg.len()
                    )));
                }
                let sock = UdpSocket::bind(if addr.starts_with('[') { "[::]:0" } else { "0.0.0.0:0" })
                    .await
                    .map_err(|e| err("udp socket", e))?;
                sock.send_to(msg.as_bytes(), addr.as_str()).await.map_err(|e| err(&format!("udp://{addr}"), e))?;
            }
            Address::Tcp(addr) => {
                if self.tcp.is_none() {
                    let s = TcpStream::connect(addr.as_str()).await.map_err(|e| err(&format!("tcp://{addr}"), e))?;
                    self.tcp = Some(s);
                }
                let frame = format!("{} {msg}", msg.len());
                if let Some(s) = self.tcp.as_mut() {
                    let r = async {
                        s.write_all(frame.as_bytes()).await?;
                        s.flush().await
                    }
                    .await;
                    if let Err(e) = r {
                        self.tcp = None;
                        return Err(err(&format!("tcp://{addr}"), e));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_well_formed_rfc5424_line() {
        let h = Header {
            facility: 3,
            hostname: header_field("my host", 255),
            app_name: "daemoneye".into(),
            procid: "42".into(),
        };
        let a = Alert {
            id: "0190-ab".into(),
            alert_time_ms: 1_700_000_000_123,
            rule_id: "r\"x]".into(),
            severity: Severity::High as i32,
            row_json: "{}".into(),
            occurrences: 2,
            ..Default::default()
        };
        let line = format(&h, &a);
        assert!(
            line.starts_with(
                "<27>1 2023-11-14T22:13:20.123Z myhost daemoneye 42 alert [daemoneye@32473 id=\"0190-ab\" rule_id=\"r\\\"x\\]\" severity=\"high\" occurrences=\"2\"] \u{feff}{"
            ),
            "{line}"
        );
        let json: serde_json::Value = serde_json::from_str(line.split('\u{feff}').nth(1).unwrap()).unwrap();
        assert_eq!(json["id"], "0190-ab");
    }

    #[test]
    fn dates_match_the_calendar() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn addresses_and_facilities_parse() {
        assert_eq!(Address::parse("unix:///dev/log").unwrap(), Address::Unix("/dev/log".into()));
        assert_eq!(Address::parse("udp://127.0.0.1:514").unwrap(), Address::Udp("127.0.0.1:514".into()));
        assert_eq!(Address::parse("tcp://[::1]:601").unwrap(), Address::Tcp("[::1]:601".into()));
        assert!(Address::parse("tcp://host").unwrap_err().contains("HOST:PORT"));
        assert!(Address::parse("http://x:1").is_err());
        assert_eq!(facility("local0").unwrap(), 16);
        assert_eq!(facility("AUTH").unwrap(), 4);
        assert!(facility("nope").unwrap_err().contains("local7"));
    }
}
