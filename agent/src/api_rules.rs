//! The rule calls of the agent API (called from `api.rs`): `ListRules`,
//! `ReloadRules` (the same reload the rules directory watcher performs),
//! `SetRuleEnabled` and `TestRule`.
//!
//! **Operator overrides.** `rules enable|disable ID` store the choice in the
//! store's `rules_state` table. [`apply_overrides`] sets `enabled` from it
//! on every rule set the agent loads (at start and on every reload), so the
//! choice survives hot reloads and restarts and wins over the rule file's
//! `enabled` until the operator changes it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use daemoneye_lib::detection::{Params, Query, RuleSet, Table, Value};
use daemoneye_lib::models::time::now_ms;
use daemoneye_lib::proto::{
    ListRulesResponse, RuleInfo, SetRuleEnabledRequest, SqlRow, TestRuleRequest, TestRuleResponse, test_rule_request,
};
use serde_json::Value as Json;
use tonic::Status;

use crate::pipeline::Shared;
use crate::rules_watch;
use crate::store::Store;
use crate::table::QueryTables;

/// The current rule set as the API reports it.
pub fn list_rules(shared: &Shared) -> ListRulesResponse {
    render(shared, &shared.rules())
}

/// Re-reads the rules directory, swaps the rule set, and reports the result.
pub async fn reload_rules(shared: Arc<Shared>) -> Result<ListRulesResponse, Status> {
    let s = Arc::clone(&shared);
    let set = tokio::task::spawn_blocking(move || rules_watch::reload(&s))
        .await
        .map_err(|e| Status::internal(format!("rule reload task failed: {e}")))?;
    Ok(render(&shared, &set))
}

/// Sets `enabled` on every rule the operator has enabled or disabled.
/// A store that cannot be read leaves the files' values (and says so).
pub fn apply_overrides(set: &mut RuleSet, store: &Store) {
    let overrides = match store.rule_overrides() {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the rule overrides; the rule files' `enabled` apply");
            return;
        }
    };
    for lr in &mut set.rules {
        if let Some(enabled) = overrides.get(&lr.rule.id) {
            lr.rule.enabled = *enabled;
        }
    }
}

/// `SetRuleEnabled`: stores the choice, then reloads so that it applies now.
pub async fn set_enabled(shared: Arc<Shared>, req: SetRuleEnabledRequest) -> Result<RuleInfo, Status> {
    let id = req.id.trim().to_owned();
    if !shared.rules().rules.iter().any(|lr| lr.rule.id == id) {
        return Err(Status::not_found(format!(
            "no loaded rule has id {id:?}; `daemoneye-cli rules list` shows the ids"
        )));
    }
    let s = Arc::clone(&shared);
    let set = tokio::task::spawn_blocking(move || {
        s.store.set_rule_override(&id, Some(req.enabled))?;
        tracing::info!(rule_id = %id, enabled = req.enabled, "rule override set by the operator");
        Ok::<_, crate::store::StoreError>(rules_watch::reload(&s))
    })
    .await
    .map_err(|e| Status::internal(format!("rule task failed: {e}")))?
    .map_err(|e| Status::unavailable(e.to_string()))?;
    render(&shared, &set)
        .rules
        .into_iter()
        .find(|r| r.id == req.id.trim())
        .ok_or_else(|| Status::not_found(format!("rule {:?} is no longer in the rules directory", req.id)))
}

/// `TestRule`: runs a rule over the current table (and the retained events)
/// or over one given event, and returns what it matches. Raises nothing.
pub async fn test_rule(shared: Arc<Shared>, req: TestRuleRequest) -> Result<TestRuleResponse, Status> {
    let query = match req.rule {
        Some(test_rule_request::Rule::RuleId(id)) => {
            shared.rules().rules.iter().find(|lr| lr.rule.id == id).map(|lr| lr.query.clone()).ok_or_else(|| {
                Status::not_found(format!(
                    "no loaded rule has id {id:?}; `daemoneye-cli rules list` shows the ids, or give a rule file"
                ))
            })?
        }
        Some(test_rule_request::Rule::Sql(sql)) => {
            Query::compile(&sql).map_err(|e| Status::invalid_argument(e.to_string()))?
        }
        None => return Err(Status::invalid_argument("TestRule needs a rule id or SQL")),
    };
    let streaming = query.is_streaming();
    let event = match &req.event_json {
        Some(_) if !streaming => {
            return Err(Status::invalid_argument(
                "this is a table rule (its FROM is not process_events): it runs over the table, not one event; \
                 test it with --against-table",
            ));
        }
        Some(text) => Some(event_row_from_json(text).map_err(Status::invalid_argument)?),
        None => None,
    };
    let limits = shared.limits.clone();
    let s = Arc::clone(&shared);
    let (result, store_err) = tokio::task::spawn_blocking(move || {
        let table = s.table_snapshot();
        let params = Params::default();
        match &event {
            Some(row) => {
                let tables = QueryTables::processes_only(&table);
                (query.evaluate_event(row, &tables, &params, &limits), None)
            }
            None => {
                let tables = QueryTables::with_store(&table, &s.store);
                let rs = query.execute(&tables, &params, &limits);
                (rs, tables.take_error())
            }
        }
    })
    .await
    .map_err(|e| Status::internal(format!("rule test task failed: {e}")))?;
    if let Some(e) = store_err {
        return Err(Status::unavailable(e.to_string()));
    }
    let rs = result.map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(TestRuleResponse {
        columns: rs.columns.to_vec(),
        rows: rs.rows.iter().map(|r| SqlRow { values: r.iter().map(crate::api::to_sql).collect() }).collect(),
        truncated: rs.truncated,
        streaming,
    })
}

