//! Credentials for the services a cluster shares, read from Dynamo's own variables, so one
//! environment starts Dynamo's processes and Tritium's alike against a secured NATS or etcd:
//!
//! - NATS (events, the NATS request plane, Dynamo's NATS KV events): `NATS_AUTH_TOKEN`,
//!   `NATS_AUTH_USERNAME` with `NATS_AUTH_PASSWORD`, `NATS_AUTH_NKEY` (a user's seed, `SU…`),
//!   `NATS_AUTH_CREDENTIALS_FILE` (a `.creds` file: a user JWT and its seed), `NATS_TLS_CA_CERT_PATH`,
//!   `NATS_TLS_CLIENT_CERT_PATH` with `NATS_TLS_CLIENT_KEY_PATH`;
//! - etcd (discovery, Dynamo's records): `ETCD_AUTH_USERNAME` with `ETCD_AUTH_PASSWORD`,
//!   `ETCD_AUTH_CA` (TLS to `https://` endpoints, checked against this CA), `ETCD_AUTH_CLIENT_CERT`
//!   with `ETCD_AUTH_CLIENT_KEY` (mutual TLS).
//!
//! A connection refused for its credentials fails naming the service and the variables used,
//! never a secret. `NATS_TLS_INSECURE` (true) takes NATS's server certificate unchecked, for test
//! deployments with self-signed certificates (the handshake's signatures are still verified).

use std::path::PathBuf;

/// The variables one connection's credentials came from, for messages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Used(Vec<&'static str>);

impl Used {
    /// ` (credentials from NATS_AUTH_TOKEN)`, or nothing when none were used.
    pub fn hint(&self) -> String {
        match self.0.is_empty() {
            true => String::new(),
            false => format!(" (credentials from {})", self.0.join(", ")),
        }
    }
}

/// NATS connect options carrying the credentials the environment (`env`) names.
pub fn nats_options(
    mut options: async_nats::ConnectOptions,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(async_nats::ConnectOptions, Used), String> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut used = Vec::new();
    if let Some(token) = set("NATS_AUTH_TOKEN") {
        options = options.token(token);
        used.push("NATS_AUTH_TOKEN");
    }
    match (set("NATS_AUTH_USERNAME"), set("NATS_AUTH_PASSWORD")) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(user, password);
            used.extend(["NATS_AUTH_USERNAME", "NATS_AUTH_PASSWORD"]);
        }
        (None, None) => {}
        _ => return Err("NATS_AUTH_USERNAME and NATS_AUTH_PASSWORD go together: set both or neither".into()),
    }
    if let Some(seed) = set("NATS_AUTH_NKEY") {
        nkeys::KeyPair::from_seed(seed.trim())
            .map_err(|_| "NATS_AUTH_NKEY is not an nkey seed (an 'S…' string as `nk -gen user` prints)".to_string())?;
        options = options.nkey(seed.trim().to_owned());
        used.push("NATS_AUTH_NKEY");
    }
    if let Some(path) = set("NATS_AUTH_CREDENTIALS_FILE") {
        let text = read_bounded("NATS_AUTH_CREDENTIALS_FILE", &path, MAX_CREDENTIALS_BYTES)?;
        options = options.credentials(&text).map_err(|_| {
            format!(
                "NATS_AUTH_CREDENTIALS_FILE names {path}, which is not a NATS credentials file (a user JWT and its nkey seed)"
            )
        })?;
        used.push("NATS_AUTH_CREDENTIALS_FILE");
    }
    if let Some(ca) = set("NATS_TLS_CA_CERT_PATH") {
        options = options.add_root_certificates(readable("NATS_TLS_CA_CERT_PATH", &ca)?).require_tls(true);
        used.push("NATS_TLS_CA_CERT_PATH");
    }
    let client = match (set("NATS_TLS_CLIENT_CERT_PATH"), set("NATS_TLS_CLIENT_KEY_PATH")) {
        (Some(cert), Some(key)) => {
            let cert = readable("NATS_TLS_CLIENT_CERT_PATH", &cert)?;
            let key = readable("NATS_TLS_CLIENT_KEY_PATH", &key)?;
            options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
            used.extend(["NATS_TLS_CLIENT_CERT_PATH", "NATS_TLS_CLIENT_KEY_PATH"]);
            Some((cert, key))
        }
        (None, None) => None,
        _ => return Err("NATS_TLS_CLIENT_CERT_PATH and NATS_TLS_CLIENT_KEY_PATH go together: set both or neither".into()),
    };
    if let Some(value) = set("NATS_TLS_INSECURE") {
        let insecure = match value.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => return Err(format!("NATS_TLS_INSECURE must be true or false, got '{value}'")),
        };
        if insecure {
            // A config of our own replaces the roots and client certificate set above.
            options = options.tls_client_config(insecure_tls(client)?).require_tls(true);
            used.push("NATS_TLS_INSECURE");
        }
    }
    Ok((options, Used(used)))
}

