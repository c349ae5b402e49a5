//! Reading processes from `/proc`: the start-up snapshot and the enrichment
//! of kernel events that carry only ids.
//!
//! [`ProcfsReader`] turns `/proc/<pid>/*` into a
//! [`ProcessRecord`](daemoneye_lib::proto::ProcessRecord) with everything but
//! the executable hash (hashing is collector-core's job and follows as an
//! `update`). It never guesses: a field it could not read is `None`; a part
//! it was denied sets `accessible = false`; a process that vanished while it
//! was read is [`ProcfsError::Gone`], which callers skip.
//!
//! The proc root is injectable ([`ProcfsReader::with_root`]) so the parsing
//! is tested on fake trees with hostile contents as well as on the real
//! `/proc`.

mod parse;
mod usage;

pub use usage::UsageFromProc;

/// The container id (64 hex digits) named by a cgroup v2 path such as
/// `/system.slice/docker-<id>.scope`, by the same rules as for
/// `/proc/<pid>/cgroup` (docker, containerd, CRI-O, podman, Kubernetes).
pub(crate) fn container_id_of_cgroup_path(path: &str) -> Option<String> {
    parse::container_id(&format!("0::{path}\n"))
}
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use daemoneye_lib::models::{ProcessKey, TICK_NS, join_command_line};
use daemoneye_lib::proto::{Argv, ProcessRecord};

use parse::Stat;

/// Longest `/proc/<pid>/cmdline` read; longer argument vectors are cut and
/// marked `truncated`.
pub const MAX_CMDLINE_BYTES: u64 = 128 * 1024;

/// How long a missing uid waits before `/etc/passwd` is read again.
const PASSWD_RELOAD_AFTER: Duration = Duration::from_secs(30);

/// Errors from reading `/proc`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcfsError {
    /// The process exited (or its pid was reused) while it was being read.
    /// Not a failure: callers skip it.
    #[error("process {0} is gone")]
    Gone(u32),
    /// The pid names a thread, not a thread-group leader.
    #[error("pid {pid} is a thread of process {tgid}, not a process")]
    Thread {
        /// The thread id that was asked for.
        pid: u32,
        /// Its process.
        tgid: u32,
    },
    /// A file that must be readable could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A file had unexpected contents.
    #[error("cannot parse {}: {reason}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

/// Reads processes from a proc file system.
///
/// Cheap to share: `&self` methods only; the user-name cache is behind a
/// mutex.
#[derive(Debug)]
pub struct ProcfsReader {
    root: PathBuf,
    boot_id: String,
    boot_time_ns: i64,
    page_size: u64,
    passwd_path: PathBuf,
    users: Mutex<UserCache>,
}

#[derive(Debug, Default)]
struct UserCache {
    names: HashMap<u32, String>,
    loaded_at: Option<Instant>,
}

/// What became of one optional part of a process.
enum Part<T> {
    Ok(T),
    /// Not there (kernel thread, zombie): unknown, not denied.
    Missing,
    Denied,
}

impl ProcfsReader {
    /// A reader of the real `/proc`, with the boot time taken from the clocks
    /// (`CLOCK_REALTIME - CLOCK_BOOTTIME`, sub-second accurate).
    pub fn new() -> Result<Self, ProcfsError> {
        Self::with_root(Path::new("/proc"))
    }

