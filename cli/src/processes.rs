//! `daemoneye-cli processes ...`: the detection tasks that procmond runs on
//! the agent's behalf (the live process list, executable verification, hash
//! checks, following a process tree), plus the agent's own table.
//!
//! Exit codes: 0 ok; 1 error; 2 for `verify`/`check-hash` when the
//! executable was deleted, replaced or does not match.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use daemoneye_lib::proto::{
    DetectionResult, DetectionTask, HashCheck, ProcessEvent, ProcessFilter, ProcessRecord, QueryRequest,
    RunTaskRequest, TaskType, WatchProcessTreeRequest, sql_value,
};
use serde_json::{Value as Json, json};

use crate::client::{self, Client};
use crate::output::{Format, Grid};

/// `processes` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ProcessesCommand {
    /// List processes: from the agent's table, or with --live asked of procmond now.
    ///
    /// Example: daemoneye-cli processes list --live --name sshd
    List {
        /// Ask procmond for the live list (ENUMERATE_PROCESSES) instead of the agent's table.
        #[arg(long)]
        live: bool,
        /// Only processes with this name (repeatable).
        #[arg(long = "name", value_name = "NAME")]
        names: Vec<String>,
        /// Only this pid (repeatable).
        #[arg(long = "pid", value_name = "PID")]
        pids: Vec<u32>,
        /// Only executables matching this glob (`*`, `?`), or containing it when it has no wildcard.
        #[arg(long = "exe", value_name = "PATTERN")]
        exe: Option<String>,
    },
    /// Re-hash a process's executable on disk and compare it with the running
    /// image (VERIFY_EXECUTABLE); reports deleted or replaced binaries. Exit 2 when not intact.
    Verify {
        /// The process.
        pid: u32,
    },
    /// Compare the SHA-256 of a file now with an expected hash (CHECK_PROCESS_HASH). Exit 2 on mismatch.
    CheckHash {
        /// The executable.
        path: String,
        /// The expected SHA-256 (hex).
        #[arg(long, value_name = "HEX")]
        expected: String,
    },
    /// Follow a process and its descendants (MONITOR_PROCESS_TREE): prints
    /// the subtree, then its events as they happen, until Ctrl-C or --count.
    Watch {
        /// The root process.
        pid: u32,
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

/// Runs a `processes` subcommand.
pub(crate) async fn run(
    cmd: &ProcessesCommand,
    socket: &std::path::Path,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(socket).await?;
    match cmd {
        ProcessesCommand::List { live, names, pids, exe } => {
            let filter =
                ProcessFilter { process_names: names.clone(), pids: pids.clone(), executable_pattern: exe.clone() };
            let records = if *live {
                let task = DetectionTask {
                    task_type: TaskType::EnumerateProcesses as i32,
                    process_filter: Some(filter),
                    ..Default::default()
                };
                run_task(&mut client, task, "listing live processes").await?.processes
            } else {
                table_processes(&mut client, &filter).await?
            };
            let columns = ["pid", "ppid", "uid", "name", "executable_path", "process_key"];
            let grid = Grid {
                columns: columns.iter().map(|c| (*c).to_owned()).collect(),
                rows: records
                    .iter()
                    .map(record_json)
                    .map(|r| columns.iter().map(|c| r[*c].clone()).collect())
                    .collect(),
            };
            grid.write(format, out)?;
            Ok(ExitCode::SUCCESS)
        }
        ProcessesCommand::Verify { pid } => {
            let task = DetectionTask {
                task_type: TaskType::VerifyExecutable as i32,
                process_filter: Some(ProcessFilter { pids: vec![*pid], ..Default::default() }),
                ..Default::default()
            };
            let r = run_task(&mut client, task, &format!("verifying pid {pid}")).await?;
            let h = r.hash_result.unwrap_or_default();
            let running = r.processes.first().and_then(|p| p.executable_hash.clone());
            let verdict = verdict(&h);
            let doc = json!({
                "pid": pid,
                "executable_path": h.executable_path,
                "verdict": verdict,
                "running_hash": running,
                "disk_hash": h.actual_hash,
                "matches": h.matches,
                "file_deleted": h.file_deleted,
                "file_replaced": h.file_replaced,
                "hash_algorithm": h.hash_algorithm,
            });
            write_object(&doc, format, out)?;
            Ok(if verdict == "intact" { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        ProcessesCommand::CheckHash { path, expected } => {
            let task = DetectionTask {
                task_type: TaskType::CheckProcessHash as i32,
                hash_check: Some(HashCheck {
                    expected_hash: expected.clone(),
                    hash_algorithm: "sha256".into(),
                    executable_path: path.clone(),
                }),
                ..Default::default()
            };
            let r = run_task(&mut client, task, &format!("checking the hash of {path}")).await?;
            let h = r.hash_result.unwrap_or_default();
            let verdict = if h.file_deleted {
                "missing"
            } else if h.matches {
                "match"
            } else {
                "mismatch"
            };
            let doc = json!({
                "executable_path": h.executable_path,
                "verdict": verdict,
                "expected_hash": expected,
                "actual_hash": h.actual_hash,
                "matches": h.matches,
            });
            write_object(&doc, format, out)?;
            Ok(if h.matches { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        ProcessesCommand::Watch { pid, count } => watch(&mut client, *pid, *count, format, out).await,
    }
}

async fn run_task(client: &mut Client, task: DetectionTask, what: &str) -> anyhow::Result<DetectionResult> {
    let r = client
        .run_task(RunTaskRequest { task: Some(task), timeout_ms: 0 })
        .await
        .map_err(|s| client::status_error(&format!("{what} failed"), &s))?
        .into_inner();
    if !r.success {
        anyhow::bail!("{what} failed in procmond: {}", r.error_message.unwrap_or_else(|| "no reason given".into()));
    }
    Ok(r)
}

fn verdict(h: &daemoneye_lib::proto::HashResult) -> &'static str {
    if h.file_deleted {
        "deleted"
    } else if h.file_replaced {
        "replaced"
    } else if h.matches {
        "intact"
    } else {
        "mismatch"
    }
}

async fn watch(
    client: &mut Client,
    pid: u32,
    count: Option<u64>,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut stream = client
        .watch_process_tree(WatchProcessTreeRequest { pid })
        .await
        .map_err(|s| client::status_error(&format!("watching pid {pid} failed"), &s))?
        .into_inner();
    let mut seen = 0u64;
    loop {
        if count.is_some_and(|n| seen >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        let msg = tokio::select! {
            m = stream.message() => m.map_err(|s| client::status_error("the watch ended", &s))?,
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                return Ok(ExitCode::SUCCESS);
            }
        };
        let Some(msg) = msg else {
            anyhow::bail!("the agent ended the watch of pid {pid}");
        };
        if let Some(started) = msg.started {
            if !started.success {
                anyhow::bail!(
                    "watching pid {pid} failed in procmond: {}",
                    started.error_message.unwrap_or_else(|| "no reason given".into())
                );
            }
            let doc = json!({
                "monitor": started.task_id,
                "pid": pid,
                "processes": started.processes.iter().map(record_json).collect::<Vec<_>>(),
            });
            match format {
                Format::Json => writeln!(out, "{doc}")?,
                _ => writeln!(
                    out,
                    "watching pid {pid} (monitor {}): {} process(es) in the tree; Ctrl-C to stop",
                    started.task_id,
                    started.processes.len()
                )?,
            }
        }
        if let Some(ev) = msg.event {
            seen += 1;
            let corr = msg.correlation.unwrap_or_default();
            let doc = event_json(&ev, &corr.correlation_id, corr.workflow_id.as_deref().unwrap_or(""));
            match format {
                Format::Json => writeln!(out, "{doc}")?,
                _ => writeln!(
                    out,
                    "{:<6} seq {:<8} pid {:<7} {} {}",
                    doc["event_type"].as_str().unwrap_or(""),
                    ev.seq,
                    doc["pid"],
                    doc["name"].as_str().unwrap_or(""),
                    doc["command_line"].as_str().unwrap_or("")
                )?,
            }
        }
        out.flush()?;
    }
}

/// The agent's table, filtered the same way as the live list.
async fn table_processes(client: &mut Client, filter: &ProcessFilter) -> anyhow::Result<Vec<ProcessRecord>> {
    let sql = "SELECT pid, ppid, uid, name, executable_path, process_key FROM processes WHERE is_alive = 1";
    let resp = client
        .query(QueryRequest { sql: sql.into(), params: Vec::new(), max_rows: 0 })
        .await
        .map_err(|s| client::status_error("listing processes failed", &s))?
        .into_inner();
    let text = |v: Option<&daemoneye_lib::proto::SqlValue>| match v.and_then(|v| v.value.as_ref()) {
        Some(sql_value::Value::Text(s)) => Some(s.clone()),
        _ => None,
    };
    let int = |v: Option<&daemoneye_lib::proto::SqlValue>| match v.and_then(|v| v.value.as_ref()) {
        Some(sql_value::Value::Integer(i)) => u32::try_from(*i).ok(),
        _ => None,
    };
    let records = resp.rows.iter().map(|r| {
        let v = &r.values;
        ProcessRecord {
            pid: int(v.first()).unwrap_or(0),
            ppid: int(v.get(1)),
            uid: int(v.get(2)),
            name: text(v.get(3)),
            executable_path: text(v.get(4)),
            process_key: text(v.get(5)).unwrap_or_default(),
            ..Default::default()
        }
    });
    Ok(records.filter(|p| local_filter(p, filter)).collect())
}

fn local_filter(p: &ProcessRecord, f: &ProcessFilter) -> bool {
    (f.process_names.is_empty() || p.name.as_ref().is_some_and(|n| f.process_names.contains(n)))
        && (f.pids.is_empty() || f.pids.contains(&p.pid))
        && f.executable_pattern
            .as_ref()
            .is_none_or(|pat| p.executable_path.as_ref().is_some_and(|e| e.contains(pat.trim_matches('*')) || e == pat))
}

fn record_json(p: &ProcessRecord) -> Json {
    json!({
        "pid": p.pid,
        "ppid": p.ppid,
        "uid": p.uid,
        "name": p.name,
        "executable_path": p.executable_path,
        "command_line": p.command_line,
        "process_key": p.process_key,
        "parent_key": p.parent_key,
        "executable_hash": p.executable_hash,
        "file_exists": p.file_exists,
    })
}

fn event_json(ev: &ProcessEvent, correlation_id: &str, workflow_id: &str) -> Json {
    let mut doc = ev.process.as_ref().map(record_json).unwrap_or_else(|| json!({}));
    if let Some(obj) = doc.as_object_mut() {
        let kind = ev.event_type().as_str_name().trim_start_matches("EVENT_TYPE_").to_ascii_lowercase();
        obj.insert("event_type".into(), Json::from(kind));
        obj.insert("seq".into(), Json::from(ev.seq));
        obj.insert("correlation_id".into(), Json::from(correlation_id));
        obj.insert("monitor".into(), Json::from(workflow_id));
    }
    doc
}

fn write_object(doc: &Json, format: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, doc)?;
            writeln!(out)?;
        }
        f => {
            let mut grid = Grid { columns: vec!["item".into(), "value".into()], rows: Vec::new() };
            if let Some(obj) = doc.as_object() {
                for (k, v) in obj {
                    grid.rows.push(vec![Json::from(k.as_str()), v.clone()]);
                }
            }
            grid.write(f, out)?;
        }
    }
    Ok(())
}
