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
use rustls::{sign::CertifiedKey, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, UnixTime};

/// The DNS name every control-plane certificate carries and every client verifies. Nodes are
/// found by address; their identity is "a server of this cluster's CA".
pub const SERVER_NAME: &str = "server.qvdc";
const CA_NAME: &str = "qvdc cluster CA";
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
const NAME_BYTES_MAX: usize = 64;
/// Names no certificate may take: `ca` would be written over the CA's own files.
pub const NAMES_RESERVED: [&str; 1] = ["ca"];
/// How long a new CA is valid.
pub const CA_VALIDITY_DAYS: u32 = 3_650;
/// How long a certificate is valid unless `--days` says otherwise: a year, so that a lost
/// certificate stops working on its own even if nobody revokes it.
pub const CERT_VALIDITY_DAYS_DEFAULT: u32 = 365;
/// The longest validity `--days` may ask for: the CA's.
pub const CERT_VALIDITY_DAYS_MAX: u32 = CA_VALIDITY_DAYS;
/// A certificate is valid from this long before it is issued, for clocks a little behind.
const CLOCK_SKEW_SECS: i64 = 3_600;
/// The DER prefix of an Ed25519 private key as PKCS#8 v1 (RFC 8410), before its 32-byte
/// seed. ring writes v2 documents, which add the public key; OpenSSL 3.0 and Python's
/// `cryptography` cannot read those, so keys are written as v1, which every tool reads.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The same key as ring writes it (v2), up to the seed.
const ED25519_PKCS8_V2_PREFIX: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const ED25519_SEED_BYTES: usize = 32;
/// How often a running node or host looks at its certificate files for a new certificate
/// (SIGHUP makes it look at once).
pub const CERT_RELOAD_INTERVAL_MS: u64 = 5_000;

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
    #[error("{0} already exists; pass --replace to issue a new certificate and key in its place")]
    Exists(PathBuf),
    #[error("--days must be 1 to {CERT_VALIDITY_DAYS_MAX}, not {0}")]
    BadValidity(u32),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("peer certificate: {0}")]
    PeerCertificate(String),
    #[error("new certificate {path} not taken: {why}; still using the previous one")]
    Rotation { path: PathBuf, why: String },
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
    /// The certificate's serial number, as [`serial_hex`] writes it: what a revocation names.
    pub serial: String,
}

/// The longest serial number a certificate may carry (RFC 5280, 4.1.2.2), in bytes.
pub const SERIAL_BYTES_MAX: usize = 20;

/// A serial number as `openssl x509 -noout -serial` prints it, in lowercase: hexadecimal
/// without separators or leading zero bytes.
pub fn serial_hex(raw: &[u8]) -> String {
    let first = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    raw[first..].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a serial number as an operator may paste it: `serial=7A3B…` from `openssl`,
/// `7a:3b:…` from other tools, any case. Returns it as [`serial_hex`] writes it.
pub fn parse_serial(text: &str) -> Result<String, String> {
    let trimmed = text.trim();
    let digits: String = trimmed
        .strip_prefix("serial=")
        .unwrap_or(trimmed)
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let bad = || {
        format!(
            "{text:?} is not a certificate serial number: expected 1 to {} hexadecimal digits, as `openssl x509 -noout -serial -in FILE` prints",
            SERIAL_BYTES_MAX * 2
        )
    };
    if digits.is_empty()
        || digits.len() > SERIAL_BYTES_MAX * 2
        || !digits.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(bad());
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let raw: Vec<u8> = (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).expect("checked hexadecimal"))
        .collect();
    Ok(serial_hex(&raw))
}

/// The identity in a PEM certificate file, e.g. one to revoke.
pub fn certificate_file(path: &Path) -> Result<PeerIdentity, TlsError> {
    let cert = CertificateDer::from_pem_slice(&read(path)?).map_err(|e| bad_pem(path, e))?;
    identity_of(&cert).map_err(|e| bad_pem(path, e))
}

/// This process's credentials: the CA it trusts and its own certificate and key.
///
/// The certificate and key in use can be replaced while the process runs ([`Identity::reload`]):
/// every handshake asks [`Credentials`] for them, so new connections use the new pair and
/// established ones keep theirs. Clones share the pair in use.
#[derive(Debug)]
pub struct Identity {
    ca: CertificateDer<'static>,
    /// The certificate and key loaded at start: the stateless-reset secrets derive from
    /// this key, so they stay the same across rotations.
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    credentials: Arc<Credentials>,
    /// Where the certificate and key were read from, for reloading; `None` for an identity
    /// issued in memory, which has nothing to reload.
    files: Option<(PathBuf, PathBuf)>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            credentials: self.credentials.clone(),
            files: self.files.clone(),
        }
    }
}

