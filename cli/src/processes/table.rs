//! `processes list` and `processes show` over the agent's table (through
//! `Query`, so the same validator and engine as `query`).

use std::io::Write;
use std::process::ExitCode;

use daemoneye_lib::proto::{QueryParam, sql_value::Value as V};
use serde_json::{Map, Value as Json};

use super::ListFilter;
use crate::client::{self, Client, param};
use crate::output::{Format, Grid, Ui};

/// Columns `list` reads (JSON and CSV show them all).
const LIST_COLUMNS: &str = "pid, ppid, uid, user_name, name, is_alive, start_time, exit_time, \
                            executable_path, command_line, process_key, parent_key";

/// Columns a table shows (the rest are in JSON and CSV).
const TABLE_COLUMNS: [&str; 7] = ["pid", "ppid", "user", "name", "state", "start_time", "command_line"];

/// The WHERE clause and parameters for a filter. `alive_default`: whether
/// no --alive/--all means live processes only.
pub(crate) fn filter_sql(f: &ListFilter, alive_default: bool) -> (Vec<String>, Vec<QueryParam>) {
    let mut conds = Vec::new();
    let mut params = Vec::new();
    if f.alive || (alive_default && !f.all) {
        conds.push("is_alive = 1".to_owned());
    }
    if !f.names.is_empty() {
        let names: Vec<String> = (0..f.names.len()).map(|i| format!(":name{i}")).collect();
        conds.push(format!("name IN ({})", names.join(", ")));
        params.extend(f.names.iter().enumerate().map(|(i, n)| param(&format!("name{i}"), V::Text(n.clone()))));
    }
    if !f.pids.is_empty() {
        let pids: Vec<String> = (0..f.pids.len()).map(|i| format!(":pid{i}")).collect();
        conds.push(format!("pid IN ({})", pids.join(", ")));
        params.extend(f.pids.iter().enumerate().map(|(i, p)| param(&format!("pid{i}"), V::Integer(i64::from(*p)))));
    }
    if let Some(exe) = &f.exe {
        if exe.contains(['*', '?', '[']) {
            conds.push("executable_path GLOB :exe".to_owned());
        } else {
            conds.push("instr(executable_path, :exe) > 0".to_owned());
        }
        params.push(param("exe", V::Text(exe.clone())));
    }
    if let Some(user) = &f.user {
        match user.parse::<i64>() {
            Ok(uid) => {
                conds.push("uid = :uid".to_owned());
                params.push(param("uid", V::Integer(uid)));
            }
            Err(_) => {
                conds.push("user_name = :user".to_owned());
                params.push(param("user", V::Text(user.clone())));
            }
        }
    }
    (conds, params)
}

