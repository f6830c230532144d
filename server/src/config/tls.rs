//! TLS flags: Triton's for gRPC (`--grpc-use-ssl`, `--grpc-use-ssl-mutual`, `--grpc-server-cert`,
//! `--grpc-server-key`, `--grpc-root-cert`) and the same for the HTTP port (`--http-use-ssl`,
//! ...), whose certificate and key also come from Dynamo's `DYN_TLS_CERT_PATH` and
//! `DYN_TLS_KEY_PATH` (both set: HTTPS on).

use std::path::PathBuf;

use clap::Args;

use crate::tls::TlsFiles;

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// Serve gRPC over TLS (needs --grpc-server-cert and --grpc-server-key).
    #[arg(long, env = "TRITIUM_GRPC_USE_SSL", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub grpc_use_ssl: bool,
    /// Mutual TLS on gRPC: clients must present a certificate that chains to --grpc-root-cert.
    #[arg(long, env = "TRITIUM_GRPC_USE_SSL_MUTUAL", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub grpc_use_ssl_mutual: bool,
    /// PEM file of the gRPC server's certificate chain.
    #[arg(long, env = "TRITIUM_GRPC_SERVER_CERT")]
    pub grpc_server_cert: Option<PathBuf>,
    /// PEM file of the gRPC server's private key.
    #[arg(long, env = "TRITIUM_GRPC_SERVER_KEY")]
    pub grpc_server_key: Option<PathBuf>,
    /// PEM file of the roots client certificates must chain to (mutual TLS).
    #[arg(long, env = "TRITIUM_GRPC_ROOT_CERT")]
    pub grpc_root_cert: Option<PathBuf>,
    /// Serve the HTTP port over TLS (HTTPS; needs --http-server-cert and --http-server-key).
    #[arg(long, env = "TRITIUM_HTTP_USE_SSL", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub http_use_ssl: bool,
    /// Mutual TLS on the HTTP port: clients must present a certificate that chains to --http-root-cert.
    #[arg(long, env = "TRITIUM_HTTP_USE_SSL_MUTUAL", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub http_use_ssl_mutual: bool,
    /// PEM file of the HTTP server's certificate chain (or DYN_TLS_CERT_PATH).
    #[arg(long, env = "TRITIUM_HTTP_SERVER_CERT")]
    pub http_server_cert: Option<PathBuf>,
    /// PEM file of the HTTP server's private key (or DYN_TLS_KEY_PATH).
    #[arg(long, env = "TRITIUM_HTTP_SERVER_KEY")]
    pub http_server_key: Option<PathBuf>,
    /// PEM file of the roots HTTP client certificates must chain to (mutual TLS).
    #[arg(long, env = "TRITIUM_HTTP_ROOT_CERT")]
    pub http_root_cert: Option<PathBuf>,
    /// Dynamo's HTTPS: a PEM certificate for the HTTP port; with --tls-key-path it turns TLS on there.
    #[arg(long, env = "DYN_TLS_CERT_PATH", requires = "tls_key_path")]
    pub tls_cert_path: Option<PathBuf>,
    /// The PEM key of --tls-cert-path.
    #[arg(long, env = "DYN_TLS_KEY_PATH", requires = "tls_cert_path")]
    pub tls_key_path: Option<PathBuf>,
    /// PEM roots HTTP clients' certificates must chain to (mutual TLS), with --tls-cert-path.
    #[arg(long, env = "DYN_TLS_CLIENT_CA_CERT_PATH", requires = "tls_cert_path")]
    pub tls_client_ca_cert_path: Option<PathBuf>,
}

/// Each port's TLS, when on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    pub grpc: Option<TlsFiles>,
    pub http: Option<TlsFiles>,
}

/// One port's files from its flags.
fn port_files(
    port: &str,
    on: bool,
    mutual: bool,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    roots: Option<PathBuf>,
) -> Result<Option<TlsFiles>, String> {
    if !on && !mutual {
        return Ok(None);
    }
    let missing = |flag: &str| format!("--{port}-use-ssl needs --{port}-{flag}");
    let cert = cert.ok_or_else(|| missing("server-cert"))?;
    let key = key.ok_or_else(|| missing("server-key"))?;
    let client_roots = match (mutual, roots) {
        (true, None) => return Err(format!("--{port}-use-ssl-mutual needs --{port}-root-cert")),
        (true, roots) => roots,
        (false, _) => None,
    };
    Ok(Some(TlsFiles { cert, key, client_roots }))
}

