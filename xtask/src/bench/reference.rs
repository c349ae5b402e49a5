//! The reference captures a storm also runs under, in the same run as the
//! sensor: `execsnoop` from Debian's libbpf-tools (an eBPF exec tracer that
//! prints a line per exec) and auditd with an `execve` rule and
//! `log_format = RAW` (the capture PRODUCT.md §15 quotes next to its CPU
//! targets). Each reports what it saw, its CPU time and the storm's rate.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{Measure, sys};

/// One storm under a reference capture.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reference {
    pub(super) measure: Measure,
    /// The storm's execs the capture reported.
    pub(super) seen: usize,
    /// CPU seconds the capture used over the storm (and one second after).
    pub(super) cpu: f64,
}

/// The storm a reference capture watches: `sys::storm`'s arguments.
pub(super) struct Workload<'a> {
    pub(super) exe: &'a Path,
    pub(super) id: &'a str,
    pub(super) rate: Option<f64>,
    pub(super) count: usize,
    pub(super) threads: usize,
}

impl Workload<'_> {
    /// Runs the storm under a capture whose CPU seconds so far `cpu` reads:
    /// before the storm, and one second after it (what the capture still
    /// had queued).
    fn run_under(&self, cpu: impl Fn() -> anyhow::Result<f64>) -> anyhow::Result<(Measure, f64)> {
        let before = cpu()?;
        let storm = sys::storm(self.exe, self.id, self.rate, self.count, self.threads, 0)?;
        std::thread::sleep(Duration::from_secs(1));
        Ok((Measure::from(&storm), cpu()? - before))
    }
}

/// `execsnoop` from libbpf-tools, with tracefs mounted (its syscall
/// tracepoints live there).
pub(super) fn find_execsnoop() -> anyhow::Result<PathBuf> {
    let path = ["/usr/sbin/execsnoop", "/usr/bin/execsnoop"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .context("execsnoop not found: `apt-get install libbpf-tools` for the reference capture")?;
    if !Path::new("/sys/kernel/tracing/events").exists() {
        let ok = Command::new("mount")
            .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!("tracefs is not mounted at /sys/kernel/tracing and mounting it failed");
        }
    }
    Ok(path)
}

