//! `daemoneye-cli rules list|validate|test|enable|disable|reload`.
//!
//! `validate` works offline (no agent): it loads a rule file or a directory
//! with the same loader and validator as the agent and prints every error
//! with its file, rule id and position. The others ask the agent. `test`
//! runs a rule (a file, validated here first, or a loaded rule's id) over
//! the agent's current table or over one given event and shows what it
//! matches, raising nothing. `enable`/`disable` are kept by the agent in its
//! store and survive reloads and restarts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use daemoneye_lib::detection::{LoadedRule, RuleError, load_rule_file, load_rules_dir};
use daemoneye_lib::models::severity_name;
use daemoneye_lib::proto::{
    ListRulesRequest, ListRulesResponse, ReloadRulesRequest, RuleInfo, SetRuleEnabledRequest, Severity,
    TestRuleRequest, test_rule_request,
};
use serde_json::{Value as Json, json};

use crate::client::{self, Client};
use crate::output::{Format, Grid, Ui};

/// The `rules` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum RulesCommand {
    /// List the rules the agent has loaded (enabled or not, and whether an
    /// operator override decides it), and the files that failed.
    List,
    /// Check a rule file or a directory of rule files without an agent.
    /// Exit code 1 when any file or rule has an error.
    Validate {
        /// A `.yaml`/`.yml` file, or a directory of them.
        path: PathBuf,
    },
    /// Make the agent re-read its rules directory now. Exit code 1 when any
    /// file or rule failed to load (the others are running).
    Reload,
    /// Run a rule over the agent's current table, or over one event, and show
    /// its matches. Raises no alert.
    ///
    /// Against the table a streaming rule (FROM process_events) sees the
    /// retained recent events. Examples:
    /// daemoneye-cli rules test ./my-rule.yaml;
    /// daemoneye-cli rules test reverse-shell-interactive --event '{"name":"nc","argv":["nc","-e","/bin/sh"]}'
    Test {
        /// A rule file (every rule in it is tested) or the id of a loaded rule.
        rule: String,
        /// Run against the current table (the default).
        #[arg(long, conflicts_with = "event")]
        against_table: bool,
        /// Run a streaming rule against this one process_events row: a JSON
        /// object of column -> value, or @FILE holding one.
        #[arg(long, value_name = "JSON")]
        event: Option<String>,
    },
    /// Turn a loaded rule on. Kept by the agent across reloads and restarts
    /// (over the file's `enabled`).
    Enable {
        /// The rule id (`rules list` shows them).
        id: String,
    },
    /// Turn a loaded rule off. Kept by the agent across reloads and restarts
    /// until `rules enable ID`.
    Disable {
        /// The rule id (`rules list` shows them).
        id: String,
    },
}

