//! What the gRPC and HTTP ports share about their connections: socket options, accept errors,
//! and the handshake and idle deadlines, which need a count of the bytes a socket moves and of
//! the calls a connection makes and has running.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// The next connection, once a slot is free (at the connection limit the listener is not read:
/// new clients wait in its queue), with the slot it holds; `None` once `shutdown` completes or
/// the slots are closed. Accept errors are logged and retried, after a pause when the process
/// is out of descriptors or memory.
pub(crate) async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &mut Pin<&mut impl Future<Output = ()>>,
    kind: &str,
) -> Option<(TcpStream, OwnedSemaphorePermit)> {
    loop {
        let slot = tokio::select! {
            () = shutdown.as_mut() => return None,
            slot = Arc::clone(slots).acquire_owned() => slot.ok()?,
        };
        let accepted = tokio::select! {
            () = shutdown.as_mut() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => return Some((stream, slot)),
            Err(e) if out_of_resources(&e) => {
                tracing::warn!("cannot accept a {kind} connection: {e}; trying again in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => tracing::debug!("accepting a {kind} connection: {e}"),
        }
    }
}

/// Whether an accept error means the process is out of something (descriptors, memory), so that
/// accepting again at once would only spin.
fn out_of_resources(error: &std::io::Error) -> bool {
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

/// A connection's socket: plain TCP, or TLS over it.
pub(crate) enum Socket {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Socket::Plain(s) => s.is_write_vectored(),
            Socket::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Socket::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection's socket, counting the bytes it moves (one relaxed add per read or write).
pub(crate) struct Counted {
    inner: Socket,
    moved: Arc<AtomicU64>,
}

impl Counted {
    pub(crate) fn new(inner: Socket, moved: Arc<AtomicU64>) -> Counted {
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

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
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
