//! `daemoneye-cli export processes|alerts`: the agent's table or its alerts
//! into a file (or stdout), as JSON lines or CSV.
//!
//! - **JSON** is JSON lines: one object per line, keyed by column name
//!   (streams, appends and greps well; `jq -s .` makes an array of it).
//!   Alerts carry the same fields as `alerts list --format json`, the
//!   matching row under `row`.
//! - **CSV** has a header row; NULL is an empty field; an alert's `row` is
//!   its JSON text.
//! - The format is `--format`, else the file's extension (`.csv`, else JSON).
//! - An existing file is refused without `--force`; the file is written
//!   beside the target and renamed into place, so a failed export leaves no
//!   half file.
//! - Processes are read in pages (ordered by process key) with a progress
//!   bar on stderr when it is a terminal.

use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use daemoneye_lib::models::{ALERT_FIELDS, alert_json};
use daemoneye_lib::proto::sql_value::Value as V;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value as Json};

use crate::alerts::AlertFilter;
use crate::client::{self, Client, param};
use crate::output::{Format, cell_text};
use crate::processes::ListFilter;
use crate::timearg;

/// Rows per query page.
const PAGE: u64 = 2000;
/// Below this many rows no progress bar is drawn.
const PROGRESS_MIN_ROWS: u64 = 5000;

/// `export` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ExportCommand {
    /// Every column of the process table (exited processes still in it too,
    /// unless --alive).
    ///
    /// Example: daemoneye-cli export processes --output procs.csv --user root --since 1h
    Processes {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filter: ListFilter,
        /// Only processes started at or after TIME: RFC 3339, Unix ms, `now`, or a duration ago (10m, 2h).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only processes started before TIME (same forms as --since).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
    },
    /// Stored alerts with every field, oldest first.
    ///
    /// Example: daemoneye-cli export alerts --output alerts.jsonl --severity high --since 1d
    Alerts {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filter: AlertFilter,
    },
}

/// Where the export goes.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The file to write (`-` or absent: stdout).
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Replace FILE if it exists.
    #[arg(long)]
    force: bool,
}

