//! The measuring instruments of `cargo xtask bench`: an exec workload,
//! per-process CPU time and resident memory from `/proc`, and a running
//! agent (release build) with its alerts read from stdout as they arrive.

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use serde_json::Value as Json;

/// What one run of the workload did.
pub(super) struct Storm {
    /// Execs that ran to completion with exit status 0.
    pub(super) completed: usize,
    /// Wall time from the first spawn to the last reaped child.
    pub(super) wall: Duration,
    /// When each alert-triggering exec was spawned, by its index.
    pub(super) alert_spawned: HashMap<usize, SystemTime>,
}

impl Storm {
    /// Achieved execs per second.
    pub(super) fn rate(&self) -> f64 {
        self.completed as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs `exe <run_id> <i> [alert]` for `i` in `0..count` on `threads`
/// workers, each fork+exec followed by its wait; paced at `rate` execs per
/// second when given, else as fast as the machine allows. Every
/// `alert_every`-th exec gets the extra argument `alert` (0: none).
pub(super) fn storm(
    exe: &Path,
    run_id: &str,
    rate: Option<f64>,
    count: usize,
    threads: usize,
    alert_every: usize,
) -> anyhow::Result<Storm> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<(usize, HashMap<usize, SystemTime>)>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                s.spawn(move || {
                    let mut done = 0;
                    let mut alerts = HashMap::new();
                    for i in (w..count).step_by(threads) {
                        if let Some(rate) = rate {
                            let due = started + Duration::from_secs_f64(i as f64 / rate);
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        let mut cmd = Command::new(exe);
                        cmd.args([run_id, &i.to_string()]).stdin(Stdio::null()).stdout(Stdio::null());
                        let alert = alert_every > 0 && i % alert_every == 0;
                        if alert {
                            cmd.arg("alert");
                            alerts.insert(i, SystemTime::now());
                        }
                        let status = cmd.status().with_context(|| format!("running {}", exe.display()))?;
                        if status.success() {
                            done += 1;
                        }
                    }
                    Ok((done, alerts))
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))).collect()
    });
    let wall = started.elapsed();
    let mut out = Storm { completed: 0, wall, alert_spawned: HashMap::new() };
    for r in results {
        let (done, alerts) = r?;
        out.completed += done;
        out.alert_spawned.extend(alerts);
    }
    Ok(out)
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
pub(super) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system, all threads) used so far by `pid`.
pub(super) fn cpu_seconds(pid: u32, ticks: f64) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may contain spaces: state is field 3,
    // utime 14 and stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).and_then(|f| f.parse().ok()).context("no utime in /proc/<pid>/stat")?;
    let stime: f64 = fields.get(12).and_then(|f| f.parse().ok()).context("no stime in /proc/<pid>/stat")?;
    Ok((utime + stime) / ticks)
}

/// Resident memory of `pid` in MiB (`VmRSS`).
pub(super) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/<pid>/status")?;
    Ok(kib / 1024.0)
}

/// The children of `pid` (all its threads' children).
pub(super) fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

/// The command name of `pid`.
pub(super) fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().to_owned()).unwrap_or_default()
}

/// A release agent (which starts its procmond) on a private data dir.
pub(super) struct AgentRun {
    child: Child,
    bin: PathBuf,
    data: PathBuf,
    /// Alerts of the bench rule as they were read from stdout: (exec index, when).
    pub(super) alerts: Arc<Mutex<Vec<(usize, SystemTime)>>>,
}

