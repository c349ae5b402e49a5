//! `daemoneye-cli alerts list|show|watch`.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use daemoneye_lib::models::{ALERT_FIELDS, alert_json, parse_severity, severity_name};
use daemoneye_lib::proto::{Alert, GetAlertRequest, ListAlertsRequest, Severity, WatchAlertsRequest};
use serde_json::{Value as Json, json};

use crate::client::{self, Client};
use crate::output::{Format, Grid, Ui};
use crate::timearg;

/// `alerts` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum AlertsCommand {
    /// List stored alerts, oldest first.
    ///
    /// Example: daemoneye-cli alerts list --since 1h --severity high
    List {
        #[command(flatten)]
        filter: AlertFilter,
        /// Only the newest N (0: all).
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
    },
    /// Every field of one alert, with its delivery state per sink.
    ///
    /// Example: daemoneye-cli alerts show 0196a1b2 (a unique prefix of the id is enough)
    Show {
        /// The alert id (from `alerts list`), or a prefix of it only one alert has.
        id: String,
    },
    /// Print new alerts as they are stored, until Ctrl-C.
    ///
    /// One line per alert; with --format json one JSON object per line.
    /// Example: daemoneye-cli alerts watch --severity high --format json
    Watch {
        /// Only alerts of this rule.
        #[arg(long, value_name = "ID")]
        rule: Option<String>,
        /// Only alerts of this severity or higher (low, medium, high, critical).
        #[arg(long, value_name = "SEVERITY", value_parser = severity_arg)]
        severity: Option<Severity>,
        /// Stop after N alerts.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// Filters shared by `alerts list` and `export alerts`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct AlertFilter {
    /// Only alerts raised at or after TIME: RFC 3339, Unix ms, `now`, or a duration ago (10m, 2h, 1d).
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// Only alerts raised before TIME (same forms as --since).
    #[arg(long, value_name = "TIME")]
    pub(crate) until: Option<String>,
    /// Only alerts of this rule.
    #[arg(long, value_name = "ID")]
    pub(crate) rule: Option<String>,
    /// Only alerts of this severity or higher (low, medium, high, critical).
    #[arg(long, value_name = "SEVERITY", value_parser = severity_arg)]
    pub(crate) severity: Option<Severity>,
}

impl AlertFilter {
    /// The request for `ListAlerts`.
    pub(crate) fn request(&self, limit: u32) -> anyhow::Result<ListAlertsRequest> {
        let time = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<i64>> {
            v.as_deref().map(|s| timearg::parse_ms(s).with_context(|| format!("--{flag}"))).transpose()
        };
        Ok(ListAlertsRequest {
            limit,
            rule_id: self.rule.clone(),
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
            min_severity: self.severity.map(|s| s as i32),
        })
    }
}

/// Parses a severity name for clap.
pub(crate) fn severity_arg(s: &str) -> Result<Severity, String> {
    parse_severity(s).ok_or_else(|| format!("{s:?} is not a severity: use low, medium, high or critical"))
}

/// Every stored alert the filter selects (oldest first).
pub(crate) async fn fetch(client: &mut Client, req: ListAlertsRequest) -> anyhow::Result<Vec<Alert>> {
    Ok(client
        .list_alerts(req)
        .await
        .map_err(|s| client::status_error("listing alerts failed", &s))?
        .into_inner()
        .alerts)
}

