//! `ledger tail`: the last N records, and new ones as they come.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use daemoneye_lib::ledger::{LedgerReader, LedgerRecord, RecordKind};
use daemoneye_lib::models::event_type_name;
use daemoneye_lib::proto::ProcessEvent;
use prost::Message;
use serde_json::{Value as Json, json};

use super::format_time;
use crate::output::{Format, Grid, cell_text};

/// How often `--follow` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

const COLUMNS: [&str; 7] = ["seq", "time", "kind", "summary", "entry_hash", "file", "offset"];

pub(super) fn run(
    dir: &Path,
    lines: u64,
    follow: bool,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let reader = LedgerReader::open(dir)?;
    let head = reader.head()?.unwrap_or(0);
    let start = if lines == 0 { head + 1 } else { head.saturating_sub(lines - 1).max(1) };
    let mut iter = reader.iter_from(start).with_context(|| format!("reading {}", dir.display()))?;
    if !follow {
        let mut grid = Grid { columns: COLUMNS.iter().map(|c| (*c).to_owned()).collect(), rows: Vec::new() };
        for rec in iter.by_ref() {
            let rec = rec?;
            if rec.seq > head {
                break; // appended while reading: not part of "the last N"
            }
            grid.rows.push(row(&rec));
        }
        grid.write(format, out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if format == Format::Csv {
        out.write_all(&csv_line(COLUMNS.iter().map(|c| (*c).to_owned()))?)?;
    }
    loop {
        for rec in iter.by_ref() {
            let r = row(&rec?);
            match format {
                Format::Json => {
                    let obj: serde_json::Map<String, Json> = COLUMNS.iter().map(|c| (*c).to_owned()).zip(r).collect();
                    writeln!(out, "{}", Json::Object(obj))?;
                }
                Format::Csv => out.write_all(&csv_line(r.iter().map(cell_text))?)?,
                Format::Table => {
                    writeln!(
                        out,
                        "{:>10}  {}  {:<10}  {}",
                        r[0],
                        cell_text(&r[1]),
                        cell_text(&r[2]),
                        cell_text(&r[3])
                    )?;
                }
            }
        }
        out.flush()?;
        std::thread::sleep(FOLLOW_POLL);
    }
}

/// One CSV record, quoted as needed, with its line end.
fn csv_line(cells: impl IntoIterator<Item = String>) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(cells)?;
    w.into_inner().map_err(|e| anyhow::anyhow!("formatting CSV: {e}"))
}

/// One record as output cells (see `COLUMNS`).
fn row(rec: &LedgerRecord) -> Vec<Json> {
    let kind = match rec.kind {
        RecordKind::Event => "event",
        RecordKind::Gap => "gap",
        RecordKind::Checkpoint => "checkpoint",
        RecordKind::Audit => "audit",
    };
    vec![
        json!(rec.seq),
        json!(format_time(rec.time_ns)),
        json!(kind),
        json!(summary(rec)),
        json!(hex::encode(rec.entry_hash)),
        json!(rec.location.file.display().to_string()),
        json!(rec.location.offset),
    ]
}

/// What a record holds, in one line.
fn summary(rec: &LedgerRecord) -> String {
    match rec.kind {
        RecordKind::Event | RecordKind::Gap => match ProcessEvent::decode(rec.payload.as_slice()) {
            Ok(ev) => {
                let mut s = event_type_name(ev.event_type()).to_owned();
                if let Some(p) = &ev.process {
                    s.push_str(&format!(" pid={} key={}", p.pid, p.process_key));
                    if let Some(n) = &p.name {
                        s.push_str(&format!(" name={n}"));
                    }
                    if let Some(x) = &p.executable_path {
                        s.push_str(&format!(" exe={x}"));
                    }
                }
                if let Some(g) = &ev.gap {
                    s.push_str(&format!(" lost={} reason={}", g.lost_events, g.reason));
                }
                s
            }
            Err(e) => format!("undecodable ProcessEvent ({} bytes): {e}", rec.payload.len()),
        },
        RecordKind::Checkpoint => match rec.checkpoint() {
            Some(c) => format!("signed seq {} hash {}", c.seq, hex::encode(&c.entry_hash[..8])),
            None => "malformed checkpoint".to_owned(),
        },
        RecordKind::Audit => match rec.audit() {
            Some(a) => {
                let mut s = a.action.clone();
                for (k, v) in &a.details {
                    s.push_str(&format!(" {k}={v}"));
                }
                s
            }
            None => "malformed audit record".to_owned(),
        },
    }
}
