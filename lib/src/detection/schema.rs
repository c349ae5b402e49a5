//! The schema catalog: the tables SQL can name, their columns, and how a
//! process row, an event row and an alert row are built from the wire types.
//!
//! Column order here is the row layout everywhere (`Vec<Value>` rows are
//! indexed by these positions).

use crate::models::{event_source_name, event_type_name, severity_name, time::ns_to_ms};
use crate::proto::{Alert, EventSource, ProcessEvent, ProcessRecord, ProcessState};

use super::Value;

/// A table SQL can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// The materialized process table.
    Processes,
    /// In a streaming rule: the event being evaluated; in a query: the
    /// retained recent events.
    ProcessEvents,
    /// Stored alerts.
    Alerts,
}

/// SQL type affinity of a column (SQLite's rules for comparisons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Affinity {
    /// INTEGER affinity.
    Integer,
    /// REAL affinity.
    Real,
    /// TEXT affinity.
    Text,
}

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Column name as written in SQL.
    pub name: &'static str,
    /// Type affinity.
    pub affinity: Affinity,
    /// Whether the store keeps an index on it (equality lookups are O(1)).
    pub indexed: bool,
}

const fn col(name: &'static str, affinity: Affinity) -> Column {
    Column { name, affinity, indexed: false }
}
const fn idx(name: &'static str, affinity: Affinity) -> Column {
    Column { name, affinity, indexed: true }
}

use Affinity::{Integer as I, Real as R, Text as T};

/// Process columns shared by `processes` and `process_events`, in row order.
/// New columns are appended, so existing positions stay valid. The platform
/// identity columns are NULL where the backend does not observe them:
/// `signing_id` … `responsible_pid` on macOS (EndpointSecurity),
/// `session_id` … `token_elevated` on Windows (ETW and the process token).
const PROCESS_COLUMNS: [Column; 36] = [
    idx("pid", I),
    col("ppid", I),
    idx("process_key", T),
    idx("parent_key", T),
    col("name", T),
    col("executable_path", T),
    col("argv", T),
    col("command_line", T),
    col("cwd", T),
    col("uid", I),
    col("gid", I),
    col("euid", I),
    col("egid", I),
    col("user_name", T),
    col("cgroup", T),
    col("container_id", T),
    col("start_time", I),
    col("exit_time", I),
    col("exit_code", I),
    col("signal", I),
    col("executable_hash", T),
    col("hash_algorithm", T),
    col("file_exists", I),
    col("accessible", I),
    col("cpu_usage", R),
    col("memory_usage", I),
    col("signing_id", T),
    col("team_id", T),
    col("cdhash", T),
    col("platform_binary", I),
    col("responsible_pid", I),
    col("session_id", I),
    col("user_sid", T),
    col("token_elevation_type", T),
    col("token_elevated", I),
    col("argv_truncated", I),
];

/// `processes`: the process columns, then `is_alive`, `source`, `last_seq`.
pub static PROCESSES: std::sync::LazyLock<Vec<Column>> = std::sync::LazyLock::new(|| {
    let mut v = PROCESS_COLUMNS.to_vec();
    v.extend([col("is_alive", I), col("source", T), col("last_seq", I)]);
    v
});

/// `process_events`: `seq`, `event_type`, `event_time`, `source`, the process
/// columns (the process as it stands after the event), then `lost_events`.
pub static PROCESS_EVENTS: std::sync::LazyLock<Vec<Column>> = std::sync::LazyLock::new(|| {
    let mut v = vec![idx("seq", I), col("event_type", T), col("event_time", I), col("source", T)];
    v.extend(PROCESS_COLUMNS);
    v.push(col("lost_events", I));
    v
});

/// `alerts`.
pub static ALERTS: [Column; 13] = [
    idx("id", T),
    col("alert_time", I),
    idx("rule_id", T),
    col("title", T),
    col("description", T),
    col("severity", T),
    col("process_key", T),
    col("pid", I),
    col("event_seq", I),
    col("correlation_id", T),
    col("dedupe_key", T),
    col("occurrences", I),
    col("last_seen", I),
];

impl Table {
    /// Every table.
    pub const ALL: [Table; 3] = [Table::Processes, Table::ProcessEvents, Table::Alerts];

