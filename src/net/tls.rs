//! TLS for every listener, with rustls: the server configuration built from `[tls]`, reloaded
//! from its files on SIGHUP (connections already open keep the certificate they started with),
//! and the handshake that turns an accepted socket into a TLS stream.

use crate::config::TlsConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio_rustls::server::TlsStream;

/// Time a client has for the TLS handshake (as the protocols' own handshake timeouts): a
/// plain-text client on a TLS port, or one that sends nothing, is closed by then at the latest.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[tls] {0} is required by tls_listen")]
    Missing(&'static str),
    #[error("{0} is not set: inter-node TLS needs all of cluster.tls_cert_file, tls_key_file and tls_ca_file")]
    Incomplete(&'static str),
    #[error("cannot read {key} {path}: {source}")]
    Pem {
        key: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{key} {path} holds no certificate")]
    NoCertificate { key: &'static str, path: PathBuf },
    #[error("[tls] versions: unknown version {0:?} (tlsv1.2, tlsv1.3)")]
    UnknownVersion(String),
    #[error("[tls] verify_peer needs ca_file")]
    VerifyWithoutCa,
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("[tls] ca_file: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The server side of TLS for all listeners, swapped whole on reload.
#[derive(Debug)]
pub struct TlsServer {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsServer {
    pub fn new(settings: &TlsConfig) -> Result<Self, TlsError> {
        Ok(TlsServer {
            settings: settings.clone(),
            current: RwLock::new(Arc::new(server_config(settings)?)),
        })
    }

    /// Reads the certificate, key and CA files again; on error the old ones stay in force.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.settings)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|e| e.into_inner());
        tokio_rustls::TlsAcceptor::from(config.clone())
    }

    /// The TLS handshake on an accepted socket (bounded); `None` when it failed, which is
    /// logged: a plain-text client, a refused or missing client certificate.
    pub async fn accept(
        &self,
        socket: TcpStream,
        peer: std::net::SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor().accept(socket)).await {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::info!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// The subject common name of the client's certificate, if it sent one (verified: an
/// unverified certificate fails the handshake).
pub fn peer_common_name(stream: &TlsStream<TcpStream>) -> Option<String> {
    let cert = stream.get_ref().1.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn versions(names: &[String]) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    if names.is_empty() {
        return Ok(vec![&rustls::version::TLS13, &rustls::version::TLS12]);
    }
    names
        .iter()
        .map(|n| match n.to_ascii_lowercase().as_str() {
            "tlsv1.2" => Ok(&rustls::version::TLS12),
            "tlsv1.3" => Ok(&rustls::version::TLS13),
            _ => Err(TlsError::UnknownVersion(n.clone())),
        })
        .collect()
}

/// The PEM certificates in `path`, which the configuration key `key` names (for errors).
pub(crate) fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        key,
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            key,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The PEM private key in `path`, which the configuration key `key` names.
pub(crate) fn private_key(
    key: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        key,
        path: path.to_owned(),
        source,
    })
}

/// The authorities in the PEM file `path` (configuration key `key`), as a root store.
pub(crate) fn roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(key, path)? {
        roots.add(ca)?;
    }
    Ok(roots)
}

fn server_config(settings: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let cert_file = settings
        .cert_file
        .as_deref()
        .ok_or(TlsError::Missing("cert_file"))?;
    let key_file = settings
        .key_file
        .as_deref()
        .ok_or(TlsError::Missing("key_file"))?;
    let chain = certificates("[tls] cert_file", cert_file)?;
    let key = private_key("[tls] key_file", key_file)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(&settings.versions)?)?;
    let builder = if settings.verify_peer {
        let ca_file = settings
            .ca_file
            .as_deref()
            .ok_or(TlsError::VerifyWithoutCa)?;
        let roots = roots("[tls] ca_file", ca_file)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let verifier = if settings.fail_if_no_peer_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(verifier.build()?)
    } else {
        builder.with_no_client_auth()
    };
    Ok(builder.with_single_cert(chain, key)?)
}
