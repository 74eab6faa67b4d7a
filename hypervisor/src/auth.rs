//! Who may use a node's API: TLS with client certificates, roles in the certificates, and credential files.
//!
//! A node serves its API over TLS 1.3 (rustls, `ring`). Clients prove who they are with a certificate of the
//! node's **API CA**; its organizational unit (OU) is the caller's [`Role`]: `admin` may do everything,
//! `read-only` only `GET`s (every change is a 403). A connection without a certificate gets 401 on every
//! request; a certificate of another CA is refused at the handshake.
//!
//! A client keeps what it needs in a **credential file** (TOML, like a kubeconfig, mode 0600): the API URL,
//! the CA certificate that the node's server certificate must chain to, and the client certificate and key
//! ([`Credentials`]). The `dvs` CLI finds it through `--credentials FILE`, `DVS_CREDENTIALS`, or the default
//! path [`default_path`] (`$XDG_CONFIG_HOME/dvs/credentials.toml`, else `~/.config/dvs/credentials.toml`).
//!
//! Where the API's certificates come from: node.toml's `api_tls = { ca, cert, key, credentials }`, files
//! issued elsewhere (`dvs cluster api-cert`, `dvs cluster credentials`), so the node holds no CA key
//! ([`node_pki_from_files`]); or ([`node_pki`]) node.toml's `api_ca = { cert, key }` (e.g. the cluster CA of
//! `dvs cluster init`; every node given the same CA accepts the others' credentials, which node-to-node calls
//! such as a migration need), or, with neither, a CA the node makes in `<data_dir>/api/` on first start. With
//! a CA the node issues its server certificate (renewed on every start, naming localhost, its listen address
//! and its cluster-file API address) and, if they are missing, `<data_dir>/api/admin.toml` and
//! `<data_dir>/api/read-only.toml`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use dvs_proxy::tls::{new_cluster_ca, Pem};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything.
    Admin,
    /// Only `GET` (and `HEAD`): every change is refused with 403.
    ReadOnly,
}

impl Role {
    /// The name used in certificates (OU) and on the command line: `admin`, `read-only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::ReadOnly => "read-only",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "read-only" => Ok(Role::ReadOnly),
            _ => Err(format!("role '{s}': expected admin or read-only")),
        }
    }
}

/// Who is calling, as the TLS handshake established it (an extension of every request the API serves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate.
    Anonymous,
    /// A certificate of the API CA that names no known role.
    NoRole,
    /// A certificate of the API CA with this role.
    Role(Role),
}

/// Why credentials or TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A credential file does not parse.
    #[error("credential file {path}: {why}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// PEM data holds nothing usable.
    #[error("{what}: {why}")]
    Pem {
        /// What was read.
        what: String,
        /// Why it is unusable.
        why: String,
    },
    /// rustls refused the set-up.
    #[error("TLS set-up: {0}")]
    Rustls(#[from] rustls::Error),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// The CA or another TLS piece of dvs-proxy failed.
    #[error(transparent)]
    Tls(#[from] dvs_proxy::tls::TlsError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A credential file: where the API is and how to prove who we are to it (all PEM inline).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The API's URL, `https://HOST:PORT` (the node the CLI talks to when `--node` is not given).
    pub url: String,
    /// The client's name (the certificate's common name; for people and logs).
    pub name: String,
    /// The role the certificate carries (for people: the node reads it from the certificate).
    pub role: Role,
    /// The API CA's certificate: the node's server certificate must chain to it.
    pub ca: String,
    /// The client certificate.
    pub cert: String,
    /// The client certificate's private key.
    pub key: String,
}

impl fmt::Debug for Credentials {
    /// Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("key", &"<secret>")
            .finish()
    }
}

/// The default credential file: `$XDG_CONFIG_HOME/dvs/credentials.toml`, else `$HOME/.config/dvs/credentials.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("dvs").join("credentials.toml"))
}

