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
