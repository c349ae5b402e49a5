//! The named-pipe transport (Windows). See the parent module for the
//! security model; the SID mapping is `windows_peer_ids` there.

// Win32 FFI: pipe security descriptors, the client's pid and its token have
// no safe wrapper in tokio or std. Every block states why it is sound.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::io;
use std::os::windows::ffi::{OsStrExt, OsStringExt};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::windows::named_pipe::{ClientOptions, NamedPipeClient, NamedPipeServer, ServerOptions};
use windows_sys::Win32::Foundation::{
    ERROR_ACCESS_DENIED, ERROR_FILE_NOT_FOUND, ERROR_PIPE_BUSY, FALSE, FILETIME, HANDLE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, PSECURITY_DESCRIPTOR, PSID, SECURITY_ATTRIBUTES, SID_AND_ATTRIBUTES, TOKEN_GROUPS,
    TOKEN_INFORMATION_CLASS, TOKEN_PRIMARY_GROUP, TOKEN_QUERY, TOKEN_USER, TokenGroups, TokenPrimaryGroup, TokenUser,
};
use windows_sys::Win32::System::Pipes::{GetNamedPipeClientProcessId, WaitNamedPipeW};
use windows_sys::Win32::System::SystemServices::{SE_GROUP_ENABLED, SE_GROUP_USE_FOR_DENY_ONLY};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetProcessTimes, OpenProcess, OpenProcessToken, PROCESS_NAME_WIN32,
    PROCESS_QUERY_LIMITED_INFORMATION, QueryFullProcessImageNameW,
};

use super::{BindOptions, PIPE_SDDL, validate_pipe_name, windows_peer_ids};
use crate::acl::PeerIdentity;
use crate::error::BusError;

/// How long a client retries while every pipe instance is busy: the server
/// creates the next instance right after each connection, so this lasts
/// microseconds unless the server is stuck.
const PIPE_BUSY_WAIT: Duration = Duration::from_secs(2);

/// `BUILTIN\Administrators`.
const SID_ADMINISTRATORS: &str = "S-1-5-32-544";

/// One end of a pipe: the server end of an accepted connection, or a client.
#[derive(Debug)]
pub(super) enum Stream {
    Server { pipe: NamedPipeServer, accepted_at: SystemTime },
    Client(NamedPipeClient),
}

pub(super) type ReadHalf = tokio::io::ReadHalf<Stream>;
pub(super) type WriteHalf = tokio::io::WriteHalf<Stream>;

pub(super) fn split(stream: Stream) -> (ReadHalf, WriteHalf) {
    tokio::io::split(stream)
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Server { pipe, .. } => Pin::new(pipe).poll_read(cx, buf),
            Self::Client(pipe) => Pin::new(pipe).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Server { pipe, .. } => Pin::new(pipe).poll_write(cx, buf),
            Self::Client(pipe) => Pin::new(pipe).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Server { pipe, .. } => Pin::new(pipe).poll_flush(cx),
            Self::Client(pipe) => Pin::new(pipe).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Server { pipe, .. } => Pin::new(pipe).poll_shutdown(cx),
            Self::Client(pipe) => Pin::new(pipe).poll_shutdown(cx),
        }
    }
}

#[derive(Debug)]
pub(super) struct Listener {
    name: String,
    path: PathBuf,
    /// The instance waiting for the next client.
    next: NamedPipeServer,
    owner: PeerIdentity,
}

impl Listener {
    pub(super) async fn bind(path: &Path, _options: &BindOptions) -> Result<Self, BusError> {
        let bind_err = |reason: String| BusError::Bind { path: path.to_owned(), reason };
        let name = validate_pipe_name(path).map_err(bind_err)?.to_owned();
        let next = create_instance(&name, true).map_err(|e| {
            if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) {
                bind_err(
                    "another process already holds this pipe name (a second agent with the same run directory, \
                     or a process squatting the name); stop it or choose another run directory"
                        .to_owned(),
                )
            } else {
                bind_err(format!("cannot create the pipe: {e}"))
            }
        })?;
        // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing.
        let me = unsafe { GetCurrentProcess() };
        let (uid, gid) = token_ids(me).map_err(|e| bind_err(format!("cannot read this process's own token: {e}")))?;
        let owner = PeerIdentity { uid, gid, pid: std::process::id(), exe: std::env::current_exe().ok() };
        Ok(Self { name, path: path.to_owned(), next, owner })
    }

    pub(super) async fn accept(&mut self) -> io::Result<Stream> {
        if let Err(e) = self.next.connect().await {
            // A client that came and went before the connect (ERROR_NO_DATA)
            // spoils the instance: replace it.
            self.next = create_instance(&self.name, false)?;
            return Err(e);
        }
        let accepted_at = SystemTime::now();
        // The next instance exists before this one is handed out, so a
        // client never finds the name without a waiting instance. If it
        // cannot be created, the connected instance stays and the next
        // accept hands it out (connect on a connected pipe succeeds).
        let next = create_instance(&self.name, false)?;
        let pipe = std::mem::replace(&mut self.next, next);
        Ok(Stream::Server { pipe, accepted_at })
    }

    pub(super) fn endpoint(&self) -> &Path {
        &self.path
    }

    pub(super) fn owner(&self) -> &PeerIdentity {
        &self.owner
    }
}

