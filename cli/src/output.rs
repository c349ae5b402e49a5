//! Rendering results as a terminal table, JSON or CSV, and the colour
//! decision.
//!
//! JSON is an array of objects keyed by column name; CSV has a header row;
//! tables fit the terminal width (comfy-table's dynamic arrangement).
//!
//! Colour ([`Ui::color`]) is used only in tables and human lines, and only
//! when `--color always`, or `--color auto` (the default) with stdout a
//! terminal, `NO_COLOR` unset or empty, `TERM` not `dumb` and no
//! `--no-color`. JSON and CSV never carry colour.

use std::io::{IsTerminal as _, Write};

use comfy_table::{Cell, Color, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Map, Value as Json};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub(crate) enum Format {
    /// A table sized to the terminal.
    #[default]
    Table,
    /// A JSON array of objects.
    Json,
    /// CSV with a header row.
    Csv,
}

/// When to use colour (`--color`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub(crate) enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set or TERM is dumb.
    #[default]
    Auto,
    /// Always (even when piped, and over NO_COLOR: the flag is the more
    /// specific request).
    Always,
    /// Never.
    Never,
}

/// How to present output: the format and whether to colour it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ui {
    /// Output format.
    pub(crate) format: Format,
    /// Colour in tables and human lines.
    pub(crate) color: bool,
}

impl Ui {
    /// Decides colour from the flags and the environment.
    pub(crate) fn new(format: Format, choice: ColorChoice, no_color_flag: bool) -> Self {
        let env_off = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
            || std::env::var_os("TERM").is_some_and(|t| t == "dumb");
        let color = match (no_color_flag, choice) {
            (true, _) | (false, ColorChoice::Never) => false,
            (false, ColorChoice::Always) => true,
            (false, ColorChoice::Auto) => !env_off && std::io::stdout().is_terminal(),
        };
        Self { format, color }
    }

    /// A `console` style that is applied only when colour is on.
    pub(crate) fn style(&self) -> console::Style {
        console::Style::new().force_styling(self.color)
    }

    /// The terminal's width when stdout is one (for lines that must fit).
    pub(crate) fn width(&self) -> Option<usize> {
        console::Term::stdout().size_checked().map(|(_, w)| usize::from(w)).filter(|w| *w > 0)
    }
}

/// Columns holding Unix milliseconds: shown as RFC 3339 times in tables.
const TIME_COLUMNS: [&str; 7] =
    ["alert_time", "last_seen", "start_time", "exit_time", "event_time", "running_since", "loaded"];

/// A rectangular result: column names and JSON cells.
#[derive(Debug, Default)]
pub(crate) struct Grid {
    /// Column names.
    pub(crate) columns: Vec<String>,
    /// Rows, one JSON value per column.
    pub(crate) rows: Vec<Vec<Json>>,
}

impl Grid {
    /// Writes the grid in `format`.
    pub(crate) fn write(&self, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
        match format {
            Format::Json => {
                let arr: Vec<Json> = self
                    .rows
                    .iter()
                    .map(|r| Json::Object(self.columns.iter().cloned().zip(r.iter().cloned()).collect::<Map<_, _>>()))
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &arr)?;
                writeln!(out)?;
            }
            Format::Csv => {
                let mut w = csv::Writer::from_writer(out);
                w.write_record(&self.columns)?;
                for r in &self.rows {
                    w.write_record(r.iter().map(cell_text))?;
                }
                w.flush()?;
            }
            Format::Table => {
                let mut t = Table::new();
                t.load_style(UTF8_FULL_CONDENSED)
                    .set_content_arrangement(ContentArrangement::Dynamic)
                    .set_header(&self.columns);
                for r in &self.rows {
                    t.add_row(r.iter().map(cell_text));
                }
                writeln!(out, "{t}")?;
                writeln!(out, "({} row{})", self.rows.len(), if self.rows.len() == 1 { "" } else { "s" })?;
            }
        }
        Ok(())
    }
}