    /// The name as written in SQL.
    pub fn name(self) -> &'static str {
        match self {
            Table::Processes => "processes",
            Table::ProcessEvents => "process_events",
            Table::Alerts => "alerts",
        }
    }

    /// Looks a table up by its SQL name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The columns, in row order.
    pub fn columns(self) -> &'static [Column] {
        match self {
            Table::Processes => &PROCESSES,
            Table::ProcessEvents => &PROCESS_EVENTS,
            Table::Alerts => &ALERTS,
        }
    }

    /// Position of a column (case-insensitive), if the table has it.
    pub fn column_index(self, name: &str) -> Option<usize> {
        self.columns().iter().position(|c| c.name.eq_ignore_ascii_case(name))
    }
}

fn push_process_columns(row: &mut Vec<Value>, r: &ProcessRecord) {
    let argv = r.argv.as_ref().map(|a| {
        // A JSON array of strings cannot fail to serialize.
        serde_json::to_string(&a.args).unwrap_or_default()
    });
    row.extend([
        Value::Integer(i64::from(r.pid)),
        r.ppid.map(i64::from).into(),
        Value::Text(r.process_key.clone()),
        r.parent_key.clone().into(),
        r.name.clone().into(),
        r.executable_path.clone().into(),
        argv.into(),
        r.command_line.clone().into(),
        r.cwd.clone().into(),
        r.uid.map(i64::from).into(),
        r.gid.map(i64::from).into(),
        r.euid.map(i64::from).into(),
        r.egid.map(i64::from).into(),
        r.user_name.clone().into(),
        r.cgroup.clone().into(),
        r.container_id.clone().into(),
        r.start_time_ns.map(ns_to_ms).into(),
        r.exit_time_ns.map(ns_to_ms).into(),
        r.exit_code.map(i64::from).into(),
        r.signal.map(i64::from).into(),
        r.executable_hash.clone().into(),
        r.hash_algorithm.clone().into(),
        r.file_exists.into(),
        r.accessible.into(),
        r.cpu_usage.into(),
        r.memory_usage.map(|m| i64::try_from(m).unwrap_or(i64::MAX)).into(),
        r.signing_id.clone().into(),
        r.team_id.clone().into(),
        r.cdhash.clone().into(),
        r.platform_binary.into(),
        r.responsible_pid.map(i64::from).into(),
        r.session_id.map(i64::from).into(),
        r.user_sid.clone().into(),
        r.token_elevation_type.clone().into(),
        r.token_elevated.into(),
        r.argv.as_ref().map(|a| a.truncated).into(),
    ]);
}

/// The `processes` row of a materialized process.
pub fn process_row(state: &ProcessState) -> Vec<Value> {
    let mut row = Vec::with_capacity(PROCESSES.len());
    let empty = ProcessRecord::default();
    push_process_columns(&mut row, state.record.as_ref().unwrap_or(&empty));
    row.extend([
        Value::from(state.is_alive),
        Value::from(event_source_name(EventSource::try_from(state.source).unwrap_or(EventSource::Unspecified))),
        Value::Integer(i64::try_from(state.last_seq).unwrap_or(i64::MAX)),
    ]);
    row
}

/// The `process_events` row of an event: the event's own columns and the
/// process as it stands after the event (`state`), or the event's own record
/// when there is no row (gaps).
pub fn event_row(event: &ProcessEvent, state: Option<&ProcessState>) -> Vec<Value> {
    let mut row = Vec::with_capacity(PROCESS_EVENTS.len());
    row.extend([
        Value::Integer(i64::try_from(event.seq).unwrap_or(i64::MAX)),
        Value::from(event_type_name(event.event_type())),
        Value::Integer(ns_to_ms(event.event_time_ns)),
        Value::from(event_source_name(event.source())),
    ]);
    let empty = ProcessRecord::default();
    let record = state.and_then(|s| s.record.as_ref()).or(event.process.as_ref()).unwrap_or(&empty);
    push_process_columns(&mut row, record);
    row.push(event.gap.as_ref().map(|g| i64::try_from(g.lost_events).unwrap_or(i64::MAX)).into());
    row
}