/// Runs an `alerts` subcommand.
pub(crate) async fn run(
    cmd: &AlertsCommand,
    socket: &std::path::Path,
    ui: &Ui,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(socket).await?;
    match cmd {
        AlertsCommand::List { filter, limit } => {
            let alerts = fetch(&mut client, filter.request(*limit)?).await?;
            let alerts: Vec<Json> = alerts.iter().map(alert_json).collect();
            if ui.format == Format::Json {
                serde_json::to_writer_pretty(&mut *out, &alerts)?;
                writeln!(out)?;
            } else {
                let columns = ["id", "alert_time", "severity", "rule_id", "pid", "process_key", "occurrences", "title"];
                let grid = Grid {
                    columns: columns.iter().map(|c| (*c).to_owned()).collect(),
                    rows: alerts.iter().map(|a| columns.iter().map(|c| a[*c].clone()).collect()).collect(),
                };
                grid.render(ui, out)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        AlertsCommand::Show { id } => show(&mut client, id, ui, out).await,
        AlertsCommand::Watch { rule, severity, count } => {
            let req = WatchAlertsRequest { rule_id: rule.clone(), min_severity: severity.map(|s| s as i32) };
            watch(&mut client, req, *count, ui, out).await
        }
    }
}

async fn show(client: &mut Client, id: &str, ui: &Ui, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let resp = client
        .get_alert(GetAlertRequest { id: id.to_owned() })
        .await
        .map_err(|s| client::status_error(&format!("showing alert {id}"), &s))?
        .into_inner();
    let alert = resp.alert.unwrap_or_default();
    let deliveries: Vec<Json> =
        resp.deliveries.iter().map(|d| json!({ "sink": d.sink, "type": d.kind, "state": d.state })).collect();
    let mut doc = alert_json(&alert);
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("deliveries".into(), Json::Array(deliveries.clone()));
    }
    if ui.format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, &doc)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut grid = Grid { columns: vec!["field".into(), "value".into()], rows: Vec::new() };
    // Scalar fields first; the row (last) follows one column per line.
    for f in ALERT_FIELDS.iter().copied().filter(|f| *f != "row") {
        let v = &doc[f];
        let shown = match f {
            "alert_time" | "last_seen" if ui.format == Format::Table => Json::from(crate::output::time_text(v)),
            _ => v.clone(),
        };
        grid.rows.push(vec![Json::from(f), shown]);
    }
    // The matching row, one line per column, so a table stays readable.
    if let Some(row) = doc["row"].as_object() {
        for (k, v) in row {
            grid.rows.push(vec![Json::from(format!("row.{k}")), v.clone()]);
        }
    }
    if ui.format == Format::Csv {
        // One CSV document: the deliveries as `delivery.<sink>` rows.
        for d in &deliveries {
            grid.rows
                .push(vec![Json::from(format!("delivery.{}", d["sink"].as_str().unwrap_or(""))), d["state"].clone()]);
        }
        grid.write(Format::Csv, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    grid.render(&Ui { color: false, ..*ui }, out)?;
    if !deliveries.is_empty() {
        writeln!(out, "delivery:")?;
        let cols = ["sink", "type", "state"];
        let grid = Grid {
            columns: cols.iter().map(|c| (*c).to_owned()).collect(),
            rows: deliveries.iter().map(|d| cols.iter().map(|c| d[*c].clone()).collect()).collect(),
        };
        grid.render(ui, out)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch(
    client: &mut Client,
    req: WatchAlertsRequest,
    count: Option<u64>,
    ui: &Ui,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut stream =
        client.watch_alerts(req).await.map_err(|s| client::status_error("watching alerts failed", &s))?.into_inner();
    // The agent follows new alerts from here on (the call has returned), so
    // this line also tells a script that nothing raised from now is missed.
    #[allow(clippy::print_stderr, reason = "a hint for the operator, kept off stdout")]
    {
        eprintln!("watching for new alerts; Ctrl-C to stop");
    }
    let mut seen = 0u64;
    loop {
        if count.is_some_and(|n| seen >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        let msg = tokio::select! {
            m = stream.message() => m.map_err(|s| client::status_error("the alert watch ended", &s))?,
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                return Ok(ExitCode::SUCCESS);
            }
        };
        let Some(alert) = msg else {
            anyhow::bail!("the agent ended the alert watch (it is shutting down?)");
        };
        seen += 1;
        match ui.format {
            Format::Json => writeln!(out, "{}", alert_json(&alert))?,
            _ => writeln!(out, "{}", watch_line(&alert, ui))?,
        }
        out.flush()?;
    }
}

/// One alert as a line: time, severity, rule, pid, title, id.
fn watch_line(a: &Alert, ui: &Ui) -> String {
    let sev = severity_name(a.severity());
    let style = match a.severity() {
        Severity::Critical | Severity::High => ui.style().red().bold(),
        Severity::Medium => ui.style().yellow(),
        _ => ui.style().cyan(),
    };
    format!(
        "{} {:<8} {} pid={} {} ({})",
        crate::output::time_text(&Json::from(a.alert_time_ms)),
        style.apply_to(sev),
        ui.style().bold().apply_to(&a.rule_id),
        a.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        a.title,
        a.id
    )
}