/// Runs a `rules` subcommand. `socket` finds the agent (not needed by
/// `validate`).
pub(crate) async fn run(
    cmd: &RulesCommand,
    socket: impl FnOnce() -> anyhow::Result<PathBuf>,
    ui: &Ui,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let format = ui.format;
    match cmd {
        RulesCommand::Validate { path } => validate(path, format, out),
        RulesCommand::Test { rule, against_table: _, event } => {
            // Read the rule file first: its errors need no agent.
            let tests = test_sources(rule)?;
            let event = event.as_deref().map(read_event).transpose()?;
            let mut c = client::connect(&socket()?).await?;
            test(&mut c, tests, event, ui, out).await
        }
        RulesCommand::Enable { id } | RulesCommand::Disable { id } => {
            let enabled = matches!(cmd, RulesCommand::Enable { .. });
            let mut c = client::connect(&socket()?).await?;
            let info = c
                .set_rule_enabled(SetRuleEnabledRequest { id: id.clone(), enabled })
                .await
                .map_err(|s| {
                    client::status_error(&format!("{} rule {id}", if enabled { "enabling" } else { "disabling" }), &s)
                })?
                .into_inner();
            if format == Format::Json {
                serde_json::to_writer_pretty(&mut *out, &rule_json(&info))?;
                writeln!(out)?;
            } else {
                let undo = if enabled { "disable" } else { "enable" };
                writeln!(
                    out,
                    "rule {} {} (kept across reloads and restarts; `daemoneye-cli rules {undo} {}` undoes it)",
                    info.id,
                    if info.enabled { "enabled" } else { "disabled" },
                    info.id
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::List => {
            let mut c = client::connect(&socket()?).await?;
            let resp = c
                .list_rules(ListRulesRequest {})
                .await
                .map_err(|s| client::status_error("listing rules failed", &s))?
                .into_inner();
            print_list(&resp, ui, out)?;
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Reload => {
            let mut c = client::connect(&socket()?).await?;
            let resp = c
                .reload_rules(ReloadRulesRequest {})
                .await
                .map_err(|s| client::status_error("reloading rules failed", &s))?
                .into_inner();
            report_errors(&resp.errors);
            let summary =
                format!("reloaded {}: {} rules loaded, {} failed", resp.dir, resp.rules.len(), resp.errors.len());
            if format == Format::Json {
                serde_json::to_writer_pretty(&mut *out, &list_json(&resp))?;
                writeln!(out)?;
            } else {
                writeln!(out, "{summary}")?;
            }
            Ok(if resp.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// Loads `path` (file or directory) and reports what is wrong with it.
fn validate(path: &Path, format: Format, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}; give a rule file or a directory of them", path.display()))?;
    let (rules, errors): (Vec<LoadedRule>, Vec<RuleError>) = if meta.is_dir() {
        let set = load_rules_dir(path);
        (set.rules, set.errors)
    } else {
        load_rule_file(path)
    };
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    report_errors(&errors);
    match format {
        Format::Json => {
            let doc = serde_json::json!({
                "path": path.display().to_string(),
                "valid": rules.iter().map(|r| Json::from(r.rule.id.as_str())).collect::<Vec<_>>(),
                "errors": errors,
            });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        _ => {
            for r in &rules {
                let kind = if r.query.is_streaming() { "streaming" } else { "table" };
                writeln!(out, "ok    {} ({kind}, {})", r.rule.id, r.rule.source.display())?;
            }
            writeln!(out, "{}: {} rules valid, {} errors", path.display(), rules.len(), errors.len())?;
        }
    }
    Ok(if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[allow(clippy::print_stderr, reason = "rule errors are for the operator, on stderr")]
fn report_errors(errors: &[String]) {
    for e in errors {
        eprintln!("error: {e}");
    }
}

fn rule_json(r: &RuleInfo) -> Json {
    json!({
        "id": r.id,
        "name": r.name,
        "severity": severity_name(Severity::try_from(r.severity).unwrap_or(Severity::Unspecified)),
        "category": r.category,
        "tags": r.tags,
        "enabled": r.enabled,
        "enabled_override": r.enabled_override,
        "kind": if r.streaming { "streaming" } else { "table" },
        "source": r.source,
        "version": r.version,
        "description": r.description,
    })
}

fn list_json(resp: &ListRulesResponse) -> Json {
    json!({
        "dir": resp.dir,
        "loaded_ms": resp.loaded_ms,
        "rules": resp.rules.iter().map(rule_json).collect::<Vec<_>>(),
        "errors": resp.errors,
    })
}

fn print_list(resp: &ListRulesResponse, ui: &Ui, out: &mut dyn Write) -> anyhow::Result<()> {
    if ui.format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, &list_json(resp))?;
        writeln!(out)?;
        return Ok(());
    }
    let columns = ["id", "severity", "kind", "enabled", "category", "source"];
    let rows = resp
        .rules
        .iter()
        .map(|r| {
            let doc = rule_json(r);
            columns
                .iter()
                .map(|c| match *c {
                    // Say who decided, for a person; CSV keeps true/false.
                    "enabled" if ui.format == Format::Table => Json::from(match (r.enabled, r.enabled_override) {
                        (true, Some(_)) => "yes (rules enable)",
                        (false, Some(_)) => "no (rules disable)",
                        (true, None) => "yes",
                        (false, None) => "no (in its file)",
                    }),
                    c => doc[c].clone(),
                })
                .collect()
        })
        .collect();
    let grid = Grid { columns: columns.iter().map(|c| (*c).to_owned()).collect(), rows };
    grid.render(ui, out)?;
    report_errors(&resp.errors);
    Ok(())
}

/// What `rules test` runs: (label, request source).
fn test_sources(rule: &str) -> anyhow::Result<Vec<(String, test_rule_request::Rule)>> {
    let path = Path::new(rule);
    if !path.is_file() {
        if rule.contains(['/', '.']) {
            anyhow::bail!("{rule}: no such rule file; give a rule file or the id of a loaded rule (`rules list`)");
        }
        return Ok(vec![(rule.to_owned(), test_rule_request::Rule::RuleId(rule.to_owned()))]);
    }
    let (rules, errors) = load_rule_file(path);
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    report_errors(&errors);
    if !errors.is_empty() {
        anyhow::bail!(
            "{}: {} error(s); fix them (`rules validate` checks a file) and test again",
            path.display(),
            errors.len()
        );
    }
    if rules.is_empty() {
        anyhow::bail!("{}: holds no rules", path.display());
    }
    Ok(rules.into_iter().map(|r| (r.rule.id, test_rule_request::Rule::Sql(r.rule.sql))).collect())
}

/// `--event`: JSON text, or @FILE.
fn read_event(arg: &str) -> anyhow::Result<String> {
    let text = match arg.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("--event @{file}: cannot read: {e}"))?
        }
        None => arg.to_owned(),
    };
    serde_json::from_str::<serde_json::Map<String, Json>>(&text).map_err(|e| {
        anyhow::anyhow!(
            "--event must be a JSON object of process_events columns, e.g. '{{\"name\":\"nc\",\"pid\":42}}': {e}"
        )
    })?;
    Ok(text)
}

async fn test(
    c: &mut Client,
    tests: Vec<(String, test_rule_request::Rule)>,
    event: Option<String>,
    ui: &Ui,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut docs = Vec::new();
    for (label, rule) in tests {
        let req = TestRuleRequest { rule: Some(rule), event_json: event.clone() };
        let resp = c
            .test_rule(req)
            .await
            .map_err(|s| client::status_error(&format!("testing rule {label}"), &s))?
            .into_inner();
        let rows: Vec<Vec<Json>> = resp.rows.iter().map(|r| r.values.iter().map(client::sql_json).collect()).collect();
        let against = if event.is_some() { "the given event" } else { "the current table" };
        let kind = if resp.streaming { "streaming" } else { "table" };
        if ui.format == Format::Table {
            writeln!(out, "rule {label} ({kind}) against {against}: {} match(es)", rows.len())?;
            if !rows.is_empty() {
                Grid { columns: resp.columns.clone(), rows: rows.clone() }.render(ui, out)?;
            }
            if resp.truncated {
                writeln!(out, "(cut at the agent's row limit)")?;
            }
        }
        let matches: Vec<Json> =
            rows.iter().map(|r| Json::Object(resp.columns.iter().cloned().zip(r.iter().cloned()).collect())).collect();
        docs.push(json!({
            "rule_id": label, "kind": kind, "against": if event.is_some() { "event" } else { "table" },
            "matches": matches, "truncated": resp.truncated,
        }));
    }
    match ui.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, &docs)?;
            writeln!(out)?;
        }
        Format::Csv => {
            // One CSV: the rule id, then each match as JSON.
            let rows = docs
                .iter()
                .flat_map(|d| {
                    let id = d["rule_id"].clone();
                    d["matches"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |m| vec![id.clone(), Json::from(m.to_string())])
                })
                .collect();
            Grid { columns: vec!["rule_id".into(), "match".into()], rows }.write(Format::Csv, out)?;
        }
        Format::Table => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_reports_errors_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ok.yaml"), "id: a\nname: A\nseverity: low\nsql: SELECT pid FROM processes\n")
            .unwrap();
        let mut out = Vec::new();
        let code = validate(&dir.path().join("ok.yaml"), Format::Table, &mut out).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(String::from_utf8_lossy(&out).contains("1 rules valid, 0 errors"));

        std::fs::write(dir.path().join("bad.yaml"), "id: b\nname: B\nseverity: low\nsql: SELECT nmae FROM processes\n")
            .unwrap();
        let mut out = Vec::new();
        let code = validate(dir.path(), Format::Json, &mut out).unwrap();
        assert_eq!(code, ExitCode::from(1));
        let doc: Json = serde_json::from_slice(&out).unwrap();
        assert_eq!(doc["valid"], serde_json::json!(["a"]));
        let err = doc["errors"][0].as_str().unwrap();
        assert!(err.contains("bad.yaml") && err.contains("rule \"b\"") && err.contains("1:8"), "{err}");

        assert!(validate(&dir.path().join("missing.yaml"), Format::Table, &mut Vec::new()).is_err());
    }
}
