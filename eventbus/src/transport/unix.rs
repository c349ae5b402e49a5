//! The Unix domain socket transport (Linux, macOS).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};
use tracing::info;

use super::BindOptions;
use super::unix_conn::Conn;
use crate::acl::PeerIdentity;
use crate::error::BusError;

pub(super) type Stream = Conn;
pub(super) type ReadHalf = super::unix_conn::ReadHalf;
pub(super) type WriteHalf = super::unix_conn::WriteHalf;

#[derive(Debug)]
pub(super) struct Listener {
    listener: UnixListener,
    path: PathBuf,
    /// (device, inode) of the socket we bound, to remove only our own.
    ino: (u64, u64),
    owner: PeerIdentity,
}

impl Listener {
    pub(super) async fn bind(path: &Path, options: &BindOptions) -> Result<Self, BusError> {
        let listener = bind_socket(path, options).await?;
        let bind_err = |reason: String| BusError::Bind { path: path.to_owned(), reason };
        let meta = std::fs::metadata(path).map_err(|e| bind_err(format!("cannot stat the bound socket: {e}")))?;
        let owner = PeerIdentity {
            uid: meta.uid(),
            gid: meta.gid(),
            pid: std::process::id(),
            exe: std::env::current_exe().ok(),
        };
        Ok(Self { listener, path: path.to_owned(), ino: (meta.dev(), meta.ino()), owner })
    }

    pub(super) async fn accept(&mut self) -> io::Result<Stream> {
        self.listener.accept().await.and_then(|(stream, _)| Conn::from_tokio(stream))
    }

    pub(super) fn endpoint(&self) -> &Path {
        &self.path
    }

    pub(super) fn owner(&self) -> &PeerIdentity {
        &self.owner
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the socket only if it is still ours (not replaced by a new server).
        if let Ok(meta) = std::fs::metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.ino
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub(super) fn split(stream: Stream) -> (ReadHalf, WriteHalf) {
    stream.into_split()
}

pub(super) async fn connect(path: &Path) -> io::Result<Stream> {
    UnixStream::connect(path).await.and_then(Conn::from_tokio)
}

pub(super) fn endpoint_exists(path: &Path) -> bool {
    path.exists()
}

pub(super) async fn peer_identity(stream: &Stream) -> io::Result<PeerIdentity> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    let exe = if pid > 0 { executable(pid).await } else { None };
    Ok(PeerIdentity { uid: cred.uid(), gid: cred.gid(), pid, exe })
}

#[cfg(not(target_os = "macos"))]
async fn executable(pid: u32) -> Option<PathBuf> {
    tokio::fs::read_link(format!("/proc/{pid}/exe")).await.ok()
}

#[cfg(target_os = "macos")]
async fn executable(pid: u32) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let pid = libc::c_int::try_from(pid).ok()?;
    let mut buf = vec![0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
    let size = u32::try_from(buf.len()).ok()?;
    // SAFETY: `buf` is a writable buffer of `size` bytes that outlives the call;
    // proc_pidpath writes at most `size` bytes and returns the length written.
    #[allow(unsafe_code)]
    let n = unsafe { libc::proc_pidpath(pid, buf.as_mut_ptr().cast(), size) };
    let n = usize::try_from(n).ok().filter(|n| *n > 0)?;
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(&buf[..n.min(buf.len())])))
}

async fn bind_socket(path: &Path, options: &BindOptions) -> Result<UnixListener, BusError> {
    let bind_err = |reason: String| BusError::Bind { path: path.to_owned(), reason };
    let (Some(parent), Some(file_name)) = (path.parent(), path.file_name()) else {
        return Err(bind_err("the path has no parent directory or file name".to_owned()));
    };
    if !parent.as_os_str().is_empty() {
        std::fs::create_dir_all(parent)
            .map_err(|e| bind_err(format!("cannot create the directory {}: {e}", parent.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if UnixStream::connect(path).await.is_ok() {
                return Err(BusError::AlreadyRunning { path: path.to_owned() });
            }
            std::fs::remove_file(path).map_err(|e| bind_err(format!("cannot remove the stale socket: {e}")))?;
            info!(socket = %path.display(), "removed stale socket");
        }
        Ok(_) => {
            return Err(bind_err(
                "the path exists and is not a socket; remove it or choose another run directory".to_owned(),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(format!("cannot inspect the path: {e}"))),
    }
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = parent.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp)
        .map_err(|e| bind_err(format!("bind failed: {e} (socket paths are limited to 107 bytes)")))?;
    let finish = || -> io::Result<()> {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(options.mode))?;
        if let Some(gid) = options.gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))?;
        }
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = finish() {
        let _ = std::fs::remove_file(&tmp);
        return Err(bind_err(format!("cannot set mode, group or name of the socket: {e}")));
    }
    Ok(listener)
}
