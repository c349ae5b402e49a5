//! systemd's notify protocol, by hand: one datagram per state change to the
//! unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). `READY=1` once the API listens, `WATCHDOG=1` every
//! half `$WATCHDOG_USEC` when the unit sets `WatchdogSec=`. Without
//! `$NOTIFY_SOCKET` (not under systemd) everything here is a no-op; on
//! Windows, where there is no systemd, always.

#[cfg(unix)]
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET`. Returns whether a
/// datagram was sent; errors say which socket failed.
#[cfg(not(unix))]
pub fn notify(state: &str) -> Result<bool, String> {
    let _ = state;
    Ok(false)
}

/// Sends `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET`. Returns whether a
/// datagram was sent; errors say which socket failed.
#[cfg(unix)]
pub fn notify(state: &str) -> Result<bool, String> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let path = path.to_string_lossy().into_owned();
    let addr = socket_addr(&path)?;
    let sock = UnixDatagram::unbound().map_err(|e| format!("sd_notify: creating a socket: {e}"))?;
    sock.send_to_addr(state.as_bytes(), &addr).map_err(|e| format!("sd_notify to {path}: {e}"))?;
    Ok(true)
}

#[cfg(unix)]
fn socket_addr(path: &str) -> Result<SocketAddr, String> {
    if let Some(name) = path.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt as _;
            return SocketAddr::from_abstract_name(name.as_bytes())
                .map_err(|e| format!("sd_notify: abstract socket @{name}: {e}"));
        }
        #[cfg(not(target_os = "linux"))]
        return Err(format!("sd_notify: abstract socket @{name} exists only on Linux"));
    }
    SocketAddr::from_pathname(path).map_err(|e| format!("sd_notify: socket path {path}: {e}"))
}

/// The watchdog ping interval: half of `$WATCHDOG_USEC`, when it is set and
/// meant for this process (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Waits until `socket` (a pipe on Windows) accepts connections (the API
/// listens), sends `READY=1`, then pings the watchdog until `cancel`.
/// Failures are logged: they never stop the agent.
pub async fn run(socket: std::path::PathBuf, cancel: tokio_util::sync::CancellationToken) {
    loop {
        if daemoneye_eventbus::transport::connect(&socket).await.is_ok() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
            () = cancel.cancelled() => return,
        }
    }
    match notify("READY=1") {
        Ok(true) => tracing::info!("told systemd the agent is ready"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "sd_notify READY=1 failed"),
    }
    let Some(every) = watchdog_interval() else { return };
    tracing::info!(interval = ?every, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cancel.cancelled() => break,
        }
        if let Err(e) = notify("WATCHDOG=1") {
            tracing::warn!(error = %e, "sd_notify WATCHDOG=1 failed");
        }
    }
    let _ = notify("STOPPING=1");
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn datagram_reaches_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let addr = socket_addr(path.to_str().unwrap()).unwrap();
        let tx = UnixDatagram::unbound().unwrap();
        tx.send_to_addr(b"READY=1", &addr).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_names_parse() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("daemoneye-test-{}", std::process::id());
        let addr = socket_addr(&format!("@{name}")).unwrap();
        assert_eq!(addr.as_abstract_name(), Some(name.as_bytes()));
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        UnixDatagram::unbound().unwrap().send_to_addr(b"WATCHDOG=1", &addr).unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
