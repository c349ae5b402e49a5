//! `daemoneye-cli processes ...`: the agent's process table (`list`,
//! `tree`, `show`) and the detection tasks that procmond runs on the
//! agent's behalf (`list --live`, `verify`, `check-hash`, `watch`).
//!
//! Exit codes: 0 ok; 1 error; 2 for `verify`/`check-hash` when the
//! executable was deleted, replaced or does not match.

mod table;
mod tree;

pub(crate) use table::filter_sql;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use daemoneye_lib::proto::{
    DetectionResult, DetectionTask, HashCheck, ProcessEvent, ProcessFilter, ProcessRecord, RunTaskRequest, TaskType,
    WatchProcessTreeRequest,
};
use serde_json::{Value as Json, json};

use crate::client::{self, Client};
use crate::output::{Format, Grid, Ui};

/// `processes` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum ProcessesCommand {
    /// List processes from the agent's table (or, with --live, asked of procmond now).
    ///
    /// Examples: daemoneye-cli processes list --name sshd --user root;
    /// daemoneye-cli processes list --all --limit 50 --format csv
    List {
        /// Ask procmond for the live list (ENUMERATE_PROCESSES) instead of the agent's table.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        filter: ListFilter,
    },
    /// The parent/child tree of the table, drawn with box characters.
    ///
    /// Without --pid or --root: every tree (processes whose parent is not in
    /// the table are roots). Example: daemoneye-cli processes tree --pid 1234
    Tree {
        /// Start at this process (the live one with this pid, else the newest).
        #[arg(long, value_name = "PID", conflicts_with = "root")]
        pid: Option<u32>,
        /// Start at the process with this process key.
        #[arg(long, value_name = "KEY")]
        root: Option<String>,
        /// Include exited processes still in the table (agent.process_retention).
        #[arg(long)]
        all: bool,
    },
    /// Every column of one process, its recent events and its alerts.
    ///
    /// Example: daemoneye-cli processes show 1234 (or a process key)
    Show {
        /// A pid (the live process with it, else the newest) or a process key.
        process: String,
        /// How many of its recent events to show.
        #[arg(long, value_name = "N", default_value_t = 20)]
        events: u32,
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

/// Filters of `processes list` (and `export processes`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ListFilter {
    /// Only processes with this name (repeatable).
    #[arg(long = "name", value_name = "NAME")]
    pub(crate) names: Vec<String>,
    /// Only this pid (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub(crate) pids: Vec<u32>,
    /// Only executables matching this glob (`*`, `?`), or containing it when it has no wildcard.
    #[arg(long = "exe", value_name = "PATTERN")]
    pub(crate) exe: Option<String>,
    /// Only processes of this user (name or numeric uid).
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// Only live processes (the default of `list`).
    #[arg(long, conflicts_with = "all")]
    pub(crate) alive: bool,
    /// Exited processes still in the table too.
    #[arg(long)]
    pub(crate) all: bool,
    /// At most N processes (the oldest first).
    #[arg(long, value_name = "N")]
    pub(crate) limit: Option<u32>,
}

/// Runs a `processes` subcommand.
pub(crate) async fn run(
    cmd: &ProcessesCommand,
    socket: &std::path::Path,
    ui: &Ui,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let mut client = client::connect(socket).await?;
    let format = ui.format;
    match cmd {
        ProcessesCommand::List { live: false, filter } => table::list(&mut client, filter, ui, out).await,
        ProcessesCommand::List { live: true, filter } => {
            if filter.all {
                anyhow::bail!(
                    "--all lists exited processes from the agent's table; procmond's live list (--live) has only live ones"
                );
            }
            let pf = ProcessFilter {
                process_names: filter.names.clone(),
                pids: filter.pids.clone(),
                executable_pattern: filter.exe.clone(),
            };
            let task = DetectionTask {
                task_type: TaskType::EnumerateProcesses as i32,
                process_filter: Some(pf),
                ..Default::default()
            };
            let records = run_task(&mut client, task, "listing live processes").await?.processes;
            let uid: Option<u32> = filter.user.as_deref().and_then(|u| u.parse().ok());
            let records = records.iter().filter(|p| match (&filter.user, uid) {
                (None, _) => true,
                (Some(_), Some(uid)) => p.uid == Some(uid),
                (Some(name), None) => p.user_name.as_ref() == Some(name),
            });
            let limit = filter.limit.map_or(usize::MAX, |l| l as usize);
            let columns = ["pid", "ppid", "uid", "name", "executable_path", "process_key"];
            let grid = Grid {
                columns: columns.iter().map(|c| (*c).to_owned()).collect(),
                rows: records
                    .take(limit)
                    .map(record_json)
                    .map(|r| columns.iter().map(|c| r[*c].clone()).collect())
                    .collect(),
            };
            grid.render(ui, out)?;
            Ok(ExitCode::SUCCESS)
        }
        ProcessesCommand::Tree { pid, root, all } => {
            tree::run(&mut client, &tree::Start { pid: *pid, key: root.clone(), all: *all }, ui, out).await
        }
        ProcessesCommand::Show { process, events } => table::show(&mut client, process, *events, ui, out).await,
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

pub(crate) fn record_json(p: &ProcessRecord) -> Json {
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
