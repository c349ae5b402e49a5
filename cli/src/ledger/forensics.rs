//! `ledger state` and `ledger replay`: the table as of a time and rules
//! re-run over a range, both rebuilt from the ledger by
//! `daemoneye_lib::replay` (the agent's own merge and dedupe rules).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use daemoneye_lib::alerting::value_json;
use daemoneye_lib::detection::{Params, Query, load_rules_dir};
use daemoneye_lib::models::alert_json;
use daemoneye_lib::replay::{ReplayOptions, replay as run_replay, state_at};
use serde_json::Value as Json;

use super::{Ctx, format_time};
use crate::output::{Format, Grid};

/// `ledger state` without SQL.
const DEFAULT_STATE_SQL: &str = "SELECT pid, ppid, process_key, name, is_alive, start_time, exit_time, executable_path \
     FROM processes ORDER BY start_time, pid";

/// Alert columns for table and CSV output.
const ALERT_COLUMNS: [&str; 8] =
    ["alert_time", "rule_id", "severity", "pid", "process_key", "event_seq", "occurrences", "title"];

#[allow(clippy::print_stderr, reason = "notes on what was rebuilt go to stderr, results to stdout")]
pub(super) fn state(
    ctx: &Ctx<'_>,
    dir: &Path,
    at_ns: i64,
    sql: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let sql = sql.unwrap_or(DEFAULT_STATE_SQL);
    // Validate before the (possibly long) ledger walk.
    let query = Query::compile(sql).context("the SQL was rejected")?;
    let opts = ReplayOptions::from_config(&(ctx.config)()?);
    let st = state_at(dir, at_ns, &opts)?;
    let rs = query
        .execute(&st.table, &Params::default(), &opts.limits)
        .with_context(|| format!("running the query over the table as of {}", format_time(at_ns)))?;
    let grid = Grid {
        columns: rs.columns.to_vec(),
        rows: rs.rows.iter().map(|r| r.iter().map(value_json).collect()).collect(),
    };
    grid.write(ctx.format, out)?;
    match st.last_time_ns {
        Some(t) => eprintln!(
            "note: table as of seq {} ({}): {} processes from {} events",
            st.last_seq,
            format_time(t),
            st.table.len(),
            st.events
        ),
        None => eprintln!("note: the ledger has no record at or before {}: the table is empty", format_time(at_ns)),
    }
    if st.malformed > 0 {
        eprintln!("warning: {} event records did not decode and were skipped", st.malformed);
    }
    if rs.truncated {
        eprintln!("note: the result was cut at the row limit (rules.max_rows); add LIMIT or narrow the query");
    }
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stderr, reason = "notes on what was replayed go to stderr, alerts to stdout")]
pub(super) fn replay(
    ctx: &Ctx<'_>,
    dir: &Path,
    (since_ns, until_ns): (i64, i64),
    rules_dir: &Path,
    jsonl: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    if !rules_dir.is_dir() {
        bail!("rules directory {} does not exist", rules_dir.display());
    }
    let rules = load_rules_dir(rules_dir);
    for e in &rules.errors {
        eprintln!("warning: skipped: {e}");
    }
    if rules.rules.is_empty() {
        bail!("no rule loaded from {}: nothing to replay", rules_dir.display());
    }
    let opts = ReplayOptions::from_config(&(ctx.config)()?);
    let outcome = run_replay(dir, since_ns, until_ns, &rules, &opts)?;
    let alerts: Vec<Json> = outcome.alerts.iter().map(alert_json).collect();
    if jsonl {
        for a in &alerts {
            writeln!(out, "{a}")?;
        }
    } else if ctx.format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, &alerts)?;
        writeln!(out)?;
    } else {
        let grid = Grid {
            columns: ALERT_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
            rows: alerts.iter().map(|a| ALERT_COLUMNS.iter().map(|c| a[*c].clone()).collect()).collect(),
        };
        grid.write(ctx.format, out)?;
    }
    let range = match (outcome.first_seq, outcome.last_seq) {
        (Some(a), Some(b)) => format!("seq {a}..={b}"),
        _ => "no events".to_owned(),
    };
    eprintln!(
        "note: replayed {} events ({range}) from {} to {} with {} rules: {} alerts, {} table-rule passes",
        outcome.events_evaluated,
        format_time(since_ns),
        format_time(until_ns),
        rules.rules.len(),
        outcome.alerts.len(),
        outcome.table_passes,
    );
    for f in outcome.rule_errors.iter().take(10) {
        let at = f.seq.map(|s| format!(" at seq {s}")).unwrap_or_default();
        eprintln!("warning: rule {}{at} failed: {}", f.rule_id, f.error);
    }
    if outcome.rule_errors.len() > 10 {
        eprintln!("warning: {} more rule failures not shown", outcome.rule_errors.len() - 10);
    }
    if outcome.malformed > 0 {
        eprintln!("warning: {} event records did not decode and were skipped", outcome.malformed);
    }
    Ok(ExitCode::SUCCESS)
}