    /// A reader of the proc tree at `root`.
    ///
    /// The boot id comes from `<root>/sys/kernel/random/boot_id` (falling back
    /// to [`daemoneye_lib::models::boot_id`]). For the real `/proc` the boot
    /// time comes from the clocks; for any other root from the `btime` line
    /// of `<root>/stat`, so fake trees are deterministic. User names come
    /// from `/etc/passwd` (see [`ProcfsReader::with_passwd`]).
    pub fn with_root(root: &Path) -> Result<Self, ProcfsError> {
        let boot_id = std::fs::read_to_string(root.join("sys/kernel/random/boot_id"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(daemoneye_lib::models::boot_id);
        let clock = if root == Path::new("/proc") { boot_time_from_clocks() } else { None };
        let boot_time_ns = match clock {
            Some(ns) => ns,
            None => boot_time_from_stat(root)?,
        };
        let page_size = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(4096);
        tracing::debug!(root = %root.display(), %boot_id, boot_time_ns, page_size, "procfs reader ready");
        Ok(Self {
            root: root.to_owned(),
            boot_id,
            boot_time_ns,
            page_size,
            passwd_path: PathBuf::from("/etc/passwd"),
            users: Mutex::new(UserCache::default()),
        })
    }

    /// Uses another passwd file for user names (tests, containers whose
    /// `/etc` is mounted elsewhere).
    #[must_use]
    pub fn with_passwd(mut self, path: &Path) -> Self {
        self.passwd_path = path.to_owned();
        self.users = Mutex::new(UserCache::default());
        self
    }

    /// The boot id in the process keys.
    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The boot time, in nanoseconds since the Unix epoch.
    pub fn boot_time_ns(&self) -> i64 {
        self.boot_time_ns
    }

    /// Converts a start time in clock ticks since boot to nanoseconds since
    /// the Unix epoch.
    pub fn ticks_to_unix_ns(&self, ticks: u64) -> i64 {
        let since_boot = i64::try_from(ticks.saturating_mul(TICK_NS)).unwrap_or(i64::MAX);
        self.boot_time_ns.saturating_add(since_boot)
    }

    /// The pids of all processes (thread-group leaders: the numeric entries
    /// of the proc root; threads are not listed there).
    pub fn pids(&self) -> Result<Vec<u32>, ProcfsError> {
        let entries =
            std::fs::read_dir(&self.root).map_err(|source| ProcfsError::Io { path: self.root.clone(), source })?;
        let mut pids: Vec<u32> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// The start time of `pid` since boot, in clock ticks (field 22 of
    /// `stat`).
    pub fn start_ticks(&self, pid: u32) -> Result<u64, ProcfsError> {
        Ok(self.stat(pid)?.start_ticks)
    }

    /// The process key of `pid`.
    pub fn key_of(&self, pid: u32) -> Result<ProcessKey, ProcfsError> {
        Ok(ProcessKey::from_ticks(&self.boot_id, pid, self.start_ticks(pid)?))
    }

    /// Reads everything about `pid` but the executable hash.
    ///
    /// Errors: [`ProcfsError::Gone`] when the process exited or its pid was
    /// reused during the read, [`ProcfsError::Thread`] for a thread id.
    /// Denied parts (`exe`, `cwd` of another user's process without
    /// privileges) leave their fields `None` and set `accessible = false`.
    pub fn read_process(&self, pid: u32) -> Result<ProcessRecord, ProcfsError> {
        let (mut rec, ppid) = self.read_process_only(pid)?;
        if ppid != 0 {
            rec.parent_key = self.parent_key(ppid, rec.start_time_ns);
        }
        Ok(rec)
    }

    /// The key of `ppid`, the parent of a process started at `child_start`
    /// — unless the process now at that pid started after the child: then
    /// the parent is gone and its pid was reused.
    fn parent_key(&self, ppid: u32, child_start: Option<i64>) -> Option<String> {
        let ticks = self.start_ticks(ppid).ok()?;
        if started_after(Some(self.ticks_to_unix_ns(ticks)), child_start) {
            return None;
        }
        Some(ProcessKey::from_ticks(&self.boot_id, ppid, ticks).to_string())
    }

    /// [`ProcfsReader::read_process`] without the parent's key; also
    /// returns the parent's pid.
    fn read_process_only(&self, pid: u32) -> Result<(ProcessRecord, u32), ProcfsError> {
        // Every part is read through one open `/proc/<pid>` directory: it
        // stays bound to the process it was opened for, so a part of a
        // process that exited (or whose pid was reused) meanwhile fails
        // instead of coming from another process; and each open walks one
        // path component instead of three.
        let dir = self.open_dir(pid)?;
        let stat = dir.stat()?;
        let status = match dir.read_text("status") {
            Part::Ok(text) => parse::parse_status(&text),
            Part::Missing => return Err(ProcfsError::Gone(pid)),
            Part::Denied => parse::Status::default(),
        };
        if let Some(tgid) = status.tgid.filter(|t| *t != pid) {
            return Err(ProcfsError::Thread { pid, tgid });
        }
        let key = ProcessKey::from_ticks(&self.boot_id, pid, stat.start_ticks);
        let mut rec = ProcessRecord {
            pid,
            ppid: Some(stat.ppid),
            process_key: key.to_string(),
            name: Some(stat.comm.clone()),
            uid: status.uid,
            gid: status.gid,
            euid: status.euid,
            egid: status.egid,
            start_time_ns: Some(self.ticks_to_unix_ns(stat.start_ticks)),
            ..ProcessRecord::default()
        };
        rec.user_name = rec.uid.and_then(|uid| self.user_name(uid));

        let mut denied = false;
        match dir.read_link("exe") {
            Part::Ok(target) => {
                let (path, exists) = parse::split_deleted(&target);
                rec.executable_path = Some(path);
                rec.file_exists = Some(exists);
            }
            Part::Missing => {}
            Part::Denied => denied = true,
        }
        match dir.read_link("cwd") {
            Part::Ok(cwd) => rec.cwd = Some(cwd),
            Part::Missing => {}
            Part::Denied => denied = true,
        }
        rec.accessible = Some(!denied);

        if !stat.is_kernel_thread()
            && let Part::Ok(bytes) = dir.read_bytes("cmdline", MAX_CMDLINE_BYTES)
        {
            let truncated = bytes.len() as u64 >= MAX_CMDLINE_BYTES;
            if let Some(args) = parse::parse_cmdline(&bytes) {
                rec.command_line = Some(join_command_line(&args));
                rec.argv = Some(Argv { args, truncated });
            }
        }
        if let Part::Ok(text) = dir.read_text("cgroup") {
            rec.cgroup = parse::parse_cgroup(&text);
            rec.container_id = parse::container_id(&text);
        }
        // `stat`'s rss is `statm`'s resident field: one file fewer per process.
        rec.memory_usage = stat.rss_pages.checked_mul(self.page_size);
        // A process reaped while it was read lost its later parts: the
        // record would be partial, so it is reported as gone (its exit
        // event follows).
        if dir.gone() {
            return Err(ProcfsError::Gone(pid));
        }
        Ok((rec, stat.ppid))
    }

    /// Every readable process, parents before children (by start time).
    /// Processes that vanish during the walk are skipped; other errors are
    /// logged and the process skipped. An unlistable proc root yields an
    /// empty list (logged); use [`ProcfsReader::try_snapshot`] to see it.
    pub fn snapshot(&self) -> Vec<ProcessRecord> {
        self.try_snapshot().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot list processes");
            Vec::new()
        })
    }

    /// Like [`ProcfsReader::snapshot`], but fails when the proc root itself
    /// cannot be listed (for a poll enumerator, which must tell "no /proc"
    /// from "no processes").
    pub fn try_snapshot(&self) -> Result<Vec<ProcessRecord>, ProcfsError> {
        let pids = self.pids()?;
        // Reading /proc is system calls, a few microseconds each, about
        // twenty per process: spread over the cores (10,000 processes took
        // a second on one).
        let threads = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, MAX_SNAPSHOT_THREADS);
        let chunk = pids.len().div_ceil(threads).max(1);
        let read = |pids: &[u32]| -> Vec<(ProcessRecord, u32)> {
            let mut out = Vec::with_capacity(pids.len());
            for &pid in pids {
                match self.read_process_only(pid) {
                    Ok(r) => out.push(r),
                    Err(ProcfsError::Gone(_) | ProcfsError::Thread { .. }) => {
                        tracing::trace!(pid, "process gone during snapshot");
                    }
                    Err(e) => tracing::warn!(pid, error = %e, "skipping unreadable process"),
                }
            }
            out
        };
        let parts: Vec<Vec<(ProcessRecord, u32)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pids.chunks(chunk).skip(1).map(|c| scope.spawn(move || read(c))).collect();
            let mut parts = vec![read(pids.chunks(chunk).next().unwrap_or(&[]))];
            parts.extend(handles.into_iter().map(|h| h.join().unwrap_or_default()));
            parts
        });
        let mut read_all: Vec<(ProcessRecord, u32)> = parts.into_iter().flatten().collect();
        // Parents from the snapshot itself (no second read of their stat);
        // one that is not in it (gone meanwhile, or started after the
        // listing) is read.
        let keys: HashMap<u32, (String, Option<i64>)> =
            read_all.iter().map(|(r, _)| (r.pid, (r.process_key.clone(), r.start_time_ns))).collect();
        for (rec, ppid) in &mut read_all {
            if *ppid == 0 {
                continue;
            }
            rec.parent_key = match keys.get(ppid) {
                Some((key, started)) => (!started_after(*started, rec.start_time_ns)).then(|| key.clone()),
                None => self.parent_key(*ppid, rec.start_time_ns),
            };
        }
        Ok(parents_first(read_all.into_iter().map(|(r, _)| r).collect()))
    }

    // ---- helpers ------------------------------------------------------

    fn stat(&self, pid: u32) -> Result<Stat, ProcfsError> {
        let path = self.root.join(pid.to_string()).join("stat");
        let read = std::fs::read(&path);
        parse_stat_file(pid, path, read)
    }

    /// Opens `/proc/<pid>`.
    fn open_dir(&self, pid: u32) -> Result<PidDir, ProcfsError> {
        let path = self.root.join(pid.to_string());
        let opened = nix::fcntl::open(
            &path,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        );
        match opened {
            Ok(fd) => Ok(PidDir { pid, path, fd, gone: std::cell::Cell::new(false) }),
            Err(e) => {
                let e = io::Error::from(e);
                if is_gone(&e) { Err(ProcfsError::Gone(pid)) } else { Err(ProcfsError::Io { path, source: e }) }
            }
        }
    }

    fn user_name(&self, uid: u32) -> Option<String> {
        let mut cache = match self.users.lock() {
            Ok(c) => c,
            // A panic while holding the lock left a map that is still valid.
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(name) = cache.names.get(&uid) {
            return Some(name.clone());
        }
        let stale = cache.loaded_at.is_none_or(|t| t.elapsed() >= PASSWD_RELOAD_AFTER);
        if stale {
            match std::fs::read_to_string(&self.passwd_path) {
                Ok(text) => cache.names = parse::parse_passwd(&text),
                Err(e) => {
                    tracing::debug!(path = %self.passwd_path.display(), error = %e, "cannot read passwd");
                }
            }
            cache.loaded_at = Some(Instant::now());
        }
        cache.names.get(&uid).cloned()
    }
}