/// The `alerts` row of an alert.
pub fn alert_row(a: &Alert) -> Vec<Value> {
    vec![
        Value::Text(a.id.clone()),
        Value::Integer(a.alert_time_ms),
        Value::Text(a.rule_id.clone()),
        Value::Text(a.title.clone()),
        Value::Text(a.description.clone()),
        Value::from(severity_name(a.severity())),
        a.process_key.clone().into(),
        a.pid.map(i64::from).into(),
        a.event_seq.map(|s| i64::try_from(s).unwrap_or(i64::MAX)).into(),
        Value::Text(a.correlation_id.clone()),
        Value::Text(a.dedupe_key.clone()),
        Value::Integer(i64::try_from(a.occurrences).unwrap_or(i64::MAX)),
        Value::Integer(a.last_seen_ms),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Argv, EventType};

    #[test]
    fn rows_match_their_catalog() {
        let rec = ProcessRecord {
            pid: 5,
            process_key: "k".into(),
            name: Some("sh".into()),
            argv: Some(Argv { args: vec!["sh".into(), "-c".into()], truncated: false }),
            start_time_ns: Some(2_500_000),
            ..Default::default()
        };
        let st = ProcessState { record: Some(rec.clone()), is_alive: true, source: 3, last_seq: 9 };
        let row = process_row(&st);
        assert_eq!(row.len(), Table::Processes.columns().len());
        let at = |n| Table::Processes.column_index(n).unwrap();
        assert_eq!(row[at("name")], Value::Text("sh".into()));
        assert_eq!(row[at("argv")], Value::Text(r#"["sh","-c"]"#.into()));
        assert_eq!(row[at("start_time")], Value::Integer(2));
        assert_eq!(row[at("ppid")], Value::Null);
        assert_eq!(row[at("is_alive")], Value::Integer(1));
        assert_eq!(row[at("source")], Value::Text("poll".into()));

        let ev = ProcessEvent {
            seq: 3,
            event_type: EventType::Exec as i32,
            event_time_ns: 7_000_000,
            source: 1,
            process: Some(rec),
            gap: None,
            prev_seq: 0,
        };
        let row = event_row(&ev, Some(&st));
        assert_eq!(row.len(), Table::ProcessEvents.columns().len());
        let at = |n| Table::ProcessEvents.column_index(n).unwrap();
        assert_eq!(row[at("event_type")], Value::Text("exec".into()));
        assert_eq!(row[at("event_time")], Value::Integer(7));
        assert_eq!(row[at("source")], Value::Text("ebpf".into()));
        assert_eq!(row[at("pid")], Value::Integer(5));
        assert_eq!(alert_row(&Alert::default()).len(), Table::Alerts.columns().len());
    }

    #[test]
    fn platform_identity_and_argv_truncation_columns() {
        let rec = ProcessRecord {
            pid: 812,
            process_key: "k".into(),
            argv: Some(Argv { args: vec!["a".into()], truncated: true }),
            signing_id: Some("com.apple.ls".into()),
            team_id: Some("EQHXZ8M8AV".into()),
            cdhash: Some("0123abcd".into()),
            platform_binary: Some(true),
            responsible_pid: Some(77),
            session_id: Some(1),
            user_sid: Some("S-1-5-21-1-2-3-1001".into()),
            token_elevation_type: Some("limited".into()),
            token_elevated: Some(false),
            ..Default::default()
        };
        let expected = [
            ("signing_id", Value::Text("com.apple.ls".into())),
            ("team_id", Value::Text("EQHXZ8M8AV".into())),
            ("cdhash", Value::Text("0123abcd".into())),
            ("platform_binary", Value::Integer(1)),
            ("responsible_pid", Value::Integer(77)),
            ("session_id", Value::Integer(1)),
            ("user_sid", Value::Text("S-1-5-21-1-2-3-1001".into())),
            ("token_elevation_type", Value::Text("limited".into())),
            ("token_elevated", Value::Integer(0)),
            ("argv_truncated", Value::Integer(1)),
        ];
        let st = ProcessState { record: Some(rec.clone()), is_alive: true, source: 3, last_seq: 9 };
        let ev = ProcessEvent { seq: 1, event_type: EventType::Exec as i32, process: Some(rec), ..Default::default() };
        for (table, row) in [(Table::Processes, process_row(&st)), (Table::ProcessEvents, event_row(&ev, None))] {
            assert_eq!(row.len(), table.columns().len());
            for (name, value) in &expected {
                assert_eq!(&row[table.column_index(name).unwrap()], value, "{} {name}", table.name());
            }
        }
        // Appended after the original 26 process columns: old positions hold.
        assert_eq!(Table::Processes.column_index("memory_usage"), Some(25));
        assert_eq!(Table::Processes.column_index("signing_id"), Some(26));
        assert_eq!(Table::ProcessEvents.column_index("pid"), Some(4));
        // Unknown on other platforms, and no argv at all: NULL, not false.
        let bare = process_row(&ProcessState { record: Some(ProcessRecord::default()), ..Default::default() });
        for (name, _) in &expected {
            assert_eq!(bare[Table::Processes.column_index(name).unwrap()], Value::Null, "{name}");
        }
    }
}
