//! Test certificates made with rcgen (a CA, the server's certificate for 127.0.0.1 and
//! localhost, client certificates), written to a fresh directory, and rustls clients that trust
//! the CA.

use super::bounded;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use switchboard::config::TlsConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::{self, pki_types, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

pub struct TestPki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

impl TestPki {
    /// A new CA, and a server certificate signed by it in `dir`.
    pub fn new() -> Self {
        let dir = super::fresh_data_dir().with_extension("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "switchboard test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        let pki = TestPki { dir, ca };
        pki.write_server_certificate("switchboard test server");
        pki
    }

    /// (Re)writes the server's certificate and key, with `cn` as its common name.
    pub fn write_server_certificate(&self, cn: &str) -> Vec<u8> {
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("server certificate");
        std::fs::write(self.dir.join("server.pem"), cert.pem()).expect("write cert");
        std::fs::write(self.dir.join("server.key"), key.serialize_pem()).expect("write key");
        cert.der().to_vec()
    }

    /// A certificate for cluster node `name` (for 127.0.0.1 and localhost, used both to
    /// accept and to dial other nodes) and its key, signed by this CA: the paths of the
    /// certificate, the key and the CA.
    pub fn write_node_certificate(&self, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("node key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("node params");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.ca).expect("node certificate");
        let file = name.replace(['@', '/'], "_");
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write node cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write node key");
        (cert_path, key_path, self.dir.join("ca.pem"))
    }

    /// A client certificate and key for `cn`, signed by this CA.
    pub fn client_identity(
        &self,
        cn: &str,
    ) -> (
        Vec<pki_types::CertificateDer<'static>>,
        pki_types::PrivateKeyDer<'static>,
    ) {
        let (cert, key) = self.issue_client(cn);
        let key = pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        (vec![cert.der().clone()], key)
    }

    fn issue_client(&self, cn: &str) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("client certificate");
        (cert, key)
    }

    /// As [`TestPki::client_identity`], as PEM (certificate, PKCS#8 key), for clients that take
    /// files' contents (lapin).
    pub fn client_identity_pem(&self, cn: &str) -> (String, String) {
        let (cert, key) = self.issue_client(cn);
        (cert.pem(), key.serialize_pem())
    }

    /// The CA's certificate as PEM (what clients add to their trusted roots).
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// The broker's `[tls]` for this CA's server certificate.
    pub fn server_config(&self, verify_peer: bool, fail_if_no_peer_cert: bool) -> TlsConfig {
        TlsConfig {
            cert_file: Some(self.dir.join("server.pem")),
            key_file: Some(self.dir.join("server.key")),
            ca_file: Some(self.dir.join("ca.pem")),
            verify_peer,
            fail_if_no_peer_cert,
            versions: Vec::new(),
        }
    }

    /// A client that trusts this CA, presenting `identity` if given.
    pub fn connector(
        &self,
        identity: Option<(
            Vec<pki_types::CertificateDer<'static>>,
            pki_types::PrivateKeyDer<'static>,
        )>,
    ) -> TlsConnector {
        TlsConnector::from(self.client_config(identity))
    }

    /// The rustls configuration of [`TestPki::connector`] (for clients that take one, as
    /// rumqttc).
    pub fn client_config(
        &self,
        identity: Option<(
            Vec<pki_types::CertificateDer<'static>>,
            pki_types::PrivateKeyDer<'static>,
        )>,
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.der().clone())
            .expect("CA into the root store");
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots);
        let config = match identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .expect("client identity"),
            None => builder.with_no_client_auth(),
        };
        Arc::new(config)
    }
}

/// A TLS connection to `addr` (the server's name checked as 127.0.0.1).
pub async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = bounded(TcpStream::connect(addr)).await?;
    let name = pki_types::ServerName::IpAddress(addr.ip().into());
    bounded(connector.connect(name, tcp)).await
}
