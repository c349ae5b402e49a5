//! The local transport under the bus and the agent API: a Unix domain socket
//! on Linux and macOS, a named pipe on Windows. Everything above this module
//! (broker, client, the agent's gRPC server, the CLI) sees one [`Listener`],
//! one [`Stream`] and one [`connect`], and never names an OS.
//!
//! **Endpoints.** An endpoint is a `Path`: the socket file on Unix, the pipe
//! name (`\\.\pipe\daemoneye-bus-…`) on Windows. Which one a run directory
//! gets is decided in one place, `daemoneye_lib::config::local_endpoint`.
//!
//! **Unix.** [`Listener::bind`] creates the parent directory, removes a stale
//! socket (refusing a live one or a non-socket file), binds under a temporary
//! name, sets the mode (0660) and group, then renames the socket into place,
//! so it is never reachable with the wrong mode; dropping the listener
//! removes the socket if it is still ours. The peer's identity is
//! `SO_PEERCRED` (uid, gid, pid) and its executable `/proc/<pid>/exe`
//! (`proc_pidpath` on macOS).
//!
//! **Windows.** Every pipe instance carries the security descriptor
//! [`PIPE_SDDL`]: a protected DACL granting full access to `SYSTEM` and
//! `BUILTIN\Administrators` only (the counterpart of mode 0660 with group
//! `daemoneye`), and remote clients are rejected. The first instance is
//! created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a process that created
//! the name before the agent (pipe squatting) makes start-up fail instead of
//! receiving our clients. A new instance is created as soon as one is
//! connected, so a server instance always waits for the next client. The
//! peer is identified by `GetNamedPipeClientProcessId`; its token gives the
//! user SID and whether `BUILTIN\Administrators` is enabled in it, mapped
//! onto uid/gid by [`windows_peer_ids`] (see there for what the ACL
//! principals `root`, `uid:N`, `gid:N` mean on Windows). Clients connect
//! with identification-level impersonation only (tokio's default), so a
//! server cannot act as them.
//!
//! The pure parts (pipe names, SID mapping) are cfg-free and unit-tested on
//! every OS; the bindings are type-checked for Windows in CI.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::acl::PeerIdentity;
use crate::error::BusError;

#[cfg(windows)]
mod pipe;
#[cfg(windows)]
use pipe as sys;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
mod unix_conn;
#[cfg(unix)]
use unix as sys;

/// The SDDL of every DaemonEye pipe: owner Administrators, protected DACL
/// (no inherited entries), generic-all for `SY` (LocalSystem) and `BA`
/// (BUILTIN\Administrators), nothing for anyone else.
pub const PIPE_SDDL: &str = "O:BAG:SYD:P(A;;GA;;;SY)(A;;GA;;;BA)";

/// The prefix of every local pipe name.
pub const PIPE_PREFIX: &str = r"\\.\pipe\";

/// The longest pipe name Windows accepts after [`PIPE_PREFIX`].
const MAX_PIPE_NAME: usize = 256 - PIPE_PREFIX.len();

/// Pause after a failed accept (EMFILE and friends) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Unix socket settings of a [`Listener`] (ignored on Windows, where the pipe's
/// security descriptor is [`PIPE_SDDL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindOptions {
    /// Mode of the socket file. Default `0o660`.
    pub mode: u32,
    /// Group of the socket file, if set.
    pub gid: Option<u32>,
}

impl Default for BindOptions {
    fn default() -> Self {
        Self { mode: 0o660, gid: None }
    }
}

/// A listening endpoint (see the module docs).
#[derive(Debug)]
pub struct Listener {
    inner: sys::Listener,
}

impl Listener {
    /// Binds `endpoint` (a socket path on Unix, a pipe name on Windows).
    /// Fails with [`BusError::AlreadyRunning`] when a live server already
    /// listens there (Unix), and with [`BusError::Bind`] otherwise.
    pub async fn bind(endpoint: &Path, options: &BindOptions) -> Result<Self, BusError> {
        Ok(Self { inner: sys::Listener::bind(endpoint, options).await? })
    }

    /// The next connection. Cancel-safe: no connection is lost when the
    /// future is dropped.
    pub async fn accept(&mut self) -> io::Result<Stream> {
        self.inner.accept().await.map(|inner| Stream { inner })
    }

    /// The endpoint this listener serves.
    pub fn endpoint(&self) -> &Path {
        self.inner.endpoint()
    }

    /// The listener's own identity, as access control sees it: on Unix the
    /// bound socket's owner and group with this process's pid and
    /// executable; on Windows this process's token, mapped like a peer's.
    pub fn owner(&self) -> &PeerIdentity {
        self.inner.owner()
    }

    /// The connections as a stream (for `tonic`'s
    /// `serve_with_incoming_shutdown`). After a failed accept the stream
    /// pauses briefly before accepting again, so a persistent error (out of
    /// file descriptors) does not spin. Dropping the stream drops the
    /// listener.
    pub fn into_incoming(self) -> impl futures::Stream<Item = io::Result<Stream>> + Send + 'static {
        futures::stream::unfold((self, false), |(mut listener, failed)| async move {
            if failed {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
            let next = listener.accept().await;
            let failed = next.is_err();
            Some((next, (listener, failed)))
        })
    }
}

