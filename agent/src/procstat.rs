//! Resource use of a process (the agent itself, the supervised procmond),
//! for `health` and the metrics: resident memory and CPU time.
//!
//! Linux reads `/proc/<pid>/stat` (utime, stime, starttime in clock ticks)
//! and `/proc/<pid>/status` (`VmRSS`); on other systems every reading is
//! `None` and the numbers are left out of health.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Seconds the process has been running.
    pub age_seconds: f64,
}

/// Reads `pid`'s usage now; `None` when it is gone or the OS is not Linux.
pub fn read(pid: u32) -> Option<Usage> {
    imp::read(pid)
}

/// Turns cumulative CPU time into a percentage over the time since the
/// previous sample of the same pid (when at least a second ago), else over
/// the process's lifetime. Shared by every health request.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Mutex<HashMap<u32, (Instant, f64)>>,
}

impl CpuSampler {
    /// Percent of one core used by `pid`, given a fresh reading `u`.
    pub fn percent(&self, pid: u32, u: &Usage) -> f64 {
        let now = Instant::now();
        let Ok(mut last) = self.last.lock() else {
            return lifetime_percent(u);
        };
        let pct = match last.get(&pid) {
            Some((at, cpu)) if now.duration_since(*at).as_secs_f64() >= 1.0 => {
                (u.cpu_seconds - cpu).max(0.0) / now.duration_since(*at).as_secs_f64() * 100.0
            }
            // Too recent to be a meaningful interval: keep the old sample.
            Some(_) => return lifetime_percent(u),
            None => lifetime_percent(u),
        };
        // Bounded: only the two components are ever sampled, but a restarted
        // procmond has a new pid; forget the old ones.
        if last.len() > 16 {
            last.clear();
        }
        last.insert(pid, (now, u.cpu_seconds));
        pct
    }
}

fn lifetime_percent(u: &Usage) -> f64 {
    if u.age_seconds > 0.0 { u.cpu_seconds / u.age_seconds * 100.0 } else { 0.0 }
}

#[cfg(target_os = "linux")]
mod imp {
    use super::Usage;

    pub(super) fn read(pid: u32) -> Option<Usage> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|t| *t > 0)?;
        parse(&stat, &status, &uptime, ticks as f64)
    }

    /// Parses the three files; `ticks` is `CLK_TCK`.
    pub(super) fn parse(stat: &str, status: &str, uptime: &str, ticks: f64) -> Option<Usage> {
        // The command name is in parentheses and may hold spaces and ')':
        // the fields start after the last ')'. Field 3 (state) is index 0.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let (utime, stime, start) = (field(14)?, field(15)?, field(22)?);
        let rss_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            // Kernel threads and zombies have no VmRSS line.
            .unwrap_or(0);
        let up: f64 = uptime.split_whitespace().next()?.parse().ok()?;
        Some(Usage {
            rss_bytes: rss_kb * 1024,
            cpu_seconds: (utime + stime) as f64 / ticks,
            age_seconds: (up - start as f64 / ticks).max(0.0),
        })
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Usage;

    pub(super) fn read(_pid: u32) -> Option<Usage> {
        None
    }
}

// The readings exist on Linux only (elsewhere `read` is always `None`).
#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files_with_odd_command_names() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 1000 12345 678 184467";
        let status = "Name:\ta\nVmPeak:\t 2000 kB\nVmRSS:\t    1500 kB\nThreads:\t1\n";
        let u = imp::parse(stat, status, "30.00 50.00\n", 100.0).unwrap();
        assert_eq!(u.rss_bytes, 1500 * 1024);
        assert!((u.cpu_seconds - 3.0).abs() < 1e-9, "{u:?}");
        assert!((u.age_seconds - 20.0).abs() < 1e-9, "{u:?}");
        assert!((lifetime_percent(&u) - 15.0).abs() < 1e-9);
    }

    #[test]
    fn reads_this_process() {
        let u = read(std::process::id()).unwrap();
        assert!(u.rss_bytes > 0);
        let sampler = CpuSampler::default();
        assert!(sampler.percent(1, &u) >= 0.0);
        assert!(read(u32::MAX).is_none());
    }
}