/// A `process_events` row from a JSON object keyed by column name. Missing
/// columns are NULL, except `event_type` ("exec") and `event_time` (now);
/// arrays and objects (argv) are kept as JSON text, booleans as 0/1.
pub fn event_row_from_json(text: &str) -> Result<Vec<Value>, String> {
    let obj: serde_json::Map<String, Json> = match serde_json::from_str(text) {
        Ok(Json::Object(o)) => o,
        Ok(_) => return Err("the event must be a JSON object: {\"name\": \"sh\", \"pid\": 42, ...}".into()),
        Err(e) => return Err(format!("the event is not valid JSON: {e}")),
    };
    let cols = Table::ProcessEvents.columns();
    let mut row = vec![Value::Null; cols.len()];
    for (k, v) in &obj {
        let Some(i) = Table::ProcessEvents.column_index(k) else {
            let names: Vec<&str> = cols.iter().map(|c| c.name).collect();
            return Err(format!("the event has an unknown column {k:?}; process_events has: {}", names.join(", ")));
        };
        row[i] = match v {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Integer(i64::from(*b)),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Value::Integer(i),
                None => Value::Real(n.as_f64().unwrap_or(0.0)),
            },
            Json::String(s) => Value::Text(s.clone()),
            other => Value::Text(other.to_string()),
        };
    }
    let mut default = |name: &str, v: Value| {
        if let Some(i) = Table::ProcessEvents.column_index(name)
            && !obj.keys().any(|k| k.eq_ignore_ascii_case(name))
        {
            row[i] = v;
        }
    };
    default("event_type", Value::Text("exec".into()));
    default("event_time", Value::Integer(now_ms()));
    Ok(row)
}

fn render(shared: &Shared, set: &RuleSet) -> ListRulesResponse {
    let overrides: HashMap<String, bool> = shared.store.rule_overrides().unwrap_or_default();
    let rules = set
        .rules
        .iter()
        .map(|lr| {
            let r = &lr.rule;
            RuleInfo {
                id: r.id.clone(),
                name: r.name.clone(),
                description: r.description.trim().to_owned(),
                severity: r.severity as i32,
                category: r.category.clone().unwrap_or_default(),
                tags: r.tags.clone(),
                enabled: r.enabled,
                streaming: lr.query.is_streaming(),
                source: r.source.display().to_string(),
                version: r.version.clone().unwrap_or_default(),
                sql: r.sql.clone(),
                enabled_override: overrides.get(&r.id).copied(),
            }
        })
        .collect();
    ListRulesResponse {
        dir: shared.rules_source.dir.display().to_string(),
        rules,
        errors: set.errors.iter().map(ToString::to_string).collect(),
        loaded_ms: shared.rules_source.loaded_ms.load(Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_becomes_a_row_with_defaults() {
        let row =
            event_row_from_json(r#"{"name": "nc", "pid": 7, "argv": ["nc", "-e"], "file_exists": true}"#).unwrap();
        let at = |n| Table::ProcessEvents.column_index(n).unwrap();
        assert_eq!(row.len(), Table::ProcessEvents.columns().len());
        assert_eq!(row[at("name")], Value::Text("nc".into()));
        assert_eq!(row[at("pid")], Value::Integer(7));
        assert_eq!(row[at("argv")], Value::Text(r#"["nc","-e"]"#.into()));
        assert_eq!(row[at("file_exists")], Value::Integer(1));
        assert_eq!(row[at("event_type")], Value::Text("exec".into()));
        assert_eq!(row[at("uid")], Value::Null);
        let err = event_row_from_json(r#"{"nmae": "x"}"#).unwrap_err();
        assert!(err.contains("\"nmae\"") && err.contains("executable_path"), "{err}");
        assert!(event_row_from_json("[1]").is_err());
        assert!(event_row_from_json("{").is_err());
    }
}
