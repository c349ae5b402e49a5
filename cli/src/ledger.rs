//! `daemoneye-cli ledger ...`: offline work on an audit ledger directory
//! (procmond's, or a copy of it), without an agent.
//!
//! - `verify`: every link, hash and checkpoint signature; names the first
//!   bad record by seq, file and offset; exit code 1 when anything is wrong.
//! - `tail`: the last records, optionally following new ones.
//! - `state --at TIME [SQL]`: the process table as of TIME, queried with the
//!   same validator and engine as `query`.
//! - `replay --since T1 --until T2 --rules DIR`: the alerts the rules would
//!   have raised over that range, as if live.
//!
//! The ledger is only read (no lock, nothing written). The store is never
//! opened: the table is rebuilt from the ledger by `daemoneye_lib::replay`.

mod forensics;
mod tail;
mod verify;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Subcommand;
use daemoneye_lib::config::Config;

use crate::output::Format;

/// Ledger subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum LedgerCommand {
    /// Check every record's hash and link and every checkpoint signature.
    ///
    /// Names the first bad record (seq, segment file, byte offset) and exits
    /// with 1 when the ledger was changed, cut or forged; 0 when it is intact.
    /// Example: daemoneye-cli ledger verify --dir /backup/ledger --pubkey ledger.pub
    Verify {
        #[command(flatten)]
        dir: DirArg,
        /// The checkpoint public key (default: <DIR>/ledger.pub). Pass a copy
        /// kept elsewhere so that a replaced ledger.pub cannot hide forgery.
        #[arg(long, value_name = "FILE")]
        pubkey: Option<PathBuf>,
        /// A record known to exist, as SEQ:ENTRY_HASH (64 hex digits), e.g.
        /// from an exported checkpoint: detects a tail cut off since.
        #[arg(long, value_name = "SEQ:HASH")]
        expect: Option<String>,
    },
    /// Print the last records (seq, time, kind, what they hold).
    Tail {
        #[command(flatten)]
        dir: DirArg,
        /// How many records.
        #[arg(short = 'n', long = "lines", value_name = "N", default_value_t = 10)]
        lines: u64,
        /// Keep printing records as they are appended (one line each; JSON
        /// lines with --format json). Stop with Ctrl-C.
        #[arg(short, long)]
        follow: bool,
    },
    /// The process table as of a time, rebuilt from the ledger, queried with SQL.
    ///
    /// Tables: processes (as the agent held it at TIME, exited processes kept
    /// for agent.process_retention) and process_events (the events of the
    /// last agent.event_retention before TIME).
    /// Example: daemoneye-cli ledger state --at 2026-05-01T12:00:00Z "SELECT pid, name FROM processes WHERE is_alive = 1"
    State {
        /// RFC 3339 time (2026-05-01T12:00:00Z) or Unix milliseconds.
        #[arg(long, value_name = "TIME")]
        at: String,
        #[command(flatten)]
        dir: DirArg,
        /// The SELECT (default: every process, oldest first).
        sql: Option<String>,
    },
    /// Re-run rules over a time range as if live; print the alerts they would have raised.
    ///
    /// The table is rebuilt from the start of the ledger; streaming rules run
    /// on every event in the range, table rules every rules.table_interval;
    /// alerts are deduplicated like the agent's (alerts.dedupe_window).
    /// Example: daemoneye-cli ledger replay --since 2026-05-01T12:00:00Z --until 2026-05-01T13:00:00Z --rules ./rules
    Replay {
        /// Start of the range: RFC 3339 time or Unix milliseconds.
        #[arg(long, value_name = "TIME")]
        since: String,
        /// End of the range (inclusive): RFC 3339, Unix milliseconds or `now`.
        #[arg(long, value_name = "TIME")]
        until: String,
        /// The rules directory (YAML files).
        #[arg(long, value_name = "DIR")]
        rules: PathBuf,
        #[command(flatten)]
        dir: DirArg,
        /// One JSON object per line (the agent's stdout alert form) instead of --format.
        #[arg(long)]
        jsonl: bool,
    },
}

/// `--dir`, shared by the subcommands.
#[derive(Debug, clap::Args)]
pub(crate) struct DirArg {
    /// The ledger directory (default: <data_dir>/ledger from --data-dir or the config).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// What the subcommands need from the rest of the CLI.
pub(crate) struct Ctx<'a> {
    /// Output format.
    pub(crate) format: Format,
    /// Loads the configuration (only when needed).
    pub(crate) config: &'a dyn Fn() -> anyhow::Result<Config>,
}

