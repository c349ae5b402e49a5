//! The agent's OS-specific pieces, in one place (like procmond's
//! `platform.rs`): host name, user and group names, child process control,
//! unix datagrams (the stop signal is `daemoneye_lib::daemon`). Everything else in the agent is OS-neutral; the
//! sockets and pipes of the bus and the API are `daemoneye_eventbus::transport`.
//! Two modules have a no-op elsewhere: `sdnotify` (systemd; Unix) and
//! `privileges` (the drop to `agent.user`; Linux, elsewhere
//! `privileges_unsupported.rs` refuses a configured user).

use std::path::Path;
use std::process::ExitStatus;

/// This host's name (empty when unknown).
pub fn hostname() -> String {
    #[cfg(unix)]
    {
        nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
    }
    #[cfg(not(unix))]
    {
        std::env::var("COMPUTERNAME").unwrap_or_default()
    }
}

/// The uid of the user `name`. `Err` says why there is none.
pub fn user_id(name: &str) -> Result<u32, String> {
    #[cfg(unix)]
    {
        match nix::unistd::User::from_name(name) {
            Ok(Some(u)) => Ok(u.uid.as_raw()),
            _ => Err("no such user".to_owned()),
        }
    }
    #[cfg(not(unix))]
    {
        Err(format!("user names are not resolved on this OS; name {name:?} by uid:N (see the bus ACL docs)"))
    }
}

/// The gid of the group `name`. `Err` says why there is none.
pub fn group_id(name: &str) -> Result<u32, String> {
    #[cfg(unix)]
    {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            _ => Err("no such group".to_owned()),
        }
    }
    #[cfg(not(unix))]
    {
        Err(format!("group names are not resolved on this OS; name {name:?} by gid:N"))
    }
}

/// How a child ended: `exit code N`, `signal N` or `unknown`.
pub fn describe_exit(status: ExitStatus) -> String {
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal: Option<i32> = None;
    match (status.code(), signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "unknown".into(),
    }
}

/// Asks process `pid` to stop with SIGTERM (errors, e.g. EPERM after the
/// privilege drop, are ignored). On Windows there is no such signal: the
/// `stop` line on procmond's stdin is the request there.
pub fn request_stop(pid: u32) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
    }
    #[cfg(not(unix))]
    let _ = pid;
}

/// Starts `cmd` with primary group `gid` (Unix; ignored elsewhere, where
/// `agent.user` is refused anyway).
pub fn set_child_group(cmd: &mut tokio::process::Command, gid: u32) {
    #[cfg(unix)]
    cmd.gid(gid);
    #[cfg(not(unix))]
    let _ = (cmd, gid);
}

/// Sends one datagram to the unix socket at `path` (syslog's `/dev/log`).
pub async fn send_unix_datagram(path: &Path, msg: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let sock = tokio::net::UnixDatagram::unbound()?;
        sock.send_to(msg, path).await.map(drop)
    }
    #[cfg(not(unix))]
    {
        let _ = msg;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("unix datagram sockets ({}) do not exist on this OS; use udp:// or tcp://", path.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_exits() {
        #[cfg(unix)]
        {
            assert_eq!(user_id("root"), Ok(0));
            assert!(user_id("no-such-user-daemoneye").is_err());
            assert_eq!(group_id("root"), Ok(0));
            assert!(!hostname().is_empty());
        }
        let st = std::process::Command::new(if cfg!(windows) { "cmd" } else { "sh" })
            .args(if cfg!(windows) { ["/C", "exit 3"] } else { ["-c", "exit 3"] })
            .status()
            .unwrap();
        assert_eq!(describe_exit(st), "exit code 3");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn datagrams_reach_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.sock");
        let rx = tokio::net::UnixDatagram::bind(&path).unwrap();
        send_unix_datagram(&path, b"<14>1 - x").await.unwrap();
        let mut buf = [0u8; 32];
        let n = rx.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"<14>1 - x");
    }
}
