//! TLS on the worker plane, configured as Dynamo configures its TCP request plane
//! (`DYN_TCP_TLS_*`, and the `--tcp-tls-*` options of the same meaning): a worker given a
//! certificate and key serves the plane over TLS, and requires client certificates that chain to
//! the client CA when one is given; a process given a CA (or `insecure`) dials workers over TLS,
//! presenting its own certificate when it has one (mutual TLS). Every handshake has a deadline.
//! Both ends' certificates and keys (the worker's, and the client certificate a dialing process
//! presents) are read again when their files change, so a rotation needs no restart. A plaintext or wrongly signed peer fails its handshake, which is logged; nothing
//! else is disturbed. The worker token still applies inside the TLS session.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use http::Uri;
use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Dynamo's default handshake deadline.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest PEM file read (a certificate chain, a key, a CA bundle).
const MAX_PEM_BYTES: u64 = 1 << 20;
/// Handshakes a worker runs at once; connections past them are closed at once.
const MAX_HANDSHAKES: usize = 256;

/// The worker plane's TLS settings, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlaneTlsFiles {
    /// `DYN_TCP_TLS_CERT_PATH` / `DYN_TCP_TLS_KEY_PATH`: this worker's certificate and key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// `DYN_TCP_TLS_CA_CERT_PATH`: the roots a worker dialed must chain to.
    pub ca: Option<PathBuf>,
    /// `DYN_TCP_TLS_INSECURE`: dial over TLS and take any certificate.
    pub insecure: bool,
    /// `DYN_TCP_TLS_SERVER_NAME`: the name checked in a dialed worker's certificate, instead of
    /// the host it is dialed at.
    pub server_name: Option<String>,
    /// `DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS`.
    pub handshake_timeout: Duration,
    /// `DYN_TCP_TLS_CLIENT_CERT_PATH` / `_KEY_PATH`: what this process presents when it dials.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// `DYN_TCP_TLS_CLIENT_CA_CERT_PATH`: the roots a client's certificate must chain to.
    pub client_ca: Option<PathBuf>,
}

impl PlaneTlsFiles {
    /// Whether this process dials workers over TLS.
    pub fn dials_tls(&self) -> bool {
        self.ca.is_some() || self.insecure || self.client_cert.is_some()
    }

    /// The combinations that cannot work, refused by the variables' names.
    pub fn check(&self) -> Result<(), String> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(
                "DYN_TCP_TLS_CERT_PATH and DYN_TCP_TLS_KEY_PATH (--tcp-tls-cert-path, --tcp-tls-key-path) go together".into()
            );
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err("DYN_TCP_TLS_CLIENT_CERT_PATH and DYN_TCP_TLS_CLIENT_KEY_PATH (--tcp-tls-client-cert-path, \
                 --tcp-tls-client-key-path) go together"
                .into());
        }
        if self.client_ca.is_some() && self.cert.is_none() {
            return Err("DYN_TCP_TLS_CLIENT_CA_CERT_PATH verifies the clients of a TLS worker plane: give \
                 DYN_TCP_TLS_CERT_PATH and DYN_TCP_TLS_KEY_PATH too"
                .into());
        }
        if self.server_name.is_some() && !self.dials_tls() {
            return Err("DYN_TCP_TLS_SERVER_NAME names what a dialed worker's certificate must say: give \
                 DYN_TCP_TLS_CA_CERT_PATH (or DYN_TCP_TLS_INSECURE) too"
                .into());
        }
        if self.ca.is_some() && self.insecure {
            return Err("DYN_TCP_TLS_INSECURE takes any certificate; DYN_TCP_TLS_CA_CERT_PATH checks them: give one".into());
        }
        if self.handshake_timeout.is_zero() {
            return Err("DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS (--tcp-tls-handshake-timeout) must be at least 1".into());
        }
        Ok(())
    }

    /// The worker's side, when it serves the plane over TLS.
    pub fn server(&self) -> Result<Option<ServerTls>, String> {
        self.server_speaking(&[b"h2"])
    }

    /// The dialing side, when this process dials workers over TLS.
    pub fn client(&self) -> Result<Option<Arc<ClientTls>>, String> {
        self.client_speaking(&[b"h2"])
    }

    /// Both sides for Dynamo's TCP planes (its request plane and the response streams that call
    /// home), which carry Dynamo's own frames and name no application protocol.
    pub fn dynamo(&self) -> Result<(Option<ServerTls>, Option<Arc<ClientTls>>), String> {
        Ok((self.server_speaking(&[])?, self.client_speaking(&[])?))
    }

    fn server_speaking(&self, alpn: &[&[u8]]) -> Result<Option<ServerTls>, String> {
        self.check()?;
        let (Some(cert), Some(key)) = (&self.cert, &self.key) else { return Ok(None) };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = ReloadingCert::load(SERVER_IDENTITY, cert.clone(), key.clone(), Arc::clone(&provider))?;
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("worker-plane TLS: {e}"))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let roots = roots("DYN_TCP_TLS_CLIENT_CA_CERT_PATH", path)?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("DYN_TCP_TLS_CLIENT_CA_CERT_PATH: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Some(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            handshake_timeout: self.handshake_timeout,
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        }))
    }

    fn client_speaking(&self, alpn: &[&[u8]]) -> Result<Option<Arc<ClientTls>>, String> {
        self.check()?;
        if !self.dials_tls() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                Some(Arc::new(ReloadingCert::load(CLIENT_IDENTITY, cert.clone(), key.clone(), Arc::clone(&provider))?))
            }
            _ => None,
        };
        let builder = match &self.ca {
            Some(ca) => rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("worker-plane TLS: {e}"))?
                .with_root_certificates(roots("DYN_TCP_TLS_CA_CERT_PATH", ca)?),
            None => crate::credentials::insecure_tls_builder("DYN_TCP_TLS_INSECURE")?,
        };
        let mut config = match identity {
            Some(identity) => builder.with_client_cert_resolver(identity),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let server_name = match &self.server_name {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|_| format!("DYN_TCP_TLS_SERVER_NAME '{name}' is not a host name or address"))?,
            ),
        };
        Ok(Some(Arc::new(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            handshake_timeout: self.handshake_timeout,
        })))
    }
}

