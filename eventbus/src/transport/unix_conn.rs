//! A connected Unix socket that asks epoll for write readiness only while a
//! write is waiting for room.
//!
//! tokio's `UnixStream` registers every socket for reading *and* writing.
//! With edge-triggered epoll that costs the writer a wake-up each time the
//! peer reads: the kernel signals "writable again" (`unix_write_space`)
//! after every frame the peer consumes. procmond publishes each batch of
//! events and never reads, so that was one extra context switch per batch,
//! as many as the events themselves cause. Here the socket is registered
//! for reading only; a write goes straight to the socket, and only when the
//! socket buffer is full does the writer register a duplicate descriptor
//! for `WRITABLE`, wait, and drop it once the write went through.

use std::io::{self, Read as _, Write as _};
use std::net::Shutdown;
use std::os::unix::net::UnixStream as StdStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

/// The socket, registered for reading.
type Socket = Arc<AsyncFd<StdStream>>;

/// A whole connection (reads and writes).
#[derive(Debug)]
pub(crate) struct Conn {
    read: ReadHalf,
    write: WriteHalf,
    /// The peer's credentials, read while tokio still owned the socket.
    cred: Result<tokio::net::unix::UCred, (io::ErrorKind, String)>,
}

/// The read side of a [`Conn`].
#[derive(Debug)]
pub(crate) struct ReadHalf {
    socket: Socket,
}

/// The write side of a [`Conn`]; shuts the socket's write direction down
/// when dropped (as tokio's owned write half does), so the peer sees the
/// end of the stream.
#[derive(Debug)]
pub(crate) struct WriteHalf {
    socket: Socket,
    /// A duplicate of the socket registered for `WRITABLE`, only while a
    /// write waits for room.
    waiting: Option<AsyncFd<StdStream>>,
}

impl Conn {
    /// Takes over a connected socket from tokio (which deregisters it).
    pub(crate) fn from_tokio(stream: tokio::net::UnixStream) -> io::Result<Self> {
        let cred = stream.peer_cred().map_err(|e| (e.kind(), e.to_string()));
        let std = stream.into_std()?;
        std.set_nonblocking(true)?;
        let socket = Arc::new(register(std, Interest::READABLE)?);
        Ok(Self { read: ReadHalf { socket: Arc::clone(&socket) }, write: WriteHalf { socket, waiting: None }, cred })
    }

    /// The peer's credentials (`SO_PEERCRED`; `getpeereid` on macOS).
    pub(crate) fn peer_cred(&self) -> io::Result<tokio::net::unix::UCred> {
        self.cred.clone().map_err(|(kind, msg)| io::Error::new(kind, msg))
    }

    pub(crate) fn into_split(self) -> (ReadHalf, WriteHalf) {
        (self.read, self.write)
    }
}

/// Registers `socket` with the runtime's reactor for `interest`.
fn register(socket: StdStream, interest: Interest) -> io::Result<AsyncFd<StdStream>> {
    // SAFETY: the `AsyncFd` takes ownership of `socket`, so its descriptor
    // stays open and refers to the same socket until the `AsyncFd` (which
    // deregisters it first) drops; `StdStream::as_raw_fd` always returns
    // that one descriptor, and nothing here replaces the stream through
    // `get_mut`.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register_with_interest(socket, interest) };
    registered.map_err(io::Error::from)
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let _ = self.socket.get_ref().shutdown(Shutdown::Write);
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.socket.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|s| s.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Readiness was stale: cleared by try_io; wait again.
                Err(_would_block) => {}
            }
        }
    }
}

impl WriteHalf {
    /// Tries `write` until it stops saying "would block", waiting for room
    /// through a temporary `WRITABLE` registration.
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&StdStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match write(self.socket.get_ref()) {
                Ok(n) => {
                    // Room again: stop asking for write readiness.
                    self.waiting = None;
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if self.waiting.is_none() {
                // Registration reports readiness that is already there, so
                // room freed since the write failed is not missed.
                let dup = self.socket.get_ref().try_clone()?;
                self.waiting = Some(register(dup, Interest::WRITABLE)?);
            }
            let Some(waiting) = &self.waiting else { continue };
            let mut guard = ready!(waiting.poll_write_ready(cx))?;
            guard.clear_ready();
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(cx, |mut s| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.socket.get_ref().shutdown(Shutdown::Write))
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.write).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}
