//! daemoneye-cli: the operator's interface. Talks only to the agent (gRPC
//! over its Unix socket); never opens the store.

#![allow(clippy::print_stderr, reason = "the CLI reports errors to the operator on stderr")]

mod client;
mod ledger;
mod output;
mod processes;
mod rules;
mod service;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use daemoneye_lib::config::{Config, LoadOptions};
use daemoneye_lib::models::{alert_json, time::now_ms};
use daemoneye_lib::proto::{
    HealthRequest, HealthStatus, ListAlertsRequest, QueryParam, QueryRequest, SqlValue, sql_value,
};
use serde_json::Value as Json;

use output::{Format, Grid};

/// DaemonEye operator command line.
///
/// Queries the agent's process table with SQL, lists alerts and reports
/// health. Finds the agent through --socket, or <data-dir>/run/agent.sock.
#[derive(Debug, Parser)]
#[command(name = "daemoneye-cli", version, about, long_about)]
struct Cli {
    /// The agent's API socket (default: <run_dir>/agent.sock from the config).
    #[arg(long, global = true, value_name = "PATH", env = "DAEMONEYE_SOCKET")]
    socket: Option<PathBuf>,
    /// The agent's data directory (the socket is <DIR>/run/agent.sock).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file, to find the socket and for `config`.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Never use colour (also when NO_COLOR is set).
    #[arg(long, global = true)]
    no_color: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a read-only SQL query over processes, process_events and alerts.
    ///
    /// Example: daemoneye-cli query "SELECT pid, name FROM processes WHERE uid = 0 LIMIT 5"
    Query {
        /// The SELECT statement.
        sql: String,
        /// A parameter: NAME=VALUE for :NAME, or VALUE for each ? in order.
        /// Values that parse as integers or reals are passed as numbers.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Return at most this many rows.
        #[arg(long, value_name = "N")]
        max_rows: Option<u64>,
    },
    /// Stored alerts.
    #[command(subcommand)]
    Alerts(AlertsCommand),
    /// The health of the agent, procmond and the rules. Exit code: 0
    /// healthy, 1 degraded, 2 unhealthy, 3 the agent could not be asked.
    Health,
    /// Show or check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Processes: the table, or procmond's live view (list, verify, check-hash, watch).
    #[command(subcommand)]
    Processes(processes::ProcessesCommand),
    /// Detection rules: list the agent's, validate files offline, reload.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// The audit ledger, offline (no agent): verify, tail, state --at, replay.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// The agent as a system service: install, uninstall, status (systemd;
    /// --init launchd|windows for the other platforms).
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum AlertsCommand {
    /// List alerts, oldest first.
    List {
        /// Only the newest N.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
        /// Only alerts of this rule.
        #[arg(long, value_name = "ID")]
        rule: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration (all layers merged) as TOML.
    Show,
    /// Check the configuration; errors name the key and where it came from.
    Validate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut opts = LoadOptions { config_file: cli.config.clone(), ..Default::default() };
    if let Some(d) = &cli.data_dir {
        opts.set("general.data_dir", d.display().to_string());
        // An explicit data dir means "that agent": do not let a system
        // config's run_dir point elsewhere.
        opts.set("general.run_dir", "");
    }
    Ok(Config::load(&opts)?)
}

fn socket_path(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    Ok(load_config(cli)?.agent_socket())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout().lock();
    match &cli.command {
        Command::Query { sql, params, max_rows } => {
            let mut client = client::connect(&socket_path(&cli)?).await?;
            let req = QueryRequest {
                sql: sql.clone(),
                params: params.iter().map(|p| parse_param(p)).collect(),
                max_rows: max_rows.unwrap_or(0),
            };
            let resp = client.query(req).await.map_err(|s| client::status_error("query failed", &s))?.into_inner();
            let grid = Grid {
                columns: resp.columns,
                rows: resp.rows.iter().map(|r| r.values.iter().map(sql_json).collect()).collect(),
            };
            grid.write(cli.format, &mut stdout)?;
            if resp.truncated {
                eprintln!("note: the result was cut at the row limit; use --max-rows or LIMIT");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Alerts(AlertsCommand::List { limit, rule }) => {
            let mut client = client::connect(&socket_path(&cli)?).await?;
            let resp = client
                .list_alerts(ListAlertsRequest { limit: *limit, rule_id: rule.clone(), since_ms: None })
                .await
                .map_err(|s| client::status_error("listing alerts failed", &s))?
                .into_inner();
            let alerts: Vec<Json> = resp.alerts.iter().map(alert_json).collect();
            match cli.format {
                Format::Json => {
                    serde_json::to_writer_pretty(&mut stdout, &alerts)?;
                    writeln!(stdout)?;
                }
                f => {
                    let columns =
                        ["id", "alert_time", "severity", "rule_id", "pid", "process_key", "occurrences", "title"];
                    let grid = Grid {
                        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
                        rows: alerts.iter().map(|a| columns.iter().map(|c| a[*c].clone()).collect()).collect(),
                    };
                    grid.write(f, &mut stdout)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health => health(&cli, &mut stdout).await,
        Command::Processes(cmd) => processes::run(cmd, &socket_path(&cli)?, cli.format, &mut stdout).await,
        Command::Rules(cmd) => rules::run(cmd, || socket_path(&cli), cli.format, &mut stdout).await,
        Command::Config(ConfigCommand::Show) => {
            let c = load_config(&cli)?;
            write!(stdout, "{}", c.to_toml())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Validate) => {
            load_config(&cli)?;
            writeln!(stdout, "configuration is valid")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ledger(cmd) => {
            let config = || load_config(&cli);
            ledger::run(cmd, &ledger::Ctx { format: cli.format, config: &config }, &mut stdout)
        }
        Command::Service(cmd) => service::run(cmd, cli.format, &mut stdout),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "daemoneye-cli", &mut stdout);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn health(cli: &Cli, stdout: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let socket = socket_path(cli)?;
    let resp = async {
        let mut client = client::connect(&socket).await?;
        client
            .health(HealthRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| client::status_error("health check failed", &s))
    }
    .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(3));
        }
    };
    let status = resp.status();
    let name = |s: HealthStatus| match s {
        HealthStatus::Healthy => "healthy",
        HealthStatus::Degraded => "degraded",
        HealthStatus::Unhealthy => "unhealthy",
        HealthStatus::Unspecified => "unknown",
    };
    let components: Vec<Json> = resp
        .components
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "status": name(c.status()),
                "detail": c.detail,
                "pid": c.pid,
                "restarts": c.restarts,
                "running_since": c.running_since_ms,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "status": name(status),
        "version": resp.version,
        "backend": resp.backend,
        "events_received": resp.events_received,
        "events_lost": resp.events_lost,
        "events_per_second": resp.events_per_second,
        "last_applied_seq": resp.last_applied_seq,
        "rules_loaded": resp.rules_loaded,
        "rules_failed": resp.rules_failed,
        "processes_alive": resp.processes_alive,
        "processes_total": resp.processes_total,
        "alerts_raised": resp.alerts_total,
        "uptime_s": (now_ms() - resp.agent_started_ms) / 1000,
        "components": components,
        "bus": resp.bus.as_ref().map(bus_json),
    });
    match cli.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut *stdout, &doc)?;
            writeln!(stdout)?;
        }
        f => {
            let mut grid = Grid { columns: vec!["item".into(), "value".into()], rows: Vec::new() };
            if let Some(obj) = doc.as_object() {
                for (k, v) in obj {
                    if k != "components" && k != "bus" {
                        grid.rows.push(vec![Json::from(k.as_str()), v.clone()]);
                    }
                }
            }
            for c in &components {
                let detail = format!("{} ({})", c["status"].as_str().unwrap_or(""), c["detail"].as_str().unwrap_or(""));
                grid.rows.push(vec![c["name"].clone(), Json::from(detail)]);
            }
            grid.write(f, stdout).context("writing health")?;
            if let Some(bus) = &resp.bus {
                write_bus_tables(bus, f, stdout)?;
            }
        }
    }
    Ok(ExitCode::from(match status {
        HealthStatus::Healthy => 0,
        HealthStatus::Degraded => 1,
        HealthStatus::Unhealthy | HealthStatus::Unspecified => 2,
    }))
}

/// The `bus` section of `health`: counters, then per topic and per subscriber.
fn bus_json(b: &daemoneye_lib::proto::BusHealth) -> Json {
    serde_json::json!({
        "connections": b.connections,
        "connections_total": b.connections_total,
        "connections_rejected": b.connections_rejected,
        "frames_rejected": b.frames_rejected,
        "access_denied": b.access_denied,
        "topics": b.topics.iter().map(|t| serde_json::json!({
            "topic": t.topic, "published": t.published, "delivered": t.delivered, "dropped": t.dropped,
        })).collect::<Vec<_>>(),
        "subscribers": b.subscribers.iter().map(|s| serde_json::json!({
            "connection_id": s.connection_id, "client": s.client_name, "uid": s.peer_uid, "pid": s.peer_pid,
            "subscription_id": s.subscription_id, "pattern": s.pattern, "policy": s.policy,
            "capacity": s.capacity, "queue_depth": s.queue_depth, "delivered": s.delivered, "dropped": s.dropped,
            "latency_p50_us": s.latency_p50_us, "latency_p99_us": s.latency_p99_us, "latency_max_us": s.latency_max_us,
        })).collect::<Vec<_>>(),
    })
}

fn write_bus_tables(b: &daemoneye_lib::proto::BusHealth, f: Format, out: &mut dyn Write) -> anyhow::Result<()> {
    let doc = bus_json(b);
    for (key, cols) in [
        ("topics", &["topic", "published", "delivered", "dropped"][..]),
        (
            "subscribers",
            &[
                "client",
                "pid",
                "pattern",
                "policy",
                "queue_depth",
                "delivered",
                "dropped",
                "latency_p50_us",
                "latency_p99_us",
            ][..],
        ),
    ] {
        let rows =
            doc[key].as_array().map(|a| a.iter().map(|r| cols.iter().map(|c| r[*c].clone()).collect()).collect());
        let grid = Grid { columns: cols.iter().map(|c| (*c).to_owned()).collect(), rows: rows.unwrap_or_default() };
        writeln!(out, "bus {key}:")?;
        grid.write(f, out).context("writing bus statistics")?;
    }
    Ok(())
}

/// `name=value` binds `:name`; a bare value binds the next `?`.
fn parse_param(p: &str) -> QueryParam {
    let (name, raw) = match p.split_once('=') {
        Some((n, v)) if !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => (n.to_owned(), v),
        _ => (String::new(), p),
    };
    let value = if let Ok(i) = raw.parse::<i64>() {
        sql_value::Value::Integer(i)
    } else if let Ok(r) = raw.parse::<f64>().map_err(|_| ()).and_then(|r| if r.is_finite() { Ok(r) } else { Err(()) }) {
        sql_value::Value::Real(r)
    } else {
        sql_value::Value::Text(raw.to_owned())
    };
    QueryParam { name, value: Some(SqlValue { value: Some(value) }) }
}

fn sql_json(v: &SqlValue) -> Json {
    match &v.value {
        None | Some(sql_value::Value::Null(_)) => Json::Null,
        Some(sql_value::Value::Integer(i)) => Json::from(*i),
        Some(sql_value::Value::Real(r)) => serde_json::Number::from_f64(*r).map_or(Json::Null, Json::Number),
        Some(sql_value::Value::Text(s)) => Json::from(s.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_bind_by_name_or_position_with_numbers() {
        let p = parse_param("name=sleep");
        assert_eq!(p.name, "name");
        assert_eq!(p.value.unwrap().value, Some(sql_value::Value::Text("sleep".into())));
        let p = parse_param("42");
        assert!(p.name.is_empty());
        assert_eq!(p.value.unwrap().value, Some(sql_value::Value::Integer(42)));
        let p = parse_param("x=a=b");
        assert_eq!(p.value.unwrap().value, Some(sql_value::Value::Text("a=b".into())));
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