/// An open `/proc/<pid>` directory; its parts are read relative to it.
struct PidDir {
    pid: u32,
    path: PathBuf,
    fd: std::os::fd::OwnedFd,
    /// Set when a part was missing because the process is gone.
    gone: std::cell::Cell<bool>,
}

impl PidDir {
    fn stat(&self) -> Result<Stat, ProcfsError> {
        parse_stat_file(self.pid, self.path.join("stat"), self.read_raw("stat", 64 * 1024))
    }

    fn read_text(&self, file: &str) -> Part<String> {
        match self.read_bytes(file, 1024 * 1024) {
            Part::Ok(b) => Part::Ok(String::from_utf8_lossy(&b).into_owned()),
            Part::Missing => Part::Missing,
            Part::Denied => Part::Denied,
        }
    }

    fn read_bytes(&self, file: &str, limit: u64) -> Part<Vec<u8>> {
        let result = self.read_raw(file, limit);
        self.classify(file, result)
    }

    /// Up to `limit` bytes of `file`.
    fn read_raw(&self, file: &str, limit: u64) -> io::Result<Vec<u8>> {
        let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(&self.fd, file, flags, nix::sys::stat::Mode::empty())?;
        let mut f = std::fs::File::from(fd).take(limit);
        let mut buf = vec![0u8; FIRST_READ.min(usize::try_from(limit).unwrap_or(usize::MAX))];
        let n = f.read(&mut buf)?;
        buf.truncate(n);
        // procfs hands a part over whole to a read that has room for it: a
        // short read is the end, and the read that would return 0 is one
        // system call of the ~20 per process a snapshot makes. A part that
        // fills the buffer (a long `cmdline`) is read on to the end.
        if n == FIRST_READ {
            f.read_to_end(&mut buf)?;
        }
        Ok(buf)
    }

