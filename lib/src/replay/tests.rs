//! Replay and state rebuild over real ledger files written by the real
//! writer.

use std::path::Path;
use std::time::Duration;

use bytesize::ByteSize;
use prost::Message;

use super::*;
use crate::config::LedgerConfig;
use crate::detection::rules::load_rules_str;
use crate::detection::{RuleSet, TableProvider};
use crate::ledger::{LedgerWriter, RecordKind};
use crate::proto::{EventSource, EventType, ProcessEvent, ProcessRecord};

const S: i64 = 1_000_000_000;

fn ev(t: EventType, key: &str, pid: u32, parent: Option<&str>, name: &str) -> ProcessEvent {
    ProcessEvent {
        seq: 0,
        event_type: t as i32,
        event_time_ns: 0,
        source: EventSource::Ebpf as i32,
        process: Some(ProcessRecord {
            pid,
            process_key: key.into(),
            parent_key: parent.map(Into::into),
            name: Some(name.into()),
            ..Default::default()
        }),
        gap: None,
        prev_seq: 0,
    }
}

/// Writes an audit record (as procmond does at start) then `(time in s,
/// event)` records (seq and event time filled in), times counted from a
/// base after the audit record's. Returns the base (Unix ns).
fn write(dir: &Path, keys: &Path, events: &[(i64, ProcessEvent)]) -> i64 {
    let cfg = LedgerConfig {
        segment_size: ByteSize::kib(1),
        commit_batch: 4,
        commit_interval: Duration::from_millis(5),
        sync_interval: Duration::ZERO,
        checkpoint_every: 3,
        checkpoint_interval: Duration::from_secs(3600),
    };
    let (mut w, _) = LedgerWriter::open(dir, keys, &cfg).unwrap();
    w.audit("start", &[("pid", "1")]).unwrap();
    let base = crate::models::time::now_ns() + S;
    for (t, e) in events {
        let mut e = e.clone();
        e.event_time_ns = base + t * S;
        w.append_with(RecordKind::Event, e.event_time_ns, |seq| {
            e.seq = seq;
            e.encode_to_vec()
        })
        .unwrap();
    }
    w.commit().unwrap();
    base
}

fn rules(yaml: &str) -> RuleSet {
    let (rules, errors) = load_rules_str(yaml, Path::new("test.yaml"));
    assert!(errors.is_empty(), "{errors:?}");
    RuleSet { rules, errors: Vec::new() }
}

const NC_UNDER_SHELL: &str = "id: nc-under-shell
name: nc started by a shell
description: d
severity: high
sql: |
  SELECT e.pid, e.process_key, p.name AS parent FROM process_events e
  JOIN processes p ON p.process_key = e.parent_key
  WHERE e.event_type = 'exec' AND e.name = 'nc'
";

struct Fx {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    base: i64,
}

impl Fx {
    /// `t` seconds after the base, in Unix ns.
    fn at(&self, t: i64) -> i64 {
        self.base + t * S
    }
}

fn fixture() -> Fx {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ledger");
    let events = vec![
        (1, ev(EventType::Exec, "p", 10, None, "bash")),
        (2, ev(EventType::Exec, "c", 11, Some("p"), "nc")),
        (3, ev(EventType::Exit, "c", 11, Some("p"), "nc")),
        (4, ev(EventType::Exec, "d", 12, Some("p"), "nc")),
        (6, ev(EventType::Exec, "d", 12, Some("p"), "nc")),
        (8, ev(EventType::Exec, "o", 13, None, "nc")), // no parent row: no match
    ];
    let base = write(&dir, &tmp.path().join("keys"), &events);
    Fx { _tmp: tmp, dir, base }
}

fn alive(st: &StateAt) -> Vec<(String, bool)> {
    let mut v: Vec<_> =
        st.table.states().map(|s| (s.record.as_ref().unwrap().process_key.clone(), s.is_alive)).collect();
    v.sort();
    v
}

#[test]
fn state_at_is_the_ledger_prefix_up_to_that_time() {
    let fx = fixture();
    let o = ReplayOptions::default();
    assert!(state_at(&fx.dir, fx.at(0), &o).unwrap().table.is_empty());
    let st = state_at(&fx.dir, fx.at(2), &o).unwrap();
    assert_eq!(alive(&st), vec![("c".into(), true), ("p".into(), true)]);
    assert_eq!(st.last_time_ns, Some(fx.at(2)));
    let st = state_at(&fx.dir, fx.at(3) + 1, &o).unwrap();
    assert_eq!(alive(&st), vec![("c".into(), false), ("p".into(), true)]);
    // Exited processes leave the table after the retention, as in the agent.
    let short = ReplayOptions { process_retention: Duration::from_secs(2), ..o.clone() };
    let st = state_at(&fx.dir, fx.at(9), &short).unwrap();
    assert_eq!(alive(&st), vec![("d".into(), true), ("o".into(), true), ("p".into(), true)]);
    // Events in the retention window are queryable.
    assert_eq!(st.table.row_count_hint(crate::detection::Table::ProcessEvents), 6);
    // The caps hold whatever the retention, as in the agent: no exited row
    // beyond 0, the newest 2 events.
    let capped = ReplayOptions { max_exited_processes: 0, max_events: 2, ..o };
    let st = state_at(&fx.dir, fx.at(9), &capped).unwrap();
    assert_eq!(alive(&st), vec![("d".into(), true), ("o".into(), true), ("p".into(), true)]);
    assert_eq!(st.table.row_count_hint(crate::detection::Table::ProcessEvents), 2);
}