/// The certificate and key this process presents, replaceable at any time.
#[derive(Debug)]
struct Credentials {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl Credentials {
    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .expect("credentials lock poisoned")
            .clone()
    }
}

impl rustls::server::ResolvesServerCert for Credentials {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Credentials {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// What [`Identity::reload`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The files hold the certificate in use.
    Unchanged,
    /// A new certificate is in use from the next handshake on.
    Replaced { serial: String },
}

/// Reads a certificate and its key and checks that they belong together.
fn certified_key(
    cert_path: &Path,
    key_path: &Path,
) -> Result<
    (
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
        CertifiedKey,
    ),
    TlsError,
> {
    let cert =
        CertificateDer::from_pem_slice(&read(cert_path)?).map_err(|e| bad_pem(cert_path, e))?;
    let key = PrivateKeyDer::from_pem_slice(&read(key_path)?).map_err(|e| bad_pem(key_path, e))?;
    let certified = CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), &provider())
        .map_err(|e| TlsError::BadPem {
            path: key_path.to_owned(),
            what: format!("not the key of {}: {e}", cert_path.display()),
        })?;
    Ok((cert, key, certified))
}

impl Identity {
    /// Loads PEM files: the cluster CA certificate, this peer's certificate and its key.
    pub fn load(ca_cert: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let ca =
            CertificateDer::from_pem_slice(&read(ca_cert)?).map_err(|e| bad_pem(ca_cert, e))?;
        let (cert_der, key_der, certified) = certified_key(cert, key)?;
        Ok(Self {
            ca,
            chain: vec![cert_der],
            key: key_der,
            credentials: Arc::new(Credentials {
                current: std::sync::RwLock::new(Arc::new(certified)),
            }),
            files: Some((cert.to_owned(), key.to_owned())),
        })
    }

    fn in_memory(
        ca: CertificateDer<'static>,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let certified = CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), &provider())
            .map_err(|e| TlsError::PeerCertificate(e.to_string()))?;
        Ok(Self {
            ca,
            chain: vec![cert],
            key,
            credentials: Arc::new(Credentials {
                current: std::sync::RwLock::new(Arc::new(certified)),
            }),
            files: None,
        })
    }

    /// Takes the certificate and key files again if they changed (`qvctl certs issue
    /// --replace`), after checking that they still name this peer, belong together, are
    /// signed by the cluster CA and are valid now. On any error the pair in use stays.
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let Some((cert_path, key_path)) = &self.files else {
            return Ok(Reload::Unchanged);
        };
        let refuse = |why: String| TlsError::Rotation {
            path: cert_path.clone(),
            why,
        };
        let (cert, _, certified) = certified_key(cert_path, key_path)?;
        if self.credentials.current().cert.first() == Some(&cert) {
            return Ok(Reload::Unchanged);
        }
        let new = identity_of(&cert)?;
        let own = self.peer_identity()?;
        if (new.role, &new.name) != (own.role, &own.name) {
            return Err(refuse(format!(
                "it is the {} certificate of {:?}, but this is {} {:?}",
                new.role, new.name, own.role, own.name
            )));
        }
        // Every role's certificate authenticates clients: checked as a server checks one.
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
                .build()
                .map_err(|e| refuse(e.to_string()))?;
        verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map_err(|e| refuse(format!("not accepted by the cluster CA now ({e})")))?;
        *self
            .credentials
            .current
            .write()
            .expect("credentials lock poisoned") = Arc::new(certified);
        Ok(Reload::Replaced { serial: new.serial })
    }

    /// The serial of the certificate in use.
    pub fn serial(&self) -> Result<String, TlsError> {
        let current = self.credentials.current();
        let cert = current
            .cert
            .first()
            .ok_or_else(|| TlsError::PeerCertificate("no certificate in use".into()))?;
        Ok(identity_of(cert)?.serial)
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
            .with_cert_resolver(self.credentials.clone());
        config.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
        Ok(config)
    }

    /// rustls client configuration that presents this identity and trusts only the CA.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_cert_resolver(self.credentials.clone());
        config.alpn_protocols = vec![crate::protocol::ALPN.to_vec()];
        // No session resumption: a resumed session carries the certificates of the
        // handshake it resumes, so after a rotation either side would keep appearing with
        // its old certificate. Every qvdc client makes full handshakes (connections are
        // long-lived); servers still issue tickets, which nobody uses but whose packets
        // measurably speed up a restarted node's first connections (rejoin p50 1.02 s
        // without them, 0.42 s with).
        config.resumption = rustls::client::Resumption::disabled();
        Ok(config)
    }
}

