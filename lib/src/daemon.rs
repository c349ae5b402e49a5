//! Run-time pieces both daemons (agent and procmond) share.

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