impl Grid {
    /// Writes the grid for a person or a script: like [`Grid::write`], but a
    /// table shows times as RFC 3339 and colours status-like cells (when
    /// `ui.color`).
    pub(crate) fn render(&self, ui: &Ui, out: &mut dyn Write) -> anyhow::Result<()> {
        if ui.format != Format::Table {
            return self.write(ui.format, out);
        }
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(&self.columns);
        if ui.color {
            t.enforce_styling();
        }
        for r in &self.rows {
            t.add_row(self.columns.iter().zip(r).map(|(col, v)| {
                let text = if TIME_COLUMNS.contains(&col.as_str()) { time_text(v) } else { cell_text(v) };
                let cell = Cell::new(&text);
                match status_color(col, &text) {
                    Some(c) if ui.color => cell.fg(c),
                    _ => cell,
                }
            }));
        }
        writeln!(out, "{t}")?;
        writeln!(out, "({} row{})", self.rows.len(), if self.rows.len() == 1 { "" } else { "s" })?;
        Ok(())
    }
}

/// Unix milliseconds as an RFC 3339 UTC time (seconds); other values as text.
pub(crate) fn time_text(v: &Json) -> String {
    match v.as_i64().and_then(|ms| u64::try_from(ms).ok()) {
        Some(ms) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
        }
        None => cell_text(v),
    }
}

/// The colour of a status-like cell (severity, health, breaker, enabled).
pub(crate) fn status_color(column: &str, text: &str) -> Option<Color> {
    match (column, text) {
        ("severity", "critical" | "high") | (_, "unhealthy" | "open" | "failed") => Some(Color::Red),
        ("severity", "medium") | (_, "degraded" | "half-open" | "pending") => Some(Color::Yellow),
        ("severity", "low") => Some(Color::Cyan),
        (_, "healthy" | "closed" | "delivered") => Some(Color::Green),
        ("enabled", t) if t.starts_with("no") => Some(Color::DarkGrey),
        _ => None,
    }
}

/// A cell as plain text: strings unquoted, NULL empty.
pub(crate) fn cell_text(v: &Json) -> String {
    match v {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Grid {
        Grid {
            columns: vec!["pid".into(), "name".into()],
            rows: vec![vec![Json::from(1), Json::from("a,b")], vec![Json::from(2), Json::Null]],
        }
    }

    #[test]
    fn json_is_an_array_of_objects() {
        let mut buf = Vec::new();
        grid().write(Format::Json, &mut buf).unwrap();
        let v: Json = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v[0]["pid"], 1);
        assert_eq!(v[1]["name"], Json::Null);
    }

    #[test]
    fn csv_quotes_and_leaves_null_empty() {
        let mut buf = Vec::new();
        grid().write(Format::Csv, &mut buf).unwrap();
        assert_eq!(String::from_utf8(buf).unwrap(), "pid,name\n1,\"a,b\"\n2,\n");
    }

    #[test]
    fn render_humanizes_times_and_colours_only_when_asked() {
        let g = Grid {
            columns: vec!["alert_time".into(), "severity".into()],
            rows: vec![vec![Json::from(1_700_000_000_123_i64), Json::from("high")]],
        };
        let mut plain = Vec::new();
        g.render(&Ui { format: Format::Table, color: false }, &mut plain).unwrap();
        let plain = String::from_utf8(plain).unwrap();
        assert!(plain.contains("2023-11-14T22:13:20Z") && !plain.contains('\x1b'), "{plain}");
        let mut coloured = Vec::new();
        g.render(&Ui { format: Format::Table, color: true }, &mut coloured).unwrap();
        assert!(String::from_utf8(coloured).unwrap().contains('\x1b'));
        let mut json = Vec::new();
        g.render(&Ui { format: Format::Json, color: true }, &mut json).unwrap();
        let v: Json = serde_json::from_slice(&json).unwrap();
        assert_eq!(v[0]["alert_time"], 1_700_000_000_123_i64);
    }

    #[test]
    fn table_counts_rows() {
        let mut buf = Vec::new();
        grid().write(Format::Table, &mut buf).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains("a,b") && s.contains("(2 rows)"), "{s}");
    }
}
