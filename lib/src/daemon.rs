//! Run-time pieces both daemons (agent and procmond) share.

use std::time::Duration;

/// Resolves when the daemon is asked to stop: SIGTERM or Ctrl-C on Unix,
/// Ctrl-C (console control) on Windows. procmond can also be asked with a
/// `stop` line on stdin (its own concern).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    // Without a SIGTERM handler (or off Unix) Ctrl-C is the one request; if
    // even that cannot be installed the daemon runs until killed.
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Keeps the allocator to at most two arenas. Call first thing in `main`,
/// before any thread starts.
///
/// glibc gives threads their own arenas (up to eight per core), and each
/// keeps its own free memory and fragments: in procmond the snapshot
/// threads, hash workers and blocking threads left 10 of its 17 MiB of
/// heap in arenas of threads that had long finished their work; the agent
/// held 21 MiB in two worker arenas beside its 37 MiB main heap with 10,000
/// processes (6-10 MiB less resident with two arenas). The daemons' threads
/// rarely allocate at the same time and each has its own small-block cache,
/// so two arenas cost no measurable contention.
pub fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets an allocator parameter; called before
        // other threads exist, it races with no allocation.
        #[allow(unsafe_code)]
        let ok = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        if ok == 0 {
            tracing::debug!("malloc arena limit not set");
        }
    }
}

/// Hands memory the allocator holds but no longer uses back to the OS, now
/// and then, until the daemon stops (run it as a task).
///
/// glibc's malloc keeps freed memory in its arenas: after start-up (BTF
/// parsing, the eBPF load, a `/proc` snapshot of thousands of processes,
/// the store load) a daemon's resident set stays at its peak for good —
/// 30 MiB of 80 in procmond with 10,000 processes, 20 of 90 in the agent.
/// `malloc_trim` returns whole free pages, also in the middle of the heap
/// and in every thread's arena. Elsewhere (musl, macOS, Windows) this does
/// nothing.
pub async fn release_freed_memory(first_after: Duration, every: Duration) {
    tokio::time::sleep(first_after).await;
    loop {
        trim();
        tokio::time::sleep(every).await;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: `malloc_trim` only takes the allocator's own locks and
    // returns pages it holds unused; it touches no memory of ours.
    #[allow(unsafe_code)]
    let released = unsafe { libc::malloc_trim(0) };
    tracing::trace!(released, "freed memory returned to the OS");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

/// Asks the scheduler to give the calling thread, and every thread it
/// starts afterwards, `slice` of CPU at a time (Linux 6.12+; call it first
/// in `main`). Zero leaves the kernel's default.
///
/// Under EEVDF a thread's deadline is its slice past when it became
/// eligible, and a woken thread preempts the running one when its deadline
/// is earlier. With the default slice (about 3 ms on two cores) an event
/// that wakes procmond or the agent while an exec storm keeps both cores
/// busy waits behind the storm's processes; with 100 us it runs next. The
/// thread's weight, so its share of the CPU, is unchanged; it is only cut
/// off sooner when it runs long, which the event path never does.
///
/// Only for threads on the normal policy (a daemon started under `chrt`
/// keeps its own), and the thread keeps its nice value. Older kernels
/// ignore the slice; failure is logged, never fatal.
pub fn request_latency_slice(slice: Duration) {
    #[cfg(target_os = "linux")]
    if !slice.is_zero() {
        match set_slice(slice) {
            Ok(true) => tracing::debug!(?slice, "scheduler slice requested"),
            Ok(false) => tracing::debug!("not on the normal scheduling policy: scheduler slice left alone"),
            Err(e) => {
                tracing::warn!(error = %e, ?slice, "could not request the scheduler slice; latency under load may be higher");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = slice;
}

/// `Ok(false)`: the thread is not on `SCHED_OTHER`.
#[cfg(target_os = "linux")]
fn set_slice(slice: Duration) -> std::io::Result<bool> {
    let size = u32::try_from(std::mem::size_of::<libc::sched_attr>()).unwrap_or(u32::MAX);
    let mut attr = libc::sched_attr {
        size,
        sched_policy: 0,
        sched_flags: 0,
        sched_nice: 0,
        sched_priority: 0,
        sched_runtime: 0,
        sched_deadline: 0,
        sched_period: 0,
    };
    // SAFETY: `sched_getattr(0, attr, size, 0)` writes at most `size` bytes
    // (the struct's own size) into `attr`, which lives for the call.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &raw mut attr, size, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        return Ok(false);
    }
    // Policy and nice as they are; only the slice changes.
    attr.size = size;
    attr.sched_flags = 0;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `sched_setattr(0, attr, 0)` reads `attr.size` bytes of `attr`,
    // a live, initialised `sched_attr`, and changes only the calling
    // thread's scheduling parameters.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0) };
    if rc == 0 { Ok(true) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The slice the kernel reports for the calling thread, when it does.
    fn thread_slice_ns() -> Option<u64> {
        let sched = std::fs::read_to_string("/proc/thread-self/sched").ok()?;
        let line = sched.lines().find(|l| l.trim_start().starts_with("se.slice"))?;
        line.rsplit(':').next()?.trim().parse().ok()
    }

    #[test]
    fn the_requested_slice_applies_to_the_thread_and_the_threads_it_starts() {
        let (mine, child) = std::thread::spawn(|| {
            request_latency_slice(Duration::from_micros(250));
            let child = std::thread::spawn(thread_slice_ns).join().ok().flatten();
            (thread_slice_ns(), child)
        })
        .join()
        .unwrap();
        let Some(mine) = mine else {
            eprintln!("SKIP: /proc/thread-self/sched has no se.slice (kernel without CONFIG_SCHED_DEBUG)");
            return;
        };
        // Kernels before 6.12 keep their own slice; from 6.12 on it is ours.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut v = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
        if (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (6, 12) {
            eprintln!("SKIP: kernel {release} predates custom scheduler slices (6.12)");
            return;
        }
        assert_eq!(mine, 250_000, "the calling thread's slice");
        assert_eq!(child, Some(250_000), "a thread started afterwards inherits the slice");
    }
}
