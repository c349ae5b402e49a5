//! The steady-state storm: one agent under a paced storm long enough to
//! pass its exited-process cap (`agent.max_exited_processes`), so exec ->
//! alert latency is measured as a long-running agent on a busy host sees
//! it, where store flushes also prune. The paced storms cannot show this:
//! each has a fresh agent and stays under the cap. (Found this way, in
//! session 9: pruning a busy spawner's children held the process view's
//! write lock, and the next event, for up to 0.4 s.)

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value as Json;

use super::sys::{self, AgentRun};
use super::{alert_every, latencies_by_exec, ms, pct};

/// Runs `rate` exec/s for `seconds` on one agent; returns the Markdown
/// section.
pub(super) fn measure(
    bin: &Path,
    work: &Path,
    rules: &Path,
    exe: &Path,
    default_config: &Path,
    rate: u32,
    seconds: u32,
) -> anyhow::Result<String> {
    let cap = exited_cap(default_config)?;
    let count = rate as usize * seconds as usize;
    if count <= cap {
        bail!("a steady-state storm of {count} execs stays under the exited-process cap ({cap}): make it longer");
    }
    let agent = AgentRun::start(bin, &work.join("data-steady"), rules, "ebpf")?;
    let id = format!("r{}steady", std::process::id());
    agent.wait_sees(exe, &id)?;
    let procmond = agent.procmond_pid().context("procmond is not running under the agent")?;
    let ticks = sys::clock_ticks();
    let cpu =
        || -> anyhow::Result<f64> { Ok(sys::cpu_seconds(procmond, ticks)? + sys::cpu_seconds(agent.pid(), ticks)?) };
    let before = cpu()?;
    let paced = Some(f64::from(rate));
    let storm = sys::storm(exe, &id, paced, count, 4, alert_every(paced))?;
    agent.wait_applied()?;
    let used = cpu()? - before;
    let health = agent.cli(&["health", "--format", "json"])?;
    let held = health.get("processes_total").and_then(Json::as_u64).unwrap_or(0);
    let by_exec = latencies_by_exec(&storm, &agent);
    drop(agent);

    let sorted = |mut v: Vec<Duration>| {
        v.sort();
        v
    };
    let all = sorted(by_exec.iter().map(|(_, d)| *d).collect());
    let filling = sorted(by_exec.iter().filter(|(i, _)| *i < cap).map(|(_, d)| *d).collect());
    let past = sorted(by_exec.iter().filter(|(i, _)| *i >= cap).map(|(_, d)| *d).collect());
    let mut s = String::new();
    let _ = writeln!(s, "### Steady state: one agent past its exited-process cap\n");
    let _ = writeln!(
        s,
        "{rate} exec/s for {seconds} s ({} of {count} execs completed, {:.0}/s) on one agent with \
         `agent.max_exited_processes` = {cap}: its table held {held} processes at the end. procmond + agent \
         CPU {:.2}% of a core over the storm.\n",
        storm.completed,
        storm.rate(),
        used / storm.wall.as_secs_f64() * 100.0,
    );
    let _ = writeln!(s, "| exec -> alert of | alerts | p50 | p99 | max |\n|---|---|---|---|---|");
    for (what, v) in [
        (format!("execs 0 to {} (filling the table)", cap - 1), &filling),
        (format!("execs {cap} to {} (past the cap: the store writer prunes)", count - 1), &past),
        ("every exec".to_owned(), &all),
    ] {
        let max = v.last().copied().unwrap_or(Duration::ZERO);
        let _ = writeln!(s, "| {what} | {} | {} | {} | {} |", v.len(), ms(pct(v, 50.0)), ms(pct(v, 99.0)), ms(max));
    }
    let _ = writeln!(s, "\n{} alerts expected.\n", storm.alert_spawned.len());
    Ok(s)
}

/// `agent.max_exited_processes` of the embedded defaults, which the bench's
/// agents run with.
fn exited_cap(default_config: &Path) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(default_config).with_context(|| format!("reading {}", default_config.display()))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("max_exited_processes"))
        .find_map(|rest| rest.trim().strip_prefix('=')?.trim().replace('_', "").parse().ok())
        .with_context(|| format!("{} sets no max_exited_processes", default_config.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_comes_from_the_embedded_defaults() {
        let defaults = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lib/config/default.toml");
        let cap = exited_cap(&defaults).unwrap();
        assert!(cap > 0, "the embedded defaults cap the exited processes");
        let missing = std::env::temp_dir().join(format!("xtask-steady-{}.toml", std::process::id()));
        std::fs::write(&missing, "[agent]\nprocess_retention = \"10m\"\n").unwrap();
        let err = exited_cap(&missing).unwrap_err();
        let _ = std::fs::remove_file(&missing);
        assert!(err.to_string().contains("sets no max_exited_processes"), "{err}");
    }
}