/// Keeps `identity` in step with its files: looks every [`CERT_RELOAD_INTERVAL_MS`], and at
/// once whenever `nudge` is notified (the binaries notify it on SIGHUP). A file that cannot
/// be taken is reported once, not at every look.
pub async fn keep_reloaded(identity: Identity, nudge: Arc<tokio::sync::Notify>) {
    let mut reported: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(CERT_RELOAD_INTERVAL_MS)) => {}
            () = nudge.notified() => {}
        }
        match identity.reload() {
            Ok(Reload::Unchanged) => reported = None,
            Ok(Reload::Replaced { serial }) => {
                tracing::info!(%serial, "new certificate in use for new connections");
                reported = None;
            }
            Err(e) => {
                let error = e.to_string();
                if reported.as_ref() != Some(&error) {
                    tracing::warn!(%error, "certificate files not reloaded");
                }
                reported = Some(error);
            }
        }
    }
}

/// Runs [`keep_reloaded`] for a node or host process, with SIGHUP as the nudge.
pub fn spawn_reloader(identity: Identity) -> tokio::task::JoinHandle<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let nudge = Arc::new(tokio::sync::Notify::new());
    let hangups = nudge.clone();
    tokio::spawn(async move {
        let Ok(mut hangup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangup.recv().await.is_some() {
            hangups.notify_one();
        }
    });
    tokio::spawn(keep_reloaded(identity, nudge))
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

/// Who may read a file this module writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrecy {
    /// A certificate: anyone may read it.
    Public,
    /// A private key: only its owner (0600).
    Secret,
}

/// Writes `contents` to `path` through a new file beside it that nothing else can have
/// opened or linked (`O_EXCL`, no symlink followed, mode set at creation), synced, then
/// renamed over `path`: a key is never readable by others, not even for a moment, and a
/// symlink planted at `path` is replaced, never written through.
fn write(path: &Path, contents: &str, secrecy: Secrecy) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".new");
    let temporary = PathBuf::from(temporary);
    let mode = match secrecy {
        Secrecy::Public => 0o644,
        Secrecy::Secret => 0o600,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(|source| TlsError::Io {
            path: temporary.clone(),
            source,
        })?;
    let written = file
        .write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(e));
    }
    Ok(())
}

/// A key pair's private key as PKCS#8 v1 PEM, the form OpenSSL and other tools read.
fn key_pem(key: &KeyPair) -> String {
    let der = key.serialize_der();
    let seed = der
        .strip_prefix(&ED25519_PKCS8_V2_PREFIX[..])
        .and_then(|rest| rest.get(..ED25519_SEED_BYTES))
        .expect("ring writes Ed25519 keys as PKCS#8 v2 with the seed first");
    let mut v1 = ED25519_PKCS8_V1_PREFIX.to_vec();
    v1.extend_from_slice(seed);
    assert_eq!(v1.len(), ED25519_PKCS8_V1_PREFIX.len() + ED25519_SEED_BYTES);
    private_key_pem(&v1)
}

