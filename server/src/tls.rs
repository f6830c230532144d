//! TLS for the gRPC and HTTP ports, with rustls: a server certificate and key from PEM files and,
//! for mutual TLS, the root certificates client certificates must chain to (a client without
//! one is refused during the handshake). The handshake runs in the connection's own task, within
//! the port's header deadline.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::connection::Socket;

/// The files of one port's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate that chains to these roots.
    pub client_roots: Option<PathBuf>,
}

fn certificates(path: &PathBuf, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("the {what} {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A TLS acceptor for `files`, offering the `alpn` protocols (`h2` for gRPC; `h2` and
/// `http/1.1` for HTTP).
pub fn acceptor(files: &TlsFiles, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&files.cert, "server certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read the server key {}: {e}", files.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_roots {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates(path, "root certificate")? {
                roots.add(cert).map_err(|e| format!("the root certificate {}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("TLS client verification: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("the server certificate and key: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The connection's socket: as it is, or after a TLS handshake that must end within `deadline`.
/// A failed or late handshake closes the connection (`None`).
pub(crate) async fn handshake(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    deadline: Option<Duration>,
    port: &str,
) -> Option<Socket> {
    let Some(acceptor) = tls else { return Some(Socket::Plain(stream)) };
    let accepting = acceptor.accept(stream);
    let accepted = match deadline {
        Some(deadline) => match tokio::time::timeout(deadline, accepting).await {
            Ok(accepted) => accepted,
            Err(_) => {
                tracing::debug!("{port}: a TLS handshake did not finish within the header deadline");
                return None;
            }
        },
        None => accepting.await,
    };
    match accepted {
        Ok(stream) => Some(Socket::Tls(Box::new(stream))),
        Err(e) => {
            tracing::debug!("{port}: TLS handshake failed: {e}");
            None
        }
    }
}
