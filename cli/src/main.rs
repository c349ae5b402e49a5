//! daemoneye-cli: the operator's interface. Talks only to the agent (gRPC
//! over its Unix socket); never opens the store. `ledger`, `rules validate`,
//! `config`, `service` and `completions` work without an agent.

#![allow(clippy::print_stderr, reason = "the CLI reports errors to the operator on stderr")]

mod alerts;
mod client;
mod export;
mod health;
mod ledger;
mod output;
mod processes;
mod rules;
mod service;
mod timearg;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use daemoneye_lib::config::{Config, LoadOptions};
use daemoneye_lib::proto::{QueryParam, SqlValue, sql_value};

use output::{ColorChoice, Format, Grid, Ui};

/// DaemonEye operator command line.
///
/// Asks the agent about processes, alerts, rules and health, exports data,
/// and works offline on ledgers. Finds the agent through --socket, or
/// <data-dir>/run/agent.sock (from --data-dir or the configuration).
/// Output: a table on a terminal; --format json|csv for scripts.
#[derive(Debug, Parser)]
#[command(name = "daemoneye-cli", version, about, long_about)]
struct Cli {
    /// The agent's API socket (default: <run_dir>/agent.sock from the config;
    /// on Windows a pipe name, \\.\pipe\daemoneye-agent-<hash of run_dir>).
    #[arg(long, global = true, value_name = "PATH", env = "DAEMONEYE_SOCKET")]
    socket: Option<PathBuf>,
    /// The agent's data directory (the socket is <DIR>/run/agent.sock).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file, to find the socket and for `config`.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format (default: table; `export` defaults to the file's extension).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    format: Option<Format>,
    /// When to colour tables and lines: auto (a terminal without NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value_t = ColorChoice::Auto)]
    color: ColorChoice,
    /// Never use colour (same as --color never; NO_COLOR in the environment does it too).
    #[arg(long, global = true)]
    no_color: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a read-only SQL query over processes, process_events and alerts.
    ///
    /// Example: daemoneye-cli query "SELECT pid, name FROM processes WHERE uid = :uid LIMIT 5" --param uid=0
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
    /// Processes: the agent's table (list, tree, show) or procmond's live view (list --live, verify, check-hash, watch).
    #[command(subcommand)]
    Processes(processes::ProcessesCommand),
    /// Stored alerts: list, show one, or watch new ones arrive.
    #[command(subcommand)]
    Alerts(alerts::AlertsCommand),
    /// Write the process table or the alerts to a file, as JSON lines or CSV.
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Detection rules: list, validate files offline, test, enable, disable, reload.
    #[command(subcommand)]
    Rules(rules::RulesCommand),
    /// The health of the agent, procmond, the rules and the sinks.
    ///
    /// Exit code: 0 healthy, 1 degraded, 2 unhealthy, 3 the agent could not be asked.
    Health,
    /// The health numbers in the Prometheus text format (for a scraper or a textfile collector).
    ///
    /// The agent serves the same text on GET /metrics when agent.metrics_listen is set.
    Metrics,
    /// Show or check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The audit ledger, offline (no agent): verify, tail, state --at, replay.
    #[command(subcommand)]
    Ledger(ledger::LedgerCommand),
    /// The agent as a system service: install, uninstall, status (systemd;
    /// --init launchd|windows for the other platforms).
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Print a shell completion script.
    ///
    /// Example: daemoneye-cli completions bash > /etc/bash_completion.d/daemoneye-cli
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
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
    let format = cli.format.unwrap_or_default();
    let ui = Ui::new(format, cli.color, cli.no_color);
    match &cli.command {
        Command::Query { sql, params, max_rows } => {
            let mut client = client::connect(&socket_path(&cli)?).await?;
            let rows = client::query(
                &mut client,
                "query failed",
                sql.clone(),
                params.iter().map(|p| parse_param(p)).collect(),
                max_rows.unwrap_or(0),
            )
            .await?;
            Grid { columns: rows.columns, rows: rows.rows }.write(format, &mut stdout)?;
            if rows.truncated {
                eprintln!("note: the result was cut at the row limit; use --max-rows or LIMIT");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Alerts(cmd) => alerts::run(cmd, &socket_path(&cli)?, &ui, &mut stdout).await,
        Command::Export(cmd) => export::run(cmd, &socket_path(&cli)?, cli.format, &mut stdout).await,
        Command::Health => health::health(&socket_path(&cli)?, &ui, &mut stdout).await,
        Command::Metrics => health::metrics(&socket_path(&cli)?, &mut stdout).await,
        Command::Processes(cmd) => processes::run(cmd, &socket_path(&cli)?, &ui, &mut stdout).await,
        Command::Rules(cmd) => rules::run(cmd, || socket_path(&cli), &ui, &mut stdout).await,
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
            ledger::run(cmd, &ledger::Ctx { format, config: &config }, &mut stdout)
        }
        Command::Service(cmd) => service::run(cmd, format, &mut stdout),
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "daemoneye-cli", &mut stdout);
            Ok(ExitCode::SUCCESS)
        }
    }
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

    #[test]
    fn every_command_has_an_about_and_documented_arguments() {
        fn check(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let p = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{p} has no about");
                for arg in sub.get_arguments() {
                    let global = arg.is_global_set();
                    assert!(
                        global || arg.get_help().is_some() || arg.get_id() == "help",
                        "{p} --{} has no help",
                        arg.get_id()
                    );
                }
                check(sub, &p);
            }
        }
        check(&Cli::command(), "daemoneye-cli");
    }
}