fn private_key_pem(der: &[u8]) -> String {
    let body = base64_encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The validity window of a certificate issued now for `days`.
fn validity(days: u32) -> (time::OffsetDateTime, time::OffsetDateTime) {
    // Certificate tooling runs in the CLI, never in the simulation: wall-clock time is right.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let now = time::OffsetDateTime::from_unix_timestamp(now as i64).expect("a sane clock");
    (
        now - time::Duration::seconds(CLOCK_SKEW_SECS),
        now + time::Duration::days(i64::from(days)),
    )
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
    let serial = serial_hex(parsed.raw_serial());
    Ok(PeerIdentity { role, name, serial })
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
    (params.not_before, params.not_after) = validity(CA_VALIDITY_DAYS);
    let cert = params.self_signed(&key)?;
    let key_path = dir.join(CA_KEY_FILE);
    if key_path.exists() {
        return Err(TlsError::CaExists(key_path));
    }
    write(&key_path, &key_pem(&key), Secrecy::Secret)?;
    write(&cert_path, &cert.pem(), Secrecy::Public)?;
    Ok(cert_path)
}

/// How to issue a certificate.
#[derive(Debug, Clone, Copy)]
pub struct IssueOptions {
    /// Days from now until it expires.
    pub days: u32,
    /// Replace an existing certificate and key of the same name (rotation).
    pub replace: bool,
}

impl Default for IssueOptions {
    fn default() -> Self {
        Self {
            days: CERT_VALIDITY_DAYS_DEFAULT,
            replace: false,
        }
    }
}

/// Issues a certificate for `name` with `role`, signed by the CA in `dir`, valid for
/// [`CERT_VALIDITY_DAYS_DEFAULT`]; writes `dir/NAME.crt` and `dir/NAME.key` (mode 0600) and
/// returns their paths. Refuses to replace an existing pair.
pub fn issue(dir: &Path, role: Role, name: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    issue_with(dir, role, name, IssueOptions::default())
}

/// [`issue`] with a chosen validity, optionally replacing an existing pair.
pub fn issue_with(
    dir: &Path,
    role: Role,
    name: &str,
    options: IssueOptions,
) -> Result<(PathBuf, PathBuf), TlsError> {
    validate_name(name)?;
    if NAMES_RESERVED.contains(&name) {
        return Err(TlsError::BadName {
            name: name.to_owned(),
            why: "is reserved for the cluster CA's own files",
        });
    }
    if !(1..=CERT_VALIDITY_DAYS_MAX).contains(&options.days) {
        return Err(TlsError::BadValidity(options.days));
    }
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    if !options.replace {
        if let Some(existing) = [&cert_path, &key_path].into_iter().find(|p| p.exists()) {
            return Err(TlsError::Exists(existing.clone()));
        }
    }
    let ca = Ca::open(dir)?;
    let (cert, key) = ca.sign(role, name, options.days)?;
    // The key first: a certificate on disk without its key is of no use to anyone.
    write(&key_path, &key_pem(&key), Secrecy::Secret)?;
    write(&cert_path, &cert.pem(), Secrecy::Public)?;
    Ok((cert_path, key_path))
}

/// The cluster CA, opened to issue certificates without writing them anywhere: a load
/// generator that plays thousands of hosts holds their identities in memory only.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl Ca {
    /// Opens the CA in `dir` (`ca.crt`, `ca.key`).
    pub fn open(dir: &Path) -> Result<Self, TlsError> {
        let ca_key_path = dir.join(CA_KEY_FILE);
        let ca_cert_path = dir.join(CA_CERT_FILE);
        let ca_key = KeyPair::from_pem(&String::from_utf8_lossy(&read(&ca_key_path)?))
            .map_err(|e| bad_pem(&ca_key_path, e))?;
        let ca_bytes = read(&ca_cert_path)?;
        let cert =
            CertificateDer::from_pem_slice(&ca_bytes).map_err(|e| bad_pem(&ca_cert_path, e))?;
        let ca_pem = String::from_utf8_lossy(&ca_bytes).into_owned();
        let issuer =
            Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| bad_pem(&ca_cert_path, e))?;
        Ok(Self { issuer, cert })
    }

    /// A new identity for `name` with `role`, valid for `days`, kept in memory.
    pub fn identity(&self, role: Role, name: &str, days: u32) -> Result<Identity, TlsError> {
        validate_name(name)?;
        if !(1..=CERT_VALIDITY_DAYS_MAX).contains(&days) {
            return Err(TlsError::BadValidity(days));
        }
        let (cert, key) = self.sign(role, name, days)?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| TlsError::PeerCertificate(e.to_string()))?;
        Identity::in_memory(self.cert.clone(), cert.der().clone(), key)
    }

    /// A certificate for `name` with `role`, valid for `days`, and its new key.
    fn sign(
        &self,
        role: Role,
        name: &str,
        days: u32,
    ) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
        let issuer = &self.issuer;
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
        (params.not_before, params.not_after) = validity(days);
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let cert = params.signed_by(&key, issuer)?;
        Ok((cert, key))
    }
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
            let peer = id.peer_identity().unwrap();
            assert_eq!((peer.role, peer.name.as_str()), (role, name));
            assert_eq!(certificate_file(&cert).unwrap(), peer);
            assert!(!peer.serial.is_empty() && peer.serial.len() <= SERIAL_BYTES_MAX * 2);
            id.server_config().unwrap();
            id.client_config().unwrap();
        }
    }

    #[test]
    fn serials_read_as_operators_paste_them() {
        assert_eq!(serial_hex(&[0x00, 0x7a, 0x3b]), "7a3b");
        assert_eq!(serial_hex(&[0x00]), "00");
        for text in ["serial=7A3B", "7a:3b", " 007a3b ", "7a3b"] {
            assert_eq!(parse_serial(text).unwrap(), "7a3b", "{text}");
        }
        assert_eq!(parse_serial("abc").unwrap(), "0abc");
        for bad in ["", "xyz", "serial=", &"a".repeat(41)] {
            let e = parse_serial(bad).unwrap_err();
            assert!(e.contains("openssl x509 -noout -serial"), "{e}");
        }
    }

    /// Two certificates issued for the same name (a rotation) have different serials, so
    /// revoking the old one leaves the new one working.
    #[test]
    fn a_reissued_certificate_has_a_new_serial() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let (cert, _) = issue(dir.path(), Role::Host, "host-1").unwrap();
        let old = certificate_file(&cert).unwrap();
        let options = IssueOptions {
            replace: true,
            ..IssueOptions::default()
        };
        issue_with(dir.path(), Role::Host, "host-1", options).unwrap();
        let new = certificate_file(&cert).unwrap();
        assert_eq!(old.name, new.name);
        assert_ne!(old.serial, new.serial);
    }

    /// A rotated certificate is taken while running; one for another name, one whose key
    /// does not match, and one from another CA are refused, and the pair in use stays.
    #[test]
    fn a_running_identity_takes_a_rotated_certificate_and_only_a_good_one() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let ca = dir.path().join("ca.crt");
        let (cert, key) = issue(dir.path(), Role::Host, "host-1").unwrap();
        let identity = Identity::load(&ca, &cert, &key).unwrap();
        let first = identity.serial().unwrap();
        assert_eq!(identity.reload().unwrap(), Reload::Unchanged);
        let replace = IssueOptions {
            replace: true,
            ..IssueOptions::default()
        };
        let copy = |from: &str, to: &Path| std::fs::copy(dir.path().join(from), to).unwrap();

        // Another name's pair in this identity's files.
        issue(dir.path(), Role::Host, "host-2").unwrap();
        copy("host-2.crt", &cert);
        copy("host-2.key", &key);
        let e = identity.reload().unwrap_err().to_string();
        assert!(
            e.contains("certificate of \"host-2\", but this is host \"host-1\""),
            "{e}"
        );
        assert_eq!(identity.serial().unwrap(), first);

        // A new certificate with the old key (a rotation caught half-written).
        let (spare_cert, spare_key) = (dir.path().join("spare.crt"), dir.path().join("spare.key"));
        let old_key = std::fs::read(dir.path().join("host-2.key")).unwrap();
        issue_with(dir.path(), Role::Host, "host-1", replace).unwrap();
        std::fs::copy(&cert, &spare_cert).unwrap();
        std::fs::copy(&key, &spare_key).unwrap();
        std::fs::write(&key, &old_key).unwrap();
        let e = identity.reload().unwrap_err().to_string();
        assert!(e.contains("not the key of"), "{e}");
        assert_eq!(identity.serial().unwrap(), first);

        // A pair from another cluster's CA.
        let other = tempfile::tempdir().unwrap();
        init_ca(other.path()).unwrap();
        issue(other.path(), Role::Host, "host-1").unwrap();
        std::fs::copy(other.path().join("host-1.crt"), &cert).unwrap();
        std::fs::copy(other.path().join("host-1.key"), &key).unwrap();
        let e = identity.reload().unwrap_err().to_string();
        assert!(e.contains("not accepted by the cluster CA"), "{e}");
        assert_eq!(identity.serial().unwrap(), first);

        // The good one.
        std::fs::copy(&spare_cert, &cert).unwrap();
        std::fs::copy(&spare_key, &key).unwrap();
        let Reload::Replaced { serial } = identity.reload().unwrap() else {
            panic!("not replaced")
        };
        assert_ne!(serial, first);
        assert_eq!(
            identity.clone().serial().unwrap(),
            serial,
            "clones share it"
        );
        assert_eq!(identity.reload().unwrap(), Reload::Unchanged);
        identity.server_config().unwrap();
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn keys_are_private_and_certificates_public() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let (cert, key) = issue(dir.path(), Role::Host, "host-1").unwrap();
        assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        assert_eq!(mode(&dir.path().join("ca.crt")), 0o644);
    }

    /// A symlink planted where a key will be written is replaced, not written through.
    #[test]
    fn a_key_is_never_written_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("host-1.key")).unwrap();
        let options = IssueOptions {
            replace: true,
            ..IssueOptions::default()
        };
        let (_, key) = issue_with(dir.path(), Role::Host, "host-1", options).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(!std::fs::symlink_metadata(&key).unwrap().is_symlink());
        assert!(std::fs::read_to_string(&key)
            .unwrap()
            .contains("PRIVATE KEY"));
    }

    #[test]
    fn an_existing_pair_is_replaced_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let (cert, _) = issue(dir.path(), Role::Operator, "alice").unwrap();
        let first = std::fs::read(&cert).unwrap();
        let err = issue(dir.path(), Role::Operator, "alice").unwrap_err();
        assert!(err.to_string().contains("pass --replace"), "{err}");
        assert_eq!(std::fs::read(&cert).unwrap(), first);
        let options = IssueOptions {
            replace: true,
            ..IssueOptions::default()
        };
        issue_with(dir.path(), Role::Operator, "alice", options).unwrap();
        assert_ne!(std::fs::read(&cert).unwrap(), first);
    }

    #[test]
    fn the_ca_name_is_reserved() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let ca_key = std::fs::read(dir.path().join("ca.key")).unwrap();
        let err = issue(dir.path(), Role::Server, "ca").unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        assert_eq!(std::fs::read(dir.path().join("ca.key")).unwrap(), ca_key);
    }

    #[test]
    fn validity_is_chosen_at_issue() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let days = |role, name, days| {
            let options = IssueOptions {
                days,
                replace: false,
            };
            issue_with(dir.path(), role, name, options).map(|(cert, _)| {
                let pem = std::fs::read(cert).unwrap();
                let der = CertificateDer::from_pem_slice(&pem).unwrap();
                let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
                let validity = parsed.validity();
                let secs = validity.not_after.timestamp() - validity.not_before.timestamp();
                (secs - CLOCK_SKEW_SECS) / 86_400
            })
        };
        assert_eq!(days(Role::Host, "h-30", 30).unwrap(), 30);
        let default = issue(dir.path(), Role::Host, "h-default").unwrap().0;
        assert!(std::fs::read(default)
            .unwrap()
            .starts_with(b"-----BEGIN CERTIFICATE"));
        for bad in [0, CERT_VALIDITY_DAYS_MAX + 1] {
            let err = days(Role::Host, "h-bad", bad).unwrap_err();
            assert!(matches!(err, TlsError::BadValidity(d) if d == bad), "{err}");
        }
    }

    /// Operators inspect keys and use them from other tools: OpenSSL 3.0 refuses the PKCS#8
    /// v2 form ring writes, so keys must be v1. Needs the `openssl` command.
    #[test]
    fn openssl_reads_issued_keys_needs_openssl() {
        let present = std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !present {
            assert!(
                std::env::var("QVDC_REQUIRE_REAL").as_deref() != Ok("1"),
                "QVDC_REQUIRE_REAL=1 but openssl is missing (scripts/setup.sh installs it)"
            );
            eprintln!("skipping: no openssl");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path()).unwrap();
        let (cert, key) = issue(dir.path(), Role::Server, "node-1").unwrap();
        for key in [key, dir.path().join("ca.key")] {
            let out = std::process::Command::new("openssl")
                .args(["pkey", "-noout", "-text", "-in"])
                .arg(&key)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl pkey {}: {}",
                key.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("ED25519"));
        }
        let verify = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(dir.path().join("ca.crt"))
            .arg(&cert)
            .output()
            .unwrap();
        assert!(verify.status.success(), "{verify:?}");
        // The serial a revocation names is the one openssl shows.
        let serial = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&serial.stdout);
        assert_eq!(
            parse_serial(&shown).unwrap(),
            certificate_file(&cert).unwrap().serial,
            "{shown}"
        );
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
