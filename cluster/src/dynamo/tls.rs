//! Dynamo's TCP planes under TLS, as Dynamo 1.6.1 puts them there with the same `DYN_TCP_TLS_*`
//! variables: a process with a certificate and key serves its listener (a worker's request
//! plane, a frontend's response-stream server) over TLS, verifying client certificates when a
//! client CA is given; a process with a CA (or `DYN_TCP_TLS_INSECURE`) dials peers over TLS
//! (a frontend dialing a worker, a worker calling home), presenting its client certificate when
//! it has one. The frames inside are unchanged, and no application protocol is named.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::remote::{ClientTls, PlaneTlsFiles, ServerTls};

/// One connection of a Dynamo TCP plane, in clear or under TLS.
pub enum PlaneStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl std::fmt::Debug for PlaneStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PlaneStream::Plain(_) => "PlaneStream::Plain",
            PlaneStream::Tls(_) => "PlaneStream::Tls",
        })
    }
}

/// How this process's Dynamo planes accept and dial.
#[derive(Clone, Debug, Default)]
pub struct DynamoTls {
    server: Option<ServerTls>,
    client: Option<Arc<ClientTls>>,
}

impl DynamoTls {
    /// From the worker plane's settings (Dynamo reads the same variables for both).
    pub fn from_files(files: &PlaneTlsFiles) -> Result<DynamoTls, String> {
        let (server, client) = files.dynamo()?;
        Ok(DynamoTls { server, client })
    }

    /// Whether this process's listeners serve TLS.
    pub fn serves_tls(&self) -> bool {
        self.server.is_some()
    }

    /// Whether this process dials its peers over TLS.
    pub fn dials_tls(&self) -> bool {
        self.client.is_some()
    }

    /// The warning Dynamo gives too when one side of a process's planes is under TLS and the
    /// other is not: its peers, configured alike, would fail their handshakes with it.
    pub fn lopsided(&self) -> Option<&'static str> {
        match (self.serves_tls(), self.dials_tls()) {
            (false, true) => Some(
                "Dynamo planes: peers are dialed over TLS but this process's listener is in clear; give \
                 DYN_TCP_TLS_CERT_PATH and DYN_TCP_TLS_KEY_PATH so the connections peers open here are under TLS too",
            ),
            (true, false) => Some(
                "Dynamo planes: this process's listener serves TLS but its peers are dialed in clear; give \
                 DYN_TCP_TLS_CA_CERT_PATH (or DYN_TCP_TLS_INSECURE) so the connections it opens are under TLS too",
            ),
            _ => None,
        }
    }

    /// An accepted connection, after its TLS handshake when this process serves TLS; `None`
    /// (logged, naming `plane`) when the handshake fails.
    pub async fn accept(&self, stream: TcpStream, peer: SocketAddr, plane: &str) -> Option<PlaneStream> {
        let _ = stream.set_nodelay(true);
        match &self.server {
            None => Some(PlaneStream::Plain(stream)),
            Some(tls) => {
                let stream = tls.accept(stream, peer, plane).await?;
                Some(PlaneStream::Tls(Box::new(tokio_rustls::TlsStream::Server(stream))))
            }
        }
    }

    /// A connection to `address` (`host:port`), over TLS when this process dials TLS.
    pub async fn dial(&self, address: &str, connect_timeout: Duration) -> Result<PlaneStream, String> {
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| format!("connecting to {address} timed out"))?
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.client else { return Ok(PlaneStream::Plain(stream)) };
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let stream =
            tls.connect(stream, host, address).await.map_err(|e| format!("the TLS handshake with {address} failed: {e}"))?;
        Ok(PlaneStream::Tls(Box::new(tokio_rustls::TlsStream::Client(stream))))
    }
}

impl AsyncRead for PlaneStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlaneStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            PlaneStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PlaneStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlaneStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            PlaneStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PlaneStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            PlaneStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PlaneStream::Plain(stream) => stream.is_write_vectored(),
            PlaneStream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlaneStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            PlaneStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PlaneStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            PlaneStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
