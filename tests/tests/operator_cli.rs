//! Issue #7 (operator CLI): the CLI as an operator uses it, against the
//! real agent (poll backend) and real processes.
//!
//! - `processes list|tree|show` on a shell with a child `sleep`;
//! - `export processes|alerts` to JSON lines and CSV, read back and compared
//!   with `query`; refusal to overwrite without `--force`;
//! - every `--help`; errors that name the socket.
//!
//! Alerts and rules commands are in operator_alerts.rs, health and metrics
//! in operator_metrics.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use daemoneye_tests::{Agent, AgentOptions, Reaped, bin, copy_executable, marker, spawn_retrying, wait_for, work_dir};
use serde_json::Value as Json;

/// Rows of `query`, keyed by process key.
fn rows_by_key(agent: &Agent, keys: &[&str]) -> HashMap<String, Json> {
    let list = keys.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(", ");
    agent
        .query(&format!("SELECT * FROM processes WHERE process_key IN ({list})"))
        .into_iter()
        .map(|r| (r["process_key"].as_str().unwrap().to_owned(), r))
        .collect()
}

/// Columns that change while a process runs (poll samples, last event).
const MOVING: [&str; 3] = ["cpu_usage", "memory_usage", "last_seq"];

#[test]
fn processes_list_tree_show_and_export() {
    let agent = Agent::start(AgentOptions::default());
    let work = work_dir("operator-cli");
    let m = marker("pt");
    // parent shell -> child sleep (`; true` keeps the shell from exec'ing sleep).
    let shell = copy_executable(Path::new("/bin/sh"), work.path(), &m);
    let parent = Reaped(spawn_retrying(Command::new(&shell).args(["-c", "sleep 300; true"])));
    let ppid = parent.0.id();
    let (shell_row, child_row) = wait_for(Duration::from_secs(30), || {
        let s = agent.query(&format!("SELECT * FROM processes WHERE pid = {ppid} AND is_alive = 1"));
        let c = agent.query(&format!("SELECT * FROM processes WHERE ppid = {ppid} AND is_alive = 1"));
        (s.len() == 1 && c.len() == 1 && c[0]["name"] == "sleep").then(|| (s[0].clone(), c[0].clone()))
    })
    .expect("the shell and its sleep never reached the table");
    let shell_key = shell_row["process_key"].as_str().unwrap().to_owned();
    let child_key = child_row["process_key"].as_str().unwrap().to_owned();
    let cpid = child_row["pid"].as_u64().unwrap();
    assert_eq!(child_row["parent_key"], shell_key.as_str());

    // list: filters by name, user, liveness, limit.
    let listed = agent.cli_json(&["processes", "list", "--name", &m]);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["pid"], ppid);
    assert_eq!(listed[0]["process_key"], shell_key.as_str());
    let uid = nix::unistd::getuid().as_raw().to_string();
    let mine = agent.cli_json(&["processes", "list", "--user", &uid]);
    assert!(mine.as_array().unwrap().iter().any(|r| r["pid"] == cpid), "--user {uid} misses the sleep");
    let other = agent.cli_json(&["processes", "list", "--name", &m, "--user", "4000000"]);
    assert_eq!(other.as_array().unwrap().len(), 0);
    assert_eq!(agent.cli_json(&["processes", "list", "--all", "--limit", "1"]).as_array().unwrap().len(), 1);
    let table = agent.cli_ok(&["processes", "list", "--name", &m]);
    assert!(table.contains(&m) && table.contains("alive") && table.contains("(1 row)"), "{table}");

    // tree: the shell with its sleep below it, in box characters.
    let tree = agent.cli_ok(&["processes", "tree", "--pid", &ppid.to_string()]);
    let lines: Vec<&str> = tree.lines().collect();
    assert!(lines[0].starts_with(&format!("{ppid} {m} ")), "{tree}");
    assert!(lines[1].starts_with(&format!("└── {cpid} sleep ")), "{tree}");
    assert!(lines[1].contains("sleep 300"), "{tree}");
    let doc = agent.cli_json(&["processes", "tree", "--root", &shell_key]);
    assert_eq!(doc[0]["pid"], ppid);
    assert_eq!(doc[0]["children"][0]["pid"], cpid);
    assert_eq!(doc[0]["children"][0]["process_key"], child_key.as_str());
    let whole = agent.cli_ok(&["processes", "tree"]);
    assert!(whole.lines().any(|l| l.contains(&format!("── {ppid} {m}"))), "{whole}");

    // show: every column of the row, its events and its alerts.
    // Events reach `process_events` with the agent's next store write
    // (at most 250 ms after the table has them).
    let shown = wait_for(Duration::from_secs(10), || {
        let doc = agent.cli_json(&["processes", "show", &cpid.to_string()]);
        doc["events"].as_array().is_some_and(|e| !e.is_empty()).then_some(doc)
    })
    .expect("the child's events in `processes show`");
    let columns: BTreeSet<&String> = shown["process"].as_object().unwrap().keys().collect();
    let expected: BTreeSet<&String> = child_row.as_object().unwrap().keys().collect();
    assert_eq!(columns, expected);
    assert_eq!(shown["process"]["ppid"], ppid);
    assert_eq!(shown["process"]["command_line"], child_row["command_line"]);
    let events = shown["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["event_type"] == "exec" || e["event_type"] == "snapshot"), "{events:?}");
    assert!(shown["alerts"].is_array());
    let by_key = agent.cli_ok(&["processes", "show", &shell_key]);
    assert!(by_key.contains("recent events") && by_key.contains(&shell_key) && by_key.contains("alerts:"), "{by_key}");
    let missing = agent.cli(&["processes", "show", "no-such-key"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("processes list --all"));

    // export: JSON lines and CSV, read back, equal to `query`.
    let out = tempfile::tempdir().unwrap();
    let json_file = out.path().join("procs.json");
    let json_path = json_file.to_str().unwrap();
    agent.cli_ok(&["export", "processes", "--output", json_path, "--name", &m, "--name", "sleep"]);
    let exported: Vec<Json> =
        std::fs::read_to_string(&json_file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let now = rows_by_key(&agent, &[&shell_key, &child_key]);
    for key in [&shell_key, &child_key] {
        let e = exported.iter().find(|r| r["process_key"] == key.as_str()).unwrap_or_else(|| panic!("{key} missing"));
        let q = &now[key.as_str()];
        assert_eq!(e.as_object().unwrap().len(), q.as_object().unwrap().len());
        for (col, v) in q.as_object().unwrap() {
            if !MOVING.contains(&col.as_str()) {
                assert_eq!(&e[col], v, "column {col} of {key}");
            }
        }
    }
    assert!(exported.iter().all(|r| r["name"] == m.as_str() || r["name"] == "sleep"));

    let csv_file = out.path().join("procs.csv");
    let csv_path = csv_file.to_str().unwrap();
    agent.cli_ok(&["export", "processes", "--output", csv_path, "--since", "1d", "--pid", &cpid.to_string()]);
    let mut reader = csv::Reader::from_path(&csv_file).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    let records: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let row = records
        .iter()
        .find(|r| r.get(header.iter().position(|h| h == "process_key").unwrap()) == Some(child_key.as_str()))
        .expect("the sleep in the CSV");
    let q = &rows_by_key(&agent, &[&child_key])[&child_key];
    for (i, col) in header.iter().enumerate() {
        if MOVING.contains(&col.as_str()) {
            continue;
        }
        let want = match &q[col] {
            Json::Null => String::new(),
            Json::String(s) => s.clone(),
            v => v.to_string(),
        };
        assert_eq!(row.get(i).unwrap(), want, "CSV column {col}");
    }

    // No overwrite without --force; the file is left as it was.
    let before = std::fs::read(&csv_file).unwrap();
    let refused = agent.cli(&["export", "processes", "--output", csv_path]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("--force") && err.contains(csv_path), "{err}");
    assert_eq!(std::fs::read(&csv_file).unwrap(), before);
    agent.cli_ok(&["export", "processes", "--output", csv_path, "--force", "--pid", &ppid.to_string()]);
    assert_ne!(std::fs::read(&csv_file).unwrap(), before);
    let table_fmt = agent.cli(&["export", "processes", "--format", "table"]);
    assert!(String::from_utf8_lossy(&table_fmt.stderr).contains("json or csv"));
    drop(parent);
}

/// Every command path, from `--help`'s "Commands:" sections.
fn command_paths(prefix: &[String]) -> Vec<Vec<String>> {
    let out = Command::new(bin("daemoneye-cli")).args(prefix).arg("--help").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut paths = vec![prefix.to_vec()];
    let mut in_commands = false;
    for line in text.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.trim().is_empty() {
                break;
            }
            // "  name  about"; a wrapped about continues further indented.
            let Some(name) =
                line.strip_prefix("  ").filter(|l| !l.starts_with(' ')).and_then(|l| l.split_whitespace().next())
            else {
                continue;
            };
            if name != "help" {
                let mut p = prefix.to_vec();
                p.push(name.to_owned());
                paths.extend(command_paths(&p));
            }
        }
    }
    paths
}

