//! `cargo xtask bench`: the sensor benchmarks of PRODUCT.md §15 that need
//! the real binaries and the real kernel, each side by side with a baseline
//! measured in the same run.
//!
//! - **Exec storms** at fixed rates (100, 400, 1,600 exec/s) and at the
//!   machine's maximum: the same workload (`dembench <run> <i>`, a copy of
//!   `/bin/true`) four times — alone (the baseline), under two reference
//!   captures (`execsnoop` from Debian's libbpf-tools, and auditd with an
//!   `execve` rule and raw logs, the capture PRODUCT.md §15 quotes), and
//!   under the agent with its procmond on eBPF and every shipped rule.
//!   Reported: completeness
//!   (execs with their full argv and parent, and exits with code 0, found in
//!   `process_events`), lost events from `health`, CPU time of procmond and
//!   the agent as % of one core over the storm, the storm's slowdown, and
//!   exec -> alert latency (about 10 execs a second match a bench rule; the alert
//!   is timed when its JSON line arrives on the agent's stdout).
//! - **A steady state** (`steady`): one agent under a paced storm long
//!   enough to pass its exited-process cap, where store flushes prune.
//! - **The machine's wake-up cost** (`wake`), the floor under the storms'
//!   CPU per exec, next to the daemons' own.
//! - **Start-up snapshot**: 10,000 sleeping processes (100 distinct
//!   executables, so hashing is real work), then the time from starting the
//!   agent until every one of them is in its table with its SHA-256, and
//!   the resident memory of procmond and the agent afterwards.
//!
//! The criterion benchmarks (ledger, bus, detection) run with `--criterion`.
//! Results are printed as Markdown for `docs/benchmarks.md`.

mod reference;
mod snapshot;
mod steady;
mod sys;
mod wake;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use self::reference::{Auditd, Reference, Workload};
use self::sys::{AgentRun, Storm};

/// The bench rule's id; `sys` recognises its alerts on stdout.
const BENCH_RULE_ID: &str = "bench-marker-alert";

const BENCH_RULE: &str = r#"# Written by `cargo xtask bench`: times exec -> alert.
- id: bench-marker-alert
  name: Bench marker with the alert argument
  description: About 10 execs a second of the bench workload; measures exec -> alert latency.
  severity: low
  tags: [bench]
  sql: |
    SELECT pid, process_key, argv FROM process_events
    WHERE event_type = 'exec' AND name = 'dembench' AND argv LIKE '%"alert"]'
"#;

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// Paced exec rates to measure (exec/s), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "100,400,1600")]
    rates: Vec<u32>,
    /// Seconds each paced storm lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Execs of the maximum-rate storm (two workers, as fast as possible).
    #[arg(long, default_value_t = 5000)]
    max_execs: usize,
    /// Times the maximum-rate storm is measured (each with its own
    /// baseline): its slowdown varies by tens of percent between draws on a
    /// VM, so the report gives the median.
    #[arg(long, default_value_t = 3)]
    max_runs: usize,
    /// Exec/s of the steady-state storm (one agent past its exited-process
    /// cap).
    #[arg(long, default_value_t = 800)]
    steady_rate: u32,
    /// Seconds the steady-state storm lasts (0: skip); long enough to pass
    /// the cap (20,000 exited processes by default).
    #[arg(long, default_value_t = 60)]
    steady_seconds: u32,
    /// Sleeping processes for the start-up snapshot (0: skip).
    #[arg(long, default_value_t = 10_000)]
    snapshot_processes: usize,
    /// Also run the criterion benchmarks (ledger, bus, detection).
    #[arg(long)]
    criterion: bool,
    /// Write the Markdown report here too.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Builds the release binaries and runs the benchmarks.
