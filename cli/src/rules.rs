//! `daemoneye-cli rules list|validate|reload`.
//!
//! `validate` works offline (no agent): it loads a rule file or a directory
//! with the same loader and validator as the agent and prints every error
//! with its file, rule id and position. `list` and `reload` ask the agent.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use daemoneye_lib::detection::{LoadedRule, RuleError, load_rule_file, load_rules_dir};
use daemoneye_lib::models::severity_name;
use daemoneye_lib::proto::{ListRulesRequest, ListRulesResponse, ReloadRulesRequest, Severity};
use serde_json::Value as Json;

use crate::client;
use crate::output::{Format, Grid};

/// The `rules` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum RulesCommand {
    /// List the rules the agent has loaded, and the files that failed.
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
}

/// Runs a `rules` subcommand. `socket` finds the agent (not needed by
/// `validate`).
pub(crate) async fn run(
    cmd: &RulesCommand,
    socket: impl FnOnce() -> anyhow::Result<PathBuf>,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match cmd {
        RulesCommand::Validate { path } => validate(path, format, out),
        RulesCommand::List => {
            let mut c = client::connect(&socket()?).await?;
            let resp = c
                .list_rules(ListRulesRequest {})
                .await
                .map_err(|s| client::status_error("listing rules failed", &s))?
                .into_inner();
            print_list(&resp, format, out)?;
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

fn list_json(resp: &ListRulesResponse) -> Json {
    let rules: Vec<Json> = resp
        .rules
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "name": r.name,
                "severity": severity_name(Severity::try_from(r.severity).unwrap_or(Severity::Unspecified)),
                "category": r.category,
                "tags": r.tags,
                "enabled": r.enabled,
                "kind": if r.streaming { "streaming" } else { "table" },
                "source": r.source,
                "version": r.version,
                "description": r.description,
            })
        })
        .collect();
    serde_json::json!({
        "dir": resp.dir,
        "loaded_ms": resp.loaded_ms,
        "rules": rules,
        "errors": resp.errors,
    })
}

fn print_list(resp: &ListRulesResponse, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, &list_json(resp))?;
        writeln!(out)?;
        return Ok(());
    }
    let doc = list_json(resp);
    let columns = ["id", "severity", "kind", "enabled", "category", "source"];
    let rows = doc["rules"]
        .as_array()
        .map(|rs| rs.iter().map(|r| columns.iter().map(|c| r[*c].clone()).collect()).collect())
        .unwrap_or_default();
    let grid = Grid { columns: columns.iter().map(|c| (*c).to_owned()).collect(), rows };
    grid.write(format, out)?;
    report_errors(&resp.errors);
    Ok(())
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