/// TLS that takes any server certificate (`NATS_TLS_INSECURE`), with the client certificate when
/// one is named.
fn insecure_tls(client: Option<(PathBuf, PathBuf)>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let identity = match client {
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(&cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|_| format!("NATS_TLS_CLIENT_CERT_PATH names {}, which holds no PEM certificate", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .map_err(|_| format!("NATS_TLS_CLIENT_KEY_PATH names {}, which holds no PEM private key", key.display()))?;
            Some((certs, key))
        }
        None => None,
    };
    insecure_tls_config(identity, "NATS_TLS_INSECURE")
}

/// A client TLS configuration that takes any server certificate (`variable` names the setting
/// that asked for it), presenting `identity` when given.
pub(crate) fn insecure_tls_config(
    identity: Option<(Vec<rustls_pki_types::CertificateDer<'static>>, rustls_pki_types::PrivateKeyDer<'static>)>,
    variable: &str,
) -> Result<rustls::ClientConfig, String> {
    let builder = insecure_tls_builder(variable)?;
    match identity {
        Some((certs, key)) => {
            builder.with_client_auth_cert(certs, key).map_err(|e| format!("{variable}: the client certificate: {e}"))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

/// A client configuration taking any server certificate, before its own identity is chosen.
pub(crate) fn insecure_tls_builder(
    variable: &str,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(std::sync::Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{variable}: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServerCertificate(provider))))
}

/// Takes any server certificate; the handshake's signatures are still checked, so the peer holds
/// the key of the certificate it showed.
#[derive(Debug)]
struct AnyServerCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, signature, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        signature: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, signature, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// [`nats_options`] from the process environment.
pub fn nats_options_from_env(options: async_nats::ConnectOptions) -> Result<(async_nats::ConnectOptions, Used), String> {
    nats_options(options, |name| std::env::var(name).ok())
}

/// etcd connect options carrying the credentials the environment (`env`) names.
pub fn etcd_options(
    mut options: etcd_client::ConnectOptions,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(etcd_client::ConnectOptions, Used), String> {
    let set = |name: &str| env(name).filter(|v| !v.is_empty());
    let mut used = Vec::new();
    match (set("ETCD_AUTH_USERNAME"), set("ETCD_AUTH_PASSWORD")) {
        (Some(user), Some(password)) => {
            options = options.with_user(user, password);
            used.extend(["ETCD_AUTH_USERNAME", "ETCD_AUTH_PASSWORD"]);
        }
        (None, None) => {}
        _ => return Err("ETCD_AUTH_USERNAME and ETCD_AUTH_PASSWORD go together: set both or neither".into()),
    }
    let ca = set("ETCD_AUTH_CA");
    let identity = match (set("ETCD_AUTH_CLIENT_CERT"), set("ETCD_AUTH_CLIENT_KEY")) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("ETCD_AUTH_CLIENT_CERT and ETCD_AUTH_CLIENT_KEY go together: set both or neither".into()),
    };
    if ca.is_some() || identity.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = ca {
            let pem = read_bounded("ETCD_AUTH_CA", &ca, MAX_PEM_BYTES)?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            used.push("ETCD_AUTH_CA");
        }
        if let Some((cert, key)) = identity {
            let cert = read_bounded("ETCD_AUTH_CLIENT_CERT", &cert, MAX_PEM_BYTES)?;
            let key = read_bounded("ETCD_AUTH_CLIENT_KEY", &key, MAX_PEM_BYTES)?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert, key));
            used.extend(["ETCD_AUTH_CLIENT_CERT", "ETCD_AUTH_CLIENT_KEY"]);
        }
        options = options.with_tls(tls);
    }
    Ok((options, Used(used)))
}

/// [`etcd_options`] from the process environment.
pub fn etcd_options_from_env(options: etcd_client::ConnectOptions) -> Result<(etcd_client::ConnectOptions, Used), String> {
    etcd_options(options, |name| std::env::var(name).ok())
}