pub(crate) fn bench(root: &Path, target: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    if !is_root() {
        bail!("cargo xtask bench loads eBPF programs and starts procmond: run it as root");
    }
    super::try_build_ebpf();
    super::cargo(&["build", "--release", "-p", "procmond", "-p", "daemoneye-agent", "-p", "daemoneye-cli"])?;
    if args.criterion {
        for (pkg, bench) in
            [("daemoneye-lib", "ledger"), ("daemoneye-eventbus", "broker"), ("daemoneye-lib", "detection")]
        {
            super::cargo(&["bench", "-p", pkg, "--bench", bench])?;
        }
    }
    let bin = target.join("release");
    let work = target.join("bench");
    // Fresh every run; outside temp locations so the shipped exec-from-tmp
    // rules see a benign workload.
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let rules = work.join("rules");
    copy_rules(&root.join("rules"), &rules)?;
    let exe = work.join("dembench");
    std::fs::copy("/bin/true", &exe).context("copying /bin/true as the bench marker")?;
    let execsnoop = reference::find_execsnoop();
    let auditd = Auditd::find();

    let mut report = String::new();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(
        report,
        "Command: `cargo xtask bench` ({} cores, kernel {}, load average at start {})\n",
        std::thread::available_parallelism().map_or(0, usize::from),
        kernel_release(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    if let Err(why) = &execsnoop {
        let _ = writeln!(report, "No execsnoop reference capture: {why:#}\n");
    }
    if let Err(why) = &auditd {
        let _ = writeln!(report, "No auditd reference capture: {why:#}\n");
    }
    let refs = References { execsnoop: execsnoop.as_ref().ok(), auditd: auditd.as_ref().ok() };
    let mut rows = Vec::new();
    let plan: Vec<(String, Option<f64>, usize, usize)> = args
        .rates
        .iter()
        .map(|&r| (format!("{r}/s"), Some(f64::from(r)), (r * args.seconds) as usize, 4))
        .chain((1..=args.max_runs).map(|i| {
            let label = if args.max_runs > 1 { format!("max ({i} of {})", args.max_runs) } else { "max".to_owned() };
            (label, None, args.max_execs, 2)
        }))
        .collect();
    for (label, rate, count, threads) in plan {
        eprintln!("xtask bench: storm {label}: {count} execs");
        let row = storm_row(&bin, &work, &rules, &exe, &refs, &label, rate, count, threads)?;
        eprintln!("xtask bench: {row:?}");
        rows.push(row);
    }
    report.push_str(&storm_table(&rows));
    for note in rows.iter().flat_map(|r| &r.notes) {
        let _ = writeln!(report, "{note}\n");
    }
    report.push_str(&max_summary(&rows));
    if args.steady_seconds > 0 {
        eprintln!("xtask bench: steady state, {}/s for {} s", args.steady_rate, args.steady_seconds);
        let default_config = root.join("lib/config/default.toml");
        report.push_str(&steady::measure(
            &bin,
            &work,
            &rules,
            &exe,
            &default_config,
            args.steady_rate,
            args.steady_seconds,
        )?);
    }
    eprintln!("xtask bench: the machine's wake-up cost");
    match wake::measure() {
        Ok(w) => {
            let paced = rows.iter().filter(|r| !r.label.starts_with("max") && r.execs > 0);
            let per_exec: Vec<_> =
                paced.map(|r| (r.label.as_str(), (r.sensor_cpu.0 + r.sensor_cpu.1) * 1e6 / r.execs as f64)).collect();
            report.push_str(&w.summary(&per_exec));
        }
        Err(e) => {
            let _ = writeln!(report, "Wake-up cost not measured: {e:#}\n");
        }
    }
    if args.snapshot_processes > 0 {
        eprintln!("xtask bench: start-up snapshot with {} processes", args.snapshot_processes);
        let snap = snapshot::measure(&bin, &work, &rules, args.snapshot_processes)?;
        report.push_str(&snap);
    }
    #[allow(clippy::print_stdout, reason = "the report is the command's output")]
    {
        println!("{report}");
    }
    if let Some(path) = &args.output {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The reference captures found on this machine.
struct References<'a> {
    execsnoop: Option<&'a PathBuf>,
    auditd: Option<&'a Auditd>,
}

/// One storm measured four ways: alone, under each reference capture and
/// under the sensor.
#[derive(Debug)]
struct StormRow {
    label: String,
    execs: usize,
    base: Measure,
    snoop: Option<Reference>,
    audit: Option<Reference>,
    sensor: Measure,
    execs_seen: i64,
    argv_ok: i64,
    exits_ok: i64,
    lost: u64,
    /// CPU seconds of (procmond, agent) during the storm and its drain.
    sensor_cpu: (f64, f64),
    /// Exec -> alert latencies, sorted.
    latencies: Vec<Duration>,
    alerts_expected: usize,
    /// What went wrong on the way that the report should say.
    notes: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
struct Measure {
    rate: f64,
    wall: Duration,
}

impl From<&Storm> for Measure {
    fn from(s: &Storm) -> Self {
        Measure { rate: s.rate(), wall: s.wall }
    }
}

#[allow(clippy::too_many_arguments, reason = "one call site; the bench's plan spelled out")]
fn storm_row(
    bin: &Path,
    work: &Path,
    rules: &Path,
    exe: &Path,
    refs: &References<'_>,
    label: &str,
    rate: Option<f64>,
    count: usize,
    threads: usize,
) -> anyhow::Result<StormRow> {
    let ticks = sys::clock_ticks();
    let run = |tag: &str| format!("r{}{tag}", std::process::id());
    // "100", "max1of3": the storm's part of its run id (one argument, which
    // auditd would log hex-encoded if it had a space) and of its directories
    // (auditd.conf takes no spaces in a path).
    let tag: String = label.trim_end_matches("/s").chars().filter(char::is_ascii_alphanumeric).collect();

    // 1. The baseline: nothing watching.
    let base = sys::storm(exe, &run(&format!("b{tag}")), rate, count, threads, 0)?;

    // 2. The reference captures.
    let snoop = match refs.execsnoop {
        Some(path) => {
            let id = run(&format!("s{tag}"));
            Some(reference::under_execsnoop(path, &Workload { exe, id: &id, rate, count, threads }, ticks)?)
        }
        None => None,
    };
    // auditd needs more of the machine than execsnoop (the kernel's audit
    // switch, a daemon slot): if it fails here, the storm goes on without it
    // and the report says why.
    let mut notes = Vec::new();
    let audit = match refs.auditd {
        Some(auditd) => {
            let dir = work.join(format!("auditd-{tag}"));
            let id = run(&format!("u{tag}"));
            match auditd.under(&dir, &Workload { exe, id: &id, rate, count, threads }, ticks) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("xtask bench: storm {label}: no auditd reference: {e:#}");
                    notes.push(format!("Storm {label}: no auditd reference capture: {e:#}"));
                    None
                }
            }
        }
        None => None,
    };

    // 3. The sensor: a fresh agent with every shipped rule and the bench rule.
    let agent = AgentRun::start(bin, &work.join(format!("data-{tag}")), rules, "ebpf")?;
    let id = run(&format!("a{tag}"));
    agent.wait_sees(exe, &id)?;
    let procmond = agent.procmond_pid().context("procmond is not running under the agent")?;
    let cpu = |ticks| -> anyhow::Result<(f64, f64)> {
        Ok((sys::cpu_seconds(procmond, ticks)?, sys::cpu_seconds(agent.pid(), ticks)?))
    };
    let cpu_before = cpu(ticks)?;
    let sensor = sys::storm(exe, &id, rate, count, threads, alert_every(rate))?;
    // CPU up to the moment the agent has applied the whole storm, before
    // the queries below (each reads every stored event) add their own.
    agent.wait_applied()?;
    let cpu_after = cpu(ticks)?;
    let want = i64::try_from(sensor.completed).unwrap_or(i64::MAX);
    let like = format!("name = 'dembench' AND argv LIKE '[\"%/dembench\",\"{id}\",%'");
    let execs_sql = format!("SELECT count(*) AS n FROM process_events WHERE event_type = 'exec' AND {like}");
    let execs_seen = agent.wait_count(&execs_sql, want, Duration::from_secs(5))?;
    let me = std::process::id();
    let argv_ok = agent.count(&format!(
        "SELECT count(*) AS n FROM process_events WHERE event_type = 'exec' AND {like} AND ppid = {me} \
         AND argv LIKE '%\"]' AND (argv LIKE '%\",\"alert\"]' OR argv NOT LIKE '%alert%')"
    ))?;
    let exits_ok = agent.wait_count(
        &format!("SELECT count(*) AS n FROM process_events WHERE event_type = 'exit' AND exit_code = 0 AND {like}"),
        want,
        Duration::from_secs(5),
    )?;
    let health = agent.cli(&["health", "--format", "json"])?;
    let lost = health.get("events_lost").and_then(serde_json::Value::as_u64).unwrap_or(0);
    let latencies = latencies(&sensor, &agent);
    drop(agent);

    Ok(StormRow {
        label: label.to_owned(),
        execs: count,
        base: Measure::from(&base),
        snoop,
        audit,
        sensor: Measure::from(&sensor),
        execs_seen,
        argv_ok,
        exits_ok,
        lost,
        sensor_cpu: (cpu_after.0 - cpu_before.0, cpu_after.1 - cpu_before.1),
        latencies,
        alerts_expected: sensor.alert_spawned.len(),
        notes,
    })
}

/// Alerts per second the bench rule raises during a storm: every n-th exec
/// is marked so that a storm at any rate raises about [`ALERTS_PER_SECOND`]
/// (the maximum-rate storm, whose rate is not known ahead, every 200th).
/// The exec -> alert latency is measured on these; a fixed alert rate keeps
/// the CPU figures about exec handling, not about how many alerts the
/// bench chose to raise (a host alerting 10 times a second is already
/// under attack).
fn alert_every(rate: Option<f64>) -> usize {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "small positive rates")]
    rate.map_or(200, |r| ((r / ALERTS_PER_SECOND).round() as usize).max(1))
}

