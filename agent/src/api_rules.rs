//! The `ListRules` and `ReloadRules` handlers of the agent API (called from
//! `api.rs`): the loaded rules, the files that failed, and a reload on
//! demand (the same reload the rules directory watcher performs).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use daemoneye_lib::detection::RuleSet;
use daemoneye_lib::proto::{ListRulesResponse, RuleInfo};
use tonic::Status;

use crate::pipeline::Shared;
use crate::rules_watch;

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

fn render(shared: &Shared, set: &RuleSet) -> ListRulesResponse {
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
