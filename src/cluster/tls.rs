//! Mutual TLS between nodes (`[cluster] tls_cert_file`, `tls_key_file`, `tls_ca_file`, as
//! RabbitMQ's inter-node TLS): every inter-node connection is encrypted, and each side
//! verifies the other's certificate against the cluster's authority before the cookie
//! handshake runs inside it. The dialer checks the listener's certificate against the host of
//! the address it dialed (an IP address or a DNS name in the certificate's subject names).

use super::config::ClusterConfig;
use crate::net::tls::{certificates, private_key, roots, TlsError};
use rustls_pki_types::ServerName;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, ServerConfig};
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

/// Both sides of inter-node TLS for one node.
#[derive(Clone)]
pub struct NodeTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeTls")
    }
}

impl NodeTls {
    /// The node's TLS from `config`; None when none of its three files is set (inter-node
    /// traffic in plain TCP, authenticated by the cookie only).
    pub fn from_config(config: &ClusterConfig) -> Result<Option<Self>, TlsError> {
        let files = [
            &config.tls_cert_file,
            &config.tls_key_file,
            &config.tls_ca_file,
        ];
        if files.iter().all(|f| f.is_empty()) {
            return Ok(None);
        }
        let needed = |key: &'static str, value: &str| {
            if value.is_empty() {
                Err(TlsError::Incomplete(key))
            } else {
                Ok(Path::new(value).to_owned())
            }
        };
        let cert = needed("cluster.tls_cert_file", &config.tls_cert_file)?;
        let key = needed("cluster.tls_key_file", &config.tls_key_file)?;
        let ca = needed("cluster.tls_ca_file", &config.tls_ca_file)?;
        let chain = certificates("cluster.tls_cert_file", &cert)?;
        let key = private_key("cluster.tls_key_file", &key)?;
        let roots = Arc::new(roots("cluster.tls_ca_file", &ca)?);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Some(NodeTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        }))
    }

    /// The listener's side of the handshake on an accepted socket.
    pub async fn accept(&self, socket: TcpStream) -> std::io::Result<server::TlsStream<TcpStream>> {
        self.acceptor.accept(socket).await
    }

    /// The dialer's side of the handshake on a socket connected to `addr` ("host:port").
    pub async fn connect(
        &self,
        addr: &str,
        socket: TcpStream,
    ) -> std::io::Result<client::TlsStream<TcpStream>> {
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{addr}: '{host}' is not a host name or IP address for TLS: {e}"),
            )
        })?;
        self.connector.connect(name, socket).await
    }
}

/// The host of "host:port", "[v6]:port" or a bare host.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn the_host_of_an_address() {
        assert_eq!(host_of("127.0.0.1:25672"), "127.0.0.1");
        assert_eq!(host_of("node-1.example:25672"), "node-1.example");
        assert_eq!(host_of("[::1]:25672"), "::1");
        assert_eq!(host_of("node-1"), "node-1");
    }
}
