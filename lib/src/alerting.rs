//! How a rule match becomes an alert's identity: the matched row as JSON,
//! the process it names, and its dedupe key.
//!
//! The agent's live alert manager and offline replay ([`crate::replay`])
//! both call these functions, so a replay dedupes exactly like the agent.
//!
//! *Architecture invariant:* there is one dedupe-key rule, this one.

use serde_json::{Map, Value as Json};

use crate::detection::{Rule, Value};
use crate::proto::ProcessEvent;

/// A SQL value as JSON (NULL as `null`, a non-finite real as `null`).
pub fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Integer(i) => Json::from(*i),
        Value::Real(r) => serde_json::Number::from_f64(*r).map_or(Json::Null, Json::Number),
        Value::Text(s) => Json::from(s.as_str()),
    }
}

/// A matched row as a JSON object keyed by output column name.
pub fn row_object(columns: &[String], row: &[Value]) -> Map<String, Json> {
    columns.iter().zip(row).map(|(c, v)| (c.clone(), value_json(v))).collect()
}

/// The alert's dedupe key: the rule id, then the rule's dedupe columns when
/// it names them; otherwise the process key (one alert per rule and
/// process); otherwise the whole row.
pub fn dedupe_key(rule: &Rule, row: &Map<String, Json>, event: Option<&ProcessEvent>) -> String {
    let mut key = rule.id.clone();
    if let Some(cols) = rule.dedupe.as_ref().map(|d| &d.key).filter(|k| !k.is_empty()) {
        for c in cols {
            key.push('|');
            key.push_str(&row.get(c).map(Json::to_string).unwrap_or_default());
        }
        return key;
    }
    key.push('|');
    match match_process_key(row, event) {
        Some(pk) if !pk.is_empty() => key.push_str(&pk),
        _ => key.push_str(&Json::Object(row.clone()).to_string()),
    }
    key
}

/// The pid an alert names: the row's `pid` column, else the event's process.
pub fn match_pid(row: &Map<String, Json>, event: Option<&ProcessEvent>) -> Option<u32> {
    row.get("pid")
        .and_then(Json::as_i64)
        .and_then(|p| u32::try_from(p).ok())
        .or_else(|| event.and_then(|e| e.process.as_ref()).map(|r| r.pid))
}

/// The process key an alert names: the row's `process_key` column, else the
/// event's process.
pub fn match_process_key(row: &Map<String, Json>, event: Option<&ProcessEvent>) -> Option<String> {
    row.get("process_key")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .or_else(|| event.and_then(|e| e.process.as_ref()).map(|r| r.process_key.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detection::Dedupe;
    use crate::proto::{ProcessRecord, Severity};

    fn rule(dedupe: Option<Dedupe>) -> Rule {
        Rule {
            id: "r1".into(),
            name: "n".into(),
            description: String::new(),
            severity: Severity::High,
            category: None,
            tags: Vec::new(),
            author: None,
            version: None,
            enabled: true,
            sql: String::new(),
            dedupe,
            source: "x.yaml".into(),
        }
    }

    #[test]
    fn key_uses_columns_then_process_key_then_row() {
        let cols = vec!["pid".to_owned(), "name".to_owned()];
        let row = row_object(&cols, &[Value::Integer(5), Value::Text("sh".into())]);
        let ev = ProcessEvent {
            process: Some(ProcessRecord { pid: 9, process_key: "k-9".into(), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(dedupe_key(&rule(None), &row, Some(&ev)), "r1|k-9");
        assert_eq!(dedupe_key(&rule(None), &row, None), r#"r1|{"name":"sh","pid":5}"#);
        let d = Dedupe { key: vec!["name".into()], window: None };
        assert_eq!(dedupe_key(&rule(Some(d)), &row, Some(&ev)), r#"r1|"sh""#);
        // The row's own columns win over the event's process.
        assert_eq!(match_pid(&row, Some(&ev)), Some(5));
        assert_eq!(match_process_key(&row, Some(&ev)).as_deref(), Some("k-9"));
        assert_eq!(value_json(&Value::Real(f64::NAN)), Json::Null);
    }
}