/// `processes list` from the table.
pub(super) async fn list(
    client: &mut Client,
    f: &ListFilter,
    ui: &Ui,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (conds, params) = filter_sql(f, true);
    let mut sql = format!("SELECT {LIST_COLUMNS} FROM processes");
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    sql.push_str(" ORDER BY start_time, pid");
    if let Some(n) = f.limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    let rows = client::query(client, "listing processes failed", sql, params, 0).await?;
    if rows.truncated {
        note("the list was cut at the agent's row limit (rules.max_rows); narrow it with --name, --user or --limit");
    }
    if ui.format != Format::Table {
        Grid { columns: rows.columns, rows: rows.rows }.render(ui, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let grid = Grid {
        columns: TABLE_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
        rows: rows.objects().iter().map(|r| TABLE_COLUMNS.iter().map(|c| table_cell(r, c)).collect()).collect(),
    };
    grid.render(ui, out)?;
    Ok(ExitCode::SUCCESS)
}

/// A derived table cell: `user` (name, else uid) and `state`.
fn table_cell(r: &Map<String, Json>, column: &str) -> Json {
    match column {
        "user" => match r.get("user_name") {
            Some(Json::String(u)) => Json::from(u.as_str()),
            _ => r.get("uid").cloned().unwrap_or(Json::Null),
        },
        "state" => Json::from(if r.get("is_alive") == Some(&Json::from(1)) { "alive" } else { "exited" }),
        c => r.get(c).cloned().unwrap_or(Json::Null),
    }
}

/// `processes show PID|KEY`.
pub(super) async fn show(
    client: &mut Client,
    process: &str,
    events: u32,
    ui: &Ui,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (sql, p) = match process.parse::<u32>() {
        Ok(pid) => (
            "SELECT * FROM processes WHERE pid = :p ORDER BY is_alive DESC, start_time DESC",
            param("p", V::Integer(i64::from(pid))),
        ),
        Err(_) => ("SELECT * FROM processes WHERE process_key = :p", param("p", V::Text(process.to_owned()))),
    };
    let found = client::query(client, "reading the process failed", sql.into(), vec![p], 0).await?;
    if found.rows.is_empty() {
        anyhow::bail!(
            "no process {process} in the agent's table (exited processes stay for agent.process_retention); \
             `daemoneye-cli processes list --all` shows the table"
        );
    }
    let others = found.rows.len() - 1;
    let columns = found.columns;
    let values = found.rows.into_iter().next().unwrap_or_default();
    let key = columns
        .iter()
        .position(|c| c == "process_key")
        .and_then(|i| values.get(i))
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_owned();
    let ev = client::query(
        client,
        "reading the process's events failed",
        format!(
            "SELECT seq, event_type, event_time, source, pid, ppid, name, command_line, exit_code \
             FROM process_events WHERE process_key = :k ORDER BY seq DESC LIMIT {events}"
        ),
        vec![param("k", V::Text(key.clone()))],
        0,
    )
    .await?;
    let al = client::query(
        client,
        "reading the process's alerts failed",
        "SELECT id, alert_time, severity, rule_id, occurrences, title FROM alerts WHERE process_key = :k \
         ORDER BY alert_time"
            .into(),
        vec![param("k", V::Text(key))],
        0,
    )
    .await?;
    if ui.format == Format::Json {
        let doc = serde_json::json!({
            "process": Json::Object(columns.iter().cloned().zip(values.iter().cloned()).collect::<Map<_, _>>()),
            "events": ev.objects().into_iter().map(Json::Object).collect::<Vec<_>>(),
            "alerts": al.objects().into_iter().map(Json::Object).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if ui.format == Format::Csv {
        // One CSV document: the process row (events and alerts: --format json).
        let grid = Grid { columns, rows: vec![values] };
        return grid.render(ui, out).map(|()| ExitCode::SUCCESS);
    }
    let grid = Grid {
        columns: vec!["column".into(), "value".into()],
        rows: columns
            .iter()
            .zip(&values)
            .map(|(k, v)| {
                let shown = if k.ends_with("_time") { Json::from(crate::output::time_text(v)) } else { v.clone() };
                vec![Json::from(k.as_str()), shown]
            })
            .collect(),
    };
    grid.render(ui, out)?;
    if others > 0 {
        writeln!(out, "({others} other process(es) in the table had this pid: give a process key to see them)")?;
    }
    writeln!(out, "recent events (newest first):")?;
    Grid { columns: ev.columns, rows: ev.rows }.render(ui, out)?;
    writeln!(out, "alerts:")?;
    Grid { columns: al.columns, rows: al.rows }.render(ui, out)?;
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stderr, reason = "notes for the operator go to stderr, results to stdout")]
pub(crate) fn note(msg: &str) {
    eprintln!("note: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_parameterized_sql() {
        let f = ListFilter {
            names: vec!["sh".into(), "o'brien".into()],
            user: Some("root".into()),
            exe: Some("/usr/*".into()),
            ..Default::default()
        };
        let (conds, params) = filter_sql(&f, true);
        assert_eq!(
            conds,
            vec!["is_alive = 1", "name IN (:name0, :name1)", "executable_path GLOB :exe", "user_name = :user"]
        );
        assert_eq!(params.len(), 4);
        let all = ListFilter { all: true, user: Some("0".into()), ..Default::default() };
        assert_eq!(filter_sql(&all, true).0, vec!["uid = :uid"]);
        assert!(filter_sql(&ListFilter::default(), false).0.is_empty());
    }
}