/// The environment variable naming a credential file.
pub const CREDENTIALS_ENV: &str = "DVS_CREDENTIALS";

impl Credentials {
    /// Reads a credential file.
    pub fn load(path: &Path) -> Result<Credentials, AuthError> {
        let text = std::fs::read_to_string(path).map_err(io_err(path))?;
        let c: Credentials = toml::from_str(&text).map_err(|e| AuthError::BadFile {
            path: path.into(),
            why: e.to_string(),
        })?;
        c.client_config().map_err(|e| AuthError::BadFile {
            path: path.into(),
            why: e.to_string(),
        })?;
        Ok(c)
    }

    /// The credential file to use: `explicit`, else `$DVS_CREDENTIALS`, else [`default_path`] if it exists;
    /// `None` when there is none (a plain-HTTP client then, which a TLS node refuses).
    pub fn discover(explicit: Option<&Path>) -> Result<Option<(PathBuf, Credentials)>, AuthError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => match std::env::var_os(CREDENTIALS_ENV).filter(|v| !v.is_empty()) {
                Some(p) => PathBuf::from(p),
                None => match default_path().filter(|p| p.is_file()) {
                    Some(p) => p,
                    None => return Ok(None),
                },
            },
        };
        let c = Credentials::load(&path)?;
        Ok(Some((path, c)))
    }

    /// Writes the file with mode 0600 (its folder made 0700 if missing); `replace` overwrites an existing one.
    pub fn save(&self, path: &Path, replace: bool) -> Result<(), AuthError> {
        let text = format!(
            "# dvs API credentials ({} '{}'): give them to `dvs --credentials FILE` or DVS_CREDENTIALS.\n\
             # They hold a private key: keep this file private.\n{}",
            self.role,
            self.name,
            toml::to_string(self).map_err(|e| AuthError::BadFile {
                path: path.into(),
                why: e.to_string(),
            })?
        );
        write_private(path, text.as_bytes(), replace)
    }

    /// The rustls client configuration: trusts only the CA of the file, presents the client certificate.
    pub fn client_config(&self) -> Result<ClientConfig, AuthError> {
        let roots = roots(self.ca.as_bytes())?;
        let chain = certs(self.cert.as_bytes(), "client certificate")?;
        let key =
            PrivateKeyDer::from_pem_slice(self.key.as_bytes()).map_err(|e| AuthError::Pem {
                what: "client key".into(),
                why: e.to_string(),
            })?;
        Ok(ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?)
    }
}

/// Writes `bytes` to `path` with mode 0600 (and its folder 0700 if it is made here).
pub fn write_private(path: &Path, bytes: &[u8], replace: bool) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
    }
    // Written beside, then renamed: a reader never sees half a key, and a replaced file keeps mode 0600.
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(&tmp))?;
    if !replace && path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(AuthError::Io {
            path: path.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists (not overwriting it)",
            ),
        });
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn roots(ca: &[u8]) -> Result<RootCertStore, AuthError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca, "CA certificate")? {
        roots.add(c)?;
    }
    Ok(roots)
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, AuthError> {
    let v = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AuthError::Pem {
            what: what.into(),
            why: e.to_string(),
        })?;
    if v.is_empty() {
        return Err(AuthError::Pem {
            what: what.into(),
            why: "no certificate".into(),
        });
    }
    Ok(v)
}

/// Issues a client certificate of role `role` for `name` from `ca`, as a credential file for `url`.
pub fn issue_credentials(
    ca: &Pem,
    name: &str,
    role: Role,
    url: &str,
) -> Result<Credentials, AuthError> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    };
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, KeyPair::from_pem(&ca.key)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "dvs api client");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    let c = Credentials {
        url: url.into(),
        name: name.into(),
        role,
        ca: ca.cert.clone(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    };
    c.client_config()?;
    Ok(c)
}