/// A connected byte stream: a Unix socket or one end of a named pipe.
#[derive(Debug)]
pub struct Stream {
    inner: sys::Stream,
}

impl Stream {
    /// Splits the stream into halves that a reader and a writer task own.
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        let (r, w) = sys::split(self.inner);
        (ReadHalf(r), WriteHalf(w))
    }

    /// The identity of the process at the other end, as the OS reports it
    /// (never what the peer claims). Only for streams a [`Listener`]
    /// accepted.
    pub async fn peer_identity(&self) -> io::Result<PeerIdentity> {
        sys::peer_identity(&self.inner).await
    }
}

/// The read half of a [`Stream`] (see [`Stream::into_split`]).
#[derive(Debug)]
pub struct ReadHalf(sys::ReadHalf);

/// The write half of a [`Stream`] (see [`Stream::into_split`]).
#[derive(Debug)]
pub struct WriteHalf(sys::WriteHalf);

impl AsyncRead for ReadHalf {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Connects to the server at `endpoint`. A missing endpoint is
/// `ErrorKind::NotFound`, nothing listening `ConnectionRefused` (Unix), no
/// permission `PermissionDenied`.
pub async fn connect(endpoint: &Path) -> io::Result<Stream> {
    sys::connect(endpoint).await.map(|inner| Stream { inner })
}

/// True when something exists at `endpoint` (a socket file, or a pipe with
/// the name), without connecting to it (a named pipe instance is not used
/// up).
pub fn endpoint_exists(endpoint: &Path) -> bool {
    sys::endpoint_exists(endpoint)
}

/// Checks a pipe endpoint `\\.\pipe\<name>` and returns it as a string: the
/// name must be non-empty, without further backslashes or NULs, and at most
/// 247 characters.
pub fn validate_pipe_name(endpoint: &Path) -> Result<&str, String> {
    let Some(s) = endpoint.to_str() else {
        return Err(format!("pipe name {} is not valid Unicode", endpoint.display()));
    };
    let Some(name) = s.strip_prefix(PIPE_PREFIX) else {
        return Err(format!(r"{s:?} is not a local pipe name (\\.\pipe\NAME)"));
    };
    if name.is_empty() {
        Err(format!("{s:?}: empty pipe name"))
    } else if name.contains(['\\', '\0']) {
        Err(format!("{s:?}: backslash or NUL in the pipe name"))
    } else if name.chars().count() > MAX_PIPE_NAME {
        Err(format!("{s:?}: the pipe name is longer than {MAX_PIPE_NAME} characters"))
    } else {
        Ok(s)
    }
}

/// The uid a privileged Windows peer gets: the same as Unix root.
pub const WINDOWS_PRIVILEGED_ID: u32 = 0;
/// The uid/gid of a Windows peer whose SID has no usable relative id.
pub const WINDOWS_UNKNOWN_ID: u32 = u32::MAX;

/// `LocalSystem`.
const SID_LOCAL_SYSTEM: &str = "S-1-5-18";

/// Maps a Windows peer onto the uid/gid the access policy works with.
///
/// - `SYSTEM` (`S-1-5-18`), or a token in which `BUILTIN\Administrators`
///   (`S-1-5-32-544`) is enabled (an elevated administrator): uid 0, gid 0.
///   These are the principals the pipe's DACL admits, so on Windows every
///   peer that can connect at all is "root": ACL principal `root` and the
///   `privileged` level mean SYSTEM or an elevated administrator, and
///   `broker-user` is the same when the agent runs as a service.
/// - Anyone else (reachable only with a DACL widened by hand): uid = the
///   relative id (last sub-authority) of the user SID, gid = that of the
///   token's primary group, [`WINDOWS_UNKNOWN_ID`] when a SID has none or it
///   is 0. So `uid:1001` in an ACL names the account `S-1-5-21-…-1001`; RIDs
///   are unique within one domain only, so prefer `executable:` or the
///   defaults on machines with accounts from several domains.
pub fn windows_peer_ids(user_sid: &str, primary_group_sid: Option<&str>, administrators_enabled: bool) -> (u32, u32) {
    if administrators_enabled || user_sid.eq_ignore_ascii_case(SID_LOCAL_SYSTEM) {
        return (WINDOWS_PRIVILEGED_ID, WINDOWS_PRIVILEGED_ID);
    }
    let rid = |sid: &str| sid_rid(sid).filter(|r| *r != 0).unwrap_or(WINDOWS_UNKNOWN_ID);
    (rid(user_sid), primary_group_sid.map_or(WINDOWS_UNKNOWN_ID, rid))
}

/// The relative id of a SID in string form (`S-1-5-21-a-b-c-1001` -> 1001):
/// its last sub-authority, when it has at least one beyond the authority.
fn sid_rid(sid: &str) -> Option<u32> {
    let mut parts = sid.split('-');
    if !parts.next()?.eq_ignore_ascii_case("S") || parts.next()? != "1" {
        return None;
    }
    let _authority: u64 = parts.next()?.parse().ok()?;
    let subs: Vec<u32> = parts.map(str::parse).collect::<Result<_, _>>().ok()?;
    subs.last().copied()
}

#[cfg(test)]
mod tests;
