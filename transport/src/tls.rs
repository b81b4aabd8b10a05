//! Identities: the cluster CA, certificates that carry a role and a name, and the rustls
//! configurations that make every QUIC connection mutually authenticated.
//!
//! A certificate's subject holds the peer's name (CN) and role (OU). The role decides what a
//! peer may do (see `Role`); the name is a node name, a host id or an operator's name.

use std::{fmt, path::Path, path::PathBuf, str::FromStr, sync::Arc};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// The DNS name every control-plane certificate carries and every client verifies. Nodes are
/// found by address; their identity is "a server of this cluster's CA".
pub const SERVER_NAME: &str = "server.qvdc";
const CA_NAME: &str = "qvdc cluster CA";
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const NAME_BYTES_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    BadPem { path: PathBuf, what: String },
    #[error("{0} already exists; refusing to overwrite a CA (remove it first if you mean it)")]
    CaExists(PathBuf),
    #[error("invalid name {name:?}: {why}")]
    BadName { name: String, why: &'static str },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
}

/// What a certificate allows its holder to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A control-plane node: may take part in Raft.
    Server,
    /// A host agent: may register and report, only for the host id in its certificate.
    Host,
    /// A person or tool driving the cluster through the API.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Host => "host",
            Role::Operator => "operator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "server" => Ok(Role::Server),
            "host" => Ok(Role::Host),
            "operator" => Ok(Role::Operator),
            other => Err(format!(
                "unknown role {other:?}: expected server, host or operator"
            )),
        }
    }
}

/// Who is at the other end of a connection, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
}

/// This process's credentials: the CA it trusts and its own certificate and key.
#[derive(Debug)]
pub struct Identity {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Loads PEM files: the cluster CA certificate, this peer's certificate and its key.
    pub fn load(ca_cert: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let ca =
            CertificateDer::from_pem_slice(&read(ca_cert)?).map_err(|e| bad_pem(ca_cert, e))?;
        let chain =
            vec![CertificateDer::from_pem_slice(&read(cert)?).map_err(|e| bad_pem(cert, e))?];
        let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| bad_pem(key, e))?;
        Ok(Self { ca, chain, key })
    }

    /// Secrets for QUIC stateless resets, derived from this peer's private key so that they
    /// are the same after a restart: the HMAC key behind reset tokens and the key that signs
    /// connection ids. A restarted node then recognises the connection ids it issued before
    /// and answers packets on its previous incarnation's connections with a reset, so peers
    /// learn at their next packet that the connection is gone instead of waiting out the
    /// idle timeout.
    pub fn stateless_reset_keys(&self) -> (Arc<ring::hmac::Key>, u64) {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"qvdc stateless reset v1");
        context.update(self.key.secret_der());
        let digest = context.finish();
        let bytes = digest.as_ref();
        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes);
        let cid_key = u64::from_le_bytes(bytes[..8].try_into().expect("a SHA-256 digest"));
        (Arc::new(hmac), cid_key)
    }

    /// The identity described by this process's own certificate.
    pub fn peer_identity(&self) -> Result<PeerIdentity, TlsError> {
        identity_of(&self.chain[0])
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// rustls server configuration that demands a client certificate from the same CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::PeerCertificate(e.to_string()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
        Ok(config)
    }

    /// rustls client configuration that presents this identity and trusts only the CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
        Ok(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn bad_pem(path: &Path, e: impl fmt::Display) -> TlsError {
    TlsError::BadPem {
        path: path.to_owned(),
        what: e.to_string(),
    }
}

/// Reads the role and name out of a DER certificate that rustls has already verified.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<PeerIdentity, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| TlsError::PeerCertificate(e.to_string()))?;
    let subject = parsed.subject();
    let field = |value: Option<&x509_parser::x509::AttributeTypeAndValue<'_>>, what: &str| {
        value
            .and_then(|v| v.as_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| TlsError::PeerCertificate(format!("certificate has no {what}")))
    };
    let name = field(subject.iter_common_name().next(), "common name")?;
    let role = field(subject.iter_organizational_unit().next(), "role (OU)")?;
    let role = role.parse().map_err(TlsError::PeerCertificate)?;
    Ok(PeerIdentity { role, name })
}

/// Checks a peer name: 1 to 64 characters of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn validate_name(name: &str) -> Result<(), TlsError> {
    let bad = |why| {
        Err(TlsError::BadName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() || name.len() > NAME_BYTES_MAX {
        return bad("must be 1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad("may only contain letters, digits, '.', '_' and '-'");
    }
    if name.starts_with('.') {
        return bad("must not start with '.'");
    }
    Ok(())
}

/// Creates a new cluster CA in `dir` (`ca.crt`, `ca.key`). Refuses to overwrite one.
pub fn init_ca(dir: &Path) -> Result<PathBuf, TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let cert_path = dir.join(CA_CERT_FILE);
    if cert_path.exists() {
        return Err(TlsError::CaExists(cert_path));
    }
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let cert = params.self_signed(&key)?;
    write(&dir.join(CA_KEY_FILE), &key.serialize_pem())?;
    write(&cert_path, &cert.pem())?;
    Ok(cert_path)
}

/// Issues a certificate for `name` with `role`, signed by the CA in `dir`; writes
/// `dir/NAME.crt` and `dir/NAME.key` and returns their paths.
pub fn issue(dir: &Path, role: Role, name: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    validate_name(name)?;
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key = KeyPair::from_pem(&String::from_utf8_lossy(&read(&ca_key_path)?))
        .map_err(|e| bad_pem(&ca_key_path, e))?;
    let ca_pem = String::from_utf8_lossy(&read(&ca_cert_path)?).into_owned();
    let issuer =
        Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| bad_pem(&ca_cert_path, e))?;

    let mut sans = vec![name.to_owned()];
    if role == Role::Server {
        sans.extend([SERVER_NAME.to_owned(), "localhost".to_owned()]);
    }
    let mut params = CertificateParams::new(sans)?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Server => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Host | Role::Operator => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let cert = params.signed_by(&key, &issuer)?;
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    write(&key_path, &key.serialize_pem())?;
    write(&cert_path, &cert.pem())?;
    Ok((cert_path, key_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_role_and_name() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        for (role, name) in [
            (Role::Server, "node-1"),
            (Role::Host, "host-1"),
            (Role::Operator, "alice"),
        ] {
            let (cert, key) = issue(dir.path(), role, name).unwrap();
            let id = Identity::load(&dir.path().join("ca.crt"), &cert, &key).unwrap();
            assert_eq!(
                id.peer_identity().unwrap(),
                PeerIdentity {
                    role,
                    name: name.into()
                }
            );
            id.server_config().unwrap();
            id.client_config().unwrap();
        }
    }

    #[test]
    fn a_second_ca_in_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        assert!(matches!(init_ca(dir.path()), Err(TlsError::CaExists(_))));
    }

    #[test]
    fn names_that_could_escape_the_directory_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        for name in ["", "../evil", "a/b", ".hidden", &"x".repeat(65)] {
            assert!(
                matches!(
                    issue(dir.path(), Role::Host, name),
                    Err(TlsError::BadName { .. })
                ),
                "{name}"
            );
        }
    }
}
