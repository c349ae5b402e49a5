//! The JSON form of an alert, shared by the agent's stdout sink and the CLI.

use serde_json::{Map, Value as Json, json};

use crate::proto::{Alert, Severity};

/// The lowercase severity name.
pub fn severity_name(s: Severity) -> &'static str {
    match s {
        Severity::Unspecified => "unspecified",
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// Parses `low|medium|high|critical` (case-insensitive).
pub fn parse_severity(s: &str) -> Option<Severity> {
    match s.to_ascii_lowercase().as_str() {
        "low" => Some(Severity::Low),
        "medium" => Some(Severity::Medium),
        "high" => Some(Severity::High),
        "critical" => Some(Severity::Critical),
        _ => None,
    }
}

/// The keys of [`alert_json`], in order; `row` (the matching row, an
/// object) is last.
pub const ALERT_FIELDS: [&str; 14] = [
    "id",
    "alert_time",
    "rule_id",
    "title",
    "description",
    "severity",
    "process_key",
    "pid",
    "event_seq",
    "correlation_id",
    "dedupe_key",
    "occurrences",
    "last_seen",
    "row",
];

/// An alert as one JSON object; the matching row is embedded as an object.
pub fn alert_json(a: &Alert) -> Json {
    let row: Json = serde_json::from_str(&a.row_json).unwrap_or_else(|_| Json::Object(Map::new()));
    json!({
        "id": a.id,
        "alert_time": a.alert_time_ms,
        "rule_id": a.rule_id,
        "title": a.title,
        "description": a.description,
        "severity": severity_name(a.severity()),
        "process_key": a.process_key,
        "pid": a.pid,
        "event_seq": a.event_seq,
        "correlation_id": a.correlation_id,
        "dedupe_key": a.dedupe_key,
        "occurrences": a.occurrences,
        "last_seen": a.last_seen_ms,
        "row": row,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_json_embeds_the_row() {
        let a = Alert {
            id: "1".into(),
            rule_id: "r".into(),
            severity: Severity::High as i32,
            row_json: r#"{"pid":5}"#.into(),
            pid: Some(5),
            ..Default::default()
        };
        let j = alert_json(&a);
        assert_eq!(j["severity"], "high");
        assert_eq!(j["row"]["pid"], 5);
        assert_eq!(j["pid"], 5);
        assert_eq!(parse_severity("HIGH"), Some(Severity::High));
    }
}
