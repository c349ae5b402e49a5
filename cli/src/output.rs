//! Rendering results as a terminal table, JSON or CSV.
//!
//! JSON is an array of objects keyed by column name; CSV has a header row;
//! tables fit the terminal width.

use std::io::Write;

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
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
    fn table_counts_rows() {
        let mut buf = Vec::new();
        grid().write(Format::Table, &mut buf).unwrap();
        let s = String::from_utf8(buf).unwrap();
        assert!(s.contains("a,b") && s.contains("(2 rows)"), "{s}");
    }
}