#[test]
fn replay_raises_what_live_would_in_order_and_dedupes() {
    let fx = fixture();
    let o = ReplayOptions::default();
    let out = replay(&fx.dir, fx.at(0), fx.at(100), &rules(NC_UNDER_SHELL), &o).unwrap();
    let got: Vec<_> = out.alerts.iter().map(|a| (a.rule_id.as_str(), a.process_key.clone().unwrap())).collect();
    assert_eq!(got, vec![("nc-under-shell", "c".to_owned()), ("nc-under-shell", "d".to_owned())]);
    assert_eq!(out.alerts[1].occurrences, 2, "the second exec of d is a repeat");
    assert_eq!(out.alerts[0].pid, Some(11));
    assert_eq!(out.alerts[0].dedupe_key, "nc-under-shell|c");
    assert_eq!(out.events_evaluated, 6);
    assert!(out.rule_errors.is_empty());

    // A range that starts after d's first alert: the agent would remember
    // it (dedupe window), so the repeat at 6 s raises nothing.
    let out = replay(&fx.dir, fx.at(5), fx.at(100), &rules(NC_UNDER_SHELL), &o).unwrap();
    assert!(out.alerts.is_empty(), "{:?}", out.alerts);
    // With a window shorter than the gap, it is a new alert.
    let short = ReplayOptions { dedupe_window: Duration::from_secs(1), ..o };
    let out = replay(&fx.dir, fx.at(5), fx.at(100), &rules(NC_UNDER_SHELL), &short).unwrap();
    assert_eq!(out.alerts.len(), 1);
    assert_eq!(out.alerts[0].alert_time_ms, fx.at(6) / 1_000_000, "raised at the record's time");
    assert_eq!(out.alerts[0].process_key.as_deref(), Some("d"));
}

#[test]
fn table_rules_run_on_the_ledger_clock() {
    let fx = fixture();
    let o = ReplayOptions { table_interval: Duration::from_secs(1), ..ReplayOptions::default() };
    let yaml = "id: nc-alive\nname: n\ndescription: d\nseverity: low\nsql: SELECT pid, process_key FROM processes WHERE name = 'nc' AND is_alive = 1\n";
    let out = replay(&fx.dir, fx.at(0), fx.at(10), &rules(yaml), &o).unwrap();
    let keys: Vec<_> = out.alerts.iter().map(|a| a.process_key.clone().unwrap()).collect();
    // c is alive from 2 s to 3 s (seen by the pass at 2 s), d from 4 s, o from 8 s.
    assert_eq!(keys, vec!["c", "d", "o"]);
    assert!(out.alerts.iter().all(|a| a.event_seq.is_none()));
    assert!(out.table_passes >= 8, "{}", out.table_passes);
}

#[test]
fn bad_ranges_and_directories_are_clear_errors() {
    let fx = fixture();
    let e = replay(&fx.dir, 5, 1, &RuleSet::default(), &ReplayOptions::default()).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    let e = state_at(empty.path(), 0, &ReplayOptions::default()).unwrap_err();
    assert!(e.to_string().contains("not a ledger directory"), "{e}");
}

#[test]
fn now_ms_is_the_replayed_time() {
    let fx = fixture();
    // Matches only when now_ms() is the event's own time (the ledger clock);
    // with the wall clock nothing would match.
    let streaming = "id: at-now\nname: n\ndescription: d\nseverity: low\nsql: SELECT pid, process_key FROM process_events WHERE event_type = 'exec' AND event_time = now_ms()\n";
    let out = replay(&fx.dir, fx.at(0), fx.at(10), &rules(streaming), &ReplayOptions::default()).unwrap();
    let keys: Vec<_> = out.alerts.iter().map(|a| a.process_key.clone().unwrap()).collect();
    assert_eq!(keys, vec!["p", "c", "d", "o"]);
    // A table rule sees now_ms() as the pass time. The fixture's times lie
    // in the future of the wall clock, so this is true only on the ledger
    // clock, from the pass at 5 s on: d (alive since 4 s), then o (from 8 s).
    let o = ReplayOptions { table_interval: Duration::from_secs(1), ..ReplayOptions::default() };
    let later = format!(
        "id: later\nname: n\ndescription: d\nseverity: low\nsql: SELECT pid, process_key FROM processes WHERE name = 'nc' AND is_alive = 1 AND now_ms() >= {}\n",
        crate::models::time::ns_to_ms(fx.at(5))
    );
    let out = replay(&fx.dir, fx.at(0), fx.at(10), &rules(&later), &o).unwrap();
    let keys: Vec<_> = out.alerts.iter().map(|a| a.process_key.clone().unwrap()).collect();
    assert_eq!(keys, vec!["d", "o"]);
}