/// Creates one server instance of `name` with the [`PIPE_SDDL`] descriptor;
/// `first` adds `FILE_FLAG_FIRST_PIPE_INSTANCE`.
fn create_instance(name: &str, first: bool) -> io::Result<NamedPipeServer> {
    let sddl: Vec<u16> = PIPE_SDDL.encode_utf16().chain(Some(0)).collect();
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is a NUL-terminated UTF-16 string that outlives the
    // call; `descriptor` is a valid out-pointer; the size out-pointer may be null.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut descriptor,
            std::ptr::null_mut(),
        )
    };
    if ok == FALSE {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("pipe {name}: cannot build its security descriptor: {e}")));
    }
    let mut attrs = SECURITY_ATTRIBUTES {
        nLength: u32::try_from(std::mem::size_of::<SECURITY_ATTRIBUTES>()).unwrap_or(u32::MAX),
        lpSecurityDescriptor: descriptor,
        bInheritHandle: FALSE,
    };
    // SAFETY: `attrs` is a valid SECURITY_ATTRIBUTES whose descriptor stays
    // alive until after the call (freed below); the pipe copies it.
    let server = unsafe {
        ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .create_with_security_attributes_raw(name, (&raw mut attrs).cast())
    };
    // SAFETY: `descriptor` was allocated with LocalAlloc by the conversion
    // above and is not used after this point.
    unsafe {
        LocalFree(descriptor);
    }
    server
}

pub(super) async fn connect(path: &Path) -> io::Result<Stream> {
    let name = validate_pipe_name(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let deadline = Instant::now() + PIPE_BUSY_WAIT;
    loop {
        // Identification-level impersonation only (tokio's default QoS).
        match ClientOptions::new().open(name) {
            Ok(client) => return Ok(Stream::Client(client)),
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn endpoint_exists(path: &Path) -> bool {
    let wide: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
    // SAFETY: `wide` is a NUL-terminated UTF-16 string that outlives the
    // call. WaitNamedPipeW only waits for an instance; it does not connect.
    let ok = unsafe { WaitNamedPipeW(wide.as_ptr(), 1) };
    ok != FALSE || io::Error::last_os_error().raw_os_error() != Some(ERROR_FILE_NOT_FOUND as i32)
}

pub(super) async fn peer_identity(stream: &Stream) -> io::Result<PeerIdentity> {
    let Stream::Server { pipe, accepted_at } = stream else {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "a pipe client cannot ask for its peer's identity"));
    };
    let mut pid = 0u32;
    // SAFETY: the pipe handle is valid while `pipe` lives; `pid` is a valid out-pointer.
    if unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle(), &mut pid) } == FALSE {
        return Err(os_error("GetNamedPipeClientProcessId"));
    }
    // SAFETY: OpenProcess has no memory preconditions; a null result is an error.
    let raw = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, pid) };
    if raw.is_null() {
        return Err(os_error(&format!("OpenProcess({pid})")));
    }
    // SAFETY: `raw` is a process handle we own; OwnedHandle closes it once.
    let process = unsafe { OwnedHandle::from_raw_handle(raw) };
    // The pid was the client's when it connected; a process created after
    // the accept that has it now is not our client (pid reuse).
    if creation_time(&process).is_some_and(|created| created > *accepted_at) {
        return Err(io::Error::other(format!("pid {pid} was reused after the pipe client connected")));
    }
    let (uid, gid) = token_ids(process.as_raw_handle())?;
    Ok(PeerIdentity { uid, gid, pid, exe: image_path(&process) })
}