impl Ctx<'_> {
    fn ledger_dir(&self, d: &DirArg) -> anyhow::Result<PathBuf> {
        let dir = match &d.dir {
            Some(d) => d.clone(),
            None => (self.config)().context("finding the ledger directory (or pass --dir)")?.ledger_dir(),
        };
        if !dir.is_dir() {
            bail!("ledger directory {} does not exist; pass --dir or --data-dir", dir.display());
        }
        let has_segment = std::fs::read_dir(&dir)
            .with_context(|| format!("reading the ledger directory {}", dir.display()))?
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".log"));
        if !has_segment {
            bail!(
                "{} holds no segment files (NNNNNNNNNNNNNNNNNNNN.log): not a ledger directory; pass --dir",
                dir.display()
            );
        }
        Ok(dir)
    }
}

/// Runs a ledger subcommand.
pub(crate) fn run(cmd: &LedgerCommand, ctx: &Ctx<'_>, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    match cmd {
        LedgerCommand::Verify { dir, pubkey, expect } => {
            verify::run(&ctx.ledger_dir(dir)?, pubkey.as_deref(), expect.as_deref(), ctx.format, out)
        }
        LedgerCommand::Tail { dir, lines, follow } => {
            tail::run(&ctx.ledger_dir(dir)?, *lines, *follow, ctx.format, out)
        }
        LedgerCommand::State { at, dir, sql } => {
            let at_ns = parse_time(at).with_context(|| format!("--at {at:?}"))?;
            forensics::state(ctx, &ctx.ledger_dir(dir)?, at_ns, sql.as_deref(), out)
        }
        LedgerCommand::Replay { since, until, rules, dir, jsonl } => {
            let since_ns = parse_time(since).with_context(|| format!("--since {since:?}"))?;
            let until_ns = parse_time(until).with_context(|| format!("--until {until:?}"))?;
            forensics::replay(ctx, &ctx.ledger_dir(dir)?, (since_ns, until_ns), rules, *jsonl, out)
        }
    }
}

/// Parses RFC 3339 (`2026-05-01T12:00:00Z`, `2026-05-01T12:00:00.250+02:00`),
/// Unix milliseconds, or `now`, into Unix nanoseconds.
pub(crate) fn parse_time(s: &str) -> anyhow::Result<i64> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(daemoneye_lib::models::time::now_ns());
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(daemoneye_lib::models::time::ms_to_ns(ms));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .or_else(|_| parse_with_offset(s))
        .with_context(|| "expected an RFC 3339 time like 2026-05-01T12:00:00Z, Unix milliseconds, or `now`")?;
    let d = t.duration_since(UNIX_EPOCH).context("times before 1970 are not supported")?;
    i64::try_from(d.as_nanos()).context("time out of range")
}

/// RFC 3339 with a numeric offset (`+02:00`), which humantime does not take.
fn parse_with_offset(s: &str) -> anyhow::Result<SystemTime> {
    let split = s.len().checked_sub(6).filter(|&i| s.is_char_boundary(i) && matches!(&s[i..i + 1], "+" | "-"));
    let Some(i) = split else { bail!("no time zone offset") };
    let (base, off) = s.split_at(i);
    let sign: i64 = if off.starts_with('-') { -1 } else { 1 };
    let (h, m) = off[1..].split_once(':').context("offset must be +HH:MM")?;
    let secs = sign * (h.parse::<i64>()? * 3600 + m.parse::<i64>()? * 60);
    let local = humantime::parse_rfc3339_weak(base)?;
    let shift = Duration::from_secs(secs.unsigned_abs());
    // 12:00+02:00 is 10:00Z: subtract a positive offset.
    Ok(if secs >= 0 { local - shift } else { local + shift })
}

/// Unix nanoseconds as RFC 3339 UTC with milliseconds.
pub(crate) fn format_time(ns: i64) -> String {
    match u64::try_from(ns) {
        Ok(n) => humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(n)).to_string(),
        Err(_) => format!("{ns} ns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_millis_or_now() {
        assert_eq!(parse_time("1700000000123").unwrap(), 1_700_000_000_123_000_000);
        assert_eq!(parse_time("2023-11-14T22:13:20Z").unwrap(), 1_700_000_000_000_000_000);
        assert_eq!(parse_time("2023-11-14T22:13:20.5Z").unwrap(), 1_700_000_000_500_000_000);
        assert_eq!(parse_time("2023-11-15T00:13:20+02:00").unwrap(), 1_700_000_000_000_000_000);
        assert_eq!(parse_time("2023-11-14T20:13:20-02:00").unwrap(), 1_700_000_000_000_000_000);
        assert!(parse_time("now").unwrap() > 1_700_000_000_000_000_000);
        let e = parse_time("yesterday").unwrap_err();
        assert!(format!("{e:#}").contains("RFC 3339"), "{e:#}");
        assert_eq!(format_time(1_700_000_000_123_000_000), "2023-11-14T22:13:20.123Z");
    }
}