    fn read_link(&self, file: &str) -> Part<String> {
        let result =
            nix::fcntl::readlinkat(&self.fd, file).map(|t| t.to_string_lossy().into_owned()).map_err(io::Error::from);
        self.classify(file, result)
    }

    fn classify<T>(&self, file: &str, result: io::Result<T>) -> Part<T> {
        if let Err(e) = &result
            && is_gone(e)
        {
            // `exe` and `cwd` are also missing for a live kernel thread or
            // a zombie; these parts are there while the process is.
            if matches!(file, "status" | "cmdline" | "cgroup") {
                self.gone.set(true);
            }
        }
        classify(self.pid, || self.path.join(file), result)
    }

    /// True when a part every process has was missing: the process was
    /// reaped while it was read.
    fn gone(&self) -> bool {
        self.gone.get()
    }
}

/// A process's `stat` from what reading it returned: [`ProcfsError::Gone`]
/// when the process is no longer there.
fn parse_stat_file(pid: u32, path: PathBuf, read: io::Result<Vec<u8>>) -> Result<Stat, ProcfsError> {
    let bytes = match read {
        Ok(b) => b,
        Err(e) if is_gone(&e) => return Err(ProcfsError::Gone(pid)),
        Err(source) => return Err(ProcfsError::Io { path, source }),
    };
    parse::parse_stat(&String::from_utf8_lossy(&bytes)).map_err(|reason| ProcfsError::Parse { path, reason })
}