#[test]
fn every_help_and_missing_agent_errors() {
    let paths = command_paths(&[]);
    assert!(paths.len() > 30, "too few commands found: {paths:?}");
    for want in [
        &["processes", "tree"][..],
        &["processes", "show"],
        &["export", "processes"],
        &["export", "alerts"],
        &["alerts", "watch"],
        &["alerts", "show"],
        &["rules", "test"],
        &["rules", "enable"],
        &["rules", "disable"],
        &["metrics"],
    ] {
        assert!(paths.iter().any(|p| p == want), "no {want:?} in {paths:?}");
    }
    for p in &paths {
        let out = Command::new(bin("daemoneye-cli")).args(p).arg("--help").env("NO_COLOR", "1").output().unwrap();
        assert!(out.status.success(), "{p:?} --help failed");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.lines().count() >= 3 && text.contains("Usage:"), "{p:?} --help:\n{text}");
        // The one-line about comes first.
        assert!(!text.lines().next().unwrap().trim().is_empty(), "{p:?} --help has no about");
    }

    // No agent: the error names the socket tried and how to start the agent.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let expected_socket = dir.path().join("run").join("agent.sock");
    for args in [
        &["processes", "list"][..],
        &["alerts", "list"],
        &["alerts", "watch"],
        &["rules", "list"],
        &["rules", "disable", "x"],
        &["metrics"],
        &["query", "SELECT 1"],
        &["export", "alerts"],
    ] {
        let out = Command::new(bin("daemoneye-cli")).arg("--data-dir").arg(data).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&expected_socket.display().to_string()), "{args:?}: {err}");
        assert!(err.contains("daemoneye-agent") && err.contains("--socket"), "{args:?}: {err}");
    }
    let health =
        Command::new(bin("daemoneye-cli")).args(["--socket", "/nonexistent/agent.sock", "health"]).output().unwrap();
    assert_eq!(health.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&health.stderr).contains("/nonexistent/agent.sock"));
    // A socket file with nobody behind it.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let out = Command::new(bin("daemoneye-cli")).arg("--socket").arg(&stale).arg("health").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing listens") && err.contains(&stale.display().to_string()), "{err}");
}