/// Runs an `export` subcommand. `format`: the global `--format`, if given.
pub(crate) async fn run(
    cmd: &ExportCommand,
    socket: &Path,
    format: Option<Format>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let target = match cmd {
        ExportCommand::Processes { target, .. } | ExportCommand::Alerts { target, .. } => target,
    };
    let file = target.output.as_ref().filter(|p| p.as_os_str() != "-");
    let format = match (format, file) {
        (Some(Format::Table), _) => anyhow::bail!("export writes json or csv: use --format json or --format csv"),
        (Some(f), _) => f,
        (None, Some(p)) if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv")) => Format::Csv,
        (None, _) => Format::Json,
    };
    if let Some(p) = file
        && p.exists()
        && !target.force
    {
        anyhow::bail!("{} already exists: pass --force to replace it, or choose another --output", p.display());
    }
    let mut client = client::connect(socket).await?;
    let mut sink = Sink::open(file.map(PathBuf::as_path), format, out)?;
    let n = match cmd {
        ExportCommand::Processes { filter, since, until, .. } => {
            processes(&mut client, filter, since.as_deref(), until.as_deref(), &mut sink).await?
        }
        ExportCommand::Alerts { filter, .. } => alerts(&mut client, filter, &mut sink).await?,
    };
    sink.finish()?;
    if let Some(p) = file {
        #[allow(clippy::print_stderr, reason = "a summary for the operator; stdout may be the data")]
        {
            eprintln!(
                "exported {n} row(s) to {} ({})",
                p.display(),
                if format == Format::Csv { "CSV" } else { "JSON lines" }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn processes(
    client: &mut Client,
    filter: &ListFilter,
    since: Option<&str>,
    until: Option<&str>,
    sink: &mut Sink<'_>,
) -> anyhow::Result<u64> {
    let (mut conds, mut params) = crate::processes::filter_sql(filter, false);
    if let Some(s) = since {
        conds.push("start_time >= :since".into());
        params.push(param("since", V::Integer(timearg::parse_ms(s).context("--since")?)));
    }
    if let Some(u) = until {
        conds.push("start_time < :until".into());
        params.push(param("until", V::Integer(timearg::parse_ms(u).context("--until")?)));
    }
    let where_ = if conds.is_empty() { String::new() } else { format!(" WHERE {}", conds.join(" AND ")) };
    let count = client::query(
        client,
        "counting processes failed",
        format!("SELECT count(*) AS n FROM processes{where_}"),
        params.clone(),
        0,
    )
    .await?;
    let total = count.rows.first().and_then(|r| r.first()).and_then(Json::as_u64).unwrap_or(0);
    let limit = filter.limit.map_or(u64::MAX, u64::from);
    let bar = progress(total.min(limit), "processes");
    let mut written = 0u64;
    // Pages by process key: stable while the table changes underneath.
    let mut after: Option<String> = None;
    while written < limit {
        let mut page_conds = conds.clone();
        let mut page_params = params.clone();
        if let Some(k) = &after {
            page_conds.push("process_key > :after".into());
            page_params.push(param("after", V::Text(k.clone())));
        }
        let w = if page_conds.is_empty() { String::new() } else { format!(" WHERE {}", page_conds.join(" AND ")) };
        let n = PAGE.min(limit - written);
        let sql = format!("SELECT * FROM processes{w} ORDER BY process_key LIMIT {n}");
        let rows = client::query(client, "exporting processes failed", sql, page_params, n).await?;
        let key_at = rows.columns.iter().position(|c| c == "process_key");
        sink.header(&rows.columns)?;
        for r in &rows.rows {
            sink.row(&rows.columns, r)?;
        }
        written += rows.rows.len() as u64;
        if let Some(b) = &bar {
            b.set_position(written);
        }
        after = rows.rows.last().and_then(|r| key_at.and_then(|i| r.get(i))).and_then(Json::as_str).map(str::to_owned);
        if (rows.rows.len() as u64) < n || after.is_none() {
            break;
        }
    }
    if written == 0 {
        // An empty export still has its CSV header.
        sink.header(
            &daemoneye_lib::detection::Table::Processes.columns().iter().map(|c| c.name.to_owned()).collect::<Vec<_>>(),
        )?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(written)
}

async fn alerts(client: &mut Client, filter: &AlertFilter, sink: &mut Sink<'_>) -> anyhow::Result<u64> {
    let alerts = crate::alerts::fetch(client, filter.request(0)?).await?;
    let bar = progress(alerts.len() as u64, "alerts");
    let columns: Vec<String> = ALERT_FIELDS.iter().map(|c| (*c).to_owned()).collect();
    sink.header(&columns)?;
    for (i, a) in alerts.iter().enumerate() {
        let doc = alert_json(a);
        let row: Vec<Json> = ALERT_FIELDS.iter().map(|f| doc[*f].clone()).collect();
        sink.row(&columns, &row)?;
        if let Some(b) = &bar
            && i % 256 == 0
        {
            b.set_position(i as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(alerts.len() as u64)
}

/// A bar on stderr for a large export, when stderr is a terminal.
fn progress(total: u64, what: &str) -> Option<ProgressBar> {
    if total < PROGRESS_MIN_ROWS || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(&format!("exporting {what} {{bar:40}} {{pos}}/{{len}} ({{eta}})")) {
        bar.set_style(style);
    }
    Some(bar)
}

/// The output: a temporary file renamed into place at the end, or stdout.
struct Sink<'a> {
    out: Box<dyn Write + 'a>,
    format: Format,
    header_done: bool,
    /// (temporary file, final path)
    rename: Option<(tempfile::TempPath, PathBuf)>,
}

impl<'a> Sink<'a> {
    fn open(file: Option<&Path>, format: Format, stdout: &'a mut dyn Write) -> anyhow::Result<Self> {
        let (out, rename): (Box<dyn Write + 'a>, _) = match file {
            Some(p) => {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let tmp = tempfile::Builder::new()
                    .prefix(".daemoneye-export")
                    .tempfile_in(dir)
                    .with_context(|| format!("cannot write in {}: does the directory exist?", dir.display()))?;
                let (f, path) = tmp.into_parts();
                (Box::new(std::io::BufWriter::new(f)), Some((path, p.to_owned())))
            }
            None => (Box::new(stdout), None),
        };
        Ok(Self { out, format, header_done: false, rename })
    }

    fn header(&mut self, columns: &[String]) -> anyhow::Result<()> {
        if self.header_done {
            return Ok(());
        }
        self.header_done = true;
        if self.format == Format::Csv {
            let mut w = csv::WriterBuilder::new().from_writer(&mut self.out);
            w.write_record(columns)?;
            w.flush()?;
        }
        Ok(())
    }

    fn row(&mut self, columns: &[String], row: &[Json]) -> anyhow::Result<()> {
        match self.format {
            Format::Csv => {
                let mut w = csv::WriterBuilder::new().from_writer(&mut self.out);
                w.write_record(row.iter().map(|v| match v {
                    Json::Object(_) | Json::Array(_) => v.to_string(),
                    other => cell_text(other),
                }))?;
                w.flush()?;
            }
            _ => {
                let obj: Map<String, Json> = columns.iter().cloned().zip(row.iter().cloned()).collect();
                serde_json::to_writer(&mut self.out, &obj)?;
                self.out.write_all(b"\n")?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.out.flush().context("writing the export")?;
        drop(self.out);
        if let Some((tmp, path)) = self.rename.take() {
            tmp.persist(&path).with_context(|| format!("moving the export into place at {}", path.display()))?;
        }
        Ok(())
    }
}