/// The storm `work` under `execsnoop`.
pub(super) fn under_execsnoop(execsnoop: &Path, work: &Workload<'_>, ticks: f64) -> anyhow::Result<Reference> {
    // Line-buffered: execsnoop's stdio buffers a pipe, so its header (the
    // sign that it is attached) would only arrive once 4 KiB of output had
    // filled the buffer, which on a quiet machine never happens.
    let mut child = Command::new("stdbuf")
        .arg("-oL")
        .arg(execsnoop)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", execsnoop.display()))?;
    let stdout = child.stdout.take().context("execsnoop stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let needle = format!(" {} ", work.id);
    let reader = std::thread::spawn(move || {
        let mut seen = 0usize;
        let mut lines = BufReader::new(stdout).lines();
        // The header means the programs are attached.
        if lines.next().is_some() {
            let _ = tx.send(());
        }
        for line in lines.map_while(Result::ok) {
            if line.contains(&needle) {
                seen += 1;
            }
        }
        seen
    });
    if rx.recv_timeout(Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        let err = child.stderr.take().map(std::io::read_to_string).and_then(Result::ok).unwrap_or_default();
        bail!("execsnoop did not start: {}", err.trim());
    }
    let pid = child.id();
    let (measure, cpu) = work.run_under(|| sys::cpu_seconds(pid, ticks))?;
    let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
    let _ = child.wait();
    let seen = reader.join().unwrap_or(0);
    Ok(Reference { measure, seen, cpu })
}

/// auditd and auditctl from Debian's `auditd`, on a machine where no audit
/// daemon runs (the bench starts its own and must not take over a real
/// one's log or rules) and the audit configuration is not locked.
pub(super) struct Auditd {
    auditd: PathBuf,
    auditctl: PathBuf,
}

/// The key of the bench's audit rule: it deletes just that rule after.
const RULE_KEY: &str = "daemoneye-bench";

impl Auditd {
    pub(super) fn find() -> anyhow::Result<Self> {
        let auditd = PathBuf::from("/usr/sbin/auditd");
        let auditctl = PathBuf::from("/usr/sbin/auditctl");
        if !auditd.exists() || !auditctl.exists() {
            bail!("auditd not found: `apt-get install auditd` for the auditd reference capture");
        }
        let me = Self { auditd, auditctl };
        let status = me.status().context("reading the kernel's audit status (`auditctl -s`)")?;
        if status.pid != 0 {
            bail!("an audit daemon (pid {}) already runs; the bench does not take over its rules", status.pid);
        }
        if status.enabled == 2 {
            bail!("the kernel's audit configuration is locked (enabled 2)");
        }
        Ok(me)
    }

    /// The storm `work` under a fresh auditd writing raw records of every
    /// `execve` to `dir/audit.log`. auditd's CPU includes the kernel's
    /// `kauditd` thread, which sends it the records.
    pub(super) fn under(&self, dir: &Path, work: &Workload<'_>, ticks: f64) -> anyhow::Result<Reference> {
        let kauditd = kauditd_pid().context("no kauditd kernel thread: is audit compiled into this kernel?")?;
        let session = self.start(dir)?;
        let pid = session.child.id();
        let (measure, cpu) =
            work.run_under(|| Ok(sys::cpu_seconds(pid, ticks)? + sys::cpu_seconds(kauditd, ticks)?))?;
        // auditd writes what it holds when it stops.
        drop(session);
        let log = std::fs::read_to_string(dir.join("audit.log")).context("reading the bench's audit log")?;
        let needle = format!(" a1=\"{}\"", work.id);
        let seen = log.lines().filter(|l| l.starts_with("type=EXECVE") && l.contains(&needle)).count();
        Ok(Reference { measure, seen, cpu })
    }

    fn start(&self, dir: &Path) -> anyhow::Result<AuditSession<'_>> {
        let before = self.status()?;
        std::fs::create_dir_all(dir.join("plugins.d")).with_context(|| format!("creating {}", dir.display()))?;
        // Debian's auditd.conf, but raw records into the bench's directory.
        let conf = format!(
            "local_events = yes\nwrite_logs = yes\nlog_file = {}\nlog_group = root\nlog_format = RAW\n\
             flush = INCREMENTAL_ASYNC\nfreq = 50\nmax_log_file = 1024\nnum_logs = 2\npriority_boost = 4\n\
             name_format = NONE\nmax_log_file_action = ROTATE\nspace_left = 75\nspace_left_action = IGNORE\n\
             admin_space_left = 50\nadmin_space_left_action = IGNORE\ndisk_full_action = IGNORE\n\
             disk_error_action = SYSLOG\nuse_libwrap = no\ntcp_client_max_idle = 0\ntransport = TCP\n\
             distribute_network = no\nq_depth = 2000\noverflow_action = SYSLOG\nmax_restarts = 10\n\
             plugin_dir = {}\nend_of_event_timeout = 2\n",
            dir.join("audit.log").display(),
            dir.join("plugins.d").display()
        );
        std::fs::write(dir.join("auditd.conf"), conf).context("writing the bench's auditd.conf")?;
        let log = dir.join("auditd.stderr");
        let stderr = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&self.auditd)
            .arg("-n")
            .arg("-c")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", self.auditd.display()))?;
        let session = AuditSession { ctl: self, child, before };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status()?.pid != session.child.id() {
            if Instant::now() > deadline {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("auditd did not register with the kernel within 10 s; it said: {}", said.trim());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Debian's rules file raises the backlog from the kernel's 64.
        self.ctl(&["-b", "8192"])?;
        self.ctl(&["-a", "always,exit", "-F", "arch=b64", "-S", "execve,execveat", "-k", RULE_KEY])?;
        Ok(session)
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.auditctl).args(args).output().context("running auditctl")?;
        if !out.status.success() {
            bail!("auditctl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn status(&self) -> anyhow::Result<AuditStatus> {
        AuditStatus::parse(&self.ctl(&["-s"])?)
    }
}

/// What `auditctl -s` reports that the bench changes or checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AuditStatus {
    enabled: u32,
    pid: u32,
    backlog_limit: u32,
}

impl AuditStatus {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let field = |name: &str| -> anyhow::Result<u32> {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .and_then(|v| v.trim().parse().ok())
                .with_context(|| format!("no `{name}` in `auditctl -s` output"))
        };
        Ok(Self { enabled: field("enabled")?, pid: field("pid")?, backlog_limit: field("backlog_limit")? })
    }
}

/// A running bench auditd with its rule; dropping it deletes the rule,
/// stops auditd and puts back the kernel's audit switch and backlog limit
/// (audit left on would slow every later storm's system calls).
struct AuditSession<'a> {
    ctl: &'a Auditd,
    child: Child,
    before: AuditStatus,
}

impl Drop for AuditSession<'_> {
    fn drop(&mut self) {
        let rule = ["-d", "always,exit", "-F", "arch=b64", "-S", "execve,execveat", "-k", RULE_KEY];
        let _ = self.ctl.ctl(&rule);
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        let restore = [("-e", self.before.enabled), ("-b", self.before.backlog_limit)];
        for (flag, value) in restore {
            if let Err(e) = self.ctl.ctl(&[flag, &value.to_string()]) {
                eprintln!("xtask bench: could not restore the kernel's audit setting {flag} {value}: {e:#}");
            }
        }
    }
}

/// The kernel thread that hands audit records to auditd.
fn kauditd_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        (std::fs::read_to_string(e.path().join("comm")).ok()?.trim() == "kauditd").then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::AuditStatus;

    #[test]
    fn audit_status_reads_the_fields_the_bench_restores() {
        let text = "enabled 1\nfailure 1\npid 28603\nrate_limit 0\nbacklog_limit 64\nlost 0\nbacklog 0\n\
                    backlog_wait_time 15000\nbacklog_wait_time_actual 0\nloginuid_immutable 0 unlocked\n";
        let s = AuditStatus::parse(text).expect("parses");
        assert_eq!(s, AuditStatus { enabled: 1, pid: 28603, backlog_limit: 64 });
        assert!(AuditStatus::parse("enabled 0\npid 0\n").is_err(), "a missing field is an error");
    }
}