impl AgentRun {
    /// Starts `daemoneye-agent` from `bin` with the rules in `rules` and the
    /// eBPF backend, logs to `data/../agent.stderr`, and waits until its API
    /// answers.
    pub(super) fn start(bin: &Path, data: &Path, rules: &Path, backend: &str) -> anyhow::Result<AgentRun> {
        std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
        let log_path = data.with_extension("stderr");
        let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new(bin.join("daemoneye-agent"))
            .arg("--data-dir")
            .arg(data)
            .arg("--rules-dir")
            .arg(rules)
            .args(["--backend", backend, "--no-system-config"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.join("daemoneye-agent").display()))?;
        let alerts = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let sink = Arc::clone(&alerts);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let at = SystemTime::now();
                    if let Some(i) = bench_alert_index(&line)
                        && let Ok(mut v) = sink.lock()
                    {
                        v.push((i, at));
                    }
                }
            });
        }
        let run = AgentRun { child, bin: bin.to_owned(), data: data.to_owned(), alerts };
        let deadline = Instant::now() + Duration::from_secs(60);
        while run.cli(&["health", "--format", "json"]).is_err() {
            if Instant::now() > deadline {
                bail!("the agent did not answer within 60 s; see {}", log_path.display());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(run)
    }

    /// The agent's pid.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// procmond's pid (the agent's child named `procmond`).
    pub(super) fn procmond_pid(&self) -> Option<u32> {
        children(self.pid()).into_iter().find(|&p| comm(p) == "procmond")
    }

    /// Runs the CLI against this agent and parses its JSON output.
    pub(super) fn cli(&self, args: &[&str]) -> anyhow::Result<Json> {
        let out = Command::new(self.bin.join("daemoneye-cli"))
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("DAEMONEYE_SOCKET")
            .output()
            .context("running daemoneye-cli")?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!("daemoneye-cli {args:?} printed no JSON: {}", String::from_utf8_lossy(&out.stderr).trim())
        })
    }

    /// `SELECT count(*) AS n ...` through the CLI.
    pub(super) fn count(&self, sql: &str) -> anyhow::Result<i64> {
        let rows = self.cli(&["query", "--format", "json", sql])?;
        Ok(rows.get(0).and_then(|r| r.get("n")).and_then(Json::as_i64).unwrap_or(0))
    }

    /// Waits until an exec of `exe` tagged `<run_id>-probe` has gone all
    /// the way to the agent's table (the sensor is attached and the start-up
    /// snapshot applied), then two seconds more for the start-up work to
    /// settle.
    pub(super) fn wait_sees(&self, exe: &Path, run_id: &str) -> anyhow::Result<()> {
        let probe = format!(
            "SELECT count(*) AS n FROM process_events WHERE name = 'dembench' AND argv LIKE '%{run_id}-probe%'"
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let _ = Command::new(exe).arg(format!("{run_id}-probe")).status();
            if self.count(&probe)? > 0 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent's table never showed the probe exec; see {}",
                    self.data.with_extension("stderr").display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        std::thread::sleep(Duration::from_secs(2));
        Ok(())
    }

    /// Waits until the agent has applied every event procmond had written
    /// when this was called: procmond reports its ledger head once a
    /// second, so the head is read after that has passed, and the agent's
    /// `last_applied_seq` must reach it. (Waiting for `last_applied_seq` to
    /// stop moving never ends: each `health` call is an exec the sensor
    /// sees.)
    pub(super) fn wait_applied(&self) -> anyhow::Result<()> {
        let health = |key: &str| -> anyhow::Result<u64> {
            let h = self.cli(&["health", "--format", "json"])?;
            Ok(h.get(key).and_then(Json::as_u64).unwrap_or(0))
        };
        std::thread::sleep(Duration::from_millis(1100));
        let head = health("ledger_head")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while health("last_applied_seq")? < head {
            if Instant::now() > deadline {
                bail!("the agent did not apply up to seq {head} within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits until `count(sql)` reaches `want` or stops changing for
    /// `settle`; returns the last count.
    pub(super) fn wait_count(&self, sql: &str, want: i64, settle: Duration) -> anyhow::Result<i64> {
        let mut last = -1;
        let mut since = Instant::now();
        loop {
            let n = self.count(sql)?;
            if n >= want {
                return Ok(n);
            }
            if n != last {
                last = n;
                since = Instant::now();
            } else if since.elapsed() > settle {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        // SIGTERM to the group (agent and procmond), then reap.
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", self.child.id())]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

/// The exec index of a bench-rule alert line (`{"rule_id":"bench-marker-alert",
/// ..., "row":{"argv":"[\"dembench\",\"<run>\",\"<i>\",\"alert\"]"}}`).
fn bench_alert_index(line: &str) -> Option<usize> {
    let v: Json = serde_json::from_str(line).ok()?;
    if v.get("rule_id")?.as_str()? != super::BENCH_RULE_ID {
        return None;
    }
    let argv: Vec<String> = serde_json::from_str(v.get("row")?.get("argv")?.as_str()?).ok()?;
    argv.get(2)?.parse().ok()
}