/// See [`alert_every`].
const ALERTS_PER_SECOND: f64 = 10.0;

/// Exec -> alert latencies of one storm, sorted.
fn latencies(storm: &Storm, agent: &AgentRun) -> Vec<Duration> {
    let mut out: Vec<Duration> = latencies_by_exec(storm, agent).into_iter().map(|(_, d)| d).collect();
    out.sort();
    out
}

/// Exec -> alert latency of each alert of one storm, with the index of its
/// exec.
fn latencies_by_exec(storm: &Storm, agent: &AgentRun) -> Vec<(usize, Duration)> {
    // Alerts may still be on their way: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.alerts.lock().map_or(0, |a| a.len()) < storm.alert_spawned.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let seen = agent.alerts.lock().map(|a| a.clone()).unwrap_or_default();
    seen.iter()
        .filter_map(|(i, at)| {
            let spawned = storm.alert_spawned.get(i)?;
            Some((*i, at.duration_since(*spawned).ok()?))
        })
        .collect()
}

fn storm_table(rows: &[StormRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### Exec storms\n");
    let _ = writeln!(
        s,
        "| storm | execs | baseline rate | with sensor: rate (slowdown) | execs seen (full argv + ppid) | exits (code 0) | lost | procmond + agent CPU (procmond, agent) | execsnoop: seen, CPU, rate (slowdown) | auditd (raw): seen, CPU, rate (slowdown) | exec -> alert p50 / p99 / max (n) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let slowdown = slowdown_pct(r.base, r.sensor);
        let secs = r.sensor.wall.as_secs_f64();
        let snoop = reference_cell(r, r.snoop.as_ref());
        let audit = reference_cell(r, r.audit.as_ref());
        let lat = if r.latencies.is_empty() {
            "—".to_owned()
        } else {
            format!(
                "{} / {} / {} ({} of {})",
                ms(pct(&r.latencies, 50.0)),
                ms(pct(&r.latencies, 99.0)),
                ms(*r.latencies.last().unwrap_or(&Duration::ZERO)),
                r.latencies.len(),
                r.alerts_expected
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0}/s | {:.0}/s ({slowdown:+.1}%) | {} ({}) | {} | {} | {:.2}% of a core ({:.2}%, {:.2}%) | {snoop} | {audit} | {lat} |",
            r.label,
            r.execs,
            r.base.rate,
            r.sensor.rate,
            r.execs_seen,
            r.argv_ok,
            r.exits_ok,
            r.lost,
            (r.sensor_cpu.0 + r.sensor_cpu.1) / secs * 100.0,
            r.sensor_cpu.0 / secs * 100.0,
            r.sensor_cpu.1 / secs * 100.0,
        );
    }
    s.push('\n');
    s
}

/// The maximum-rate runs together: the median slowdown, and the latency
/// percentiles over every alert of every run (25 alerts a run make a p99
/// that is one sample; pooled, it is a few).
fn max_summary(rows: &[StormRow]) -> String {
    let max: Vec<&StormRow> = rows.iter().filter(|r| r.label.starts_with("max")).collect();
    if max.len() < 2 {
        return String::new();
    }
    let median = |mut v: Vec<f64>| -> (f64, String) {
        v.sort_by(f64::total_cmp);
        let listed = v.iter().map(|s| format!("{s:+.1}%")).collect::<Vec<_>>().join(", ");
        (v.get(v.len() / 2).copied().unwrap_or(f64::NAN), listed)
    };
    let (median_sensor, listed) = median(max.iter().map(|r| slowdown_pct(r.base, r.sensor)).collect());
    let mut pooled: Vec<Duration> = max.iter().flat_map(|r| r.latencies.iter().copied()).collect();
    pooled.sort();
    let lost: u64 = max.iter().map(|r| r.lost).sum();
    let seen: i64 = max.iter().map(|r| r.execs_seen.min(r.exits_ok)).sum();
    let execs: usize = max.iter().map(|r| r.execs).sum();
    let mut s = format!(
        "Maximum rate over {} runs: median slowdown **{median_sensor:+.1}%** (runs, sorted: {listed}); \
         {seen} of {execs} execs seen with their exits, {lost} lost",
        max.len()
    );
    for (name, pick) in [("execsnoop", 0), ("auditd", 1)] {
        let capture = |r: &StormRow| [r.snoop, r.audit][pick];
        let slowdowns: Vec<f64> =
            max.iter().filter_map(|r| capture(r).map(|m| slowdown_pct(r.base, m.measure))).collect();
        if slowdowns.len() == max.len() {
            let (median_ref, listed) = median(slowdowns);
            let _ = write!(s, "; {name} alone: median slowdown {median_ref:+.1}% ({listed})");
        }
    }
    if !pooled.is_empty() {
        let _ = write!(
            s,
            "; exec -> alert over all {} alerts p50 / p99 / max **{} / {} / {}**",
            pooled.len(),
            ms(pct(&pooled, 50.0)),
            ms(pct(&pooled, 99.0)),
            ms(*pooled.last().unwrap_or(&Duration::ZERO))
        );
    }
    s.push_str(".\n\n");
    s
}

/// A reference capture's cell of the storm table.
fn reference_cell(r: &StormRow, capture: Option<&Reference>) -> String {
    capture.map_or_else(
        || "—".into(),
        |c| {
            format!(
                "{} / {}, {:.2}% of a core, {:.0}/s ({:+.1}%)",
                c.seen,
                r.execs,
                c.cpu / c.measure.wall.as_secs_f64() * 100.0,
                c.measure.rate,
                slowdown_pct(r.base, c.measure)
            )
        },
    )
}

/// How much slower (in %) the storm ran under a capture than alone.
fn slowdown_pct(base: Measure, with: Measure) -> f64 {
    (base.rate / with.rate - 1.0) * 100.0
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    sorted.get(i).copied().unwrap_or(Duration::ZERO)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn copy_rules(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            std::fs::copy(&path, to.join(entry.file_name())).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    std::fs::write(to.join("zz-bench.yaml"), BENCH_RULE).context("writing the bench rule")?;
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}
