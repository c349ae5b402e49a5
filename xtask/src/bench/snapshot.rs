//! The start-up snapshot: the time from starting the agent until every one
//! of `n` sleeping processes is in its table with its SHA-256, and the
//! resident memory of procmond and the agent afterwards.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::sys::{self, AgentRun};

/// Starts `n` sleeping processes on 100 distinct executables, then an
/// agent, and times until all of them are in its table with hashes.
pub(super) fn measure(bin: &Path, work: &Path, rules: &Path, n: usize) -> anyhow::Result<String> {
    let dir = work.join("sleepers");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exes: Vec<PathBuf> = (0..100)
        .map(|i| {
            let p = dir.join(format!("dsleep{i:03}"));
            std::fs::copy("/bin/sleep", &p).map(|_| p).context("copying /bin/sleep")
        })
        .collect::<anyhow::Result<_>>()?;
    let sleepers = Sleepers::spawn(&exes, n)?;
    eprintln!("xtask bench: {} sleepers running", sleepers.0.len());
    let started = Instant::now();
    let agent = AgentRun::start(bin, &work.join("data-snapshot"), rules, "ebpf")?;
    let sql = "SELECT count(*) AS n FROM processes WHERE is_alive = 1 AND name LIKE 'dsleep%' AND executable_hash IS NOT NULL";
    let want = i64::try_from(sleepers.0.len()).unwrap_or(i64::MAX);
    let mut seen = 0;
    while started.elapsed() < Duration::from_secs(120) {
        seen = agent.count(sql)?;
        if seen >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let total = agent.count("SELECT count(*) AS n FROM processes WHERE is_alive = 1")?;
    let procmond = agent.procmond_pid().context("procmond is not running under the agent")?;
    // Let table rules run over the full table, and the resource sampler
    // report on every process once: its first round (10 s after start, by
    // default) is a baseline, its second reports.
    std::thread::sleep(Duration::from_secs(22));
    let rss_p = sys::rss_mib(procmond)?;
    let rss_a = sys::rss_mib(agent.pid())?;
    drop(agent);
    drop(sleepers);
    let mut s = String::new();
    let _ = writeln!(s, "### Start-up snapshot and memory\n");
    let _ = writeln!(s, "| what | measured | target |\n|---|---|---|");
    let _ = writeln!(
        s,
        "| agent start -> {seen} of {want} sleepers (100 distinct executables) in the table with SHA-256 | {:.2} s ({total} live processes in the table) | <= 1 s |",
        took.as_secs_f64()
    );
    let _ = writeln!(s, "| procmond resident memory with {total} processes | {rss_p:.1} MiB | <= 30 MB |");
    let _ = writeln!(s, "| agent resident memory with {total} processes | {rss_a:.1} MiB | <= 80 MB |\n");
    Ok(s)
}

/// Sleeping processes, killed on drop.
struct Sleepers(Vec<std::process::Child>);

impl Sleepers {
    fn spawn(exes: &[PathBuf], n: usize) -> anyhow::Result<Sleepers> {
        let mut s = Sleepers(Vec::with_capacity(n));
        for i in 0..n {
            let exe = &exes[i % exes.len()];
            let child = Command::new(exe)
                .arg("3600")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting sleeper {i} ({})", exe.display()))?;
            s.0.push(child);
        }
        Ok(s)
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}