/// The largest credentials file read (a `.creds` file is about 1 KiB).
const MAX_CREDENTIALS_BYTES: u64 = 64 << 10;
/// The largest PEM file read (a CA bundle of a few hundred certificates).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// A small text file a variable names, read whole up to `limit` bytes; errors name the variable
/// and the path, never the contents.
pub(crate) fn read_bounded(variable: &str, path: &str, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{variable} names {path}, which cannot be read: {}", e.kind()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{variable} names {path}, which cannot be read: {}", e.kind()))?;
    if bytes.len() as u64 > limit {
        return Err(format!("{variable} names {path}, which is larger than {limit} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| format!("{variable} names {path}, which is not text"))
}

/// A file a variable names, checked to be readable now (so the start-up error names the variable).
fn readable(variable: &str, path: &str) -> Result<PathBuf, String> {
    std::fs::metadata(path).map_err(|e| format!("{variable} names {path}, which cannot be read: {}", e.kind()))?;
    Ok(PathBuf::from(path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
    }

    #[test]
    fn the_variables_used_are_named_and_half_pairs_refused() {
        let (_, used) = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_AUTH_TOKEN", "t")])).unwrap();
        assert_eq!(used.hint(), " (credentials from NATS_AUTH_TOKEN)");
        let half = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_AUTH_USERNAME", "u")])).unwrap_err();
        assert!(half.contains("NATS_AUTH_PASSWORD"), "{half}");
        let missing =
            nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_TLS_CA_CERT_PATH", "/absent/ca.pem")])).unwrap_err();
        assert!(missing.contains("NATS_TLS_CA_CERT_PATH names /absent/ca.pem"), "{missing}");
        let (_, used) = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_TLS_INSECURE", "true")])).unwrap();
        assert_eq!(used.hint(), " (credentials from NATS_TLS_INSECURE)");
        let (_, used) = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_TLS_INSECURE", "false")])).unwrap();
        assert_eq!(used.hint(), "");
        let bad = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_TLS_INSECURE", "maybe")])).unwrap_err();
        assert!(bad.starts_with("NATS_TLS_INSECURE must be true or false"), "{bad}");
        let bad = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_AUTH_NKEY", "SUxyz-secret")])).unwrap_err();
        assert!(bad.starts_with("NATS_AUTH_NKEY is not an nkey seed") && !bad.contains("xyz-secret"), "{bad}");
        let seed = nkeys::KeyPair::new_user().seed().unwrap();
        let (_, used) = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_AUTH_NKEY", &seed)])).unwrap();
        assert_eq!(used.hint(), " (credentials from NATS_AUTH_NKEY)");
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("user.creds");
        std::fs::write(&creds, "not a creds file, secret-inside").unwrap();
        let path = creds.display().to_string();
        let bad = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_AUTH_CREDENTIALS_FILE", &path)])).unwrap_err();
        assert!(bad.contains("not a NATS credentials file") && !bad.contains("secret-inside"), "{bad}");
        let (_, used) = etcd_options(etcd_client::ConnectOptions::new(), env(&[])).unwrap();
        assert_eq!(used.hint(), "");
        let (_, used) =
            etcd_options(etcd_client::ConnectOptions::new(), env(&[("ETCD_AUTH_USERNAME", "u"), ("ETCD_AUTH_PASSWORD", "p")]))
                .unwrap();
        assert_eq!(used.hint(), " (credentials from ETCD_AUTH_USERNAME, ETCD_AUTH_PASSWORD)");
        let half = etcd_options(etcd_client::ConnectOptions::new(), env(&[("ETCD_AUTH_CLIENT_CERT", "/c.pem")])).unwrap_err();
        assert!(half.contains("ETCD_AUTH_CLIENT_KEY"), "{half}");
        let missing = etcd_options(etcd_client::ConnectOptions::new(), env(&[("ETCD_AUTH_CA", "/absent/ca.pem")])).unwrap_err();
        assert!(missing.starts_with("ETCD_AUTH_CA names /absent/ca.pem"), "{missing}");
    }

    /// A nats-server that admits one nkey user: its seed from NATS_AUTH_NKEY connects, another
    /// user's seed is refused.
    #[tokio::test]
    async fn a_nats_server_admits_the_user_of_the_nkey_seed() {
        let user = nkeys::KeyPair::new_user();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nats.conf");
        std::fs::write(&config, format!("authorization {{ users = [ {{ nkey: {} }} ] }}\n", user.public_key())).unwrap();
        let server = crate::test_nats::NatsServer::start_with(&["-c", config.to_str().unwrap()]);
        let seed = user.seed().unwrap();
        let (options, _) = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_AUTH_NKEY", &seed)])).unwrap();
        let client = async_nats::connect_with_options(server.url(), options).await.expect("the nkey user connects");
        client.flush().await.unwrap();
        let stranger = nkeys::KeyPair::new_user().seed().unwrap();
        let refused = async_nats::connect_with_options(
            server.url(),
            nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_AUTH_NKEY", &stranger)])).unwrap().0,
        )
        .await;
        assert!(refused.is_err(), "another user's seed is refused");
    }

    /// A NATS JWT (`iss` signs it), as nats-server's decentralized auth reads one.
    fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
        let issued = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = serde_json::json!({
            "jti": format!("T{issued}{name}").to_uppercase(), "iat": issued, "iss": issuer.public_key(),
            "name": name, "sub": subject, "nats": nats,
        });
        let signed = format!("{header}.{}", b64.encode(claims.to_string()));
        let signature = issuer.sign(signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64.encode(signature))
    }

    /// An operator-mode nats-server (an operator, an account preloaded, users with JWTs): a
    /// `.creds` file of one of its users from NATS_AUTH_CREDENTIALS_FILE connects; a user the
    /// account never signed is refused.
    #[tokio::test]
    async fn a_nats_server_admits_the_user_of_the_credentials_file() {
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let unlimited = serde_json::json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1});
        let operator_jwt =
            nats_jwt(&operator, &operator.public_key(), "op", serde_json::json!({"type": "operator", "version": 2}));
        let account_jwt = nats_jwt(
            &operator,
            &account.public_key(),
            "acct",
            serde_json::json!({"limits": unlimited, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}),
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("nats.conf");
        let preload = format!("{}: {account_jwt}", account.public_key());
        std::fs::write(&config, format!("operator: {operator_jwt}\nresolver: MEMORY\nresolver_preload: {{ {preload} }}\n"))
            .unwrap();
        let server = crate::test_nats::NatsServer::start_with(&["-c", config.to_str().unwrap()]);
        let creds = |signer: &nkeys::KeyPair, file: &str| {
            let user = nkeys::KeyPair::new_user();
            let limits = serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "issuer_account": account.public_key(), "type": "user", "version": 2});
            let jwt = nats_jwt(signer, &user.public_key(), "u", limits);
            let text = format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
                user.seed().unwrap()
            );
            let path = dir.path().join(file);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_string()
        };
        let good = creds(&account, "good.creds");
        let (options, used) =
            nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_AUTH_CREDENTIALS_FILE", &good)])).unwrap();
        assert_eq!(used.hint(), " (credentials from NATS_AUTH_CREDENTIALS_FILE)");
        let client = async_nats::connect_with_options(server.url(), options).await.expect("the credentials file's user connects");
        client.flush().await.unwrap();
        let forged = creds(&nkeys::KeyPair::new_account(), "forged.creds");
        let refused = async_nats::connect_with_options(
            server.url(),
            nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_AUTH_CREDENTIALS_FILE", &forged)])).unwrap().0,
        )
        .await;
        assert!(refused.is_err(), "a user no account of the server signed is refused");
    }

    /// A nats-server with a self-signed certificate: refused with no CA, joined with
    /// NATS_TLS_INSECURE. The certificate is made by the `openssl` CLI.
    #[tokio::test]
    async fn nats_tls_insecure_takes_a_self_signed_server_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("nats.pem"), dir.path().join("nats.key"));
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=nats", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl command makes the test certificate");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let server = crate::test_nats::NatsServer::start_with(&[
            "--tls",
            "--tlscert",
            cert.to_str().unwrap(),
            "--tlskey",
            key.to_str().unwrap(),
        ]);
        let plain = nats_options(async_nats::ConnectOptions::new().require_tls(true), env(&[])).unwrap().0;
        assert!(async_nats::connect_with_options(server.url(), plain).await.is_err(), "an unknown issuer is refused");
        let (options, _) = nats_options(async_nats::ConnectOptions::new(), env(&[("NATS_TLS_INSECURE", "true")])).unwrap();
        let client = async_nats::connect_with_options(server.url(), options).await.expect("joined over TLS, unchecked");
        client.flush().await.unwrap();
    }
}