/// Issues an API server certificate from `ca` naming `names` (DNS names or IP addresses).
pub fn issue_server_cert(ca: &Pem, names: &[String]) -> Result<Pem, AuthError> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    };
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, KeyPair::from_pem(&ca.key)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "dvs node API");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The role a (verified) client certificate carries: its OU `admin` or `read-only`.
pub fn role_of(cert: &CertificateDer<'_>) -> Option<Role> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let mut roles = x
        .subject()
        .iter_organizational_unit()
        .filter_map(|ou| ou.as_str().ok()?.parse::<Role>().ok());
    let role = roles.next()?;
    // Two roles in one certificate is a certificate nobody here made: it gets none.
    roles.next().is_none().then_some(role)
}

/// The caller a handshake established: the role of the leaf of `certs` (already verified by the acceptor).
pub fn caller_of(certs: Option<&[CertificateDer<'_>]>) -> Caller {
    match certs.and_then(|c| c.first()) {
        None => Caller::Anonymous,
        Some(leaf) => role_of(leaf).map_or(Caller::NoRole, Caller::Role),
    }
}

/// The API's TLS server configuration: this server certificate, client certificates of `ca` (optional, so
/// that a caller without one gets a 401 that says why rather than a failed handshake).
pub fn server_config(ca_cert: &str, server: &Pem) -> Result<ServerConfig, AuthError> {
    let roots = Arc::new(roots(ca_cert.as_bytes())?);
    let clients = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| AuthError::Pem {
            what: "API CA certificate".into(),
            why: e.to_string(),
        })?;
    let chain = certs(server.cert.as_bytes(), "API server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(server.key.as_bytes()).map_err(|e| AuthError::Pem {
        what: "API server key".into(),
        why: e.to_string(),
    })?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// node.toml's `api_ca`: the CA (certificate and key, PEM files) the node issues its API certificates from.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaFiles {
    /// The CA certificate.
    pub cert: PathBuf,
    /// The CA's private key.
    pub key: PathBuf,
}

impl CaFiles {
    /// The same with relative paths taken relative to `base`.
    pub fn relative_to(&self, base: &Path) -> CaFiles {
        CaFiles {
            cert: base.join(&self.cert),
            key: base.join(&self.key),
        }
    }
}

/// node.toml's `api_tls`: API certificates issued elsewhere (the node holds no CA key): the CA that client
/// certificates must chain to, the server certificate and key (`dvs cluster api-cert`), and optionally the
/// credential file the node presents to other nodes' APIs (migration).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTlsFiles {
    /// The API CA's certificate.
    pub ca: PathBuf,
    /// This node's API server certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// Credentials for other nodes' APIs (`dvs cluster credentials`); without them this node cannot migrate
    /// instances out.
    #[serde(default)]
    pub credentials: Option<PathBuf>,
}

impl ApiTlsFiles {
    /// The same with relative paths taken relative to `base`.
    pub fn relative_to(&self, base: &Path) -> ApiTlsFiles {
        ApiTlsFiles {
            ca: base.join(&self.ca),
            cert: base.join(&self.cert),
            key: base.join(&self.key),
            credentials: self.credentials.as_ref().map(|c| base.join(c)),
        }
    }
}

/// What a node needs to serve its API and to call other nodes' APIs.
pub struct NodePki {
    /// The TLS server configuration of the API.
    pub server: Arc<ServerConfig>,
    /// The credential files the node wrote (admin, read-only), or none (`api_tls`).
    pub files: Vec<PathBuf>,
    /// What the node presents to other nodes' APIs (migration): its admin credentials, or `api_tls`'s.
    pub peer_credentials: Option<Credentials>,
}

/// The API PKI of a node with `api_tls`: the files as they are, nothing written.
pub fn node_pki_from_files(files: &ApiTlsFiles) -> Result<NodePki, AuthError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err(p));
    let server = Pem {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
    };
    let server = Arc::new(server_config(&read(&files.ca)?, &server)?);
    let peer_credentials = match &files.credentials {
        Some(p) => Some(Credentials::load(p)?),
        None => None,
    };
    Ok(NodePki {
        server,
        files: Vec::new(),
        peer_credentials,
    })
}