fn os_error(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// uid/gid of the process behind `process` (see `windows_peer_ids`).
fn token_ids(process: HANDLE) -> io::Result<(u32, u32)> {
    let mut raw: HANDLE = std::ptr::null_mut();
    // SAFETY: `process` is a valid process handle; `raw` is a valid out-pointer.
    if unsafe { OpenProcessToken(process, TOKEN_QUERY, &mut raw) } == FALSE {
        return Err(os_error("OpenProcessToken"));
    }
    // SAFETY: `raw` is a token handle we own; OwnedHandle closes it once.
    let token = unsafe { OwnedHandle::from_raw_handle(raw) };
    let token = token.as_raw_handle();

    let user = token_info(token, TokenUser)?;
    // SAFETY: GetTokenInformation(TokenUser) filled `user` (8-byte aligned)
    // with a TOKEN_USER whose SID points into the same buffer.
    let user_sid = unsafe { sid_string((*user.as_ptr().cast::<TOKEN_USER>()).User.Sid)? };
    let group_sid = token_info(token, TokenPrimaryGroup).ok().and_then(|g| {
        // SAFETY: as above, a TOKEN_PRIMARY_GROUP pointing into `g`.
        unsafe { sid_string((*g.as_ptr().cast::<TOKEN_PRIMARY_GROUP>()).PrimaryGroup).ok() }
    });
    let groups = token_info(token, TokenGroups)?;
    let admin = group_attributes(&groups)?.into_iter().any(|(sid, attrs)| {
        sid == SID_ADMINISTRATORS
            && attrs & SE_GROUP_ENABLED as u32 != 0
            && attrs & SE_GROUP_USE_FOR_DENY_ONLY as u32 == 0
    });
    Ok(windows_peer_ids(&user_sid, group_sid.as_deref(), admin))
}

/// The (SID, attributes) pairs of a TOKEN_GROUPS buffer.
fn group_attributes(buf: &[u64]) -> io::Result<Vec<(String, u32)>> {
    let bytes = std::mem::size_of_val(buf);
    let base = buf.as_ptr().cast::<TOKEN_GROUPS>();
    // SAFETY: the buffer holds at least a TOKEN_GROUPS header (checked by
    // token_info's length) and is 8-byte aligned.
    let count = unsafe { (*base).GroupCount } as usize;
    // SAFETY: `base` points to a TOKEN_GROUPS; taking the field's address
    // does not read it.
    let first = unsafe { std::ptr::addr_of!((*base).Groups) }.cast::<SID_AND_ATTRIBUTES>();
    let offset = first as usize - base as usize;
    if offset + count * std::mem::size_of::<SID_AND_ATTRIBUTES>() > bytes {
        return Err(io::Error::other("TokenGroups: the group count exceeds the buffer"));
    }
    // SAFETY: the `count` entries lie inside `buf` (checked above), aligned
    // as the OS wrote them.
    let entries = unsafe { std::slice::from_raw_parts(first, count) };
    entries
        .iter()
        // SAFETY: each entry's SID points into the same buffer.
        .map(|e| unsafe { sid_string(e.Sid) }.map(|s| (s, e.Attributes)))
        .collect()
}

/// One `GetTokenInformation` class into an 8-byte aligned buffer.
fn token_info(token: HANDLE, class: TOKEN_INFORMATION_CLASS) -> io::Result<Vec<u64>> {
    let mut len = 0u32;
    // SAFETY: a null buffer of length 0 only asks for the needed length.
    unsafe { GetTokenInformation(token, class, std::ptr::null_mut(), 0, &mut len) };
    if len == 0 {
        return Err(os_error("GetTokenInformation (size)"));
    }
    let mut buf = vec![0u64; (len as usize).div_ceil(8)];
    // SAFETY: `buf` has at least `len` writable bytes and outlives the call.
    if unsafe { GetTokenInformation(token, class, buf.as_mut_ptr().cast(), len, &mut len) } == FALSE {
        return Err(os_error("GetTokenInformation"));
    }
    Ok(buf)
}

/// A SID in string form (`S-1-5-…`).
///
/// # Safety
/// `sid` must point to a valid SID.
unsafe fn sid_string(sid: PSID) -> io::Result<String> {
    let mut s: *mut u16 = std::ptr::null_mut();
    // SAFETY: the caller guarantees `sid`; `s` is a valid out-pointer.
    if unsafe { ConvertSidToStringSidW(sid, &mut s) } == FALSE || s.is_null() {
        return Err(os_error("ConvertSidToStringSidW"));
    }
    let mut len = 0;
    // SAFETY: `s` is a NUL-terminated UTF-16 string allocated by the OS.
    while unsafe { *s.add(len) } != 0 {
        len += 1;
    }
    // SAFETY: `len` elements before the NUL are initialised.
    let text = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(s, len) });
    // SAFETY: `s` was allocated with LocalAlloc and is not used afterwards.
    unsafe { LocalFree(s.cast()) };
    Ok(text)
}

/// When the process was created, if the OS says.
fn creation_time(process: &OwnedHandle) -> Option<SystemTime> {
    let mut times = [FILETIME { dwLowDateTime: 0, dwHighDateTime: 0 }; 4];
    let [c, e, k, u] = &mut times;
    // SAFETY: the handle is valid; the four out-pointers are distinct and valid.
    if unsafe { GetProcessTimes(process.as_raw_handle(), c, e, k, u) } == FALSE {
        return None;
    }
    // FILETIME: 100 ns ticks since 1601-01-01.
    let ticks = (u64::from(times[0].dwHighDateTime) << 32) | u64::from(times[0].dwLowDateTime);
    let unix_ticks = ticks.checked_sub(11_644_473_600 * 10_000_000)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(unix_ticks.checked_mul(100)?))
}

/// The process's executable (Win32 path), if it can be read.
fn image_path(process: &OwnedHandle) -> Option<PathBuf> {
    let mut buf = vec![0u16; 32 * 1024];
    let mut size = u32::try_from(buf.len()).ok()?;
    // SAFETY: `buf` has `size` writable UTF-16 units; `size` is updated to the length written.
    if unsafe { QueryFullProcessImageNameW(process.as_raw_handle(), PROCESS_NAME_WIN32, buf.as_mut_ptr(), &mut size) }
        == FALSE
    {
        return None;
    }
    buf.truncate(size as usize);
    Some(PathBuf::from(OsString::from_wide(&buf)))
}