impl TlsArgs {
    /// The ports' TLS. Dynamo's `--tls-*-path` options turn HTTPS on as Triton's `--http-use-ssl`
    /// does; the two ways cannot be mixed.
    pub fn config(&self) -> Result<TlsConfig, String> {
        let grpc = port_files(
            "grpc",
            self.grpc_use_ssl,
            self.grpc_use_ssl_mutual,
            self.grpc_server_cert.clone(),
            self.grpc_server_key.clone(),
            self.grpc_root_cert.clone(),
        )?;
        let tritons =
            self.http_use_ssl || self.http_use_ssl_mutual || self.http_server_cert.is_some() || self.http_server_key.is_some();
        let http = match (&self.tls_cert_path, &self.tls_key_path) {
            (Some(_), _) if tritons => {
                return Err("--tls-cert-path (Dynamo's) and --http-use-ssl/--http-server-cert (Triton's) both set HTTPS: \
                            give one of them"
                    .into());
            }
            (Some(cert), Some(key)) => {
                Some(TlsFiles { cert: cert.clone(), key: key.clone(), client_roots: self.tls_client_ca_cert_path.clone() })
            }
            (Some(_), None) | (None, Some(_)) => return Err("--tls-cert-path and --tls-key-path go together".into()),
            (None, None) => port_files(
                "http",
                self.http_use_ssl,
                self.http_use_ssl_mutual,
                self.http_server_cert.clone(),
                self.http_server_key.clone(),
                self.http_root_cert.clone(),
            )?,
        };
        Ok(TlsConfig { grpc, http })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        tls: TlsArgs,
    }

    fn config(args: &[&str], _env: &[(&str, &str)]) -> Result<TlsConfig, String> {
        let flags = Flags::try_parse_from([&["tritium"], args].concat()).map_err(|e| e.to_string())?;
        flags.tls.config()
    }

    #[test]
    fn tls_flags() {
        assert_eq!(config(&[], &[]).expect("off"), TlsConfig::default());
        let on = config(&["--grpc-use-ssl", "--grpc-server-cert", "c.pem", "--grpc-server-key", "k.pem"], &[]).expect("on");
        assert_eq!(on.grpc.expect("grpc").client_roots, None);
        let also = config(&["--grpc-use-ssl=true", "--grpc-server-cert=c", "--grpc-server-key=k"], &[]).expect("=true");
        assert!(also.grpc.is_some());
        assert!(config(&["--grpc-use-ssl"], &[]).expect_err("refused").contains("--grpc-server-cert"));
        let mutual = ["--grpc-use-ssl-mutual", "--grpc-server-cert", "c", "--grpc-server-key", "k"];
        assert!(config(&mutual, &[]).expect_err("refused").contains("--grpc-root-cert"));
        let with_roots = [&mutual[..], &["--grpc-root-cert", "ca.pem"]].concat();
        assert_eq!(config(&with_roots, &[]).expect("mutual").grpc.expect("grpc").client_roots, Some("ca.pem".into()));
        let dynamo = config(&["--tls-cert-path", "c", "--tls-key-path", "k"], &[]).expect("dynamo");
        assert_eq!(dynamo.http.expect("https").cert, PathBuf::from("c"));
        assert!(config(&["--tls-cert-path", "c"], &[]).is_err(), "a certificate without its key");
        let mutual =
            config(&["--tls-cert-path", "c", "--tls-key-path", "k", "--tls-client-ca-cert-path", "ca"], &[]).expect("mtls");
        assert_eq!(mutual.http.expect("https").client_roots, Some(PathBuf::from("ca")));
        let both = config(&["--tls-cert-path", "c", "--tls-key-path", "k", "--http-use-ssl"], &[]).expect_err("mixed");
        assert!(both.contains("give one of them"), "{both}");
    }
}