fn read_pem_pair(ca: &CaFiles) -> Result<Pem, AuthError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err(p));
    Ok(Pem {
        cert: read(&ca.cert)?,
        key: read(&ca.key)?,
    })
}

/// Sets up a node's API PKI in `<data_dir>/api/` (see the module doc): the CA (`api_ca`, or one made here on
/// first start), a fresh server certificate naming `names`, and the admin and read-only credential files for
/// `url` (issued when missing, or when they are of another CA or URL).
pub fn node_pki(
    data_dir: &Path,
    api_ca: Option<&CaFiles>,
    names: &[String],
    url: &str,
) -> Result<NodePki, AuthError> {
    let dir = data_dir.join("api");
    let ca = match api_ca {
        Some(files) => read_pem_pair(files)?,
        None => {
            let files = CaFiles {
                cert: dir.join("ca.pem"),
                key: dir.join("ca.key"),
            };
            if files.cert.exists() && files.key.exists() {
                read_pem_pair(&files)?
            } else {
                let ca = new_cluster_ca("node API")?;
                write_private(&files.key, ca.key.as_bytes(), true)?;
                write_private(&files.cert, ca.cert.as_bytes(), true)?;
                ca
            }
        }
    };
    let server = issue_server_cert(&ca, names)?;
    write_private(&dir.join("server.pem"), server.cert.as_bytes(), true)?;
    write_private(&dir.join("server.key"), server.key.as_bytes(), true)?;
    let mut files = Vec::new();
    for (role, file) in [
        (Role::Admin, "admin.toml"),
        (Role::ReadOnly, "read-only.toml"),
    ] {
        let path = dir.join(file);
        let current = Credentials::load(&path)
            .ok()
            .filter(|c| c.ca == ca.cert && c.url == url && c.role == role);
        let creds = match current {
            Some(c) => c,
            None => {
                let c = issue_credentials(&ca, role.as_str(), role, url)?;
                c.save(&path, true)?;
                c
            }
        };
        files.push((path, creds));
    }
    let server = Arc::new(server_config(&ca.cert, &server)?);
    let admin = files.first().map(|(_, c)| c.clone());
    Ok(NodePki {
        server,
        files: files.into_iter().map(|(p, _)| p).collect(),
        peer_credentials: admin,
    })
}

/// The names an API server certificate carries: `localhost`, the loopback addresses, and every specific
/// address in `addrs` (unspecified ones, `0.0.0.0`, are skipped).
pub fn server_names(addrs: &[IpAddr]) -> Vec<String> {
    let mut v: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for a in addrs {
        let s = a.to_string();
        if !a.is_unspecified() && !v.contains(&s) {
            v.push(s);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_carry_their_role_and_survive_a_round_trip() {
        let dir = std::env::temp_dir().join(format!("dvs-auth-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let pki = node_pki(&dir, None, &server_names(&[]), "https://127.0.0.1:1").unwrap();
        let again = Credentials::load(&pki.files[0]).unwrap();
        assert_eq!(Some(&again), pki.peer_credentials.as_ref());
        let ro = Credentials::load(&pki.files[1]).unwrap();
        let leaf = |c: &Credentials| certs(c.cert.as_bytes(), "t").unwrap().remove(0);
        assert_eq!(role_of(&leaf(&again)), Some(Role::Admin));
        assert_eq!(role_of(&leaf(&ro)), Some(Role::ReadOnly));
        use std::os::unix::fs::PermissionsExt;
        for f in ["ca.key", "server.key", "admin.toml", "read-only.toml"] {
            let mode = std::fs::metadata(dir.join("api").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        // A second start keeps the CA and the credential files.
        let pki2 = node_pki(&dir, None, &server_names(&[]), "https://127.0.0.1:1").unwrap();
        assert_eq!(pki2.peer_credentials, pki.peer_credentials);
        assert!(!format!("{again:?}").contains("PRIVATE"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
