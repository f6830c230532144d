//! What the gRPC and HTTP ports share about their connections: socket options, accept errors,
//! and the handshake and idle deadlines, which need a count of the bytes a socket moves and of
//! the calls a connection makes and has running.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

pub(crate) fn configure(stream: &TcpStream, tcp_keepalive: Option<Duration>) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY on an accepted connection: {e}");
    }
    if let Some(idle) = tcp_keepalive {
        let keepalive = socket2::TcpKeepalive::new().with_time(idle);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!("TCP keepalive on an accepted connection: {e}");
        }
    }
}

/// Whether an accept error means the process is out of something (descriptors, memory), so that
/// accepting again at once would only spin.
pub(crate) fn out_of_resources(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// What a connection has done, for the handshake and idle deadlines.
pub(crate) struct Watch {
    /// Calls (requests) the connection has made.
    pub(crate) calls: Arc<AtomicU64>,
    /// Calls whose response has not been produced yet.
    pub(crate) open: Arc<AtomicU64>,
    /// Bytes received and sent.
    pub(crate) activity: Arc<AtomicU64>,
    pub(crate) header_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    /// The flags of the two deadlines, for the log line that says why a connection was closed.
    pub(crate) flags: (&'static str, &'static str),
}

impl Watch {
    /// Resolves when the connection should be closed: no call within the handshake deadline, or
    /// not one byte in either direction during a whole idle period with no unary call running
    /// (a slow model is not an idle client). Never, with both deadlines off.
    pub(crate) async fn silent(&self) -> String {
        if let Some(deadline) = self.header_timeout {
            tokio::time::sleep(deadline).await;
            if self.calls.load(Ordering::Relaxed) == 0 {
                return format!("no call within the handshake deadline ({})", self.flags.0);
            }
        }
        let Some(idle) = self.idle_timeout else { return std::future::pending().await };
        let mut seen = self.activity.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(idle).await;
            let now = self.activity.load(Ordering::Relaxed);
            if now == seen && self.open.load(Ordering::Relaxed) == 0 {
                return format!("nothing sent or received for the idle deadline ({})", self.flags.1);
            }
            seen = now;
        }
    }
}

/// A connection's socket, counting the bytes it moves (one relaxed add per read or write).
pub(crate) struct Counted {
    inner: TcpStream,
    moved: Arc<AtomicU64>,
}

impl Counted {
    pub(crate) fn new(inner: TcpStream, moved: Arc<AtomicU64>) -> Counted {
        Counted { inner, moved }
    }
}

impl AsyncRead for Counted {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            this.moved.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl Counted {
    fn count(&self, written: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written
            && *n > 0
        {
            self.moved.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count(&written);
        written
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