fn read_pem(variable: &str, path: &Path) -> Result<String, String> {
    crate::credentials::read_bounded(variable, &path.display().to_string(), MAX_PEM_BYTES)
}

fn certificates(variable: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read_pem(variable, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{variable} names {}, which holds no readable PEM certificate", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{variable} names {}, which holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn private_key(variable: &str, path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read_pem(variable, path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes())
        .map_err(|_| format!("{variable} names {}, which holds no PEM private key", path.display()))
}

fn roots(variable: &str, path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(variable, path)? {
        roots.add(cert).map_err(|e| format!("{variable} names {}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// Which certificate a [`ReloadingCert`] holds, by the variables that name its files.
#[derive(Debug, Clone, Copy)]
struct Identity {
    cert_variable: &'static str,
    key_variable: &'static str,
    /// Who presents it, in logs.
    whose: &'static str,
}

const SERVER_IDENTITY: Identity =
    Identity { cert_variable: "DYN_TCP_TLS_CERT_PATH", key_variable: "DYN_TCP_TLS_KEY_PATH", whose: "the worker's" };
const CLIENT_IDENTITY: Identity = Identity {
    cert_variable: "DYN_TCP_TLS_CLIENT_CERT_PATH",
    key_variable: "DYN_TCP_TLS_CLIENT_KEY_PATH",
    whose: "the client",
};

/// A certificate and key, read again when either file's modification time changes (checked at
/// each handshake); a rotation that cannot be read keeps the previous pair.
#[derive(Debug)]
struct ReloadingCert {
    identity: Identity,
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    loaded: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: (Option<SystemTime>, Option<SystemTime>),
    certified: Arc<CertifiedKey>,
}

impl ReloadingCert {
    fn load(identity: Identity, cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> Result<ReloadingCert, String> {
        let stamps = (modified(&cert), modified(&key));
        let certified = Arc::new(certified_key(identity, &cert, &key, &provider)?);
        Ok(ReloadingCert { identity, cert, key, provider, loaded: Mutex::new(Loaded { stamps, certified }) })
    }

    /// The pair in force, read again first when either file changed.
    fn current(&self) -> Arc<CertifiedKey> {
        let stamps = (modified(&self.cert), modified(&self.key));
        let mut loaded = self.loaded.lock();
        if stamps != loaded.stamps {
            loaded.stamps = stamps;
            let whose = self.identity.whose;
            match certified_key(self.identity, &self.cert, &self.key, &self.provider) {
                Ok(certified) => {
                    tracing::info!(cert = %self.cert.display(), "worker plane: {whose} TLS certificate was read again");
                    loaded.certified = Arc::new(certified);
                }
                Err(why) => tracing::warn!("worker plane: {whose} changed TLS certificate is not used: {why}"),
            }
        }
        Arc::clone(&loaded.certified)
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn certified_key(identity: Identity, cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let Identity { cert_variable, key_variable, .. } = identity;
    let certs = certificates(cert_variable, cert)?;
    let key = private_key(key_variable, key)?;
    let signing = provider.key_provider.load_private_key(key).map_err(|e| format!("{key_variable}: {e}"))?;
    let certified = CertifiedKey::new(certs, signing);
    certified.keys_match().map_err(|e| format!("{cert_variable} and {key_variable} do not match: {e}"))?;
    Ok(certified)
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for ReloadingCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A worker's TLS: the acceptor and its handshake deadline.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    /// Handshakes running at once, across every listener this configuration serves.
    handshakes: Arc<Semaphore>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("handshake_timeout", &self.handshake_timeout).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// The TLS connections arriving on `listener`, each handshake run in its own task within the
    /// deadline; the accepting ends when the stream is dropped.
    pub fn incoming(self, listener: TcpListener) -> impl futures::Stream<Item = io::Result<TlsConnection>> + Send {
        let (sender, receiver) = mpsc::channel(MAX_HANDSHAKES);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    () = sender.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            tracing::warn!("worker plane: accepting a connection failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let (tls, sender) = (self.clone(), sender.clone());
                tokio::spawn(async move {
                    if let Some(tls) = tls.accept(stream, peer, "worker plane").await {
                        let _ = sender.send(Ok(TlsConnection(tls))).await;
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(receiver)
    }

    /// The TLS handshake of one accepted connection, within the deadline; `None` (logged, with
    /// `plane` naming where) when it fails, times out, or too many are running already.
    pub async fn accept(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        plane: &str,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let Ok(_permit) = Arc::clone(&self.handshakes).try_acquire_owned() else {
            tracing::warn!(%peer, "{plane}: {MAX_HANDSHAKES} TLS handshakes already running; connection closed");
            return None;
        };
        let deadline = self.handshake_timeout;
        match tokio::time::timeout(deadline, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::warn!(%peer, "{plane}: a TLS handshake failed: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(%peer, "{plane}: a TLS handshake did not finish within {deadline:?}");
                None
            }
        }
    }
}

/// One worker-plane connection after its TLS handshake.
pub struct TlsConnection(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// How this process dials workers over TLS.
pub struct ClientTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The TLS handshake on `stream`, dialed at `host` (the name checked in the certificate unless
    /// `DYN_TCP_TLS_SERVER_NAME` gives one), within the deadline; failures are logged naming `peer`.
    pub async fn connect(
        &self,
        stream: TcpStream,
        host: &str,
        peer: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no host name a certificate can be checked for in {peer}"))
            })?,
        };
        match tokio::time::timeout(self.handshake_timeout, self.connector.connect(name, stream)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => {
                tracing::warn!(%peer, "the TLS handshake failed: {e}");
                Err(e)
            }
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the TLS handshake with {peer} did not finish within {:?}", self.handshake_timeout),
            )),
        }
    }
}

/// Dials one worker over TLS for tonic's channel (which dials again after a connection breaks).
#[derive(Clone)]
pub(crate) struct TlsDial {
    tls: Arc<ClientTls>,
    connect_timeout: Duration,
}

impl TlsDial {
    pub(crate) fn new(tls: Arc<ClientTls>, connect_timeout: Duration) -> TlsDial {
        TlsDial { tls, connect_timeout }
    }
}

impl tower::Service<Uri> for TlsDial {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (tls, connect_timeout) = (Arc::clone(&self.tls), self.connect_timeout);
        Box::pin(async move {
            let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} in the worker address {uri}"));
            let host = uri.host().ok_or_else(|| invalid("no host"))?.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let stream =
                tokio::time::timeout(connect_timeout, TcpStream::connect((host.as_str(), port))).await.map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {uri} took over {connect_timeout:?}"))
                })??;
            let _ = stream.set_nodelay(true);
            let stream = tls.connect(stream, &host, &uri.to_string()).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn files() -> PlaneTlsFiles {
        PlaneTlsFiles { handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT, ..Default::default() }
    }

    #[test]
    fn combinations_that_cannot_work_are_refused_by_the_variables_names() {
        assert!(files().check().is_ok());
        let half = PlaneTlsFiles { cert: Some("c.pem".into()), ..files() };
        assert!(half.check().unwrap_err().contains("DYN_TCP_TLS_KEY_PATH"));
        let client_half = PlaneTlsFiles { client_key: Some("k.pem".into()), ..files() };
        assert!(client_half.check().unwrap_err().contains("DYN_TCP_TLS_CLIENT_CERT_PATH"));
        let verifier_only = PlaneTlsFiles { client_ca: Some("ca.pem".into()), ..files() };
        assert!(verifier_only.check().unwrap_err().contains("DYN_TCP_TLS_CLIENT_CA_CERT_PATH"));
        let name_only = PlaneTlsFiles { server_name: Some("w".into()), ..files() };
        assert!(name_only.check().unwrap_err().contains("DYN_TCP_TLS_SERVER_NAME"));
        let both = PlaneTlsFiles { ca: Some("ca.pem".into()), insecure: true, ..files() };
        assert!(both.check().unwrap_err().contains("DYN_TCP_TLS_INSECURE"));
        let instant = PlaneTlsFiles { handshake_timeout: Duration::ZERO, ..files() };
        assert!(instant.check().unwrap_err().contains("DYN_TCP_TLS_HANDSHAKE_TIMEOUT_SECS"));
        assert!(files().server().unwrap().is_none() && files().client().unwrap().is_none());
    }

    #[test]
    fn unreadable_files_are_named_not_printed() {
        let missing = PlaneTlsFiles { ca: Some("/nonexistent/ca.pem".into()), ..files() };
        let error = missing.client().unwrap_err();
        assert!(error.contains("DYN_TCP_TLS_CA_CERT_PATH names /nonexistent/ca.pem"), "{error}");
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("secret.pem");
        std::fs::write(&not_pem, "hunter2").unwrap();
        let garbage = PlaneTlsFiles { ca: Some(not_pem), ..files() };
        let error = garbage.client().unwrap_err();
        assert!(error.contains("holds no PEM certificate") && !error.contains("hunter2"), "{error}");
    }
}
