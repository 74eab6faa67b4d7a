//! Node identity and TLS on peer links.
//!
//! A cluster has one CA (`dvs cluster init`); every node holds a certificate of that CA (`dvs node cert`) whose
//! only subject alternative name is the DNS name `node-<id>.dvs` ([`node_dns_name`]), and uses it as both TLS
//! server and client. Peer links are mutual TLS 1.3 (rustls, `ring` provider): the dialling side checks that the
//! peer's certificate names the node it dialled, the accepting side that it names the node the peer claims in
//! its Hello. The node's human name is the certificate's common name, for people only: it is never trusted for
//! anything, so a name like `node-3.dvs` cannot make a certificate valid for another node.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use m3ipc_core::NodeId;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The DNS name a node's certificate must carry: `node-<id>.dvs`.
pub fn node_dns_name(node: NodeId) -> String {
    format!("node-{}.dvs", node.0)
}

/// Where a node's TLS files are (PEM): the cluster CA's certificate, this node's certificate and its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate.
    pub ca: PathBuf,
    /// This node's certificate (issued by the CA).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The same files with relative paths taken relative to `base` (the folder of the config file).
    pub fn relative_to(&self, base: &Path) -> TlsFiles {
        TlsFiles {
            ca: base.join(&self.ca),
            cert: base.join(&self.cert),
            key: base.join(&self.key),
        }
    }
}

/// Why TLS could not be set up or a certificate not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{what}: {why}")]
    Pem {
        /// What was being read.
        what: String,
        /// Why it is unusable.
        why: String,
    },
    /// rustls refused the set-up (for instance, a key that does not match the certificate).
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
    /// This node's own certificate is not one the cluster would accept as this node.
    #[error("this node's certificate is not valid as {name} under the cluster CA: {why}")]
    NotThisNode {
        /// The name it should carry.
        name: String,
        /// What the check said.
        why: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

impl fmt::Debug for Pem {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem").field("key", &"<secret>").finish()
    }
}

/// Makes a new cluster CA (ECDSA P-256, self-signed) whose common name says `cluster`.
pub fn new_cluster_ca(cluster: &str) -> Result<Pem, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("dvs cluster CA ({cluster})"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "dvs");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Issues the certificate of node `node` (human name `name`) signed by the CA `ca`: SAN DNS
/// [`node_dns_name`], common name `name`, usable as TLS server and client. The result is checked against the
/// CA before it is returned (a CA key that does not belong to the CA certificate is caught here).
pub fn issue_node_cert(ca: &Pem, name: &str, node: NodeId) -> Result<Pem, TlsError> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![node_dns_name(node)])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "dvs node");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    let pem = Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    };
    // The same check a node makes of its own certificate when it starts.
    PeerTls::from_pem(
        ca.cert.as_bytes(),
        pem.cert.as_bytes(),
        pem.key.as_bytes(),
        node,
    )?;
    Ok(pem)
}

/// What a node needs for TLS on its peer links: its certificate and key, and the cluster CA to check peers by.
#[derive(Clone)]
pub struct PeerTls {
    node: NodeId,
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// Checks a certificate's chain to the cluster CA and the node name in it.
    names: Arc<WebPkiServerVerifier>,
}

impl fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerTls({})", node_dns_name(self.node))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl PeerTls {
    /// Reads the files of `node` and checks that its certificate chains to the CA and names the node.
    pub fn load(files: &TlsFiles, node: NodeId) -> Result<PeerTls, TlsError> {
        let (ca, cert, key) = (read(&files.ca)?, read(&files.cert)?, read(&files.key)?);
        PeerTls::from_pem(&ca, &cert, &key, node).map_err(|e| match e {
            TlsError::Pem { what, why } => TlsError::Pem {
                what: format!(
                    "{what} ({} / {} / {})",
                    files.ca.display(),
                    files.cert.display(),
                    files.key.display()
                ),
                why,
            },
            e => e,
        })
    }

    /// The same from PEM bytes: the CA certificate(s), this node's certificate chain and its private key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8], node: NodeId) -> Result<PeerTls, TlsError> {
        let pem = |what: &str, e: rustls_pki_types::pem::Error| TlsError::Pem {
            what: what.into(),
            why: e.to_string(),
        };
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            let c = c.map_err(|e| pem("CA certificate", e))?;
            roots.add(c)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Pem {
                what: "CA certificate".into(),
                why: "no certificate in the file".into(),
            });
        }
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem("node certificate", e))?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Pem {
                what: "node certificate".into(),
                why: "no certificate in the file".into(),
            });
        };
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| pem("node key", e))?;
        let roots = Arc::new(roots);
        let names = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Pem {
                what: "CA certificate".into(),
                why: e.to_string(),
            })?;
        let name = node_dns_name(node);
        let server_name =
            ServerName::try_from(name.clone()).map_err(|e| TlsError::NotThisNode {
                name: name.clone(),
                why: e.to_string(),
            })?;
        names
            .verify_server_cert(leaf, &chain[1..], &server_name, &[], UnixTime::now())
            .map_err(|e| TlsError::NotThisNode {
                name: name.clone(),
                why: e.to_string(),
            })?;
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Pem {
                what: "CA certificate".into(),
                why: e.to_string(),
            })?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(PeerTls {
            node,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            names,
        })
    }

    /// The node these files are for.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Runs the server side of the handshake: the peer must present a certificate of the cluster CA.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }

    /// Runs the client side of the handshake with `node`: its certificate must be of the cluster CA and name it.
    pub async fn connect(
        &self,
        tcp: TcpStream,
        node: NodeId,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = ServerName::try_from(node_dns_name(node))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        self.connector.connect(name, tcp).await
    }

    /// Checks that `certs` (a peer's chain, as the handshake got it) name `node`.
    pub fn names(&self, certs: &[CertificateDer<'_>], node: NodeId) -> Result<(), String> {
        let (leaf, rest) = certs.split_first().ok_or("no certificate")?;
        let name = ServerName::try_from(node_dns_name(node)).map_err(|e| e.to_string())?;
        self.names
            .verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// True if a handshake error says the peer's certificate is fine but names another node.
pub(crate) fn is_name_mismatch(e: &std::io::Error) -> bool {
    use rustls::CertificateError;
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return false;
    };
    matches!(
        inner,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    )
}
