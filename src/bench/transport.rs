//! The bench's connections: TCP, or TLS over TCP (`--tls`, tokio-rustls) for every protocol, so
//! that a run measures a broker's TLS listener the same way as its plain one.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A connection's read half, over TCP or TLS (or a WebSocket on either).
pub type ReadHalf = Box<dyn AsyncRead + Unpin + Send>;
/// A connection's write half.
pub type WriteHalf = Box<dyn AsyncWrite + Unpin + Send>;

/// A byte stream the protocols' clients run on.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("reading the CA file {path}: {source}")]
    Pem {
        path: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("the CA file {0} holds no usable certificate")]
    NoCertificate(String),
    #[error("TLS client configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// How the bench's clients connect with TLS: the roots they trust. The server's name checked is
/// the address's IP, so the broker's certificate must name it (`IP:127.0.0.1`).
#[derive(Clone)]
pub struct BenchTls {
    connector: TlsConnector,
}

impl std::fmt::Debug for BenchTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BenchTls")
    }
}

impl BenchTls {
    /// Trusting the PEM certificates in `path` (`--ca-file`).
    pub fn from_ca_file(path: &Path) -> Result<Self, TlsSetupError> {
        let pem = |source| TlsSetupError::Pem {
            path: path.display().to_string(),
            source,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(pem)? {
            // A certificate rustls cannot use as a root is skipped; none at all is an error.
            let _ = roots.add(cert.map_err(pem)?);
        }
        if roots.is_empty() {
            return Err(TlsSetupError::NoCertificate(path.display().to_string()));
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self::from_config(Arc::new(config)))
    }

    /// With a rustls client configuration made elsewhere (tests).
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        BenchTls {
            connector: TlsConnector::from(config),
        }
    }
}

/// A TCP connection to `addr` (no Nagle), with a TLS handshake on it when `tls` is given.
pub async fn connect(addr: SocketAddr, tls: Option<&BenchTls>) -> std::io::Result<Box<dyn Stream>> {
    let sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    match tls {
        None => Ok(Box::new(sock)),
        Some(tls) => {
            let name = ServerName::IpAddress(addr.ip().into());
            Ok(Box::new(tls.connector.connect(name, sock).await?))
        }
    }
}

/// As [`connect`], split into boxed halves.
pub async fn connect_split(
    addr: SocketAddr,
    tls: Option<&BenchTls>,
) -> std::io::Result<(ReadHalf, WriteHalf)> {
    if tls.is_none() {
        // Plain TCP keeps tokio's lock-free owned halves.
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let (rd, wr) = sock.into_split();
        return Ok((Box::new(rd), Box::new(wr)));
    }
    let (rd, wr) = tokio::io::split(connect(addr, tls).await?);
    Ok((Box::new(rd), Box::new(wr)))
}