/// True when a parent read at `parent_start` started after its child (at
/// `child_start`): the parent is gone and its pid was reused.
fn started_after(parent_start: Option<i64>, child_start: Option<i64>) -> bool {
    matches!((parent_start, child_start), (Some(p), Some(c)) if p > c)
}

/// Threads reading a snapshot, at most.
const MAX_SNAPSHOT_THREADS: usize = 4;

/// Bytes of a process part read at once: more than `status` (~1.5 KiB)
/// and `stat` ever take.
const FIRST_READ: usize = 4096;

/// Orders records by start time, then moves each parent ahead of its
/// children: start times are 10 ms ticks, so a child can tie with its parent
/// and a wrapped pid can be smaller than its parent's.
fn parents_first(mut records: Vec<ProcessRecord>) -> Vec<ProcessRecord> {
    records.sort_by_key(|r| (r.start_time_ns, r.pid));
    let index: HashMap<&str, usize> = records.iter().enumerate().map(|(i, r)| (r.process_key.as_str(), i)).collect();
    let mut done = vec![false; records.len()];
    let mut order = Vec::with_capacity(records.len());
    for i in 0..records.len() {
        let mut chain = Vec::new();
        let mut cur = Some(i);
        while let Some(c) = cur.filter(|c| !done[*c] && !chain.contains(c)) {
            chain.push(c);
            cur = records[c].parent_key.as_deref().and_then(|k| index.get(k)).copied();
        }
        for &c in chain.iter().rev() {
            done[c] = true;
            order.push(c);
        }
    }
    let mut slots: Vec<Option<ProcessRecord>> = records.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots.get_mut(i).and_then(Option::take)).collect()
}

/// `ENOENT`/`ESRCH`: the process (or the part) is not there.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// `path` is only built for a failure's log line (a snapshot reads ~6
/// parts of each of thousands of processes).
fn classify<T>(pid: u32, path: impl FnOnce() -> PathBuf, result: io::Result<T>) -> Part<T> {
    match result {
        Ok(v) => Part::Ok(v),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            tracing::trace!(pid, path = %path().display(), "denied");
            Part::Denied
        }
        Err(e) => {
            if !is_gone(&e) {
                tracing::debug!(pid, path = %path().display(), error = %e, "cannot read process part");
            }
            Part::Missing
        }
    }
}

/// Boot time as `CLOCK_REALTIME - CLOCK_BOOTTIME` (boot time includes
/// suspend, as the `starttime` of `/proc/<pid>/stat` does). The boot clock is
/// read on both sides of the real-time clock to halve the skew.
fn boot_time_from_clocks() -> Option<i64> {
    use nix::time::{ClockId, clock_gettime};
    // `time_t` and `c_long` are `i32` on 32-bit targets, hence the `from`s.
    #[allow(clippy::useless_conversion)]
    let ns = |ts: nix::sys::time::TimeSpec| {
        i64::from(ts.tv_sec()).checked_mul(1_000_000_000)?.checked_add(i64::from(ts.tv_nsec()))
    };
    let b1 = ns(clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?)?;
    let real = ns(clock_gettime(ClockId::CLOCK_REALTIME).ok()?)?;
    let b2 = ns(clock_gettime(ClockId::CLOCK_BOOTTIME).ok()?)?;
    real.checked_sub(b1 + (b2 - b1) / 2)
}

/// Boot time from the `btime` line of `<root>/stat` (whole seconds).
fn boot_time_from_stat(root: &Path) -> Result<i64, ProcfsError> {
    let path = root.join("stat");
    let text = std::fs::read_to_string(&path).map_err(|source| ProcfsError::Io { path: path.clone(), source })?;
    let secs = text
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or_else(|| ProcfsError::Parse { path: path.clone(), reason: "no btime line".into() })?;
    secs.checked_mul(1_000_000_000).ok_or(ProcfsError::Parse { path, reason: "btime out of range".into() })
}
